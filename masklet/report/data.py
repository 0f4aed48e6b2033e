"""Read what a report needs from an output root, through masklet.io.outputs.

Only summary columns are read for the whole output (never the RLE lists, which dominate its size),
so a report of a large job stays cheap; the RLE of a video is read only when it gets an overlay.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import pyarrow as pa

from masklet.io import storage
from masklet.io.outputs import read_marker, read_table
from masklet.io.schema import MASKLETS_SCHEMA, VIDEOS_SCHEMA
from masklet.io.sinks import list_done
from masklet.jobs.manifest import read_job

MASKLET_COLUMNS = (
    "video_key",
    "masklet_id",
    "kept",
    "reject_reason",
    "stability_mean",
    "pred_iou_mean",
    "num_visible",
    "area_rel_mean",
    "edit_count",
)
VIDEO_COLUMNS = (
    "video_key",
    "original_key",
    "source_uri",
    "shard_id",
    "status",
    "error",
    "error_type",
    "fps",
    "frame_count",
    "height",
    "width",
    "frames_processed",
    "num_masklets",
    "num_kept",
)
PROGRESS_FILE = "progress.json"  # masklet.jobs.progress.PROGRESS_FILE, whose module imports the worker and torch


@dataclass
class OutputSummary:
    """An output root's job record, progress, shard markers and summary rows (committed shards only)."""

    root: str
    job: dict | None
    progress: dict | None
    markers: dict[str, dict]
    masklets: pa.Table
    videos: pa.Table

    @property
    def config(self) -> dict:
        return (self.job or {}).get("config") or {}


def load_output(root: str) -> OutputSummary:
    """Everything but the masks; ValueError if `root` holds neither a job.json nor a committed shard."""
    job = read_job(root)
    shard_ids = sorted(list_done(root))
    if job is None and not shard_ids:
        raise ValueError(f"{root!r} is not a masklet output: it has no job.json and no committed shard (_done/*.json)")
    masklets = [read_table(root, s, "masklets", columns=MASKLET_COLUMNS) for s in shard_ids]
    videos = [read_table(root, s, "videos", columns=VIDEO_COLUMNS) for s in shard_ids]
    return OutputSummary(
        root=root,
        job=job,
        progress=_read_progress(root),
        markers={s: read_marker(root, s) for s in shard_ids},
        masklets=_concat(masklets, MASKLETS_SCHEMA, MASKLET_COLUMNS),
        videos=_concat(videos, VIDEOS_SCHEMA, VIDEO_COLUMNS),
    )


def _concat(tables: list[pa.Table], schema: pa.Schema, columns: tuple[str, ...]) -> pa.Table:
    if not tables:
        return pa.schema([schema.field(c) for c in columns]).empty_table()
    return pa.concat_tables(tables)


def _read_progress(root: str) -> dict | None:
    """progress.json, or None: a root written by `masklet filter` / `sample` or a test has none."""
    uri = storage.join(root, PROGRESS_FILE)
    fs, path = storage.url_to_fs(uri)
    try:
        return json.loads(storage.call("read", uri, fs.cat_file, path))
    except storage.StorageError as exc:
        if isinstance(exc.__cause__, FileNotFoundError):
            return None
        raise
