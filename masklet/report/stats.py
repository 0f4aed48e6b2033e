"""Numbers of a report, from the summary rows and the shard markers: funnel, histograms, throughput, errors."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from masklet.io.schema import REJECT_REASONS

# (column, axis label): the quality statistics a person tunes thresholds on
HISTOGRAMS = (
    ("stability_mean", "stability (mean over visible frames)"),
    ("pred_iou_mean", "predicted IoU (mean over visible frames)"),
    ("num_visible", "length (visible annotated frames)"),
    ("area_rel_mean", "relative area (mean over visible frames)"),
    ("edit_count", "edits"),
)


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
