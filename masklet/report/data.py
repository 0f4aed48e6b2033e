"""Read what a report needs from an output root, through masklet.io.outputs.

Only summary columns are read for the whole output (never the RLE lists, which dominate its size),
so a report of a large job stays cheap; the RLE of a video is read only when it gets an overlay.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa

from masklet.io import layout
from masklet.io.layout import JOB_FILE, PROGRESS_FILE
from masklet.io.outputs import read_marker, read_table
from masklet.io.schema import MASKLETS_SCHEMA, VIDEOS_SCHEMA
from masklet.io.sinks import list_done
from masklet.pipelines import doubt

MASKLET_COLUMNS = tuple(
    dict.fromkeys(
        (
            "video_key",
            "masklet_id",
            "kept",
            "reject_reason",
            "stability_mean",
            "pred_iou_mean",
            "num_visible",
            "area_rel_mean",
            "edit_count",
            "visibility_changes",
            *doubt.COLUMNS,  # what "where to look first" ranks on
        )
    )
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


@dataclass
class OutputSummary:
    """An output root's job record, progress, shard markers and summary rows (committed shards only).

    `masklets` has MASKLET_COLUMNS and `shard_id`, the shard each row was read from.
    """

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
    job = layout.read_json(root, JOB_FILE)
    shard_ids = sorted(list_done(root))
    if job is None and not shard_ids:
        raise ValueError(f"{root!r} is not a masklet output: it has no job.json and no committed shard (_done/*.json)")
    masklets = [_with_shard(read_table(root, s, "masklets", columns=MASKLET_COLUMNS), s) for s in shard_ids]
    videos = [read_table(root, s, "videos", columns=VIDEO_COLUMNS) for s in shard_ids]
    return OutputSummary(
        root=root,
        job=job,
        progress=layout.read_json(root, PROGRESS_FILE),  # none in a filter / sample output
        markers={s: read_marker(root, s) for s in shard_ids},
        masklets=_concat(masklets, MASKLETS_SCHEMA, MASKLET_COLUMNS, with_shard=True),
        videos=_concat(videos, VIDEOS_SCHEMA, VIDEO_COLUMNS),
    )


def _with_shard(table: pa.Table, shard_id: str) -> pa.Table:
    return table.append_column("shard_id", pa.array([shard_id] * table.num_rows, type=pa.string()))


def _concat(
    tables: list[pa.Table], schema: pa.Schema, columns: tuple[str, ...], *, with_shard: bool = False
) -> pa.Table:
    if not tables:
        fields = [schema.field(c) for c in columns] + ([pa.field("shard_id", pa.string())] if with_shard else [])
        return pa.schema(fields).empty_table()
    return pa.concat_tables(tables)
