"""A whole shard (decode + model + RLE + write) against the pipeline alone on the same frames.

Writes a synthetic corpus (or takes `--corpus`), builds the model and pipeline once, then, `--repeats`
times alternately:
- shard: `masklet.jobs.shard.process_shard` for every shard into a fresh output root: the exact code a
  job's worker runs, without Ray. frames/s from the `_done` markers (frames over the shards' wall
  seconds, writer creation to commit: decoding, the pipeline, encoding and writing). With `--ray` this
  side is a whole `masklet run` job with one worker on an embedded Ray instead (Ray start-up and model
  loading left out the same way).
- alone: the same pipeline on every video decoded into memory before the clock starts (the model and
  the pipeline's own mask post-processing and RLE).
Target: the shard keeps >= 90% of the pipeline-alone frames/s, i.e. decoding, encoding and I/O hide
behind compute. The best frames/s of each side is compared: on a shared machine one run can differ by 10%.

    python benchmarks/job_vs_model.py --videos 8 --frames 48 --size 320x240 --random-weights pipeline.points_per_side=8
    python benchmarks/job_vs_model.py --model masklet_demo --repeats 3   # the shipped weights
    python benchmarks/job_vs_model.py --ray --model masklet_demo          # the Ray job end to end
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml

from masklet.config import JobConfig, load_config
from masklet.io.sources import VideoInput, iter_videos, list_shards
from masklet.io.video import Frame
from masklet.jobs.cluster import keep_on_loopback
from masklet.jobs.shard import process_shard
from masklet.model.device import resolve_device
from masklet.pipelines.contract import VideoPipeline, make_pipeline
from masklet.pipelines.model_loading import load_model


@dataclass
class DecodedFrames:
    """A video decoded beforehand: the `FrameStream` a pipeline gets, its frames already in memory."""

    key: str
    height: int
    width: int
    frame_count: int
    source_fps: float | None
    stride: int
    max_frames: int | None
    frames: list[Frame] = field(default_factory=list)

    def __iter__(self):
        return iter(self.frames)

    def reopen(self, start: int = 0, stop: int | None = None):
        return iter(self.frames[start:stop])


def job_config(args: argparse.Namespace, corpus: str, out: Path) -> JobConfig:
    """The benchmark's job config, written as a file (the `--ray` job reads it) and loaded."""
    model = {"name": args.model, "image_size": args.image_size, "device": args.device}
    config = {
        "source": {"uri": corpus, "fps": args.fps},
        "model": {**model, **({"init": "random"} if args.random_weights else {})},
        "output": {"uri": str(out)},
        "ray": {"dashboard": False},
        "workers": {"count": 1, "num_cpus": args.cpus, "pipeline": args.pipeline},
    }
    path = out.with_suffix(".yaml")
    path.write_text(yaml.safe_dump(config))
    return load_config(str(path), args.overrides)


def shard_side(config: JobConfig, pipeline: VideoPipeline, ray: bool) -> tuple[int, float]:
    """(frames, shard wall seconds) of every shard written under config.output.uri."""
    if ray:
        from masklet.jobs.driver import run_job  # imports Ray: after keep_on_loopback()

        if run_job(config).exit_code:
            raise SystemExit("the job failed")
    else:
        for shard in list_shards(config.source):
            process_shard(
                shard,
                pipeline,
                source=config.source,
                output_uri=config.output.uri,
                model=config.model.name,
                config_hash=config.content_hash(),
            )
    markers = [json.loads(p.read_text()) for p in Path(config.output.uri, "_done").glob("*.json")]
    return sum(m["counts"]["frames_processed"] for m in markers), sum(m["seconds"]["wall"] for m in markers)


def pipeline_alone(config: JobConfig, pipeline: VideoPipeline, device: torch.device) -> tuple[int, float]:
    """(frames, seconds) of the same pipeline on frames decoded before the clock starts."""
    frames = seconds = 0
    source = config.source
    for shard in list_shards(source):
        for video in iter_videos(shard):
            assert isinstance(video, VideoInput), video
            with video.open(fps=source.fps, max_frames=source.max_frames) as stream:
                decoded = DecodedFrames(
                    stream.key,
                    stream.height,
                    stream.width,
                    stream.frame_count,
                    stream.source_fps,
                    stream.stride,
                    stream.max_frames,
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
    parser.add_argument("--corpus", help="existing tar shards (a glob) instead of a corpus written here")
    parser.add_argument("--fps", type=float, default=None, help="annotation fps (default: every frame)")
    parser.add_argument("--model", default="sam2.1_hiera_t")
    parser.add_argument("--image-size", type=int, default=None, help="model input size (default: the preset's)")
    parser.add_argument("--device", default="auto")
    parser.add_argument(
        "--random-weights", action="store_true", help="untrained seeded weights (model.init=random): timing only"
    )
    parser.add_argument("--cpus", type=float, default=1.0, help="CPUs of the worker (and torch threads)")
    parser.add_argument("--pipeline", default=None, help="plug-in factory module:function (default: built-in)")
    parser.add_argument("--ray", action="store_true", help="the shard side as a `masklet run` job on an embedded Ray")
    parser.add_argument("--repeats", type=int, default=1, help="runs of each, alternating (best frames/s kept)")
    parser.add_argument("--json", help="also write the results to this file")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="more config overrides")
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.split("x"))
    keep_on_loopback()
    torch.set_num_threads(max(1, int(args.cpus)))
    with tempfile.TemporaryDirectory(prefix="masklet-bench-") as tmp:
        root = Path(tmp)
        corpus = args.corpus
        if corpus is None:
            from masklet.synth.corpus import write_corpus  # encodes with PyAV, which a GPU machine may lack

            write_corpus(
                str(root / "corpus"), videos=args.videos, per_shard=args.per_shard, seed=0,
                width=width, height=height, frames=args.frames, fps=24.0,
            )  # fmt: skip
            corpus = str(root / "corpus")
        config = job_config(args, corpus, root / "out-0")
        device = resolve_device(config.model.device)
        pipeline = make_pipeline(config, load_model(config.model, device, config.model.sha256), device)
        side = "job (Ray, end to end)" if args.ray else "shard (process_shard)"
        runs: dict[str, list[tuple[int, float]]] = {side: [], "pipeline alone": []}
        for r in range(args.repeats):
            config = job_config(args, corpus, root / f"out-{r}")
            runs[side].append(shard_side(config, pipeline, args.ray))
            runs["pipeline alone"].append(pipeline_alone(config, pipeline, device))
    print(f"{'':24}{'run':>4}{'frames':>8}{'seconds':>10}{'frames/s':>10}")
    best: dict[str, Any] = {}
    for name, results in runs.items():
        for r, (frames, seconds) in enumerate(results):
            print(f"{name:24}{r + 1:>4}{frames:>8}{seconds:>10.2f}{frames / seconds:>10.2f}")
        best[name] = max(frames / seconds for frames, seconds in results)
    ratio = best[side] / best["pipeline alone"]
    print(f"{side} / pipeline alone, best of {args.repeats} each: {ratio:.1%} (target >= 90%)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": str(device), "side": side, "frames_per_second": best, "ratio": ratio}, f, indent=1)


if __name__ == "__main__":
    main()
