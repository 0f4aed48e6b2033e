"""Shared pieces of the benchmarks against the official `sam2` package (never imported by masklet).

- `official_weights`: an official SAM 2.1 model (tiny, or `size` b_plus) built with `build_sam2` (or the
  video builder) from its packaged config and no checkpoint, then given seeded random weights with the
  recipe of tests/parity/make_fixtures.py (without its object-score calibration). Its state dict is what
  both sides load: the official model with `load_state_dict`, ours strictly through `masklet.model`.
- `scene_video`: the synthetic test video as an MP4 both sides decode with decord (the official
  predictor's loader for video files, masklet's first decoder).
- `run_worker`: each measured configuration runs in a fresh subprocess (the same script with
  `--worker`), so that `ru_maxrss` is the peak of that configuration alone. Both packages are imported
  by every process (the script imports both at the top), so import costs are the same on both sides.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from typing import Any

import torch

ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
for _path in (ROOT, os.path.join(ROOT, "tests", "parity")):  # masklet, and make_fixtures' weight recipe
    if _path not in sys.path:
        sys.path.insert(0, _path)

OFFICIAL_CONFIGS = {"t": "configs/sam2.1/sam2.1_hiera_t.yaml", "b_plus": "configs/sam2.1/sam2.1_hiera_b+.yaml"}
VIDEO_SIZE = (640, 480)  # width, height of the synthetic test video


def build_official(
    kind: str, image_size: int, device: str = "cpu", size: str = "t", vos_optimized: bool = False
) -> torch.nn.Module:
    """The official SAM 2.1 of `size` without a checkpoint: kind "image" (`build_sam2`) or "video"
    (`build_sam2_video_predictor`, `vos_optimized`: its torch.compile'd predictor), at `image_size`, in
    eval mode."""
    from sam2.build_sam import build_sam2, build_sam2_video_predictor

    overrides = [] if image_size == 1024 else [f"++model.image_size={image_size}"]
    config = OFFICIAL_CONFIGS[size]
    if kind == "image":
        return build_sam2(config, ckpt_path=None, device=device, mode="eval", hydra_overrides_extra=overrides)
    return build_sam2_video_predictor(
        config, ckpt_path=None, device=device, mode="eval", hydra_overrides_extra=overrides, vos_optimized=vos_optimized
    )


@torch.no_grad()
def official_weights(seed: int, image_size: int, size: str = "t") -> dict[str, torch.Tensor]:
    """Seeded random weights of the official model (make_fixtures.py's recipe), on CPU, fp32."""
    from make_fixtures import randomize_

    torch.manual_seed(seed)
    model = build_official("image", image_size, size=size)
    randomize_(model, seed)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def load_official(
    kind: str, state_path: str, image_size: int, device: str, size: str = "t", vos_optimized: bool = False
) -> torch.nn.Module:
    model = build_official(kind, image_size, device, size, vos_optimized)
    model.load_state_dict(torch.load(state_path, weights_only=True), strict=True)
    return model.eval()


def load_ours(state_path: str, image_size: int, device: str, size: str = "t") -> torch.nn.Module:
    """Ours, loaded strictly from the official state dict (as `load_weights` does)."""
    from masklet.model import build_model

    model = build_model(f"sam2.1_hiera_{size}", image_size=image_size, device=device)
    model.load_state_dict(torch.load(state_path, weights_only=True, map_location=device), strict=True)
    return model.eval()


def scene_video(folder: str, frames: int) -> str:
    """`folder/scene-{frames}f.mp4`, the synthetic video (`masklet.synth.scene`, H.264), written if missing:
    benchmarks/gpu/prepare.py writes them ahead for a machine without PyAV."""
    path = os.path.join(folder, f"scene-{frames}f.mp4")
    if not os.path.exists(path):
        from masklet.io.video_writer import encode_mp4
        from masklet.synth.scene import make_scene

        width, height = VIDEO_SIZE
        scene = make_scene(0, 0, width=width, height=height, frames=frames)
        data = encode_mp4((scene.render(t).rgb for t in range(frames)), fps=24.0)
        with open(path, "wb") as f:
            f.write(data)
    return path


def peak_rss_mb() -> float:
    """Peak resident set size of this process in MB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_worker(script: str, args: list[str], timeout: float | None = None) -> dict[str, Any]:
    """Run `script --worker ARGS` in a fresh interpreter; its last stdout line is a JSON result."""
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, script, "--worker", *args], capture_output=True, text=True, timeout=timeout, check=False
    )
    if proc.returncode != 0:
        raise RuntimeError(f"worker {args} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["process_seconds"] = time.perf_counter() - start
    return result


def load_line() -> str:
    """The machine's load averages (1, 5, 15 min) and core count, for the record."""
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f} {five:.2f} {fifteen:.2f} on {os.cpu_count()} cores"


def table(headers: list[str], rows: list[list[Any]]) -> str:
    cells = [[str(h) for h in headers]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = [
        "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True)))
        for r in cells
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
