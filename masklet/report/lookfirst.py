""" "Where to look first": the kept masklets most likely to be wrong, by masklet.pipelines.doubt.

The ranking is doubt's (`rank`), the one a review export uses; this module only picks which of its
orders the report lists, reads the columns it needs from the report's summary table, picks the
videos the report shows from the top of the lists, and says which frame a link should open.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pyarrow as pa

from masklet.io.schema import MaskletRecord
from masklet.pipelines.doubt import COLUMNS, Masklet, rank

# (doubt order, section title, the column shown beside each masklet)
ORDERS = (
    ("stability", "Lowest stability", "stability_mean"),
    ("pred_iou", "Lowest predicted IoU", "pred_iou_mean"),
    ("edits", "Most edits", "edit_count"),
    ("flicker", "Most flicker (visibility changes)", "visibility_changes"),
    ("short", "Shortest (fewest visible frames)", "num_visible"),
)
PER_LIST = 5
# orders whose signal is a count: a masklet with none (0 edits, never blinking) is no reason to look
_COUNTS = ("edits", "flicker")


def rankings(masklets: pa.Table) -> dict[str, list[Masklet]]:
    """Per order, the kept masklets of the summary table ranked by doubt (count orders: only those with some)."""
    kept = masklets.filter(masklets.column("kept"))
    rows = [Masklet(**r) for r in kept.select(["shard_id", *COLUMNS]).to_pylist()]
    result = {}
    for by, _, _ in ORDERS:
        ranked = rank(rows, by)
        result[by] = [m for m in ranked if m.signal(by) < 0] if by in _COUNTS else ranked
    return result


def videos_to_show(ranked: dict[str, list[Masklet]], count: int) -> list[str]:
    """Up to `count` video keys: those of the top masklets of every list in turn (first of each, second of
    each, ...), so the worst of every kind has its video in the report."""
    chosen: dict[str, None] = {}
    depth = max((len(v) for v in ranked.values()), default=0)
    for i in range(depth):
        for by, _, _ in ORDERS:
            if len(chosen) >= count:
                return list(chosen)
            if i < len(ranked[by]):
                chosen.setdefault(ranked[by][i].video_key)
    return list(chosen)[:count]


def focus_frame(m: MaskletRecord, by: str, shown: Sequence[int]) -> int | None:
    """The shown frame a link for `by` opens: the lowest-scoring frame (stability, pred_iou), the largest
    jump in area (edits: where a correction most likely landed), the first frame it vanishes on after
    appearing (flicker), the first visible one (short); None when no frame of it is shown."""
    on = set(shown)
    frames = [
        (f, a, s, p) for f, a, s, p in zip(m.frame_indices, m.area, m.stability, m.pred_iou, strict=True) if f in on
    ]
    if not frames:
        return None
    visible = [x for x in frames if x[1] > 0]
    if not visible:
        return frames[0][0]
    if by == "stability":
        return min(visible, key=lambda x: x[2])[0]
    if by == "pred_iou":
        return min(visible, key=lambda x: x[3])[0]
    if by == "edits" and len(visible) > 1:
        areas = np.asarray([x[1] for x in visible], dtype=np.float64)
        jumps = np.abs(np.diff(areas)) / np.maximum(areas[1:], areas[:-1])
        return visible[int(np.argmax(jumps)) + 1][0]
    if by == "flicker":
        seen = False
        for f, area, _, _ in frames:
            seen = seen or area > 0
            if seen and area == 0:
                return f
    return visible[0][0]


def largest_frame(m: MaskletRecord, shown: Sequence[int]) -> int | None:
    """The shown frame where the masklet is largest (a dropped tile shows it there); None if never visible on one."""
    on = set(shown)
    best = max(((a, -f) for f, a in zip(m.frame_indices, m.area, strict=True) if f in on and a > 0), default=None)
    return None if best is None else -best[1]
