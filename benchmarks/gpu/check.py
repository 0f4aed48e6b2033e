"""The one-shot GPU check: everything a lent GPU should tell about masklet, in one call, as one table.

    python benchmarks/gpu/check.py --device cuda --inputs .gpucheck/inputs --out $OUT/gpu-check.md
    python benchmarks/gpu/check.py --quick --device cpu          # the same code paths, tiny, here

Rows (benchmarks/gpu/README.md says how to carry what the GPU machine lacks and the exact command):
- CUDA fp32 parity against the committed fixtures: tests/test_parity.py's replays with fp32 memories,
  on the device with TF32 off, every flag set, mode and scenario against the official outputs.
- bf16 autocast drift vs fp32: `VideoTracker` on sam2.1_hiera_t (seeded random weights that give
  confident masks, tests/tiny_sam2.py's recipe), 8 clicked objects: object-score logits and mask IoU.
- tracker frames/s for 1, 8, 32 objects at sam2.1_hiera_t and b_plus, 1024 px, against the official
  `SAM2VideoPredictor` with the same weights (plain; `vos_optimized` compiled for t), the cost of 32
  objects relative to 1 (goal <= 3x), and peak GPU memory at 24 and 96 frames
  (benchmarks/tracker_vs_official.py).
- automatic mask generation against the official generator (benchmarks/automask_vs_official.py).
- a whole shard through `process_shard` against the pipeline alone (benchmarks/job_vs_model.py, goal
  >= 90%).

Sections run in that order within `--budget` seconds (default 450: under 8 minutes on an H200 with
start-up); one that would not fit is skipped and says so, one that fails says why and the rest go on.
Rows that compare with the official `sam2` package say "skipped" where it is not installed.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.normpath(os.path.join(HERE, "..", ".."))
for _path in (ROOT, os.path.join(ROOT, "tests")):
    if _path not in sys.path:
        sys.path.insert(0, _path)

Row = tuple[str, str, str, str]  # check, measured, goal, verdict


@dataclass(frozen=True)
class Sizes:
    """What the check runs at: full on a GPU, tiny with --quick (the same code paths, in seconds)."""

    image_size: int
    frames: int
    long_frames: int
    objects: tuple[int, ...]
    amg_points: int
    shard_args: tuple[str, ...]  # the corpus benchmarks/job_vs_model.py writes
    shard_pipeline: int  # its automatic pipeline's points per side and object cap

    @classmethod
    def pick(cls, quick: bool) -> Sizes:
        if quick:
            shard = ("--videos", "2", "--per-shard", "1", "--frames", "6", "--size", "96x64", "--image-size", "128")
            return cls(128, 4, 8, (1, 2), 4, shard, 4)
        shard = ("--videos", "8", "--per-shard", "4", "--frames", "48", "--size", "640x480", "--fps", "6")
        return cls(1024, 24, 96, (1, 8, 32), 32, shard, 16)


def official_installed() -> bool:
    return importlib.util.find_spec("sam2") is not None


def environment(args: argparse.Namespace, sizes: Sizes) -> list[Row]:
    import masklet

    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    official = f"sam2 {importlib.metadata.version('sam2')}" if official_installed() else "no official sam2"
    measured = f"{name}; torch {torch.__version__}; masklet {masklet.__version__}; {official}"
    return [("environment", measured, "", "")]


def parity(args: argparse.Namespace, sizes: Sizes) -> list[Row]:
    """fp32 memories on both sides: the official outputs to 1e-4 with identical masks, as on the CPU."""
    import test_parity as tp

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    worst = dict.fromkeys(tp.FIELDS, 0.0)
    identical = runs = 0
    for flag_set in tp.FLAG_SETS:
        for mode in tp.MODES:
            model = tp.model(flag_set, mode).to(args.device)
            for scenario in tp.SCENARIOS:
                ours, _ = tp.replay(model, scenario, memory_dtype=torch.float32)
                theirs = tp.official(flag_set, mode, scenario, "float32")
                same = set(ours) == set(theirs)
                for key in theirs:
                    for field in tp.FIELDS:
                        worst[field] = max(worst[field], tp.max_diff(ours[key][field], theirs[key][field]))
                    same = same and torch.equal(
                        ours[key]["low_res_logits"].cpu() > 0, theirs[key]["low_res_logits"] > 0
                    )
                identical += same
                runs += 1
    measured = ", ".join(f"{k} {v:.1e}" for k, v in worst.items()) + f"; masks identical in {identical}/{runs} runs"
    ok = max(worst.values()) <= tp.ATOL and identical == runs
    return [
        (f"{args.device} fp32 parity vs official fixtures", measured, f"max |diff| <= {tp.ATOL:g}, identical", _v(ok))
    ]


def bf16_drift(args: argparse.Namespace, sizes: Sizes) -> list[Row]:
    from tiny_sam2 import randomize_

    from masklet.model import VideoTracker, build_model
    from masklet.synth.scene import make_scene

    torch.manual_seed(0)
    model = randomize_(build_model("sam2.1_hiera_t", image_size=sizes.image_size, device=args.device))
    scene = make_scene(0, 0, width=640, height=480, frames=sizes.frames)
    frames = [scene.render(t).rgb for t in range(sizes.frames)]
    clicks = [[80.0 * (i % 8) + 40, 240.0] for i in range(8)]
    runs = {}
    for dtype in (torch.float32, torch.bfloat16):
        tracker = VideoTracker(model, num_frames=len(frames), dtype=dtype)
        for i, point in enumerate(clicks):
            tracker.add_object(i + 1, points=[point], labels=[1])
        outs = [tracker.step(rgb) for rgb in frames]
        runs[dtype] = ([o.object_score_logits.float().cpu() for o in outs], [o.masks().cpu() for o in outs])
    fp32, bf16 = runs[torch.float32], runs[torch.bfloat16]
    scores = max(float((a - b).abs().max()) for a, b in zip(fp32[0], bf16[0], strict=True))
    ious = []
    for a, b in zip(fp32[1], bf16[1], strict=True):
        inter, union = (a & b).flatten(1).sum(1), (a | b).flatten(1).sum(1)
        ious += torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(inter, dtype=torch.float)).tolist()
    measured = (
        f"mask IoU bf16 vs fp32 mean {np.mean(ious):.3f}, min {np.min(ious):.3f}; "
        f"max |object score diff| {scores:.3f} (8 objects, {len(frames)} frames, {sizes.image_size} px)"
    )
    return [("bf16 autocast drift vs fp32", measured, "report", "")]


def tracker(size: str, variants: tuple[str, ...]) -> Callable[[argparse.Namespace, Sizes], list[Row]]:
    def run(args: argparse.Namespace, sizes: Sizes) -> list[Row]:
        name = f"tracker sam2.1_hiera_{size}"
        if not official_installed():
            return [(name, "skipped: the official sam2 package is not installed", "", "")]
        out = os.path.join(args.tmp, f"tracker-{size}.json")
        command = ["--objects", *map(str, sizes.objects), "--frames", str(sizes.frames), "--size", size]
        command += ["--rss-frames", str(sizes.frames), str(sizes.long_frames), "--image-size", str(sizes.image_size)]
        command += ["--official-variants", *variants, "--device", args.device, "--videos", args.inputs, "--json", out]
        _benchmark("tracker_vs_official.py", command, args)
        with open(out) as f:
            result = json.load(f)
        rows = []
        sides = ["official"] + (["official-vos"] if "vos" in variants else [])
        for n in sizes.objects:
            ours = result["timing"][f"ours/{n}"]["fps"]
            parts = [f"ours {ours:.1f} frames/s"]
            for side in sides:
                theirs = result["timing"][f"{side}/{n}"]["fps"]
                parts.append(f"{side} {theirs:.1f} ({ours / theirs:.2f}x)")
            parts.append(f"last-frame IoU {result['iou'][str(n)]:.2f}")
            rows.append((f"{name}, {n} object(s), {sizes.image_size} px", "; ".join(parts), "ours >= official", ""))
        lo, hi = min(sizes.objects), max(sizes.objects)
        cost = ", ".join(f"{k} {v:.2f}x" for k, v in result["cost"].items())
        rows.append(
            (f"{name}: {hi} objects vs {lo}, time per frame", cost, "ours <= 3x", _v(result["cost"]["ours"] <= 3))
        )
        memory = result["memory"]
        key = "cuda_peak_mb" if args.device.startswith("cuda") else "rss_mb"
        growth = []
        for side in ("ours", "official"):
            first, last = memory[f"{side}/{sizes.frames}"][key], memory[f"{side}/{sizes.long_frames}"][key]
            growth.append(f"{side} {first:.0f} -> {last:.0f} MB ({100 * (last / first - 1):+.1f}%)")
        what = "peak GPU memory" if key == "cuda_peak_mb" else "peak RSS"
        rows.append(
            (f"{name}: {what}, 1 object, {sizes.frames} -> {sizes.long_frames} frames", "; ".join(growth), "flat", "")
        )
        return rows

    return run


def automask(args: argparse.Namespace, sizes: Sizes) -> list[Row]:
    if not official_installed():
        return [("automatic masks vs official", "skipped: the official sam2 package is not installed", "", "")]
    out = os.path.join(args.tmp, "automask.json")
    command = [
        "--cases",
        "defaults",
        "--points-per-side",
        str(sizes.amg_points),
        "--device",
        args.device,
        "--json",
        out,
    ]
    _benchmark("automask_vs_official.py", command, args)
    with open(out) as f:
        case = json.load(f)["defaults"]
    speedup = case["official_seconds"] / case["ours_seconds"]
    measured = (
        f"ours {case['ours_seconds']:.2f} s, official {case['official_seconds']:.2f} s ({speedup:.2f}x); "
        f"masks identical {case['identical']}/{case['official_count']}"
    )
    grid = f"{sizes.amg_points}x{sizes.amg_points} grid, sam2.1_hiera_t"
    same = case["identical"] == case["official_count"] == case["ours_count"]
    return [(f"automatic masks vs official ({grid})", measured, ">= 2x, identical", _v(speedup >= 2 and same))]


def shard(args: argparse.Namespace, sizes: Sizes) -> list[Row]:
    out = os.path.join(args.tmp, "shard.json")
    corpus = os.path.join(args.inputs, "corpus")
    command = [*sizes.shard_args, "--model", "sam2.1_hiera_t", "--random-weights", "--device", args.device]
    command += ["--corpus", os.path.join(corpus, "shard-*.tar")] if os.path.isdir(corpus) else []
    command += ["--repeats", "2", "--json", out, "pipeline.pred_iou_thresh=0", "pipeline.stability_score_thresh=0"]
    command += [f"pipeline.points_per_side={sizes.shard_pipeline}", f"pipeline.max_objects={sizes.shard_pipeline}"]
    _benchmark("job_vs_model.py", command, args)
    with open(out) as f:
        result = json.load(f)
    fps = result["frames_per_second"]
    measured = ", ".join(f"{k} {v:.1f} frames/s" for k, v in fps.items()) + f": {result['ratio']:.1%}"
    return [("a whole shard (process_shard) vs the pipeline alone", measured, ">= 90%", _v(result["ratio"] >= 0.9))]


def _benchmark(script: str, command: list[str], args: argparse.Namespace) -> None:
    """Run benchmarks/SCRIPT (masklet from this checkout) with the time that is left; its output goes to
    this log, and its last error line into the table when it fails."""
    left = max(1.0, args.deadline - time.monotonic())
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")]))}
    done = subprocess.run(
        [sys.executable, os.path.join(ROOT, "benchmarks", script), *command],
        capture_output=True,
        text=True,
        timeout=left,
        env=env,
        check=False,
    )
    print(done.stdout + done.stderr, flush=True)
    if done.returncode:
        last = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1]
        raise RuntimeError(f"{script}: {last}")


def _v(ok: bool) -> str:
    return "ok" if ok else "MISSED"


# (name, seconds it needs at least on an H200, what it runs)
SECTIONS: list[tuple[str, float, Callable[[argparse.Namespace, Sizes], list[Row]]]] = [
    ("environment", 0, environment),
    ("CUDA fp32 parity", 15, parity),
    ("bf16 autocast drift", 20, bf16_drift),
    ("tracker sam2.1_hiera_t", 150, tracker("t", ("plain", "vos"))),
    ("automatic masks", 45, automask),
    ("shard vs model", 45, shard),
    ("tracker sam2.1_hiera_b_plus", 90, tracker("b_plus", ("plain",))),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: the same code paths in seconds (CPU test)")
    parser.add_argument("--budget", type=float, default=450.0, help="seconds for the whole check")
    parser.add_argument("--inputs", help="benchmarks/gpu/prepare.py's inputs (videos written here where missing)")
    parser.add_argument("--out", help="also write the table (Markdown) to this file")
    args = parser.parse_args()
    sizes = Sizes.pick(args.quick)
    start = time.monotonic()
    args.deadline = start + args.budget
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="masklet-gpu-check-") as tmp:
        args.tmp = tmp
        args.inputs = args.inputs or tmp
        for name, needs, section in SECTIONS:
            left = args.deadline - time.monotonic()
            if left < (0 if args.quick else needs):
                rows.append((name, f"skipped: {left:.0f} s left of the budget, it needs about {needs:.0f} s", "", ""))
                continue
            t0 = time.monotonic()
            try:
                rows += section(args, sizes)
            except Exception as exc:  # one section's failure must not cost the others
                last = (str(exc).strip().splitlines() or [""])[-1]
                rows.append((name, f"error: {type(exc).__name__}: {last}", "", "FAILED"))
            print(f"[{time.monotonic() - start:6.1f} s] {name}: {time.monotonic() - t0:.1f} s", flush=True)
    table = _markdown(
        rows, f"masklet GPU check ({'quick, ' if args.quick else ''}{args.device}), {time.monotonic() - start:.0f} s"
    )
    print("\n" + table)
    if args.out:
        with open(args.out, "w") as f:
            f.write(table + "\n")


def _markdown(rows: list[Row], title: str) -> str:
    lines = [f"## {title}", "", "| check | measured | goal | |", "|---|---|---|---|"]
    lines += [f"| {' | '.join(cell.replace('|', '/') for cell in row)} |" for row in rows]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
