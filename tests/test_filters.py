import numpy as np
import pytest

from masklet.config import FiltersConfig
from masklet.io import rle
from masklet.io.schema import FILTER_REASONS, MaskletRecord
from masklet.pipelines.filters import apply_filters, reject_reason, tube_ious

H, W = 20, 30
FRAMES = [0, 4, 8, 12]


def box_masks(y: int, x: int, size: int = 6, frames: int = len(FRAMES), drift: int = 1) -> np.ndarray:
    """A square moving right by `drift` pixels per frame."""
    masks = np.zeros((frames, H, W), bool)
    for t in range(frames):
        masks[t, y : y + size, x + t * drift : x + t * drift + size] = True
    return masks


def record(
    mid: int,
    masks: np.ndarray,
    *,
    video: str = "vid",
    frames: list[int] | None = None,
    stability: float = 0.95,
    pred_iou: float = 0.9,
    object_score: float = 2.0,
    edits: int = 0,
) -> MaskletRecord:
    n = len(masks)
    return MaskletRecord.from_frames(
        video,
        mid,
        source="auto",
        frame_indices=frames or FRAMES[:n],
        rles=rle.encode_batch(masks),
        pred_iou=[pred_iou] * n,
        stability=[stability] * n,
        object_score=[object_score] * n,
        edit_count=edits,
    )


def test_defaults_keep_a_plain_masklet():
    r = record(1, box_masks(2, 2))
    assert reject_reason(r, FiltersConfig()) is None
    assert apply_filters([r], FiltersConfig())[0].kept


def flicker() -> np.ndarray:
    masks = box_masks(2, 2)
    masks[[1, 3]] = False  # visible, gone, back, gone: two changes
    return masks


# (case, overrides, record factory, reason): each record fails the named threshold first
CASES = [
    ("never_visible", {}, lambda: record(1, np.zeros((4, H, W), bool)), "never_visible"),
    ("few_frames", {"min_visible_frames": 3}, lambda: record(1, flicker()), "too_few_visible_frames"),
    ("stability", {"min_stability_mean": 0.96}, lambda: record(1, box_masks(2, 2)), "low_stability"),
    ("pred_iou", {"min_pred_iou_mean": 0.95}, lambda: record(1, box_masks(2, 2)), "low_pred_iou"),
    ("object_score", {"min_object_score_mean": 2.5}, lambda: record(1, box_masks(2, 2)), "low_object_score"),
    ("small", {"min_area_rel": 0.1}, lambda: record(1, box_masks(2, 2)), "too_small"),
    ("large", {"max_area_rel": 0.01}, lambda: record(1, box_masks(2, 2)), "too_large"),
    ("flicker", {"max_visibility_changes": 1}, lambda: record(1, flicker()), "too_many_visibility_changes"),
]


@pytest.mark.parametrize("name, overrides, make, reason", CASES, ids=[c[0] for c in CASES])
def test_each_reason(name, overrides, make, reason):
    r = make()
    assert reject_reason(r, FiltersConfig(**overrides)) == reason
    out = apply_filters([r], FiltersConfig(**overrides))[0]
    assert (out.kept, out.reject_reason) == (False, reason)
    assert reject_reason(r, FiltersConfig()) is None or reason == "never_visible"


def test_first_reason_wins_in_documented_order():
    # fails stability, pred IoU, size and flicker at once: stability comes first
    r = record(1, flicker(), stability=0.5, pred_iou=0.5)
    strict = FiltersConfig(min_stability_mean=0.9, min_pred_iou_mean=0.9, min_area_rel=0.5, max_visibility_changes=0)
    assert reject_reason(r, strict) == "low_stability"
    assert reject_reason(r, strict.model_copy(update={"min_stability_mean": 0.0})) == "low_pred_iou"
    assert reject_reason(r, FiltersConfig(min_visible_frames=3, min_stability_mean=0.9)) == "too_few_visible_frames"
    assert [c[3] for c in CASES] + ["duplicate_of"] == list(FILTER_REASONS)


def test_never_visible_kept_when_asked():
    r = record(1, np.zeros((4, H, W), bool))
    assert reject_reason(r, FiltersConfig(min_visible_frames=0)) is None
    assert reject_reason(r, FiltersConfig(min_visible_frames=0, min_stability_mean=0.5)) == "low_stability"


def test_thresholds_compare_as_stored_float32():
    r = record(1, box_masks(2, 2), stability=0.9)  # float32(0.9) < 0.9 in float64
    assert reject_reason(r, FiltersConfig(min_stability_mean=0.9)) is None
    assert reject_reason(r, FiltersConfig(min_stability_mean=0.9000001)) == "low_stability"


def test_tube_iou_matches_dense():
    rng = np.random.default_rng(0)
    records = []
    for mid in range(4):
        masks = rng.random((4, H, W)) < 0.3
        masks[mid % 4] = False
        frames = [0, 4, 8, 12] if mid < 3 else [4, 8, 12, 16]  # the last one is on a shifted frame set
        records.append(record(mid, masks, frames=frames))
    dense = {}
    for r in records:
        for f, m in zip(r.frame_indices, rle.decode_batch(r.rles()), strict=True):
            dense[r.masklet_id, f] = m
    all_frames = sorted({f for r in records for f in r.frame_indices})
    blank = np.zeros((H, W), bool)
    ious = tube_ious(records)
    for i in range(4):
        for j in range(4):
            if i == j:
                continue
            a = [dense.get((i, f), blank) for f in all_frames]
            b = [dense.get((j, f), blank) for f in all_frames]
            inter = sum((x & y).sum() for x, y in zip(a, b, strict=True))
            union = sum((x | y).sum() for x, y in zip(a, b, strict=True))
            assert ious[i, j] == pytest.approx(inter / union)
    assert np.allclose(ious, ious.T)


def test_duplicate_masklet_keeps_the_better_one():
    same = box_masks(3, 3, size=8)
    jitter = same.copy()
    jitter[:, 3, 3:11] = False  # one row less: IoU 7/8 per frame
    other = box_masks(12, 12)
    records = [
        record(5, jitter, stability=0.93),
        record(2, same, stability=0.97),
        record(9, other, stability=0.99),
    ]
    out = apply_filters(records, FiltersConfig(dedup_iou=0.8))
    assert [(r.masklet_id, r.kept, r.reject_reason) for r in out] == [
        (5, False, "duplicate_of:2"),
        (2, True, None),
        (9, True, None),
    ]
    # any input order, same decisions; stricter threshold or dedup off keeps both
    assert {(r.masklet_id, r.reject_reason) for r in apply_filters(records[::-1], FiltersConfig())} == {
        (r.masklet_id, r.reject_reason) for r in out
    }
    assert all(r.kept for r in apply_filters(records, FiltersConfig(dedup_iou=0.9)))
    assert all(r.kept for r in apply_filters(records, FiltersConfig(dedup_iou=None)))


def test_dedup_ties_and_scope():
    same = box_masks(3, 3, size=8)
    # equal quality: the lower id wins
    out = apply_filters([record(8, same), record(4, same)], FiltersConfig())
    assert [r.reject_reason for r in out] == ["duplicate_of:4", None]
    # a masklet dropped by a threshold suppresses nothing; other videos are not compared
    out = apply_filters(
        [record(1, same, stability=0.5), record(2, same, stability=0.8), record(3, same, video="other")],
        FiltersConfig(min_stability_mean=0.6),
    )
    assert [r.reject_reason for r in out] == ["low_stability", None, None]


def test_incoming_decisions_are_ignored():
    r = record(1, box_masks(2, 2))
    dropped = apply_filters([r], FiltersConfig(min_stability_mean=0.99))[0]
    assert not dropped.kept
    assert apply_filters([dropped], FiltersConfig())[0].kept
