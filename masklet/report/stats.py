"""Numbers of a report, from the summary rows and the shard markers: funnel, histograms, throughput, errors."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from masklet.config import FiltersConfig
from masklet.io.schema import REJECT_REASONS

# (column, axis label): the quality statistics a person tunes thresholds on
HISTOGRAMS = (
    ("stability_mean", "stability (mean over visible frames)"),
    ("pred_iou_mean", "predicted IoU (mean over visible frames)"),
    ("num_visible", "length (visible annotated frames)"),
    ("area_rel_mean", "relative area (mean over visible frames)"),
    ("edit_count", "edits"),
    ("visibility_changes", "flicker (visibility changes)"),
)

# column -> (filter key, what it keeps, where its cut line goes relative to the threshold):
# a masklet is dropped when `column` is below a `min` key or above a `max` key (masklet.pipelines.filters);
# on integer columns the cut sits half-way between the last dropped and the first kept value
THRESHOLDS = {
    "stability_mean": (("min_stability_mean", 0.0),),
    "pred_iou_mean": (("min_pred_iou_mean", 0.0),),
    "num_visible": (("min_visible_frames", -0.5),),
    "area_rel_mean": (("min_area_rel", 0.0), ("max_area_rel", 0.0)),
    "visibility_changes": (("max_visibility_changes", 0.5),),
}
# a threshold at these values drops nothing, so it draws no line
_INACTIVE = {
    "min_stability_mean": 0.0,
    "min_pred_iou_mean": 0.0,
    "min_visible_frames": 0,
    "min_area_rel": 0.0,
    "max_area_rel": 1.0,
    "max_visibility_changes": None,
}


@dataclass(frozen=True)
class Funnel:
    """Masklets produced, dropped per filter reason (in the filters' order), and kept."""

    produced: int
    dropped: dict[str, int]
    kept: int


@dataclass(frozen=True)
class ShardThroughput:
    """One committed shard's counts and speed, from its `_done` marker."""

    shard_id: str
    videos: int
    errors: int
    frames: int
    masklets: int
    kept: int
    wall_seconds: float
    model_seconds: float

    @property
    def frames_per_second(self) -> float:
        return self.frames / self.wall_seconds if self.wall_seconds > 0 else 0.0


def reason_class(reason: str) -> str:
    """`duplicate_of:7` -> `duplicate_of`: one bar per filter, not per masklet."""
    return reason.split(":", 1)[0]


def funnel(masklets: pa.Table) -> Funnel:
    kept = masklets.column("kept").to_pylist()
    counts = Counter(reason_class(r) for r in masklets.column("reject_reason").to_pylist() if r is not None)
    order = {name: i for i, name in enumerate(REJECT_REASONS)}
    dropped = dict(sorted(counts.items(), key=lambda item: (order.get(item[0], len(order)), item[0])))
    return Funnel(produced=len(kept), dropped=dropped, kept=sum(kept))


def histogram_values(masklets: pa.Table, column: str) -> tuple[np.ndarray, np.ndarray]:
    """Values of `column` for kept and for dropped masklets; nulls (never visible) left out."""
    values = np.array([np.nan if v is None else v for v in masklets.column(column).to_pylist()], dtype=np.float64)
    kept = np.asarray(masklets.column("kept").to_pylist(), dtype=bool)
    present = ~np.isnan(values)
    return values[kept & present], values[~kept & present]


def threshold_lines(filters: dict | None) -> dict[str, list[tuple[float, str]]]:
    """Per histogram column, the cut lines of the filter thresholds that produced the output: (x, label).

    `filters`: job.json's config.filters (keys it lacks take FiltersConfig's defaults); None: no lines.
    """
    if filters is None:
        return {}
    values = {**FiltersConfig().model_dump(), **filters}
    lines: dict[str, list[tuple[float, str]]] = {}
    for column, keys in THRESHOLDS.items():
        for key, offset in keys:
            value = values.get(key)
            if value is None or value == _INACTIVE[key]:
                continue
            lines.setdefault(column, []).append((float(value) + offset, f"{key} = {value}"))
    return lines


def reason_detail(row: dict, filters: dict | None) -> str:
    """Why a dropped masklet was dropped, with its value and the threshold it failed where the row has them."""
    reason = row.get("reject_reason") or ""
    kind, _, arg = reason.partition(":")
    f = filters or {}

    def cmp(value: object, sign: str, key: str, fmt: str = ".3f") -> str:
        shown = "—" if value is None else format(value, fmt)
        return f"{shown} {sign} {key} {f[key]}" if key in f and f[key] is not None else shown

    details = {
        "never_visible": lambda: "no visible annotated frame",
        "too_few_visible_frames": lambda: (
            "visible frames " + cmp(row.get("num_visible"), "<", "min_visible_frames", "d")
        ),
        "low_stability": lambda: "stability " + cmp(row.get("stability_mean"), "<", "min_stability_mean"),
        "low_pred_iou": lambda: "predicted IoU " + cmp(row.get("pred_iou_mean"), "<", "min_pred_iou_mean"),
        "low_object_score": lambda: (
            "mean object score below min_object_score_mean " + str(f.get("min_object_score_mean", ""))
        ),
        "too_small": lambda: "relative area " + cmp(row.get("area_rel_mean"), "<", "min_area_rel", ".4f"),
        "too_large": lambda: "relative area " + cmp(row.get("area_rel_mean"), ">", "max_area_rel", ".4f"),
        "too_many_visibility_changes": lambda: (
            "visibility changes " + cmp(row.get("visibility_changes"), ">", "max_visibility_changes", "d")
        ),
        "duplicate_of": lambda: f"tube IoU with masklet {arg} >= dedup_iou {f.get('dedup_iou', '?')}",
        "not_sampled": lambda: "not picked by masklet sample",
    }
    return f"{reason} ({details[kind]()})" if kind in details else reason


def throughput(markers: dict[str, dict]) -> list[ShardThroughput]:
    rows = []
    for shard_id, marker in sorted(markers.items()):
        counts, seconds = marker.get("counts", {}), marker.get("seconds", {})
        rows.append(
            ShardThroughput(
                shard_id=shard_id,
                videos=int(counts.get("videos", 0)),
                errors=int(counts.get("videos_error", 0)),
                frames=int(counts.get("frames_processed", 0)),
                masklets=int(counts.get("masklets", 0)),
                kept=int(counts.get("masklets_kept", 0)),
                wall_seconds=float(seconds.get("wall", 0.0)),
                model_seconds=float(seconds.get("model", 0.0)),
            )
        )
    return rows


def errors(videos: pa.Table) -> list[dict]:
    """The failed videos with their reasons, in shard then input order."""
    return [v for v in videos.to_pylist() if v["status"] == "error"]


def totals(videos: pa.Table, markers: dict[str, dict]) -> dict[str, int | float]:
    """Headline counts of the committed shards."""
    status = videos.column("status").to_pylist()
    rows = throughput(markers)
    return {
        "shards": len(markers),
        "videos": len(status),
        "videos_ok": status.count("ok"),
        "videos_error": status.count("error"),
        "frames": sum(r.frames for r in rows),
        "masklets": sum(r.masklets for r in rows),
        "masklets_kept": sum(r.kept for r in rows),
        "shard_seconds_summed": round(sum(r.wall_seconds for r in rows), 3),  # workers overlap: not the job's time
    }
