"""The worker: one per GPU (or CPU slot), holding the model, turning whole shards into output shards.

The driver wraps `ShardWorker` in a Ray actor. It loads the model once, then for each shard it is
given streams the shard's videos through the pipeline and writes the output shard itself
(`ShardWriter`), so masks never leave the worker; the driver gets counts and timings back. A video
that cannot be read or labelled becomes an error row and the shard goes on; anything else that
goes wrong (the shard cannot be read or written) fails the whole attempt, and the driver retries
it. Actors run with two threads so `poll()` can report progress while `process()` works.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from masklet.config import JobConfig
from masklet.io import storage
from masklet.io.schema import MaskletRecord, VideoRecord
from masklet.io.sinks import ShardWriter
from masklet.io.sources import Shard, VideoError, VideoInput, iter_videos, sanitize_key
from masklet.io.video import FRAME_FOLDER_FPS, Frame, FrameFiles, VideoStream, open_video
from masklet.jobs.metrics import WorkerMetrics
from masklet.jobs.pipeline_registry import factory_path, load_factory
from masklet.model.device import resolve_device
from masklet.pipelines.model_loading import load_model

log = logging.getLogger(__name__)

@dataclass
class ShardResult:
    """What a worker sends back for a committed shard: counts, timings and the videos that failed."""

    shard_id: str
    attempt: int
    worker: str
    counts: dict[str, int]
    seconds: dict[str, float]
    failed_videos: list[tuple[str, str, str]] = field(default_factory=list)  # (video_key, error_type, error)


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


class TimedFrames:
    """A VideoStream as the pipeline sees it, recording the frames taken and the time spent waiting."""

    def __init__(self, stream: VideoStream) -> None:
        self.key, self.height, self.width = stream.key, stream.height, stream.width
        self.frame_count, self.source_fps, self.stride = stream.frame_count, stream.source_fps, stream.stride
        self.wait_seconds = 0.0
        self.frame_indices: list[int] = []
        self._stream = stream

    def __iter__(self) -> Iterator[Frame]:
        frames = iter(self._stream)
        try:
            while True:
                t0 = time.perf_counter()
                try:
                    frame = next(frames)
                finally:
                    self.wait_seconds += time.perf_counter() - t0
                self.frame_indices.append(frame.index)
                yield frame
        except StopIteration:
            return
        finally:
            frames.close()


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
        self.pipeline = load_factory(factory_path(config))(config, model, self.device)
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
        failed: list[tuple[str, str, str]] = []
        keys: set[str] = set()
        output = self.config.output
        writer = ShardWriter(
            output.uri,
            shard.id,
            model=self.config.model.name,
            config_hash=self.job_hash,
            write_video=output.write_video,
        )
        with writer:
            for item in iter_videos(shard):
                self._check_node()
                record, masklets, data = self._label(item)
                record = _unique_key(record, keys)
                record, masklets = self._add(writer, record, masklets, data, item)
                keys.add(record.video_key)
                if record.status == "error":
                    failed.append((record.video_key, record.error_type or "", record.error or ""))
                with self._lock:
                    self._tally.add(record, masklets)
                    frames = self._tally.frames
                kept = sum(m.kept for m in masklets)
                self.metrics.video(
                    ok=record.status == "ok", frames=len(record.frame_indices), masklets=len(masklets), kept=kept
                )
                self.metrics.fps.set(frames / max(time.perf_counter() - t0, 1e-9))
            extra = {"worker": self.name, "attempt": attempt, "run_id": self.run_id, "host": socket.gethostname()}
            self._check_node()
            marker = writer.commit(extra=extra)
        self.metrics.shards.inc()
        return ShardResult(shard.id, attempt, self.name, marker["counts"], marker["seconds"], failed)

    def _check_node(self) -> None:
        """Stop if this node's Ray is gone (an embedded Ray dies with its driver): an orphaned worker must
        not commit a shard that the rerun may be writing too. Ray's workers are children of the raylet."""
        if os.getppid() != self._raylet and not _process_exists(self._raylet):
            raise RuntimeError(f"worker {self.name}: its Ray node is gone; the shard is left uncommitted")

    def _label(self, item: VideoInput | VideoError) -> tuple[VideoRecord, list[MaskletRecord], bytes | None]:
        """One video through decode and pipeline; anything wrong with it becomes its error row."""
        if isinstance(item, VideoError):
            return _error_row(item.key, item.original_key, item.source_uri, "VideoError", item.reason), [], None
        t0 = time.perf_counter()
        source = self.config.source
        stream: VideoStream | None = None
        frames: TimedFrames | None = None
        data: bytes | None = None
        try:
            data = None if isinstance(item.content, FrameFiles) else item.read_bytes()
            stream = open_video(
                item.content if data is None else data,
                key=item.key,
                fps=source.fps,
                max_frames=source.max_frames,
                prefetch_frames=source.prefetch_frames,
            )
            opened = time.perf_counter() - t0
            frames = TimedFrames(stream)
            with stream:
                t1 = time.perf_counter()
                masklets = self.pipeline(item, frames)
                in_pipeline = time.perf_counter() - t1
        except Exception as exc:
            if not isinstance(exc, ValueError):  # decode and prompt errors are ValueErrors; others may be bugs
                log.exception("video %s of %s failed", item.key, item.source_uri)
            known = _stream_fields(stream, frames, data) if stream is not None else {}
            record = _error_row(
                item.key, item.original_key, item.source_uri, type(exc).__name__, str(exc) or repr(exc), **known
            )
            record.total_seconds = time.perf_counter() - t0
            return record, [], None
        record = VideoRecord(
            item.key,
            item.original_key,
            item.source_uri,
            **_stream_fields(stream, frames, data),
            decode_seconds=opened + frames.wait_seconds,
            model_seconds=in_pipeline - frames.wait_seconds,
            total_seconds=time.perf_counter() - t0,
        )
        return record, list(masklets), data

    def _add(
        self,
        writer: ShardWriter,
        record: VideoRecord,
        masklets: list[MaskletRecord],
        data: bytes | None,
        item: VideoInput | VideoError,
    ) -> tuple[VideoRecord, list[MaskletRecord]]:
        """Hand a video to the writer; output the writer refuses (the pipeline broke the schema) is an error row."""
        ext = item.ext if isinstance(item, VideoInput) and item.ext else "mp4"
        try:
            writer.add_video(record, masklets, video_bytes=data, video_ext=ext)
        except ValueError as exc:
            if record.status == "error":
                raise
            log.error("video %s: the pipeline's output was refused: %s", record.video_key, exc)
            record = _error_row(record.video_key, record.original_key, record.source_uri, "InvalidOutput", str(exc))
            writer.add_video(record)
            return record, []
        return record, masklets


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def _error_row(key: str, original_key: str, source_uri: str, error_type: str, error: str, **known: Any) -> VideoRecord:
    return VideoRecord(key, original_key, source_uri, status="error", error=error, error_type=error_type, **known)


def _stream_fields(stream: VideoStream, frames: TimedFrames | None, data: bytes | None) -> dict[str, Any]:
    """What decoding learnt about a video; a container without a frame rate counts as SA-V's 24 fps."""
    return {
        "fps": stream.source_fps or FRAME_FOLDER_FPS,
        "frame_count": stream.frame_count,
        "height": stream.height,
        "width": stream.width,
        "frame_indices": list(frames.frame_indices) if frames is not None else [],
        "decoder": stream.backend,
        "video_bytes": len(data) if data is not None else None,
    }


def _unique_key(record: VideoRecord, taken: set[str]) -> VideoRecord:
    """A repeated key (the input has two videos with one key) gets a derived key for its error row."""
    if record.video_key not in taken:
        return record
    n = 2
    while (key := sanitize_key(f"{record.video_key}#{n}")) in taken:
        n += 1
    record.video_key = key
    return record
