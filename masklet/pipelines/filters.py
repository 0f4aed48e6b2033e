"""Keep or drop masklets: quality thresholds, then spatio-temporal de-duplication.

`apply_filters` is a pure function of the records and a `FiltersConfig`: it ignores the `kept` /
`reject_reason` a record arrives with, so re-filtering rows read back from Parquet gives exactly
what the worker decided with the same thresholds. For that, every summary value is compared as the
float32 the Parquet column stores (the threshold too: a mean stored as 0.9 passes
`min_stability_mean=0.9`), and tube IoUs are built from integer pixel counts.

A person's verdict (`review_verdict`, from `masklet review import`) outranks every threshold: a
masklet a person rejected is dropped with reason `review`, one they accepted or corrected is kept
(and is nobody's duplicate). Every other masklet gets the first failing reason, checked in this
order (`FILTER_REASONS`, beside the output schema in masklet.io.schema):

1. `never_visible`: no visible frame (only when `min_visible_frames` >= 1).
2. `too_few_visible_frames`: `num_visible` < `min_visible_frames`.
3. `low_stability`: `stability_mean` < `min_stability_mean` (checked when the threshold is > 0).
4. `low_pred_iou`: `pred_iou_mean` < `min_pred_iou_mean` (checked when > 0).
5. `low_object_score`: mean object-score logit over visible frames < `min_object_score_mean` (when set).
6. `too_small`: `area_rel_mean` < `min_area_rel`.
7. `too_large`: `area_rel_mean` > `max_area_rel`.
8. `too_many_visibility_changes`: `visibility_changes` > `max_visibility_changes` (when set).
9. `duplicate_of:<masklet_id>`: among the masklets of one video that pass 1-8, tube IoU >= `dedup_iou`
   with a better one that is kept (greedy, best first, as box NMS).

Tube IoU of two masklets = sum over frames of mask intersections / sum over frames of mask unions,
over every frame either is on (a frame one of them is not tracked on counts as empty for it). It is
high only when the masks agree on nearly all frames where either is visible. Better = higher
`stability_mean`, then higher `pred_iou_mean`, then more visible frames, then the lower masklet id.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace

import numpy as np

from masklet.config import FiltersConfig
from masklet.io import rle
from masklet.io.schema import REVIEW_REJECTED, MaskletRecord


def _f32(value: float | None) -> float:
    """The value as its float32 column stores it; a null mean (never visible) is -inf."""
    return -math.inf if value is None else float(np.float32(value))


def object_score_mean(record: MaskletRecord) -> float | None:
    """Mean object-score logit over the visible frames; None if the masklet is never visible."""
    visible = [s for s, a in zip(record.object_score, record.area, strict=True) if a > 0]
    return float(np.mean(np.asarray(visible, dtype=np.float32), dtype=np.float64)) if visible else None


def reject_reason(record: MaskletRecord, config: FiltersConfig) -> str | None:
    """The first threshold the masklet fails (reasons 1-8 of the module doc), or None."""
    if record.num_visible == 0 and config.min_visible_frames >= 1:
        return "never_visible"
    if record.num_visible < config.min_visible_frames:
        return "too_few_visible_frames"
    if config.min_stability_mean > 0 and _f32(record.stability_mean) < _f32(config.min_stability_mean):
        return "low_stability"
    if config.min_pred_iou_mean > 0 and _f32(record.pred_iou_mean) < _f32(config.min_pred_iou_mean):
        return "low_pred_iou"
    if config.min_object_score_mean is not None and _f32(object_score_mean(record)) < _f32(
        config.min_object_score_mean
    ):
        return "low_object_score"
    area = _f32(record.area_rel_mean)
    if area < _f32(config.min_area_rel):
        return "too_small"
    if area > _f32(config.max_area_rel):
        return "too_large"
    if config.max_visibility_changes is not None and record.visibility_changes > config.max_visibility_changes:
        return "too_many_visibility_changes"
    return None


def quality_key(record: MaskletRecord) -> tuple[float, float, int, int]:
    """Sort key, best first: stability, predicted IoU, visible frames, then lower id."""
    return (-_f32(record.stability_mean), -_f32(record.pred_iou_mean), -record.num_visible, record.masklet_id)


def tube_ious(records: Sequence[MaskletRecord]) -> np.ndarray:
    """[k, k] tube IoUs of masklets of one video, from their RLEs (`tube_sums`)."""
    return ious_from_sums(*tube_sums(records))


def ious_from_sums(inter: np.ndarray, total: np.ndarray) -> np.ndarray:
    """Tube IoUs from summed intersections [k, k] and summed areas [k]: |A u B| = |A| + |B| - |A n B|."""
    union = total[:, None] + total[None, :] - inter
    ious = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
    np.fill_diagonal(ious, 1.0)
    return ious


def tube_sums(records: Sequence[MaskletRecord]) -> tuple[np.ndarray, np.ndarray]:
    """[k, k] intersections and [k] areas of masklets of one video, summed over frames, from their RLEs.

    Per frame, only the visible masks are decoded (one batch), and intersections are counted only
    on pixels that two or more of them cover, so the cost is one pass over the masks plus a small
    product. Sums over disjoint sets of frames add up (a split video's chunks, masklet.jobs.chunks).
    """
    k = len(records)
    sizes = {(r.height, r.width) for r in records}
    if len(sizes) > 1:
        raise ValueError(f"masklets of one video have different mask sizes {sorted(sizes)}")
    total = np.array([sum(r.area) for r in records], dtype=np.float64)
    inter = np.zeros((k, k), dtype=np.float64)
    on_frame: dict[int, list[tuple[int, str]]] = {}
    for i, r in enumerate(records):
        for f, counts in zip(r.frame_indices, r.rle, strict=True):
            if counts:
                on_frame.setdefault(f, []).append((i, counts))
    for entries in on_frame.values():
        if len(entries) < 2:
            continue
        h, w = records[entries[0][0]].height, records[entries[0][0]].width
        masks = rle.decode_batch([{"size": [h, w], "counts": c} for _, c in entries]).reshape(len(entries), -1)
        shared = masks.view(np.uint8).sum(0, dtype=np.uint16) > 1
        if shared.any():
            sub = np.compress(shared, masks, axis=1).astype(np.float32)  # exact integer sums below 2**24 pixels
            idx = np.array([i for i, _ in entries])
            inter[np.ix_(idx, idx)] += sub @ sub.T
    return inter, total


def duplicates(records: Sequence[MaskletRecord], dedup_iou: float) -> list[int | None]:
    """Per record, the id of the better kept masklet it duplicates, or None (greedy NMS on tube IoU)."""
    if len(records) < 2:
        return [None] * len(records)
    keys = [quality_key(r) for r in records]
    return greedy_duplicates(keys, [r.masklet_id for r in records], tube_ious(records), dedup_iou)


def greedy_duplicates(
    keys: Sequence[tuple[float, float, int, int]], ids: Sequence[int], ious: np.ndarray, dedup_iou: float
) -> list[int | None]:
    """Per masklet (its `quality_key`, id, and tube IoUs with the others), the id of the better kept one
    it duplicates, or None: best first, each one a duplicate of the first survivor it overlaps enough."""
    result: list[int | None] = [None] * len(ids)
    survivors: list[int] = []
    for i in sorted(range(len(ids)), key=lambda i: keys[i]):
        better = next((j for j in survivors if ious[i, j] >= dedup_iou), None)
        if better is None:
            survivors.append(i)
        else:
            result[i] = ids[better]
    return result


def apply_filters(records: Sequence[MaskletRecord], config: FiltersConfig) -> list[MaskletRecord]:
    """The records, in the same order, with `kept` and `reject_reason` decided afresh (a person's
    verdict stands)."""
    reasons = [
        REVIEW_REJECTED if r.review_verdict == "rejected" else None if r.review_verdict else reject_reason(r, config)
        for r in records
    ]
    if config.dedup_iou is not None:
        by_video: dict[str, list[int]] = {}
        for i, (r, why) in enumerate(zip(records, reasons, strict=True)):
            if why is None and r.review_verdict is None:
                by_video.setdefault(r.video_key, []).append(i)
        for idx in by_video.values():
            for i, dup in zip(idx, duplicates([records[i] for i in idx], config.dedup_iou), strict=True):
                if dup is not None:
                    reasons[i] = f"duplicate_of:{dup}"
    return [replace(r, kept=why is None, reject_reason=why) for r, why in zip(records, reasons, strict=True)]
