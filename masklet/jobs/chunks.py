"""The work of a split video's units, without Ray: label one chunk; stitch the chunks and commit the video.

`process_chunk` labels annotated positions `spans[k]` of the video (its first frame sought, not
decoded from the start) with the job's pipeline and stages the chunk's masklets and row
(masklet.jobs.split has the layout); the chunk's own faults become an error row there, as a video's
do. `stitch_split` joins the chunks (masklet.pipelines.stitching), filters the joined masklets with
the job's `filters` (the chunks' decisions are dropped: a chunk sees only part of each masklet) and
commits the video as an output shard of its own, then removes the staging. It reads copies of the
chunks' files in a local temporary folder and holds at most two chunks or one stitched masklet, so
its memory follows the chunk length and the longest masklet, not the video. A chunk's error row
makes the video an error row. Importing this module loads neither Ray nor torch.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import socket
import tempfile
import time
from collections.abc import Mapping
from typing import Any

import pyarrow.parquet as pq

from masklet.config import FiltersConfig, SourceConfig
from masklet.io import storage
from masklet.io.outputs import read_marker, read_table
from masklet.io.schema import (
    MASKLETS_SCHEMA,
    MaskletRecord,
    VideoRecord,
    masklets_table,
    repeated_columns,
)
from masklet.io.sinks import ShardWriter, is_done
from masklet.io.sources import VideoError, VideoInput, iter_videos
from masklet.io.storage import StorageError
from masklet.io.video import VideoStream
from masklet.jobs import split as splits
from masklet.jobs.shard import (
    LabeledVideo,
    ShardResult,
    ShardWatch,
    error_row,
    label_video,
    return_freed_memory,
    write_labeled,
    write_streamed,
)
from masklet.jobs.split import ChunkUnit, SplitVideo, StitchUnit
from masklet.pipelines.contract import VideoPipeline
from masklet.pipelines.stitching import Stitched, plan_stitch
from masklet.pipelines.streamed import JudgedMasklets, judge

log = logging.getLogger(__name__)

_MASKLET_FIELDS = [f.name for f in dataclasses.fields(MaskletRecord)]


def process_chunk(
    unit: ChunkUnit,
    pipeline: VideoPipeline,
    *,
    source: SourceConfig,
    output_uri: str,
    model: str,
    config_hash: str,
    watch: ShardWatch | None = None,
    extra: Mapping[str, Any] | None = None,
) -> ShardResult:
    """Label chunk `unit.index` of its video and stage its masklets and row (with `extra`, who labelled
    it, which the video's marker lists); raises, staging nothing complete, if that cannot be done for
    a reason that is not the video's."""
    watch = _Opened(watch or ShardWatch())
    split, index = unit.split, unit.index
    start, stop = split.spans[index]
    watch.video_started(split.video_key)
    item = _find(split, source)
    with tempfile.TemporaryDirectory(prefix="masklet-chunk-") as folder:  # the video's download, if any
        video = label_video(item, pipeline, source, watch, folder=folder, span=(start, stop))
    checksums = watch.stream.checksums if watch.stream is not None else []
    table = masklets_table(list(video.masklets), model=model, config_hash=config_hash)  # each built once
    with storage.staged_file(splits.chunk_uri(output_uri, split, index, "parquet")) as stage:
        pq.write_table(  # a masklet is read alone
            table, stage, compression="zstd", row_group_size=1, use_dictionary=repeated_columns(MASKLETS_SCHEMA)
        )
    watch.before_commit()
    row = {
        "video": dataclasses.asdict(video.record),
        "checksums": checksums,
        "by": {"host": socket.gethostname(), **dict(extra or {})},
    }
    storage.write_bytes(splits.chunk_uri(output_uri, split, index, "json"), json.dumps(row).encode())  # last
    watch.video_done(LabeledVideo(video.record, []))
    r = video.record
    del item, video, table  # as after each video of a shard: chunks of videos follow one another
    return_freed_memory()
    own = len(r.frame_indices) if index + 1 == len(split.spans) else split.spans[index + 1][0] - start
    counts = dict.fromkeys(("videos", "videos_ok", "videos_error", "masklets", "masklets_kept"), 0)
    counts["frames_processed"] = min(own, len(r.frame_indices))  # the overlap counts in the next chunk
    seconds = {"decode": r.decode_seconds, "model": r.model_seconds, "videos": r.total_seconds}
    return ShardResult(unit.id, counts, seconds)


def stitch_split(
    unit: StitchUnit,
    *,
    source: SourceConfig,
    filters: FiltersConfig,
    min_iou: float,
    output_uri: str,
    model: str,
    config_hash: str,
    write_video: bool = False,
    extra: Mapping[str, Any] | None = None,
) -> ShardResult:
    """Join the chunks of `unit.split` and commit the video as output shard `split_id`; its masklets
    are never in memory together (masklet.pipelines.stitching). A video committed already (an attempt
    whose answer was lost with its worker, after it removed the chunks) is answered from its marker."""
    split = unit.split
    if is_done(output_uri, split.split_id):
        _remove_staging(output_uri, split)
        return _committed(output_uri, split.split_id)
    t0 = time.perf_counter()
    docs = [json.loads(_read(output_uri, split, k, "json")) for k in range(len(split.spans))]
    rows = [VideoRecord(**doc["video"]) for doc in docs]
    failed = next((k for k, r in enumerate(rows) if r.status == "error"), None)
    if failed is None and (misled := _misled_seek(rows, docs)) is not None:
        failed, row = misled
        rows[failed] = row
    item = _find(split, source) if write_video and failed is None else None
    ext = item.ext if isinstance(item, VideoInput) and item.ext else "mp4"
    writer = ShardWriter(output_uri, split.split_id, model=model, config_hash=config_hash, write_video=write_video)
    with writer, tempfile.TemporaryDirectory(prefix="masklet-stitch-") as local:
        data = item.local(local) if isinstance(item, VideoInput) else None
        boundaries: list[dict[str, int]] = []
        if failed is not None:
            video = write_labeled(writer, LabeledVideo(_failed_row(split, failed, rows[failed]), []), item)
        elif isinstance(item, VideoError):  # write_video, and the video is gone from its shard
            v = split.video
            record = error_row(v["video_key"], v["original_key"], v["source_uri"], "VideoError", item.reason)
            video = write_labeled(writer, LabeledVideo(record, []), item)
        else:
            chunks = _ChunkFiles(output_uri, split, local)
            frames = [r.frame_indices for r in rows]
            plan = plan_stitch(chunks.masklets, frames, min_iou)
            boundaries = [dataclasses.asdict(b) for b in plan.boundaries]
            own = [f for fs in plan.own_frames(frames) for f in fs]
            stitched = Stitched(split.video_key, plan, chunks.masklets, chunks.masklet, own)
            record = VideoRecord(
                **split.video,
                frame_indices=own,
                frames_decoded=sum(r.frames_decoded or 0 for r in rows),
                decode_seconds=sum(r.decode_seconds for r in rows),
                model_seconds=sum(r.model_seconds for r in rows),
                total_seconds=sum(r.total_seconds for r in rows) + time.perf_counter() - t0,
            )
            masklets = JudgedMasklets(stitched, judge(stitched, filters))
            write_streamed(writer, record, masklets, video_bytes=data, video_ext=ext)
            video = LabeledVideo(record, [])
        about = {"of_shard": split.shard.id, "chunks_by": [doc["by"] for doc in docs], "boundaries": boundaries}
        marker = writer.commit(extra={"host": socket.gethostname(), **dict(extra or {}), "split": about})
    _remove_staging(output_uri, split)
    r = video.record
    failures = [(r.video_key, r.error_type or "", r.error or "")] if r.status == "error" else []
    return _result(split.split_id, marker, failures)


def _result(split_id: str, marker: dict, failures: list[tuple[str, str, str]]) -> ShardResult:
    counts = {**marker["counts"], "frames_processed": 0}  # its chunks counted the frames as they were done
    return ShardResult(split_id, counts, marker["seconds"], failures)


def _committed(output_uri: str, split_id: str) -> ShardResult:
    """The result of a split video committed before, from its marker and its row."""
    marker = read_marker(output_uri, split_id)
    columns = ["video_key", "status", "error_type", "error"]
    (row,) = read_table(output_uri, split_id, "videos", columns=columns).to_pylist()
    failures = [(row["video_key"], row["error_type"] or "", row["error"] or "")] if row["status"] == "error" else []
    return _result(split_id, marker, failures)


def _remove_staging(output_uri: str, split: SplitVideo) -> None:
    try:
        splits.remove(output_uri, split)
    except StorageError as exc:  # committed: a later run removes what is left
        log.warning("split video %s: its staging could not be removed: %s", split.split_id, exc)


def _find(split: SplitVideo, source: SourceConfig) -> VideoInput | VideoError:
    """The split video, from its input shard (read up to it); an error where the shard no longer has it."""
    for item in iter_videos(split.shard, source.max_member_bytes):
        if item.key == split.video_key:
            return item
    v = split.video
    reason = f"the video is no longer in input shard {split.shard.id} ({split.shard.uri})"
    return VideoError(v["video_key"], v["source_uri"], reason, v["original_key"])


class _Opened(ShardWatch):
    """`watch`, and the stream it was shown (its checksums are the chunk's)."""

    def __init__(self, watch: ShardWatch) -> None:
        self.watch, self.stream = watch, None

    def video_started(self, key: str) -> None:
        self.watch.video_started(key)

    def stream_opened(self, stream: VideoStream) -> None:
        self.stream = stream
        self.watch.stream_opened(stream)

    def video_done(self, video: LabeledVideo) -> None:
        self.watch.video_done(video)

    def before_commit(self) -> None:
        self.watch.before_commit()


def _frames_seen(row: VideoRecord, doc: dict) -> dict[int, int]:
    return dict(zip(row.frame_indices, doc.get("checksums", []), strict=False))


def _misled_seek(rows: list[VideoRecord], docs: list[dict]) -> tuple[int, VideoRecord] | None:
    """The first chunk whose frames in the overlap differ from the chunk before's (a seek to its first
    frame gave other pixels than decoding on to it: a container whose timestamps mislead), with its row
    made an error row; None where every overlap agrees."""
    for k in range(1, len(rows)):
        before, now = _frames_seen(rows[k - 1], docs[k - 1]), _frames_seen(rows[k], docs[k])
        differ = sorted(f for f in before.keys() & now.keys() if before[f] != now[f])
        if differ:
            reason = (
                f"seeking to this chunk gave other pixels than decoding on to them (frames {differ[:5]}): the "
                "container's timestamps mislead; re-encode it with keyframes (ffmpeg -i in -g 48 out.mp4) or "
                "label it unsplit"
            )
            return k, dataclasses.replace(rows[k], status="error", error_type="VideoDecodeError", error=reason)
    return None


def _failed_row(split: SplitVideo, index: int, row: VideoRecord) -> VideoRecord:
    """The video's error row: a chunk's error, saying which chunk."""
    start, stop = split.spans[index]
    where = f"chunk {index} (annotated frames {start} to {'the end' if stop is None else stop - 1}): "
    v = split.video
    return error_row(
        v["video_key"], v["original_key"], v["source_uri"], row.error_type or "", where + (row.error or "")
    )


class _ChunkFiles:
    """A split video's staged chunk masklets, copied to `local` once and read from there: a chunk whole,
    or one masklet (each is a row group of its own)."""

    def __init__(self, output_uri: str, split: SplitVideo, local: str) -> None:
        self.output_uri, self.split, self.local = output_uri, split, local
        self._groups: dict[int, dict[int, int]] = {}  # chunk -> masklet id -> row group

    def masklets(self, index: int) -> list[MaskletRecord]:
        return [MaskletRecord(**m) for m in pq.read_table(self._path(index), columns=_MASKLET_FIELDS).to_pylist()]

    def masklet(self, index: int, masklet_id: int) -> MaskletRecord:
        with pq.ParquetFile(self._path(index)) as f:
            if index not in self._groups:
                ids = f.read(columns=["masklet_id"]).column(0).to_pylist()
                self._groups[index] = {int(i): n for n, i in enumerate(ids)}
            (row,) = f.read_row_group(self._groups[index][masklet_id], columns=_MASKLET_FIELDS).to_pylist()
        return MaskletRecord(**row)

    def _path(self, index: int) -> str:
        path = os.path.join(self.local, f"chunk-{index}.parquet")
        if not os.path.exists(path):
            storage.get_file(splits.chunk_uri(self.output_uri, self.split, index, "parquet"), path)
        return path


def _read(output_uri: str, split: SplitVideo, index: int, ext: str) -> bytes:
    return storage.read_bytes(splits.chunk_uri(output_uri, split, index, ext))
