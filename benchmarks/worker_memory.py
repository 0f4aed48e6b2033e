"""Peak memory of a worker against video length and shard size (issue 20, item 1).

Each configuration runs `masklet.jobs.shard.process_shard` (decode, pipeline, filters, writer,
commit: the code a job's worker runs, without Ray) in a fresh Python process, and reads its peak
resident set (`ru_maxrss`) at the end:

- one video of 1x, 10x and 100x the frames (`--frames`, every frame annotated);
- a shard of 1x and 10x videos (`--videos`) of 1x the frames each.

With `--split-seconds S` the video is split (`split.chunk_seconds`, at 24 fps, `--overlap-seconds`)
and the same process runs every unit of the job, as a lone worker would: the shard, each chunk, the
stitch (`masklet.jobs.chunks`).

The model is a double, so that 100x the frames takes seconds, not hours: `BoxTracker` plays the
tracker (`--objects` squares crossing the frame, each hidden now and then, mask logits at the
video's size), `BoxProposer` the automatic mask generator on the seed frame; both read the frame's
index from its pixels, so a chunk's frames are the scene's frames there. Everything else is the
automatic pipeline's own code (`AutoLabeler`: the per-frame scores and RLEs, the masklets, the
filters and their de-duplication) and the writer's (Parquet, SA-V JSON, tar). The videos are H.264
at `--size`, in a WebDataset tar per shard.

    python benchmarks/worker_memory.py                     # the table of docs/long-videos.md
    python benchmarks/worker_memory.py --split-seconds 10  # split in chunks of 240 frames
    python benchmarks/worker_memory.py --frames 60 --json  # quicker, as JSON
"""

from __future__ import annotations

import argparse
import io
import json
import resource
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from masklet.config import FiltersConfig, PipelineConfig, SourceConfig, SplitConfig
from masklet.io.video_writer import encode_mp4
from masklet.model.tracker import TrackOutput
from masklet.pipelines.autolabel import AutoLabeler
from masklet.pipelines.streamed import JudgedMasklets, judge

FPS = 24
INDEX_BITS = 16  # a frame's index, in blocks of 8x8 pixels across its top: up to 65,535 frames


def index_rgb(t: int, height: int, width: int) -> np.ndarray:
    """A grey frame with `t` written across its top (black/white blocks, most significant bit first)."""
    out = np.full((height, width, 3), 96, np.uint8)
    for bit in range(INDEX_BITS):
        out[:8, bit * 8 : bit * 8 + 8] = 255 * (t >> (INDEX_BITS - 1 - bit) & 1)
    return out


def read_index(rgb: np.ndarray) -> int:
    """The index `index_rgb` wrote, read from the middle of each block."""
    return sum(int(rgb[4, bit * 8 + 4].mean() > 128) << (INDEX_BITS - 1 - bit) for bit in range(INDEX_BITS))


class BoxScene:
    """`objects` squares of side `height // 4`, each moving on its own line and bouncing off the
    frame's edges; object k is hidden on 5 annotated frames of every 97 (from 7k on)."""

    def __init__(self, objects: int, height: int, width: int) -> None:
        self.objects, self.height, self.width = objects, height, width
        self.side = height // 4
        rng = np.random.default_rng(0)
        self.start = rng.integers(0, [width - self.side, height - self.side], size=(objects, 2))
        self.speed = rng.integers(1, 4, size=(objects, 2))

    def masks(self, t: int) -> torch.Tensor:
        """Visible masks [objects, H, W] on annotated frame t."""
        out = torch.zeros(self.objects, self.height, self.width, dtype=torch.bool)
        span = np.array([self.width - self.side, self.height - self.side])
        for k in range(self.objects):
            if (t - 7 * k) % 97 < 5:
                continue
            x, y = np.abs((self.start[k] + t * self.speed[k]) % (2 * span) - span)  # bounce
            out[k, y : y + self.side, x : x + self.side] = True
        return out


class BoxTracker:
    """The `Tracker` surface over a `BoxScene`: object `obj` follows the square its first mask overlaps
    most; the scene's time is the frame's index, read from its pixels."""

    def __init__(self, scene: BoxScene) -> None:
        self.scene = scene
        self.follows: dict[int, int] = {}
        self.pending: dict[int, np.ndarray] = {}
        self.last = 0

    def add_object(self, obj_id: int, *, mask: np.ndarray, **prompt: object) -> None:
        self.pending[obj_id] = np.asarray(mask, dtype=bool)

    def encode(self, frame: np.ndarray) -> np.ndarray:
        return frame

    def _output(self, t: int, obj_ids: Sequence[int]) -> TrackOutput:
        masks = self.scene.masks(t)[[self.follows[o] for o in obj_ids]]
        n = len(obj_ids)
        visible = masks.flatten(1).any(1)
        hw = (self.scene.height, self.scene.width)
        logits = masks[:, None].float() * 20 - 10
        score = torch.where(visible, 5.0, -5.0)
        return TrackOutput(t, list(obj_ids), logits, torch.full((n,), 0.9), score, torch.zeros(n, 1), hw)

    def _follow(self, t: int, masks: Mapping[int, np.ndarray]) -> None:
        gt = self.scene.masks(t).flatten(1)
        for o, mask in masks.items():
            self.follows[o] = int((gt & torch.from_numpy(mask).flatten()).sum(1).argmax())

    def step(self, frame: np.ndarray) -> TrackOutput:
        t = self.last = read_index(frame)
        self._follow(t, self.pending)
        self.pending.clear()
        return self._output(t, list(self.follows))

    def correct(self, masks: Mapping[int, np.ndarray]) -> TrackOutput:
        self._follow(self.last, masks)
        return self._output(self.last, list(masks))

    def remove_object(self, obj_id: int) -> None:
        self.follows.pop(obj_id)


class BoxProposer:
    """Automatic mask generation on a seed frame: the scene's visible squares there."""

    def __init__(self, scene: BoxScene) -> None:
        self.scene = scene

    def __call__(self, image: np.ndarray, features: object = None) -> Any:
        masks = self.scene.masks(read_index(image))
        masks = masks[masks.flatten(1).any(1)]
        return type("Proposals", (), {"masks": masks, "predicted_iou": torch.linspace(0.99, 0.9, len(masks))})


def make_pipeline(objects: int, height: int, width: int) -> Any:
    """The automatic pipeline (`masklet.pipelines.autolabel.build_pipeline`, its model a double)."""
    scene = BoxScene(objects, height, width)
    labeler = AutoLabeler(
        PipelineConfig(max_objects=objects),
        lambda *, reverse, start: BoxTracker(scene),
        BoxProposer(scene),
    )

    def pipeline(video: Any, frames: Any) -> Any:
        store = labeler(video.key, frames, frames.reopen)
        return JudgedMasklets(store, judge(store, FiltersConfig()))

    return pipeline


def video_bytes(frames: int, height: int, width: int) -> bytes:
    """An H.264 video of grey frames that carry their index: cheap to encode and to decode."""
    return encode_mp4((index_rgb(t, height, width) for t in range(frames)), fps=FPS)


def write_shard(path: Path, data: bytes, videos: int) -> None:
    with tarfile.open(path, "w") as tar:
        for v in range(videos):
            info = tarfile.TarInfo(f"video{v:04d}.mp4")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def child(args: argparse.Namespace) -> None:
    """One configuration: label the shard, print what it cost as JSON."""
    from masklet.io.sources import Shard
    from masklet.jobs.chunks import process_chunk, stitch_split
    from masklet.jobs.shard import process_shard
    from masklet.jobs.split import ChunkUnit, StitchUnit

    torch.set_num_threads(1)
    pipeline = make_pipeline(args.objects, args.height, args.width)
    source = SourceConfig(uri=args.shard, fps=None, prefetch_frames=4)
    job = {"output_uri": args.out, "model": "double", "config_hash": "memory"}
    split = SplitConfig(chunk_seconds=args.split_seconds, overlap_seconds=args.overlap_seconds)
    t0 = time.perf_counter()
    result = process_shard(Shard("shard-000000", args.shard, "wds"), pipeline, source=source, split=split, **job)
    counts = dict(result.counts)
    for plan in result.splits:  # every unit of a split video, in this process as a lone worker would
        for k in range(len(plan.spans)):
            counts["frames_processed"] += process_chunk(ChunkUnit(plan, k), pipeline, source=source, **job).counts[
                "frames_processed"
            ]
        stitched = stitch_split(StitchUnit(plan), source=source, filters=FiltersConfig(), min_iou=split.min_iou, **job)
        counts["masklets"] += stitched.counts["masklets"]
    seconds = time.perf_counter() - t0
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(
        json.dumps(
            {
                "peak_rss_mb": peak_kb / 1024,
                "seconds": seconds,
                "frames": counts["frames_processed"],
                "masklets": counts["masklets"],
                "output_mb": sum(p.stat().st_size for p in Path(args.out).rglob("*") if p.is_file()) / 2**20,
            }
        )
    )


def measure(frames: int, videos: int, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    name = f"f{frames}-v{videos}"
    shard = work / f"{name}.tar"
    write_shard(shard, video_bytes(frames, args.height, args.width), videos)
    command = [sys.executable, __file__, "--child", "--shard", str(shard), "--out", str(work / name)]
    command += ["--objects", str(args.objects), "--size", f"{args.width}x{args.height}"]
    if args.split_seconds is not None:
        command += ["--split-seconds", str(args.split_seconds), "--overlap-seconds", str(args.overlap_seconds)]
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    row = json.loads(done.stdout.strip().splitlines()[-1])
    return {"frames_per_video": frames, "videos": videos, "video_bytes": shard.stat().st_size // videos, **row}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=150, help="frames of the 1x video")
    parser.add_argument("--videos", type=int, default=10, help="videos of the 10x shard")
    parser.add_argument("--objects", type=int, default=8)
    parser.add_argument("--size", default="128x96", help="WxH")
    parser.add_argument("--split-seconds", type=float, help="split each video in chunks of this many seconds")
    parser.add_argument("--overlap-seconds", type=float, default=1.0)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--shard", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.width, args.height = (int(v) for v in args.size.split("x"))
    if args.child:
        child(args)
        return
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        rows = [measure(args.frames * k, 1, args, work) for k in (1, 10, 100)]
        rows += [measure(args.frames, args.videos, args, work)]
    base = rows[0]["peak_rss_mb"]
    for row in rows:
        row["vs_1x"] = row["peak_rss_mb"] / base
    if args.json:
        print(json.dumps(rows, indent=1))
        return
    how = "process_shard" if args.split_seconds is None else f"every unit, split in {args.split_seconds:g} s chunks,"
    print(f"{args.objects} objects, {args.size}, every frame annotated; peak RSS of {how} in a fresh process")
    print("| frames/video | videos | frames | masklets | peak RSS MB | vs 1x | outputs MB | seconds |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['frames_per_video']:,} | {r['videos']} | {r['frames']:,} | {r['masklets']} | "
            f"{r['peak_rss_mb']:.0f} | {r['vs_1x']:.2f}x | {r['output_mb']:.1f} | "
            f"{r['seconds']:.0f} |"
        )


if __name__ == "__main__":
    main()
