"""The worker: one per GPU (or CPU slot), holding the model, turning whole shards into output shards.

The driver wraps `ShardWorker` in a Ray actor: a thin shell around `masklet.jobs.shard.process_shard`.
It loads the model and builds the pipeline once, then runs `process_shard` for each shard it is
given, so masks never leave the worker; the driver gets counts and timings back. Around it: the
tally `poll()` reports (actors run with two threads so it answers while `process()` works), Ray
metrics, and the liveness check that keeps an orphaned worker from committing.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any

import torch

from masklet.config import JobConfig
from masklet.io import storage
from masklet.io.schema import MaskletRecord, VideoRecord
from masklet.io.sources import Shard
from masklet.jobs.metrics import WorkerMetrics
from masklet.jobs.shard import LabeledVideo, ShardResult, process_shard
from masklet.model.device import resolve_device
from masklet.pipelines.contract import make_pipeline
from masklet.pipelines.model_loading import load_model

log = logging.getLogger(__name__)


@dataclass
class _Tally:
    """Progress of the shard in hand, read by `poll()` from the driver's thread."""

    shard_id: str | None = None
    videos: int = 0
    videos_error: int = 0
    frames: int = 0
    masklets: int = 0
    masklets_kept: int = 0

    def add(self, record: VideoRecord, masklets: list[MaskletRecord]) -> None:
        self.videos += 1
        self.videos_error += record.status == "error"
        self.frames += len(record.frame_indices)
        self.masklets += len(masklets)
        self.masklets_kept += sum(m.kept for m in masklets)


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
        self._lock = threading.Lock()
        self._tally = _Tally()

    def ready(self) -> dict[str, Any]:
        """Where this worker runs; answering at all means the model and pipeline are loaded."""
        return {
            "worker": self.name,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "device": str(self.device),
            "load_seconds": round(self.load_seconds, 2),
        }

    def poll(self) -> dict[str, Any]:
        with self._lock:
            return dict(self._tally.__dict__)

    def process(self, shard: Shard, attempt: int) -> ShardResult:
        """Label every video of `shard` and commit its output shard; raises if the shard cannot be done."""
        with self._lock:
            self._tally = _Tally(shard.id)
        t0 = time.perf_counter()

        def on_video(video: LabeledVideo) -> None:
            record, masklets = video.record, video.masklets
            with self._lock:
                self._tally.add(record, masklets)
                frames = self._tally.frames
            kept = sum(m.kept for m in masklets)
            self.metrics.video(
                ok=record.status == "ok", frames=len(record.frame_indices), masklets=len(masklets), kept=kept
            )
            self.metrics.fps.set(frames / max(time.perf_counter() - t0, 1e-9))

        output = self.config.output
        result = process_shard(
            shard,
            self.pipeline,
            source=self.config.source,
            output_uri=output.uri,
            model=self.config.model.name,
            config_hash=self.job_hash,
            write_video=output.write_video,
            extra={"worker": self.name, "attempt": attempt, "run_id": self.run_id},
            on_video=on_video,
            check=self._check_node,
        )
        self.metrics.shards.inc()
        result.worker, result.attempt = self.name, attempt
        return result

    def _check_node(self) -> None:
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
