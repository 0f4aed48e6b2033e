"""Video tracking: masklet's streaming `VideoTracker` against the official `SAM2VideoPredictor`.

Same weights on both sides: the official SAM 2.1 (`build_sam2_video_predictor` with sam2.1_hiera_t.yaml,
or b+ with `--size b_plus`, no checkpoint) given seeded random weights (tests/parity/make_fixtures.py's
recipe), loaded strictly into ours (`build_model("sam2.1_hiera_t", image_size=...)`). Input: a synthetic
640x480 H.264 video (`masklet.synth.scene`), decoded by decord on both sides: the official predictor
loads it whole (`init_state`, as it does for video files), is prompted with one positive click per
object on frame 0 and runs `propagate_in_video`; ours decodes it streaming (`masklet.io.video`),
prompts the same clicks before frame 0 and calls `VideoTracker.step` per frame, taking the full-size
masks of every frame as the official loop does. Timed: from opening the video to the last frame's
masks (frames/s; model building and one warm-up pass of the image encoder are excluded; the
`--official-variants vos` predictor, `vos_optimized=True`, compiles on a first untimed pass).

Every configuration (side, objects, frames) runs in a fresh subprocess (peak RSS = `ru_maxrss` of that
process; on CUDA also the peak allocated memory), ours and the official interleaved. A sanity line
gives the mean IoU of the two sides' last-frame masks.

Needs the official `sam2` 1.1.0 and masklet's dependencies in one venv (run from the repo root):

    /work/refvenv/bin/python benchmarks/tracker_vs_official.py            # full set (slow on CPU)
    /work/refvenv/bin/python benchmarks/tracker_vs_official.py --objects 1 8 --frames 12 --rss-frames 24 96
    python benchmarks/tracker_vs_official.py --device cuda --image-size 1024 --official-variants plain vos

ratio = ours / official for frames/s (> 1: ours faster) and for peak RSS (< 1: ours smaller).
It also reports, per side, what tracking the most objects costs relative to the fewest (time per
frame). `--json FILE` writes every result for benchmarks/gpu/check.py.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _sidebyside as common  # noqa: E402  (puts the repo root on sys.path)
import sam2.sam2_video_predictor  # noqa: E402,F401  (every process imports both packages)

import masklet.model  # noqa: E402,F401
from masklet.io.video import open_video  # noqa: E402

SEED = 20240801
WIDTH, HEIGHT = common.VIDEO_SIZE
SIDES = {"plain": "official", "vos": "official-vos"}  # official variant -> side name


def click_points(n: int) -> list[list[float]]:
    """n clicks spread over the frame on a grid (pixels of the 640x480 video)."""
    side = int(np.ceil(np.sqrt(n)))
    cells = [((i % side) + 0.5, (i // side) + 0.5) for i in range(n)]
    rows = int(np.ceil(n / side))
    return [[x * WIDTH / side, y * HEIGHT / rows] for x, y in cells]


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def worker(a: argparse.Namespace) -> dict:
    device, n, frames = a.device, a.n_objects, a.n_frames
    video = common.scene_video(a.videos, frames)
    points = click_points(n)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=a.bf16)
    if a.side.startswith("official"):
        vos = a.side == SIDES["vos"]
        predictor = common.load_official("video", a.state, a.image_size, device, a.size, vos_optimized=vos)

        def track() -> tuple[float, int, torch.Tensor]:
            start = time.perf_counter()
            with autocast:
                state = predictor.init_state(video_path=video)
                loaded = time.perf_counter() - start
                for i, p in enumerate(points):
                    predictor.add_new_points_or_box(state, 0, i + 1, points=[p], labels=[1])
                count = 0
                for _, _, video_res in predictor.propagate_in_video(state):
                    masks = video_res[:, 0] > 0  # kept like ours: the last frame's masks, never all of them
                    count += 1  # noqa: SIM113 (a generator of outputs; enumerate would hide the count's use below)
            return loaded, count, masks

        with torch.inference_mode(), autocast:  # warm-up: one-time kernel set-up is not timed
            predictor.forward_image(torch.zeros(1, 3, a.image_size, a.image_size, device=device))
        if vos:
            track()  # torch.compile's first pass compiles; not timed
        synchronize(device)
        start = time.perf_counter()
        loaded, count, masks = track()
    else:
        from masklet.model import VideoTracker

        model = common.load_ours(a.state, a.image_size, device, a.size)
        with torch.inference_mode(), autocast:  # warm-up: one-time kernel set-up is not timed
            model.encode_image(torch.zeros(1, 3, a.image_size, a.image_size, device=device))
        synchronize(device)
        start = time.perf_counter()
        with open(video, "rb") as f:
            stream = open_video(f.read())
        loaded = time.perf_counter() - start
        tracker = VideoTracker(model, num_frames=frames, dtype=torch.bfloat16 if a.bf16 else torch.float32)
        count = 0
        for k, frame in enumerate(stream):
            if k == 0:
                for i, p in enumerate(points):
                    tracker.add_object(i + 1, points=[p], labels=[1])
            masks = tracker.step(frame.rgb).masks()
            count += 1
    synchronize(device)
    seconds = time.perf_counter() - start
    assert count == frames, (count, frames)
    np.save(os.path.join(a.tmp, f"masks_{a.side}_{n}_{frames}.npy"), masks.cpu().numpy())
    result = {"seconds": seconds, "load_seconds": loaded, "fps": frames / seconds, "rss_mb": common.peak_rss_mb()}
    if device.startswith("cuda"):
        result["cuda_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return result


def mean_iou(tmp: str, n: int, frames: int) -> float:
    a = np.load(os.path.join(tmp, f"masks_ours_{n}_{frames}.npy"))
    b = np.load(os.path.join(tmp, f"masks_official_{n}_{frames}.npy"))
    inter = (a & b).reshape(n, -1).sum(1)
    union = (a | b).reshape(n, -1).sum(1)
    return float(np.mean(np.where(union > 0, inter / np.maximum(union, 1), 1.0)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--objects", type=int, nargs="+", default=[1, 8, 32], help="object counts timed")
    parser.add_argument("--frames", type=int, default=24, help="frames tracked in the timing runs")
    parser.add_argument("--rss-frames", type=int, nargs="+", default=[24, 96], help="video lengths for peak RSS")
    parser.add_argument("--rss-objects", type=int, default=1, help="objects tracked in the RSS runs")
    parser.add_argument("--image-size", type=int, default=512)
    parser.add_argument("--size", choices=sorted(common.OFFICIAL_CONFIGS), default="t", help="SAM 2.1 size")
    parser.add_argument(
        "--official-variants", nargs="+", choices=sorted(SIDES), default=["plain"], help="official predictors timed"
    )
    parser.add_argument("--videos", help="folder of the test videos (scene-{frames}f.mp4), written where missing")
    parser.add_argument("--json", help="also write every result to this file")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--bf16", action="store_true", help="bfloat16 autocast on both sides (CUDA)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads per process (0: torch's default)")
    parser.add_argument("--repeats", type=int, default=1, help="runs per configuration and side (best kept)")
    # worker-only arguments
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--side", help=argparse.SUPPRESS)
    parser.add_argument("--n-objects", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--n-frames", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--state", help=argparse.SUPPRESS)
    parser.add_argument("--tmp", help=argparse.SUPPRESS)
    a = parser.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    if a.worker:
        print(json.dumps(worker(a)))
        return

    print(f"start: {common.load_line()}; torch {torch.__version__}, {torch.get_num_threads()} threads, {a.device}")
    timing = [(n, a.frames) for n in a.objects]
    rss = [(a.rss_objects, f) for f in a.rss_frames]
    configs = list(dict.fromkeys(timing + rss))  # a timing run doubles as an RSS run when they coincide
    officials = [SIDES[v] for v in a.official_variants]
    results: dict[tuple[str, int, int], dict] = {}
    with tempfile.TemporaryDirectory(prefix="masklet-bench-") as tmp:
        videos = a.videos or tmp
        state_path = os.path.join(tmp, "state.pt")
        torch.save(common.official_weights(SEED, a.image_size, a.size), state_path)
        for frames in sorted({f for _, f in configs}):
            common.scene_video(videos, frames)
        for n, frames in configs:
            for r in range(a.repeats):
                sides = ["ours", *officials] if r % 2 == 0 else [*officials, "ours"]
                for side in sides:
                    args = ["--side", side, "--n-objects", str(n), "--n-frames", str(frames), "--state", state_path]
                    args += ["--tmp", tmp, "--videos", videos, "--image-size", str(a.image_size), "--size", a.size]
                    args += ["--device", a.device]
                    args += ["--bf16"] if a.bf16 else []
                    args += ["--threads", str(a.threads)] if a.threads else []
                    res = common.run_worker(os.path.abspath(__file__), args)
                    best = results.get((side, n, frames))
                    if best is None or res["seconds"] < best["seconds"]:
                        results[(side, n, frames)] = res
                    print(
                        f"  {side:12s} {n:3d} objects {frames:3d} frames: {res['seconds']:7.2f} s"
                        f" ({res['fps']:.3f} frames/s, loading {res['load_seconds']:.2f} s),"
                        f" peak RSS {res['rss_mb']:.0f} MB  [{common.load_line()}]",
                        flush=True,
                    )
            results[("iou", n, frames)] = {"iou": mean_iou(tmp, n, frames)}

    print(f"\nend: {common.load_line()}")
    name = f"sam2.1_hiera_{a.size}"
    print(
        f"\nTracking speed, {name}, {a.frames} frames, image_size {a.image_size}, {a.device}, frames/s (incl. loading):"
    )
    rows = []
    for n, frames in timing:
        o = results[("ours", n, frames)]
        row = [n, f"{o['fps']:.3f}"]
        for side in officials:
            r = results[(side, n, frames)]
            row += [f"{r['fps']:.3f}", f"{o['fps'] / r['fps']:.2f}x"]
        rows.append([*row, f"{results[('iou', n, frames)]['iou']:.3f}"])
    headers = ["objects", "ours", *(h for side in officials for h in (side, "ratio")), "last-frame mask IoU"]
    print(common.table(headers, rows))
    cost = {}
    if len(a.objects) > 1:
        lo, hi = min(a.objects), max(a.objects)
        cost = {
            side: results[(side, lo, a.frames)]["fps"] / results[(side, hi, a.frames)]["fps"]
            for side in ("ours", *officials)
        }
        print(
            f"cost of {hi} objects relative to {lo} (time per frame): "
            + ", ".join(f"{k} {v:.2f}x" for k, v in cost.items())
        )

    print(f"\nPeak RSS, {a.rss_objects} object(s), MB:")
    rows = []
    for n, frames in rss:
        o, r = results[("ours", n, frames)], results[(officials[0], n, frames)]
        row = [frames, f"{o['rss_mb']:.0f}", f"{r['rss_mb']:.0f}", f"{o['rss_mb'] / r['rss_mb']:.2f}x"]
        if a.device.startswith("cuda"):
            row += [f"{o['cuda_peak_mb']:.0f}", f"{r['cuda_peak_mb']:.0f}"]
        rows.append(row)
    headers = ["frames", "ours", officials[0], "ratio"]
    headers += ["ours CUDA peak", f"{officials[0]} CUDA peak"] if a.device.startswith("cuda") else []
    print(common.table(headers, rows))
    if len(rss) > 1:
        first, last = rss[0], rss[-1]
        growth = {s: results[(s, *last)]["rss_mb"] / results[(s, *first)]["rss_mb"] for s in ("ours", officials[0])}
        print(
            f"growth {first[1]} -> {last[1]} frames: "
            + ", ".join(f"{k} {100 * (v - 1):+.1f}%" for k, v in growth.items())
        )
    if a.json:
        with open(a.json, "w") as f:
            json.dump(
                {
                    "model": name,
                    "image_size": a.image_size,
                    "device": a.device,
                    "timing": {
                        f"{side}/{n}": results[(side, n, a.frames)] for side in ("ours", *officials) for n in a.objects
                    },
                    "iou": {str(n): results[("iou", n, a.frames)]["iou"] for n in a.objects},
                    "cost": cost,
                    "memory": {
                        f"{side}/{f}": results[(side, a.rss_objects, f)]
                        for side in ("ours", *officials)
                        for f in a.rss_frames
                    },
                },
                f,
                indent=1,
            )


if __name__ == "__main__":
    main()
