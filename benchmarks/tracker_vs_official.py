"""Video tracking: masklet's streaming `VideoTracker` against the official `SAM2VideoPredictor`.

Same weights on both sides: the official tiny SAM 2.1 (`build_sam2_video_predictor` with
sam2.1_hiera_t.yaml, no checkpoint) given seeded random weights (tests/parity/make_fixtures.py's
recipe), loaded strictly into ours (`build_model("sam2.1_hiera_t", image_size=...)`). Input: a
synthetic 640x480 video (`masklet.synth.scene`) written as a JPEG folder (00000.jpg, ...) to a temp dir.
The official predictor loads the folder (`init_state`, all frames up front, as it does), is prompted
with one positive click per object on frame 0 and runs `propagate_in_video`; ours decodes the same
JPEGs streaming (`masklet.io.video.open_video`), prompts the same clicks before frame 0 and calls
`VideoTracker.step` per frame, taking the full-size masks of every frame as the official loop does.
Timed: from opening the frames to the last frame's masks (frames/s; model building and one warm-up
pass of the image encoder on a blank frame are excluded).

Every configuration (side, objects, frames) runs in a fresh subprocess (peak RSS =
`ru_maxrss` of that process), ours and the official interleaved. A sanity line gives the mean IoU of
the two sides' last-frame masks (not exactly equal: the official decodes JPEGs with Pillow, ours
with FFmpeg's mjpeg decoder).

Needs the official `sam2` 1.1.0 and masklet's dependencies in one venv (run from the repo root):

    /work/refvenv/bin/python benchmarks/tracker_vs_official.py            # full set (slow on CPU)
    /work/refvenv/bin/python benchmarks/tracker_vs_official.py --objects 1 8 --frames 12 --rss-frames 24 96
    /work/refvenv/bin/python benchmarks/tracker_vs_official.py --device cuda [--bf16]

ratio = ours / official for frames/s (> 1: ours faster) and for peak RSS (< 1: ours smaller).
With --device cuda it also reports, per side, what tracking 32 objects costs relative to 1 (time per
frame), and the peak CUDA memory.
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
from masklet.io.video import FrameFiles, open_video  # noqa: E402
from masklet.synth.scene import make_scene  # noqa: E402

SEED = 20240801
WIDTH, HEIGHT = 640, 480


def click_points(n: int) -> list[list[float]]:
    """n clicks spread over the frame on a grid (pixels of the 640x480 video)."""
    side = int(np.ceil(np.sqrt(n)))
    cells = [((i % side) + 0.5, (i // side) + 0.5) for i in range(n)]
    rows = int(np.ceil(n / side))
    return [[x * WIDTH / side, y * HEIGHT / rows] for x, y in cells]


def write_frames(folder: str, n: int) -> None:
    from PIL import Image

    scene = make_scene(0, 0, width=WIDTH, height=HEIGHT, frames=n)
    for t in range(n):
        Image.fromarray(scene.render(t).rgb).save(os.path.join(folder, f"{t:05d}.jpg"), quality=95)


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def worker(a: argparse.Namespace) -> dict:
    device, n, frames = a.device, a.n_objects, a.n_frames
    folder = os.path.join(a.tmp, f"frames{frames}")
    points = click_points(n)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=a.bf16)
    if a.side == "official":
        predictor = common.load_official("video", a.state, a.image_size, device)
        with torch.inference_mode(), autocast:  # warm-up: one-time kernel set-up is not timed
            predictor.forward_image(torch.zeros(1, 3, a.image_size, a.image_size, device=device))
        synchronize(device)
        start = time.perf_counter()
        with autocast:
            state = predictor.init_state(video_path=folder)
            loaded = time.perf_counter() - start
            for i, p in enumerate(points):
                predictor.add_new_points_or_box(state, 0, i + 1, points=[p], labels=[1])
            count = 0
            for _, _, video_res in predictor.propagate_in_video(state):
                masks = video_res[:, 0] > 0  # kept like ours: the last frame's masks, never all of them
                count += 1  # noqa: SIM113 (a generator of outputs; enumerate would hide the count's use below)
    else:
        from masklet.model import VideoTracker

        model = common.load_ours(a.state, a.image_size, device)
        files = sorted(f for f in os.listdir(folder) if f.endswith(".jpg"))
        with torch.inference_mode(), autocast:  # warm-up: one-time kernel set-up is not timed
            model.encode_image(torch.zeros(1, 3, a.image_size, a.image_size, device=device))
        synchronize(device)
        start = time.perf_counter()
        stream = open_video(FrameFiles(tuple(range(len(files))), tuple(os.path.join(folder, f) for f in files)))
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
    with tempfile.TemporaryDirectory(prefix="masklet-bench-") as tmp:
        state_path = os.path.join(tmp, "state.pt")
        torch.save(common.official_weights(SEED, a.image_size), state_path)
        for frames in sorted({f for _, f in configs}):
            os.makedirs(os.path.join(tmp, f"frames{frames}"))
            write_frames(os.path.join(tmp, f"frames{frames}"), frames)
        results: dict[tuple[str, int, int], dict] = {}
        for n, frames in configs:
            for r in range(a.repeats):
                sides = ("ours", "official") if r % 2 == 0 else ("official", "ours")
                for side in sides:
                    args = ["--side", side, "--n-objects", str(n), "--n-frames", str(frames), "--state", state_path]
                    args += ["--tmp", tmp, "--image-size", str(a.image_size), "--device", a.device]
                    args += ["--bf16"] if a.bf16 else []
                    args += ["--threads", str(a.threads)] if a.threads else []
                    res = common.run_worker(os.path.abspath(__file__), args)
                    best = results.get((side, n, frames))
                    if best is None or res["seconds"] < best["seconds"]:
                        results[(side, n, frames)] = res
                    print(
                        f"  {side:8s} {n:3d} objects {frames:3d} frames: {res['seconds']:7.2f} s"
                        f" ({res['fps']:.3f} frames/s, loading {res['load_seconds']:.2f} s),"
                        f" peak RSS {res['rss_mb']:.0f} MB  [{common.load_line()}]",
                        flush=True,
                    )
            results[("iou", n, frames)] = {"iou": mean_iou(tmp, n, frames)}

    print(f"\nend: {common.load_line()}")
    print(f"\nTracking speed, {a.frames} frames, image_size {a.image_size}, {a.device}, frames/s (incl. loading):")
    rows = []
    for n, frames in timing:
        o, r = results[("ours", n, frames)], results[("official", n, frames)]
        iou = results[("iou", n, frames)]["iou"]
        rows.append([n, f"{o['fps']:.3f}", f"{r['fps']:.3f}", f"{o['fps'] / r['fps']:.2f}x", f"{iou:.3f}"])
    print(common.table(["objects", "ours", "official", "ratio", "last-frame mask IoU"], rows))
    if len(a.objects) > 1:
        lo, hi = min(a.objects), max(a.objects)
        cost = {
            side: results[(side, lo, a.frames)]["fps"] / results[(side, hi, a.frames)]["fps"]
            for side in ("ours", "official")
        }
        print(
            f"cost of {hi} objects relative to {lo} (time per frame): "
            f"ours {cost['ours']:.2f}x, official {cost['official']:.2f}x"
        )

    print(f"\nPeak RSS, {a.rss_objects} object(s), MB:")
    rows = []
    for n, frames in rss:
        o, r = results[("ours", n, frames)], results[("official", n, frames)]
        row = [frames, f"{o['rss_mb']:.0f}", f"{r['rss_mb']:.0f}", f"{o['rss_mb'] / r['rss_mb']:.2f}x"]
        if a.device.startswith("cuda"):
            row += [f"{o['cuda_peak_mb']:.0f}", f"{r['cuda_peak_mb']:.0f}"]
        rows.append(row)
    headers = ["frames", "ours", "official", "ratio"]
    headers += ["ours CUDA peak", "official CUDA peak"] if a.device.startswith("cuda") else []
    print(common.table(headers, rows))
    if len(rss) > 1:
        first, last = rss[0], rss[-1]
        growth = {s: results[(s, *last)]["rss_mb"] / results[(s, *first)]["rss_mb"] for s in ("ours", "official")}
        print(
            f"growth {first[1]} -> {last[1]} frames: ours {100 * (growth['ours'] - 1):+.1f}%,"
            f" official {100 * (growth['official'] - 1):+.1f}%"
        )


if __name__ == "__main__":
    main()
