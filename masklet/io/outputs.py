"""Read a committed output root back into records, and rewrite it shard by shard.

Every masklet row, kept or not, is in `masklets/{shard}.parquet`, so new thresholds or a new
sample need no GPU: read a shard's rows back as `MaskletRecord`s, let a transform decide `kept`
again, and write the shard to another root with `ShardWriter`, which rebuilds the SA-V JSON
from the newly kept masklets. Only committed shards (those with a `_done` marker) are read. The
video bytes, when the input shard carries them, are streamed from its tar into the new one.
This module knows storage and the schema, not the filters: the caller brings the transform.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import closing
from dataclasses import dataclass, fields
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from masklet.io import layout, storage
from masklet.io.layout import DONE_DIR, JOB_FILE, shard_files
from masklet.io.schema import (
    MASKLETS_SCHEMA,
    VIDEOS_SCHEMA,
    MaskletRecord,
    VideoRecord,
    with_added_columns,
)
from masklet.io.sinks import ShardWriter, list_done
from masklet.io.storage import RetryPolicy
from masklet.io.tars import read_tar

Transform = Callable[[str, list[MaskletRecord]], list[MaskletRecord]]
_MASKLET_FIELDS = tuple(f.name for f in fields(MaskletRecord))
_VIDEO_FIELDS = tuple(f.name for f in fields(VideoRecord))


@dataclass
class OutputShard:
    """One committed shard read back: its marker, its videos in input order, its masklets."""

    shard_id: str
    marker: dict
    videos: list[VideoRecord]
    masklets: list[MaskletRecord]


def read_table(
    root: str,
    shard_id: str,
    name: str,
    *,
    columns: Sequence[str] | None = None,
    retry: RetryPolicy | None = None,
) -> pa.Table:
    """`masklets` or `videos` of one shard, optionally only some columns (read by range, not whole).

    Columns added to the schema after the shard was written (`schema.ADDED_COLUMNS`) read as nulls.
    """
    uri = storage.join(root, shard_files(shard_id)[name])
    fs, path = storage.url_to_fs(uri)
    cols = None if columns is None else list(columns)
    table = storage.call("read", uri, _read_parquet, path, fs, cols, retry=retry)
    if cols is None or table.column_names == cols:
        return table
    return with_added_columns(table, MASKLETS_SCHEMA if name == "masklets" else VIDEOS_SCHEMA, cols)


def _read_parquet(path: str, fs: Any, columns: list[str] | None) -> pa.Table:
    """The columns of `columns` the file has (all with None), from one open of the file."""
    with pq.ParquetFile(path, filesystem=fs) as f:
        present = set(f.schema_arrow.names)
        return f.read(columns=None if columns is None else [c for c in columns if c in present])


def read_marker(root: str, shard_id: str, *, retry: RetryPolicy | None = None) -> dict:
    """A committed shard's `_done` marker: its counts, timings and files."""
    return json.loads(storage.read_bytes(storage.join(root, shard_files(shard_id)["done"]), retry=retry))


def read_shard(root: str, shard_id: str, *, retry: RetryPolicy | None = None) -> OutputShard:
    """A committed shard's marker and rows as records."""
    io = {"retry": retry}
    marker = read_marker(root, shard_id, **io)
    masklets = read_table(root, shard_id, "masklets", columns=_MASKLET_FIELDS, **io).to_pylist()
    videos = read_table(root, shard_id, "videos", columns=_VIDEO_FIELDS, **io).to_pylist()
    return OutputShard(shard_id, marker, [VideoRecord(**v) for v in videos], [MaskletRecord(**m) for m in masklets])


def iter_video_members(
    root: str, shard_id: str, *, retry: RetryPolicy | None = None
) -> Iterator[tuple[str, str, bytes]]:
    """(video_key, extension, bytes) of each video in the shard's tar, streamed in tar order.

    A damaged tar raises `TarDamaged` (an OSError) naming it and where it broke, rather than ending
    early: a caller would otherwise find its later videos missing with no cause given.
    """
    uri = storage.join(root, shard_files(shard_id)["wds"])
    fs, path = storage.url_to_fs(uri)
    with storage.call("open", uri, fs.open, path, "rb", retry=retry) as f:
        for member in read_tar(f, uri):
            key, _, ext = member.name.partition(".")
            if not member.refused and ext != "json":
                yield key, ext, member.read()


def derived_job(source: Mapping[str, Any] | None, in_root: str, derivation: Mapping[str, Any]) -> dict[str, Any]:
    """The job.json of an output derived from `in_root`: the source's (model, checkpoint, config hash,
    version: where the masks came from) with the derivation appended to `derived`, and the new
    thresholds as its filters, so a report says what it shows and a later filter starts from them."""
    job = dict(source or {})
    job["derived"] = [*job.get("derived", []), {"from": in_root, "at": _now(), **derivation}]
    if "filters" in derivation and isinstance(job.get("config"), dict):
        job["config"] = {**job["config"], "filters": derivation["filters"]}
    return job


def rewrite_output(
    in_root: str,
    out_root: str,
    transform: Transform,
    derivation: Mapping[str, Any],
    *,
    shard_ids: Sequence[str] | None = None,
    retry: RetryPolicy | None = None,
) -> list[dict]:
    """Write committed shards of `in_root` to `out_root` with `transform(shard_id, masklets)`.

    The transform returns the same masklets in the same order with `kept` / `reject_reason`
    decided again. `shard_ids`: the shards to rewrite (default: every committed one, listed now).
    Model, config hash, write_video and timings carry over from each input marker; `derivation`
    (the command and its settings) goes into each new marker, with `derived_from`, and into the
    new job.json (`derived_job`). Returns the new markers, by shard id.
    """
    if in_root.rstrip("/") == out_root.rstrip("/"):
        raise ValueError(f"the output root must differ from the input root (both {in_root!r})")
    io = {"retry": retry}
    shard_ids = sorted(list_done(in_root, **io) if shard_ids is None else shard_ids)
    if not shard_ids:
        raise ValueError(f"{in_root!r} holds no committed shard (no {storage.join(in_root, DONE_DIR)}/*.json)")
    storage.ensure_writable_dir(out_root, **io)
    layout.write_json(out_root, JOB_FILE, derived_job(layout.read_json(in_root, JOB_FILE), in_root, derivation))
    return [_rewrite_shard(in_root, out_root, s, transform, derivation, io) for s in shard_ids]


def _rewrite_shard(
    in_root: str, out_root: str, shard_id: str, transform: Transform, derivation: Mapping[str, Any], io: dict
) -> dict:
    shard = read_shard(in_root, shard_id, **io)
    masklets = transform(shard_id, shard.masklets)
    if [(m.video_key, m.masklet_id) for m in masklets] != [(m.video_key, m.masklet_id) for m in shard.masklets]:
        raise ValueError(f"shard {shard_id}: the transform must return the same masklets in the same order")
    by_video: dict[str, list[MaskletRecord]] = {}
    for m in masklets:
        by_video.setdefault(m.video_key, []).append(m)
    marker = shard.marker
    write_video = bool(marker.get("write_video"))
    members = iter_video_members(in_root, shard_id, **io)  # opened on the first next(), closed on exit
    with (
        closing(members),
        ShardWriter(
            out_root, shard_id, model=marker["model"], config_hash=marker["config_hash"], write_video=write_video, **io
        ) as writer,
    ):
        for video in shard.videos:
            video_bytes, ext = None, "mp4"
            if write_video and video.status == "ok":
                key, ext, video_bytes = next(members, (None, "", b""))
                if key != video.video_key:
                    raise ValueError(f"shard {shard_id}: the tar has {key!r} where video {video.video_key!r} was due")
            writer.add_video(video, by_video.get(video.video_key, []), video_bytes=video_bytes, video_ext=ext)
        return writer.commit(extra={**derivation, "derived_from": in_root}, seconds=marker.get("seconds"))


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
