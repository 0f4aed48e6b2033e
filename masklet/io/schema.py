"""The fixed Arrow schemas of an output shard, and the records the pipelines fill.

Column meanings are documented in docs/output-schema.md; change both together and bump
`SCHEMA_VERSION`. Records hold RLE strings only (masks never travel dense) and become Arrow
tables a batch at a time (the writer's row groups). Repeated strings (`source`, `model`, `status`, ...) are plain
`string` columns: Parquet dictionary-encodes them on disk anyway, and plain strings keep files
from different shards concatenable without dictionary unification.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from masklet.io import rle
from masklet.io.rle import RLE
from masklet.io.tars import MAX_KEY_LENGTH, is_safe_key

SCHEMA_VERSION = 3
SOURCES = ("auto", "prompt")
STATUSES = ("ok", "error")

# why a masklet is not kept (`reject_reason`, the class before any ":detail"): the filters' reasons in
# the order masklet.pipelines.filters checks them, then what sampling leaves out
FILTER_REASONS = (
    "never_visible",
    "too_few_visible_frames",
    "low_stability",
    "low_pred_iou",
    "low_object_score",
    "too_small",
    "too_large",
    "too_many_visibility_changes",
    "duplicate_of",
)
NOT_SAMPLED = "not_sampled"
REVIEW_REJECTED = "review"  # a person rejected the masklet (`masklet review import`)
REJECT_REASONS = (*FILTER_REASONS, NOT_SAMPLED, REVIEW_REJECTED)
# what a person said of a masklet they reviewed; null: nobody reviewed it
REVIEW_VERDICTS = ("accepted", "corrected", "rejected")
# columns added after version 1, all nullable: a shard written before them reads them as nulls
ADDED_COLUMNS = {
    "human_edit_count": 2,
    "human_edit_frames": 2,
    "review_verdict": 2,
    "reviewer": 2,
    "reviewed_at": 2,
    "frames_decoded": 3,
}

# Arrow memory for rows made from records: the C allocator's, which gives a large freed buffer back at
# once, where pyarrow's default pool (mimalloc) keeps it. Measured on a worker's shard of 15,000 frames:
# the rows' conversion raised its resident memory 31 MB with the default pool, under 3 MB with this one.
ROWS_POOL = pa.system_memory_pool()

MASKLETS_SCHEMA = pa.schema(
    [
        pa.field("video_key", pa.string(), nullable=False),
        pa.field("masklet_id", pa.int32(), nullable=False),
        pa.field("source", pa.string(), nullable=False),
        pa.field("height", pa.int32(), nullable=False),
        pa.field("width", pa.int32(), nullable=False),
        pa.field("frame_indices", pa.list_(pa.int32()), nullable=False),
        pa.field("rle", pa.list_(pa.string()), nullable=False),
        pa.field("area", pa.list_(pa.int32()), nullable=False),
        pa.field("pred_iou", pa.list_(pa.float32()), nullable=False),
        pa.field("stability", pa.list_(pa.float32()), nullable=False),
        pa.field("object_score", pa.list_(pa.float32()), nullable=False),
        pa.field("first_frame", pa.int32(), nullable=False),
        pa.field("num_visible", pa.int32(), nullable=False),
        pa.field("visibility_changes", pa.int32(), nullable=False),
        pa.field("edit_count", pa.int32(), nullable=False),
        pa.field("stability_mean", pa.float32()),
        pa.field("pred_iou_mean", pa.float32()),
        pa.field("area_rel_mean", pa.float32(), nullable=False),
        pa.field("kept", pa.bool_(), nullable=False),
        pa.field("reject_reason", pa.string()),
        pa.field("human_edit_count", pa.int32()),
        pa.field("human_edit_frames", pa.list_(pa.int32())),
        pa.field("review_verdict", pa.string()),
        pa.field("reviewer", pa.string()),
        pa.field("reviewed_at", pa.string()),
        pa.field("model", pa.string(), nullable=False),
        pa.field("config_hash", pa.string(), nullable=False),
    ],
    metadata={"masklet.table": "masklets", "masklet.schema_version": str(SCHEMA_VERSION)},
)

VIDEOS_SCHEMA = pa.schema(
    [
        pa.field("video_key", pa.string(), nullable=False),
        pa.field("original_key", pa.string(), nullable=False),
        pa.field("source_uri", pa.string(), nullable=False),
        pa.field("shard_id", pa.string(), nullable=False),
        pa.field("status", pa.string(), nullable=False),
        pa.field("error", pa.string()),
        pa.field("error_type", pa.string()),
        pa.field("fps", pa.float64()),
        pa.field("frame_count", pa.int32()),
        pa.field("height", pa.int32()),
        pa.field("width", pa.int32()),
        pa.field("frame_indices", pa.list_(pa.int32()), nullable=False),
        pa.field("frames_processed", pa.int32(), nullable=False),
        pa.field("num_masklets", pa.int32(), nullable=False),
        pa.field("num_kept", pa.int32(), nullable=False),
        pa.field("video_bytes", pa.int64()),
        pa.field("decoder", pa.string()),
        pa.field("frames_decoded", pa.int64()),
        pa.field("decode_seconds", pa.float64(), nullable=False),
        pa.field("model_seconds", pa.float64(), nullable=False),
        pa.field("total_seconds", pa.float64(), nullable=False),
        pa.field("model", pa.string(), nullable=False),
        pa.field("config_hash", pa.string(), nullable=False),
    ],
    metadata={"masklet.table": "videos", "masklet.schema_version": str(SCHEMA_VERSION)},
)


@dataclass
class MaskletRecord:
    """One masklet of one video: per annotated frame RLE counts ("" where not visible) and scores.

    `from_frames` derives the summary columns from the per-frame lists, so they never disagree.
    The review fields stay None until a person reviewed the masklet (`masklet review import`).
    """

    video_key: str
    masklet_id: int
    source: str
    height: int
    width: int
    frame_indices: list[int]
    rle: list[str]
    area: list[int]
    pred_iou: list[float]
    stability: list[float]
    object_score: list[float]
    first_frame: int
    num_visible: int
    visibility_changes: int
    edit_count: int
    stability_mean: float | None
    pred_iou_mean: float | None
    area_rel_mean: float
    kept: bool = True
    reject_reason: str | None = None
    human_edit_count: int | None = None
    human_edit_frames: list[int] | None = None
    review_verdict: str | None = None
    reviewer: str | None = None
    reviewed_at: str | None = None

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            raise ValueError(f"masklet source must be one of {SOURCES}, got {self.source!r}")
        n = len(self.frame_indices)
        for name in ("rle", "area", "pred_iou", "stability", "object_score"):
            if len(getattr(self, name)) != n:
                raise ValueError(
                    f"masklet {self.masklet_id}: {name} has {len(getattr(self, name))} entries, frame_indices has {n}"
                )
        if self.kept == (self.reject_reason is not None):
            raise ValueError(f"masklet {self.masklet_id}: a kept masklet has no reject_reason, a dropped one has one")
        self._check_review()

    def _check_review(self) -> None:
        where = f"masklet {self.masklet_id} of {self.video_key!r}"
        verdict = self.review_verdict
        if verdict is None:
            if self.human_edit_count is not None or self.human_edit_frames is not None:
                raise ValueError(f"{where}: human edits without a review verdict")
            return
        if verdict not in REVIEW_VERDICTS:
            raise ValueError(f"{where}: review_verdict must be one of {REVIEW_VERDICTS}, got {verdict!r}")
        frames = self.human_edit_frames
        if frames is None or self.human_edit_count != len(frames) or not set(frames) <= set(self.frame_indices):
            raise ValueError(f"{where}: human_edit_count must count human_edit_frames, frames of the masklet")
        if (verdict == "corrected") != bool(frames):
            raise ValueError(f"{where}: a corrected masklet has human edits, an accepted or rejected one none")

    @property
    def edited_frames(self) -> int:
        """Frames edited: a person's count where the masklet was reviewed, else the automatic `edit_count`."""
        return self.edit_count if self.human_edit_count is None else self.human_edit_count

    @classmethod
    def from_frames(
        cls,
        video_key: str,
        masklet_id: int,
        *,
        source: str,
        frame_indices: Sequence[int],
        rles: Sequence[RLE],
        pred_iou: Sequence[float],
        stability: Sequence[float],
        object_score: Sequence[float],
        edit_count: int = 0,
        kept: bool = True,
        reject_reason: str | None = None,
    ) -> MaskletRecord:
        """A record from per-frame RLEs (all one size, at the video's resolution) and scores.

        Means are over the frames where the masklet is visible (null scores if it never is);
        visibility changes count switches after the first appearance, as SA-V does.
        """
        if not rles:
            raise ValueError(f"masklet {masklet_id} of {video_key!r} has no frames")
        sizes = {tuple(r["size"]) for r in rles}
        if len(sizes) != 1:
            raise ValueError(f"masklet {masklet_id} of {video_key!r} mixes mask sizes {sorted(sizes)}")
        ((height, width),) = sizes
        areas = rle.area_batch(rles)
        visible = areas > 0
        first = int(np.argmax(visible)) if visible.any() else len(rles)
        changes = int(np.count_nonzero(visible[first + 1 :] != visible[first:-1]))

        def visible_mean(values: Sequence[float]) -> float | None:
            return float(np.mean(np.asarray(values, dtype=np.float64)[visible])) if visible.any() else None

        return cls(
            video_key=video_key,
            masklet_id=int(masklet_id),
            source=source,
            height=int(height),
            width=int(width),
            frame_indices=[int(i) for i in frame_indices],
            rle=[str(r["counts"]) if a else "" for r, a in zip(rles, areas, strict=True)],
            area=[int(a) for a in areas],
            pred_iou=[float(x) for x in pred_iou],
            stability=[float(x) for x in stability],
            object_score=[float(x) for x in object_score],
            first_frame=int(frame_indices[first]) if first < len(rles) else -1,
            num_visible=int(visible.sum()),
            visibility_changes=changes,
            edit_count=int(edit_count),
            stability_mean=visible_mean(stability),
            pred_iou_mean=visible_mean(pred_iou),
            area_rel_mean=float(areas[visible].mean() / (height * width)) if visible.any() else 0.0,
            kept=kept,
            reject_reason=reject_reason,
        )

    def rles(self) -> list[RLE]:
        """The per-frame RLEs, with an empty mask where the masklet is not visible."""
        empty = empty_counts(self.height, self.width)
        return [{"size": [self.height, self.width], "counts": c or empty} for c in self.rle]

    def masks(self) -> np.ndarray:
        """The masks decoded, bool [frames, height, width] (frame t is video frame `frame_indices[t]`)."""
        return rle.decode_batch(self.rles())


@dataclass
class VideoRecord:
    """The outcome of one input video, failed or not.

    `video_key` is the tar-safe key (masklet.io.sources' `VideoInput.key`), `original_key` the
    key as the input spelled it.
    """

    video_key: str
    original_key: str
    source_uri: str
    status: str = "ok"
    error: str | None = None
    error_type: str | None = None
    fps: float | None = None
    frame_count: int | None = None
    height: int | None = None
    width: int | None = None
    frame_indices: list[int] = field(default_factory=list)
    video_bytes: int | None = None
    decoder: str | None = None
    frames_decoded: int | None = None  # by the backends, to reach wanted frames and for backward passes too
    decode_seconds: float = 0.0
    model_seconds: float = 0.0
    total_seconds: float = 0.0

    def __post_init__(self) -> None:
        if not is_safe_key(self.video_key):
            raise ValueError(
                f"video_key {self.video_key!r} (of {self.original_key!r}) is not tar-safe: "
                f"[A-Za-z0-9_-], 1 to {MAX_KEY_LENGTH} characters; see masklet.io.tars.sanitize_key"
            )
        if self.status not in STATUSES:
            raise ValueError(f"video status must be one of {STATUSES}, got {self.status!r}")
        if (self.status == "error") != bool(self.error):
            raise ValueError(f"video {self.original_key!r}: an error row needs an error message, an ok row none")
        if self.status == "ok":
            missing = [n for n in ("fps", "frame_count", "height", "width") if getattr(self, n) is None]
            if missing:
                raise ValueError(f"video {self.original_key!r} is ok but lacks {', '.join(missing)}")


def repeated_columns(schema: pa.Schema) -> list[str]:
    """The columns worth Parquet's dictionary encoding: the scalar strings, whose values repeat (a video
    key, a reason, a model). Per-frame lists (RLEs, scores) are almost all distinct: a dictionary for
    them is hash tables the size of the row group in the writer's memory, for pages no smaller."""
    return [f.name for f in schema if f.type == pa.string()]


def with_added_columns(table: pa.Table, schema: pa.Schema, columns: Sequence[str]) -> pa.Table:
    """`table` (read from a shard of an older schema version) with the `columns` it lacks that were added
    since (`ADDED_COLUMNS`) as nulls, in the order asked for; any other missing column is an error."""
    missing = [c for c in columns if c not in table.column_names]
    unknown = [c for c in missing if c not in ADDED_COLUMNS]
    if unknown:
        raise KeyError(f"no column(s) {', '.join(unknown)} in the table")
    for name in missing:
        table = table.append_column(schema.field(name), pa.nulls(table.num_rows, schema.field(name).type))
    return table.select(list(columns))


def masklets_table(records: Sequence[MaskletRecord], *, model: str, config_hash: str) -> pa.Table:
    """The masklets of a shard as one Arrow table in MASKLETS_SCHEMA."""
    constants = {"model": model, "config_hash": config_hash}
    return _table(MASKLETS_SCHEMA, records, constants)


def videos_table(
    records: Sequence[VideoRecord],
    masklet_counts: Mapping[str, tuple[int, int]],
    *,
    shard_id: str,
    model: str,
    config_hash: str,
) -> pa.Table:
    """The videos of a shard as one Arrow table in VIDEOS_SCHEMA; `masklet_counts`: video key ->
    (masklets, kept masklets), for the videos that have any."""
    derived = {
        "frames_processed": [len(v.frame_indices) for v in records],
        "num_masklets": [masklet_counts.get(v.video_key, (0, 0))[0] for v in records],
        "num_kept": [masklet_counts.get(v.video_key, (0, 0))[1] for v in records],
    }
    constants = {"shard_id": shard_id, "model": model, "config_hash": config_hash}
    return _table(VIDEOS_SCHEMA, records, constants, derived)


def _table(
    schema: pa.Schema,
    records: Sequence[object],
    constants: Mapping[str, object],
    derived: Mapping[str, list] | None = None,
) -> pa.Table:
    columns = {}
    for f in schema:
        if f.name in constants:
            values = [constants[f.name]] * len(records)
        elif derived and f.name in derived:
            values = derived[f.name]
        else:
            values = [getattr(r, f.name) for r in records]
        columns[f.name] = pa.array(values, type=f.type, memory_pool=ROWS_POOL)
    return pa.table(columns, schema=schema)


@functools.lru_cache(maxsize=64)
def empty_counts(height: int, width: int) -> str:
    """COCO counts of an all-background mask, computed once per size."""
    return rle.encode(np.zeros((height, width), dtype=bool))["counts"]
