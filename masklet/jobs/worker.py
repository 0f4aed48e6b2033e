"""The worker: one per GPU (or CPU slot), holding the model, turning whole shards into output shards.

The driver wraps `ShardWorker` in a Ray actor: a thin shell around `masklet.jobs.shard.process_shard`.
It loads the model and builds the pipeline once, then runs `process_shard` for each shard it is
given, so masks never leave the worker; the driver gets counts and timings back. Around it: the
tally `poll()` reports (in a concurrency group of its own, so it answers while `process()` works and
while the next shard waits its turn), Ray metrics, and the liveness check that keeps an orphaned
worker from committing.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from typing import Any

import ray
import torch

from masklet.config import JobConfig
from masklet.io import storage
from masklet.io.video import VideoStream
from masklet.jobs.chunks import process_chunk, stitch_split
from masklet.jobs.metrics import WorkerMetrics
from masklet.jobs.shard import LabeledVideo, ShardResult, ShardWatch, process_shard
from masklet.jobs.split import ChunkUnit, StitchUnit, WorkUnit
from masklet.model.device import resolve_device
from masklet.pipelines.contract import make_pipeline
from masklet.pipelines.model_loading import load_model

log = logging.getLogger(__name__)


class _Tally(ShardWatch):
    """The shard in hand as `poll()` reports it from the driver's thread: counts of the videos done, the
    frames of the video being decoded, and how long that video has taken (the driver's hang limit)."""

    def __init__(self, worker: ShardWorker, shard_id: str | None = None, *, chunk: bool = False) -> None:
        self.worker, self.shard_id, self.chunk = worker, shard_id, chunk
        self.videos = self.videos_error = self.frames = self.masklets = self.masklets_kept = 0
        self.video_key: str | None = None
        self.video_since = self.shard_started = time.monotonic()
        self.stream: VideoStream | None = None

    def video_started(self, key: str) -> None:
        self.worker.check_node()
        self.video_key, self.video_since, self.stream = key, time.monotonic(), None

    def stream_opened(self, stream: VideoStream) -> None:
        self.stream = stream

    def video_done(self, video: LabeledVideo) -> None:
        record, masklets = video.record, video.masklets
        if self.chunk or video.split is not None:  # counted as its chunks are done (overlaps aside)
            with self.worker.lock:
                self.stream, self.video_key = None, None
            return
        kept = video.num_kept
        with self.worker.lock:
            self.videos += 1
            self.videos_error += record.status == "error"
            self.frames += len(record.frame_indices)
            self.masklets += len(masklets)
            self.masklets_kept += kept
            self.stream, self.video_key = None, None
        metrics = self.worker.metrics
        metrics.video(ok=record.status == "ok", frames=len(record.frame_indices), masklets=len(masklets), kept=kept)
        metrics.fps.set(self.frames / max(time.monotonic() - self.shard_started, 1e-9))

    def before_commit(self) -> None:
        self.worker.check_node()

    def report(self) -> dict[str, Any]:
        now = time.monotonic()
        decoding = len(self.stream.frame_indices) if self.stream is not None else 0
        return {
            "shard_id": self.shard_id,
            "videos": self.videos,
            "videos_error": self.videos_error,
            "frames": self.frames + decoding,
            "masklets": self.masklets,
            "masklets_kept": self.masklets_kept,
            "video_key": self.video_key,
            "video_seconds": now - self.video_since if self.video_key is not None else 0.0,
            "shard_seconds": now - self.shard_started,
        }


class ShardWorker:
    """One worker actor's state: the model and pipeline, built once, and the shard in hand."""

    def __init__(
        self, config: JobConfig, *, name: str, job_hash: str, checkpoint_sha256: str | None, run_id: str
    ) -> None:
        self.config, self.name, self.job_hash, self.run_id = config, name, job_hash, run_id
        storage.configure(config.storage)
        self.device = resolve_device(config.model.device)
        if self.device.type == "cpu":
            torch.set_num_threads(max(1, int(config.workers.num_cpus)))
        t0 = time.perf_counter()
        model = load_model(config.model, self.device, checkpoint_sha256)
        self.pipeline = make_pipeline(config, model, self.device)
        self.load_seconds = time.perf_counter() - t0
        self.metrics = WorkerMetrics(name)
        self._raylet = os.getppid()
        self.lock = threading.Lock()
        self._tally = _Tally(self)

    @ray.method(concurrency_group="control")
    def ready(self) -> dict[str, Any]:
        """Where this worker runs; answering at all means the model and pipeline are loaded."""
        return {
            "worker": self.name,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "device": str(self.device),
            "load_seconds": round(self.load_seconds, 2),
        }

    @ray.method(concurrency_group="control")
    def poll(self) -> dict[str, Any]:
        with self.lock:
            return self._tally.report()

    def process(self, unit: WorkUnit, attempt: int) -> ShardResult:
        """Do one unit of work: label every video of a shard and commit its output shard, label a chunk
        of a split video, or stitch one; raises if it cannot be done."""
        with self.lock:
            self._tally = _Tally(self, unit.id, chunk=isinstance(unit, ChunkUnit))
        config, output = self.config, self.config.output
        common = {"output_uri": output.uri, "model": config.model.name, "config_hash": self.job_hash}
        extra = {"worker": self.name, "attempt": attempt, "run_id": self.run_id}
        if isinstance(unit, ChunkUnit):
            result = process_chunk(unit, self.pipeline, source=config.source, watch=self._tally, extra=extra, **common)
        elif isinstance(unit, StitchUnit):
            self.check_node()
            result = stitch_split(
                unit,
                source=config.source,
                filters=config.filters,
                min_iou=config.split.min_iou,
                write_video=output.write_video,
                extra=extra,
                **common,
            )
        else:
            result = process_shard(
                unit,
                self.pipeline,
                source=config.source,
                write_video=output.write_video,
                extra=extra,
                watch=self._tally,
                split=config.split,
                **common,
            )
        self.metrics.shards.inc()
        result.worker, result.attempt = self.name, attempt
        return result

    def check_node(self) -> None:
        """Stop if this node's Ray is gone (an embedded Ray dies with its driver): an orphaned worker must
        not commit a shard that the rerun may be writing too. Ray's workers are children of the raylet."""
        if os.getppid() != self._raylet and not _process_exists(self._raylet):
            raise RuntimeError(f"worker {self.name}: its Ray node is gone; the shard is left uncommitted")


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True
