"""End-to-end job throughput (decode + model + RLE + write) against the pipeline alone on the same frames.

Writes a synthetic corpus, runs it as a job with one worker on an embedded Ray, and takes the job's
frames/s from the `_done` markers (frames over the shards' wall seconds, writer creation to commit:
decoding, the pipeline, encoding and writing), so Ray start-up and model loading are left out. Then
builds the same pipeline in this process with the same threads, decodes every video into memory
first and times the pipeline alone on those frames (the model and the pipeline's own mask
post-processing and RLE). Target: the job keeps >= 90% of the pipeline-alone frames/s, i.e.
decoding, encoding and I/O hide behind compute. With `--repeats N` the two alternate N times (a
fresh output root per job) and the best frames/s of each is compared: on a shared machine one run
of each can differ by 10%.

    python benchmarks/job_vs_model.py --videos 8 --frames 48 --size 320x240 --random-weights pipeline.points_per_side=8
    python benchmarks/job_vs_model.py --model masklet_demo --repeats 3   # the shipped weights
    PYTHONPATH=tests python benchmarks/job_vs_model.py --pipeline jobs_plugins:ground_truth  # the harness only
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import yaml

from masklet.config import load_config
from masklet.io.sources import VideoInput, iter_videos, list_shards
from masklet.io.video import Frame
from masklet.jobs.cluster import keep_on_loopback
from masklet.jobs.pipeline_registry import factory_path, load_factory
from masklet.synth.corpus import write_corpus

# masklet.jobs.driver and .worker import Ray, so they are imported after keep_on_loopback() has run


@dataclass
class DecodedFrames:
    """A video decoded beforehand, shaped like the stream a worker hands its pipeline."""

    key: str
    height: int
    width: int
    frame_count: int
    source_fps: float | None
    stride: int
    frames: list[Frame] = field(default_factory=list)

    def __iter__(self):
        return iter(self.frames)


def run_job(args: argparse.Namespace, root: Path, out: str) -> tuple[int, float, Path]:
    """The job's (frames, shard wall seconds) into `root / out`, and its config file."""
    config = {
        "source": {"uri": str(root / "corpus"), "fps": args.fps},
        "model": {
            "name": args.model,
            "image_size": args.image_size,
            **({"init": "random"} if args.random_weights else {}),
        },
        "output": {"uri": str(root / out)},
        "ray": {"dashboard": False},
        "workers": {"count": 1, "num_cpus": args.cpus, "pipeline": args.pipeline},
    }
    path = root / f"{out}.yaml"
    path.write_text(yaml.safe_dump(config))
    from masklet.jobs.driver import run_job as run

    summary = run(load_config(str(path), args.overrides))
    if summary.exit_code:
        raise SystemExit(f"the job failed (exit {summary.exit_code})")
    markers = [json.loads(p.read_text()) for p in (root / out / "_done").glob("*.json")]
    return sum(m["counts"]["frames_processed"] for m in markers), sum(m["seconds"]["wall"] for m in markers), path


def pipeline_alone(config_path: Path, overrides: list[str], cpus: float) -> tuple[int, float]:
    """(frames, seconds) of the same pipeline on frames decoded before the clock starts."""
    from masklet.model.device import resolve_device
    from masklet.pipelines.model_loading import load_model

    config = load_config(str(config_path), overrides)
    device = resolve_device(config.model.device)
    torch.set_num_threads(max(1, int(cpus)))
    pipeline = load_factory(factory_path(config))(config, load_model(config.model, device), device)
    frames = seconds = 0
    for shard in list_shards(config.source):
        for video in iter_videos(shard):
            assert isinstance(video, VideoInput), video
            source = config.source
            with video.open(fps=source.fps, max_frames=source.max_frames) as stream:
                decoded = DecodedFrames(
                    stream.key, stream.height, stream.width, stream.frame_count, stream.source_fps, stream.stride
                )
                decoded.frames = list(stream)
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            pipeline(video, decoded)
            if device.type == "cuda":
                torch.cuda.synchronize()
            seconds += time.perf_counter() - t0
            frames += len(decoded.frames)
    return frames, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=8)
    parser.add_argument("--per-shard", type=int, default=4)
    parser.add_argument("--frames", type=int, default=48, help="frames per video")
    parser.add_argument("--size", default="320x240", help="WIDTHxHEIGHT of the videos")
    parser.add_argument("--fps", type=float, default=None, help="annotation fps (default: every frame)")
    parser.add_argument("--model", default="sam2.1_hiera_t")
    parser.add_argument("--image-size", type=int, default=None, help="model input size (default: the preset's)")
    parser.add_argument(
        "--random-weights", action="store_true", help="untrained seeded weights (model.init=random): timing only"
    )
    parser.add_argument("--cpus", type=float, default=1.0, help="CPUs of the worker (and torch threads)")
    parser.add_argument("--pipeline", default=None, help="plug-in factory module:function (default: built-in)")
    parser.add_argument("--repeats", type=int, default=1, help="runs of each, alternating (best frames/s kept)")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="more config overrides")
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.split("x"))
    keep_on_loopback()
    with tempfile.TemporaryDirectory(prefix="masklet-bench-") as tmp:
        root = Path(tmp)
        write_corpus(
            str(root / "corpus"), videos=args.videos, per_shard=args.per_shard, seed=0,
            width=width, height=height, frames=args.frames, fps=24.0,
        )  # fmt: skip
        runs: dict[str, list[tuple[int, float]]] = {"job (end to end)": [], "pipeline alone": []}
        for r in range(args.repeats):
            frames, seconds, config_path = run_job(args, root, f"out-{r}")
            runs["job (end to end)"].append((frames, seconds))
            runs["pipeline alone"].append(pipeline_alone(config_path, args.overrides, args.cpus))
    print(f"{'':24}{'run':>4}{'frames':>8}{'seconds':>10}{'frames/s':>10}")
    best = {}
    for name, results in runs.items():
        for r, (frames, seconds) in enumerate(results):
            print(f"{name:24}{r + 1:>4}{frames:>8}{seconds:>10.2f}{frames / seconds:>10.2f}")
        best[name] = max(frames / seconds for frames, seconds in results)
    ratio = best["job (end to end)"] / best["pipeline alone"]
    print(f"job / pipeline alone, best of {args.repeats} each: {ratio:.1%} (target >= 90%)")


if __name__ == "__main__":
    main()
