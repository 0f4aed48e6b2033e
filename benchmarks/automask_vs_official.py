"""Automatic mask generation: masklet's `AutoMaskGenerator` against the official `SAM2AutomaticMaskGenerator`.

Same weights on both sides: the official tiny SAM 2.1 (`build_sam2` with sam2.1_hiera_t.yaml, no
checkpoint, image_size 1024: the official image predictor only works at 1024) given seeded random
weights (tests/parity/make_fixtures.py's recipe), loaded strictly into ours
(`build_model("sam2.1_hiera_t", image_size=1024)`). Image: the 480x640 synthetic frame
`make_scene(0, 0, width=640, height=480, frames=1).render(0).rgb`. Grid 16x16 (points_per_batch 64).
Cases: "defaults" (the official thresholds) and "all" (pred_iou_thresh 0, stability_score_thresh 0,
box_nms_thresh 1.0: every candidate survives, 3 per point).

Each (case, side) runs in a fresh subprocess, ours and the official interleaved: seconds of
`generate(image)` (model building and one warm-up pass of the image encoder excluded; the official
output is "binary_mask", ours includes its COCO RLEs) and the process's peak RSS. The masks are then
compared: count, and per-mask equality (in the official order, else matched as a multiset). Each run
also reports the CPU seconds of `generate` in user space and in the kernel (`sys`) and its minor page
faults: fresh large allocations show up there (the kernel zeroes every page on first touch).

Needs the official `sam2` 1.1.0 and masklet's dependencies in one venv (run from the repo root):

    /work/refvenv/bin/python benchmarks/automask_vs_official.py [--cases defaults all] [--points-per-side 16]

ratio = official / ours for time (> 1: ours faster) and ours / official for peak RSS (< 1: ours smaller).
`--worker --side ours|official --case all --state S --image I --tmp D --profile` runs one side under
cProfile and prints the top functions (for looking into where the time goes).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _sidebyside as common  # noqa: E402  (puts the repo root on sys.path)
import sam2.automatic_mask_generator  # noqa: E402  (every process imports both packages)

from masklet.pipelines.automask import AutoMaskConfig, AutoMaskGenerator  # noqa: E402
from masklet.synth.scene import make_scene  # noqa: E402

SEED = 20240801
IMAGE_SIZE = 1024
CASES = {
    "defaults": {},
    "all": {"pred_iou_thresh": 0.0, "stability_score_thresh": 0.0, "box_nms_thresh": 1.0},
}


def worker(a: argparse.Namespace) -> dict:
    image = np.load(a.image)
    kwargs = {"points_per_side": a.points_per_side, "points_per_batch": a.points_per_batch, **CASES[a.case]}
    warm = torch.zeros(1, 3, IMAGE_SIZE, IMAGE_SIZE, device=a.device)
    if a.side == "official":
        model = common.load_official("image", a.state, IMAGE_SIZE, a.device)
        with torch.inference_mode():
            model.forward_image(warm)
        generator = sam2.automatic_mask_generator.SAM2AutomaticMaskGenerator(model, output_mode="binary_mask", **kwargs)

        def run() -> tuple[np.ndarray, np.ndarray]:
            records = generator.generate(image)
            masks = np.stack([r["segmentation"] for r in records]) if records else np.zeros((0, *image.shape[:2]), bool)
            return masks, np.array([r["predicted_iou"] for r in records], dtype=np.float32)
    else:
        model = common.load_ours(a.state, IMAGE_SIZE, a.device)
        with torch.inference_mode():
            model.encode_image(warm)
        generator = AutoMaskGenerator(model, AutoMaskConfig(**kwargs))

        def run() -> tuple[np.ndarray, np.ndarray]:
            found = generator.generate(image)
            return found.masks.numpy(), found.predicted_iou.numpy()

    if a.profile:
        import cProfile
        import pstats

        profiler = cProfile.Profile()
        start = time.perf_counter()
        profiler.enable()
        masks, iou = run()
        profiler.disable()
        seconds = time.perf_counter() - start
        pstats.Stats(profiler, stream=sys.stderr).sort_stats("tottime").print_stats(25)
        pstats.Stats(profiler, stream=sys.stderr).sort_stats("cumulative").print_stats(30)
    else:
        if a.device.startswith("cuda"):
            torch.cuda.synchronize()
        before = resource.getrusage(resource.RUSAGE_SELF)
        start = time.perf_counter()
        masks, iou = run()
        if a.device.startswith("cuda"):
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        after = resource.getrusage(resource.RUSAGE_SELF)
    np.save(os.path.join(a.tmp, f"masks_{a.side}_{a.case}.npy"), np.packbits(masks.astype(bool), axis=-1))
    np.save(os.path.join(a.tmp, f"iou_{a.side}_{a.case}.npy"), iou)
    out = {"seconds": seconds, "rss_mb": common.peak_rss_mb(), "count": int(len(masks))}
    if not a.profile:  # CPU time in user space and in the kernel, and minor page faults, of `generate` alone
        out |= {
            "user_s": after.ru_utime - before.ru_utime,
            "sys_s": after.ru_stime - before.ru_stime,
            "minflt": after.ru_minflt - before.ru_minflt,
        }
    return out


def compare(tmp: str, case: str) -> dict:
    """Count and per-mask equality of ours against the official masks (packed bits [N, H, W/8])."""
    ours = np.load(os.path.join(tmp, f"masks_ours_{case}.npy"))
    ref = np.load(os.path.join(tmp, f"masks_official_{case}.npy"))
    iou_o = np.load(os.path.join(tmp, f"iou_ours_{case}.npy"))
    iou_r = np.load(os.path.join(tmp, f"iou_official_{case}.npy"))
    out = {"ours": len(ours), "official": len(ref), "same_order": False, "identical": 0, "iou_max_diff": float("nan")}
    if len(ours) == len(ref) and np.array_equal(ours, ref):
        out |= {"same_order": True, "identical": len(ref)}
        if len(ref):
            out["iou_max_diff"] = float(np.abs(iou_o - iou_r).max())
        return out
    pool: dict[bytes, int] = {}
    for m in ours:
        pool[m.tobytes()] = pool.get(m.tobytes(), 0) + 1
    for m in ref:
        if pool.get(m.tobytes(), 0):
            pool[m.tobytes()] -= 1
            out["identical"] += 1
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--points-per-side", type=int, default=16)
    parser.add_argument("--points-per-batch", type=int, default=64)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch threads per process (0: torch's default)")
    parser.add_argument("--repeats", type=int, default=1, help="runs per case and side (best time kept)")
    parser.add_argument("--json", help="write each case's figures here (benchmarks/gpu/check.py reads them)")
    # worker-only arguments
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--side", help=argparse.SUPPRESS)
    parser.add_argument("--case", help=argparse.SUPPRESS)
    parser.add_argument("--state", help=argparse.SUPPRESS)
    parser.add_argument("--image", help=argparse.SUPPRESS)
    parser.add_argument("--tmp", help=argparse.SUPPRESS)
    parser.add_argument("--profile", action="store_true", help=argparse.SUPPRESS)
    a = parser.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    if a.worker:
        print(json.dumps(worker(a)))
        return

    print(f"start: {common.load_line()}; torch {torch.__version__}, {torch.get_num_threads()} threads, {a.device}")
    results: dict[tuple[str, str], dict] = {}
    checks: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="masklet-bench-") as tmp:
        state_path, image_path = os.path.join(tmp, "state.pt"), os.path.join(tmp, "image.npy")
        torch.save(common.official_weights(SEED, IMAGE_SIZE), state_path)
        np.save(image_path, make_scene(0, 0, width=640, height=480, frames=1).render(0).rgb)
        for case in a.cases:
            for r in range(a.repeats):
                for side in ("ours", "official") if r % 2 == 0 else ("official", "ours"):
                    args = ["--side", side, "--case", case, "--state", state_path, "--image", image_path, "--tmp", tmp]
                    args += ["--points-per-side", str(a.points_per_side), "--points-per-batch", str(a.points_per_batch)]
                    args += ["--device", a.device]
                    args += ["--threads", str(a.threads)] if a.threads else []
                    res = common.run_worker(os.path.abspath(__file__), args)
                    best = results.get((side, case))
                    if best is None or res["seconds"] < best["seconds"]:
                        results[(side, case)] = res
                    print(
                        f"  {side:8s} {case:8s}: {res['seconds']:7.2f} s (user {res['user_s']:.1f} s, sys"
                        f" {res['sys_s']:.1f} s, {res['minflt'] / 1e6:.2f} M minor faults), {res['count']} masks,"
                        f" peak RSS {res['rss_mb']:.0f} MB  [{common.load_line()}]",
                        flush=True,
                    )
            checks[case] = compare(tmp, case)

    print(f"\nend: {common.load_line()}")
    g = a.points_per_side
    print(f"\nAutomatic masks, tiny SAM 2.1 at 1024, {g}x{g} grid, 480x640 image, {a.device}:")
    rows = []
    for case in a.cases:
        o, r, c = results[("ours", case)], results[("official", case)], checks[case]
        rows.append(
            [
                case,
                f"{o['seconds']:.2f}",
                f"{r['seconds']:.2f}",
                f"{r['seconds'] / o['seconds']:.2f}x",
                f"{o['sys_s']:.1f} / {r['sys_s']:.1f}",
                f"{o['minflt'] / 1e6:.2f} / {r['minflt'] / 1e6:.2f}",
                f"{o['rss_mb']:.0f}",
                f"{r['rss_mb']:.0f}",
                f"{o['rss_mb'] / r['rss_mb']:.2f}x",
                f"{c['ours']} / {c['official']}",
                f"{c['identical']}/{c['official']}" + (" (same order)" if c["same_order"] else ""),
                f"{c['iou_max_diff']:.1e}",
            ]
        )
    headers = ["case", "ours s", "official s", "speed-up", "sys s (ours / off.)", "M minor faults (ours / off.)"]
    headers += ["ours RSS MB", "official RSS MB", "RSS ratio"]
    headers += ["masks (ours / official)", "identical masks", "max |pred IoU diff|"]
    print(common.table(headers, rows))
    if a.json:
        figures = {
            case: {
                "ours_seconds": results[("ours", case)]["seconds"],
                "official_seconds": results[("official", case)]["seconds"],
                "ours_rss_mb": results[("ours", case)]["rss_mb"],
                "official_rss_mb": results[("official", case)]["rss_mb"],
                "ours_count": checks[case]["ours"],
                "official_count": checks[case]["official"],
                "identical": checks[case]["identical"],
                "iou_max_diff": checks[case]["iou_max_diff"],
            }
            for case in a.cases
        }
        with open(a.json, "w") as f:
            json.dump(figures, f, indent=1)


if __name__ == "__main__":
    main()
