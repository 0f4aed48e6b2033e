"""Prepare what the GPU check carries to a machine with no network: wheels and input videos.

    .venv/bin/python benchmarks/gpu/prepare.py        # writes .gpucheck/ (git ignores it)

`.gpucheck/wheels/`: masklet's dependencies that the GPU machine's image lacks (its torch, numpy,
pyarrow, fsspec, pyyaml, scipy, matplotlib, pillow, tqdm are used as they are), at the versions of
requirements/dev-constraints.txt, and the official sam2 with what it needs, built from sdists where
PyPI has no wheel. Not PyAV (36 MB): without it masklet decodes every video with decord
(masklet.io.video), so the check's inputs are written here instead. `.gpucheck/inputs/`: the
tracker's test videos (scene-{N}f.mp4) and a corpus of 8 synthetic videos for the shard-vs-model
row. Prints the size that will travel (the device tool takes 64 MiB with the working tree).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.normpath(os.path.join(HERE, "..", ".."))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
import _sidebyside as common  # noqa: E402  (puts the repo root on sys.path)

from masklet.synth.corpus import write_corpus  # noqa: E402

OUT = os.path.join(ROOT, ".gpucheck")
# masklet's dependencies missing on the GPU image, pinned as in requirements/dev-constraints.txt
MASKLET_NEEDS = ("pydantic", "pydantic_core", "annotated-types", "typing-inspection", "decord", "pycocotools")
MASKLET_NEEDS += ("braceexpand",)
# the official package for the side-by-side rows, and what it needs beyond the image
OFFICIAL_WHEELS = ("hydra-core==1.3.8", "omegaconf==2.3.1")  # hydra < 1.3.3 needs pkg_resources
OFFICIAL_SDISTS = ("antlr4-python3-runtime==4.9.3", "iopath==0.1.10", "sam2==1.1.0")
PLATFORM = ["--python-version", "3.12", "--implementation", "cp", "--only-binary=:all:"]
PLATFORM += [f"--platform={p}" for p in ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64")]
PLATFORM += ["--platform=manylinux2010_x86_64", "--platform=manylinux1_x86_64"]
TRACKER_FRAMES = (4, 8, 24, 96)  # --quick and full lengths of benchmarks/gpu/check.py


def pinned(names: tuple[str, ...]) -> list[str]:
    """`name==version` for each name, from requirements/dev-constraints.txt."""
    with open(os.path.join(ROOT, "requirements", "dev-constraints.txt")) as f:
        pins = {line.split("==")[0].lower().replace("_", "-"): line.strip() for line in f if "==" in line}
    return [pins[name.lower().replace("_", "-")] for name in names]


def pip(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "pip", *args], check=True)


def main() -> None:
    wheels = os.path.join(OUT, "wheels")
    shutil.rmtree(wheels, ignore_errors=True)  # one version of each: the device's pip refuses two
    os.makedirs(wheels)
    pip("download", "-q", "--no-deps", "-d", wheels, *PLATFORM, *pinned(MASKLET_NEEDS), *OFFICIAL_WHEELS)
    with tempfile.TemporaryDirectory() as sdists:
        pip("download", "-q", "--no-deps", "--no-binary=:all:", "--no-build-isolation", "-d", sdists, *OFFICIAL_SDISTS)
        # pure Python; sam2's CUDA extension is optional and left out (SAM2_BUILD_CUDA=0)
        env = {**os.environ, "SAM2_BUILD_CUDA": "0"}
        sources = [os.path.join(sdists, name) for name in sorted(os.listdir(sdists))]
        command = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", wheels]
        subprocess.run([*command, *sources], check=True, env=env)
    inputs = os.path.join(OUT, "inputs")
    os.makedirs(inputs, exist_ok=True)
    for frames in TRACKER_FRAMES:
        common.scene_video(inputs, frames)
    corpus = os.path.join(inputs, "corpus")
    if not os.path.isdir(corpus):
        write_corpus(corpus, videos=8, per_shard=4, seed=0, width=640, height=480, frames=48, fps=24.0)
    carried = sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(OUT) for f in files)
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    tree = sum(os.path.getsize(os.path.join(ROOT, p)) for p in tracked.decode().split("\0") if p)
    total = (carried + tree) / 2**20
    print(f".gpucheck: {carried / 2**20:.1f} MiB; with the tracked tree {total:.1f} MiB of the 64 MiB a call carries")
    if total > 64:
        raise SystemExit("too large to carry: drop wheels the GPU image has (see its package list)")


if __name__ == "__main__":
    main()
