"""The work of one shard, without Ray: decode each video, run the pipeline, write the output shard.

`process_shard` is what a job's worker actor runs for every shard it is given, and what a notebook,
a test or a GPU benchmark calls directly; `label_video` is its step for one video (the Python API's
too). A video that cannot be read or labelled for a reason of its own (an `InputError`: undecodable,
a bad prompt) becomes an error row and the shard goes on. Anything else is not the video's fault (a
CUDA error, out of memory, a storage outage, a bug) and fails the whole attempt: nothing of the shard
is committed, and the job retries it. Importing this module loads neither Ray nor torch.
"""

from __future__ import annotations

import ctypes
import logging
import math
import socket
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, BinaryIO

from masklet.config import SourceConfig, SplitConfig
from masklet.io.errors import InputError, printable_message
from masklet.io.schema import MaskletRecord, VideoRecord, empty_counts
from masklet.io.sinks import SavObject, ShardWriter, write_sav_rows
from masklet.io.sources import Shard, VideoError, VideoInput, iter_videos
from masklet.io.tars import sanitize_key
from masklet.io.video import FRAME_FOLDER_FPS, Encoded, FrameFiles, VideoStream, encoded_size, open_video
from masklet.jobs.split import SplitVideo, plan_split, write_plan
from masklet.pipelines.contract import VideoPipeline
from masklet.pipelines.streamed import JudgedMasklets

log = logging.getLogger(__name__)


@dataclass
class ShardResult:
    """A committed shard: its counts, timings and the videos that failed (video_key, error_type, error)."""

    shard_id: str
    counts: dict[str, int]
    seconds: dict[str, float]
    failed_videos: list[tuple[str, str, str]] = field(default_factory=list)
    worker: str = ""
    attempt: int = 1
    splits: list[SplitVideo] = field(default_factory=list)  # long videos left out, to be labelled in chunks


class ShardWatch:
    """What a runner sees of a shard as it is done (progress, metrics, liveness); by default nothing.
    Raising from a hook abandons the attempt."""

    def video_started(self, key: str) -> None:
        """Before a video is read."""

    def stream_opened(self, stream: VideoStream) -> None:
        """Its frames are about to be decoded: `stream.frame_indices` grows as they are."""

    def video_done(self, video: LabeledVideo) -> None:
        """It was added to the output shard (an error row included), or left out to be split."""

    def before_commit(self) -> None:
        """The shard is about to be committed."""


@dataclass
class LabeledVideo:
    """One video through decode and pipeline: its row, its masklets (none for an error row) and, for
    an encoded video, its bytes or local copy (what `output.write_video` copies into the output tar). A
    video too long for one worker is not labelled: `split` says how its chunks will be."""

    record: VideoRecord
    masklets: Sequence[MaskletRecord]  # a list, or a JudgedMasklets (built one at a time)
    data: Encoded | None = None
    split: SplitVideo | None = None

    @property
    def num_kept(self) -> int:
        """Its masklets the filters kept, counted without building a streamed video's records again."""
        m = self.masklets
        return len(m.kept_ids) if isinstance(m, JudgedMasklets) else sum(x.kept for x in m)


# Whether an opened video is split (masklet.jobs.split): its plan, or None to label it here.
Splitter = Callable[[VideoInput, VideoStream, "Encoded | None"], "SplitVideo | None"]


def label_video(
    item: VideoInput | VideoError,
    pipeline: VideoPipeline,
    source: SourceConfig,
    watch: ShardWatch | None = None,
    *,
    folder: str,
    span: tuple[int, int | None] = (0, None),
    splitter: Splitter | None = None,
) -> LabeledVideo:
    """Decode `item` at `source`'s fps (annotated positions `span` only) and label it; the input's own
    faults become its error row, any other exception propagates. A video from storage is downloaded into
    `folder` (`VideoInput.local`), where its `data` stays until the caller is done with it."""
    if isinstance(item, VideoError):
        return LabeledVideo(error_row(item.key, item.original_key, item.source_uri, "VideoError", item.reason), [])
    attempt = _Attempt(time.perf_counter())
    try:
        return run_video(item, pipeline, source, attempt, watch, folder=folder, span=span, splitter=splitter)
    except InputError as exc:
        known = _stream_fields(attempt.stream, attempt.data) if attempt.stream is not None else {}
        record = error_row(
            item.key, item.original_key, item.source_uri, type(exc).__name__, str(exc) or repr(exc), **known
        )
        record.total_seconds = time.perf_counter() - attempt.t0
        return LabeledVideo(record, [])


@dataclass
class _Attempt:
    """What a video's attempt got to before it failed, for its error row."""

    t0: float
    stream: VideoStream | None = None
    data: Encoded | None = None


def run_video(
    item: VideoInput,
    pipeline: VideoPipeline,
    source: SourceConfig,
    attempt: _Attempt | None = None,
    watch: ShardWatch | None = None,
    *,
    folder: str,
    span: tuple[int, int | None] = (0, None),
    splitter: Splitter | None = None,
) -> LabeledVideo:
    """Decode `item` at `source`'s fps (annotated positions `span` only) and label it, raising whatever
    goes wrong (`label_video` turns the input's faults into an error row; the Python API lets
    everything reach the caller). A video `splitter` splits is opened, not labelled."""
    attempt = attempt or _Attempt(time.perf_counter())
    attempt.data = None if isinstance(item.content, FrameFiles) else item.local(folder)
    attempt.stream = stream = open_video(
        item.content if attempt.data is None else attempt.data,
        key=item.key,
        fps=source.fps,
        max_frames=source.max_frames,
        prefetch_frames=source.prefetch_frames,
        start=span[0],
        stop=span[1],
    )
    opened = time.perf_counter() - attempt.t0
    if splitter is not None and (split := splitter(item, stream, attempt.data)) is not None:
        stream.close()
        record = VideoRecord(item.key, item.original_key, item.source_uri, **_stream_fields(stream, attempt.data))
        return LabeledVideo(record, [], split=split)
    if watch is not None:
        watch.stream_opened(stream)
    with stream:
        t1 = time.perf_counter()
        output = pipeline(item, stream)
        masklets = output if isinstance(output, JudgedMasklets) else list(output)
        in_pipeline = time.perf_counter() - t1
    record = VideoRecord(
        item.key,
        item.original_key,
        item.source_uri,
        **_stream_fields(stream, attempt.data),
        frames_decoded=stream.clock.frames_decoded,
        decode_seconds=opened + stream.clock.wait_seconds,
        model_seconds=in_pipeline - stream.clock.wait_seconds,
        total_seconds=time.perf_counter() - attempt.t0,
    )
    return LabeledVideo(record, masklets, attempt.data)


def process_shard(
    shard: Shard,
    pipeline: VideoPipeline,
    *,
    source: SourceConfig,
    output_uri: str,
    model: str,
    config_hash: str,
    write_video: bool = False,
    extra: Mapping[str, Any] | None = None,
    watch: ShardWatch | None = None,
    split: SplitConfig | None = None,
) -> ShardResult:
    """Label every video of `shard` and commit its output shard under `output_uri`.

    `watch` sees the shard as it goes (see `ShardWatch`); `extra` goes into the `_done` marker. With
    `split`, a video longer than a chunk and its overlap is left out of the shard: its plan is written
    (masklet.jobs.split) and returned in `splits`, for its chunks to be labelled as units of their own.
    Raises, committing nothing, if the shard cannot be read or written or a video fails for a reason
    that is not its own.
    """
    watch = watch or ShardWatch()
    failed: list[tuple[str, str, str]] = []
    splits: list[SplitVideo] = []
    keys: set[str] = set()
    splitter = _splitter(shard, split, source) if split is not None and split.chunk_seconds is not None else None
    writer = ShardWriter(output_uri, shard.id, model=model, config_hash=config_hash, write_video=write_video)
    with writer:
        for item in iter_videos(shard, source.max_member_bytes):
            watch.video_started(item.key)
            with tempfile.TemporaryDirectory(prefix="masklet-video-") as folder:  # its download, until written
                video = label_video(item, pipeline, source, watch, folder=folder, splitter=splitter)
                if video.split is not None:
                    write_plan(output_uri, video.split)
                    splits.append(video.split)
                    keys.add(video.record.video_key)
                    watch.video_done(video)
                    continue
                video.record = _unique_key(video.record, keys)
                video = write_labeled(writer, video, item)
                keys.add(video.record.video_key)
                if video.record.status == "error":
                    failed.append((video.record.video_key, video.record.error_type or "", video.record.error or ""))
                watch.video_done(video)
                del video  # its masklets are the writer's rows now: not held while the next video is labelled
            return_freed_memory()
        watch.before_commit()
        split_ids = {"split_videos": [s.split_id for s in splits]} if splits else {}
        marker = writer.commit(extra={"host": socket.gethostname(), **dict(extra or {}), **split_ids})
    return ShardResult(shard.id, marker["counts"], marker["seconds"], failed, splits=splits)


def return_freed_memory() -> None:
    """Give the C heap's free pages back to the OS (glibc's `malloc_trim`; elsewhere nothing).

    glibc keeps what a video's frame-sized buffers (decoded frames, masks at the video's size) freed,
    for reuse, and a later video's allocations land between them: a shard of ten 720p videos peaked at
    0.96-1.0 GB (three runs), 0.70-0.78 GB (four runs) trimmed after each video
    (`benchmarks/worker_memory.py --size 1280x720 --frames 30`). A trim takes milliseconds.
    """
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


def _glibc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL("libc.so.6")
        return libc if hasattr(libc, "malloc_trim") else None
    except OSError:  # not glibc (macOS, musl)
        return None


_LIBC = _glibc()


def _splitter(shard: Shard, config: SplitConfig, source: SourceConfig) -> Splitter:
    """Split a video of `shard` whose annotated frames (from its header) outlast a chunk and its overlap."""

    def split(item: VideoInput, stream: VideoStream, data: Encoded | None) -> SplitVideo | None:
        fields = _stream_fields(stream, data)
        del fields["frame_indices"]
        video = {"video_key": item.key, "original_key": item.original_key, "source_uri": item.source_uri, **fields}
        return plan_split(
            config,
            source,
            shard,
            item.key,
            annotated_fps=fields["fps"] / stream.stride,
            positions=math.ceil(stream.frame_count / stream.stride),
            video=video,
        )

    return split


def write_labeled(writer: ShardWriter, video: LabeledVideo, item: VideoInput | VideoError | None) -> LabeledVideo:
    """Hand a video to the writer; output the writer refuses (the pipeline broke the schema) is an error row."""
    ext = item.ext if isinstance(item, VideoInput) and item.ext else "mp4"
    if isinstance(video.masklets, JudgedMasklets):  # a built-in pipeline's, well formed
        write_streamed(writer, video.record, video.masklets, video_bytes=video.data, video_ext=ext)
        return video
    try:
        writer.add_video(video.record, video.masklets, video_bytes=video.data, video_ext=ext)
    except ValueError as exc:
        if video.record.status == "error":
            raise
        log.error("video %s: the pipeline's output was refused: %s", video.record.video_key, exc)
        r = video.record
        record = error_row(r.video_key, r.original_key, r.source_uri, "InvalidOutput", str(exc))
        writer.add_video(record)
        return LabeledVideo(record, [])
    return video


def write_streamed(
    writer: ShardWriter,
    record: VideoRecord,
    masklets: JudgedMasklets,
    *,
    video_bytes: Encoded | None = None,
    video_ext: str = "mp4",
) -> None:
    """An ok video's masklets, one at a time, and its SA-V document, a window of frames at a time (on the
    video's annotated frames and any a masklet has an entry on, as `write_sav_annotation`'s)."""
    verdicts = masklets.verdicts
    objects = [SavObject(i, verdicts[i].source, verdicts[i].edit_count) for i in masklets.kept_ids]
    frames = masklets.sav_axis(record.frame_indices)
    empty = empty_counts(int(record.height), int(record.width))

    def document(out: BinaryIO) -> None:
        write_sav_rows(out, record, objects, frames, masklets.sav_rows(frames, empty))

    writer.add_streamed_video(record, masklets, document, video_bytes=video_bytes, video_ext=video_ext)


def error_row(key: str, original_key: str, source_uri: str, error_type: str, error: str, **known: Any) -> VideoRecord:
    error = printable_message(error)
    return VideoRecord(key, original_key, source_uri, status="error", error=error, error_type=error_type, **known)


def _stream_fields(stream: VideoStream, data: Encoded | None) -> dict[str, Any]:
    """What decoding learnt about a video; a container without a frame rate counts as SA-V's 24 fps."""
    return {
        "fps": stream.source_fps or FRAME_FOLDER_FPS,
        "frame_count": stream.frame_count,
        "height": stream.height,
        "width": stream.width,
        "frame_indices": list(stream.frame_indices),
        "decoder": stream.backend,
        "video_bytes": encoded_size(data) if data is not None else None,
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
