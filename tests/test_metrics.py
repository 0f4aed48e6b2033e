"""DAVIS J&F and masklet matching on hand-made masks whose scores are worked out by hand."""

import numpy as np
import pytest
from scipy import ndimage

from masklet.eval.metrics import (
    bound_pixels,
    boundary_f,
    boundary_map,
    masklet_scores,
    match_masklets,
    region_j,
)


def box(y: int, x: int, h: int, w: int, shape: tuple[int, int] = (40, 40)) -> np.ndarray:
    m = np.zeros(shape, dtype=bool)
    m[y : y + h, x : x + w] = True
    return m


def dot(y: int, x: int, shape: tuple[int, int] = (20, 20)) -> np.ndarray:
    return box(y, x, 1, 1, shape)


def test_boundary_map_of_single_pixels():
    # The boundary sits on the pixel and on the row above / column left of it.
    assert set(zip(*np.nonzero(boundary_map(dot(3, 3, (6, 6)))), strict=True)) == {(2, 2), (2, 3), (3, 2), (3, 3)}
    assert set(zip(*np.nonzero(boundary_map(dot(0, 0, (6, 6)))), strict=True)) == {(0, 0)}
    # The image border is not a boundary, so the bottom-right pixel keeps only its neighbours.
    assert set(zip(*np.nonzero(boundary_map(dot(5, 5, (6, 6)))), strict=True)) == {(4, 4), (4, 5), (5, 4)}
    assert not boundary_map(np.ones((6, 6), dtype=bool)).any()


def test_bound_pixels_rounds_the_diagonal_fraction_up():
    assert bound_pixels((100, 100)) == 2  # 0.008 * 141.4 = 1.13
    assert bound_pixels((1080, 1920)) == 18  # 0.008 * 2202.9 = 17.6
    assert bound_pixels((100, 100), bound_th=3) == 3
    with pytest.raises(ValueError, match="bound_th"):
        bound_pixels((100, 100), bound_th=-1)


def test_identical_masks_score_one():
    for m in (box(5, 7, 10, 12), dot(4, 4)):
        assert region_j(m, m) == 1.0
        assert boundary_f(m, m) == 1.0


def test_disjoint_masks_score_zero():
    a, b = box(2, 2, 5, 5), box(20, 20, 5, 5)
    assert region_j(a, b) == 0.0
    assert boundary_f(a, b) == 0.0


def test_square_shifted_two_pixels():
    a, b = box(10, 10, 10, 10), box(10, 12, 10, 10)
    assert region_j(a, b) == 80 / 120
    # Every boundary pixel has its shifted copy 2 px away: within a 2 px tolerance, not 1 px.
    assert boundary_f(a, b, bound_th=2) == 1.0
    assert boundary_f(a, b, bound_th=1) < 1.0


def test_shift_beyond_tolerance_scores_zero():
    # 4x4 squares 8 px apart: boundary columns 9..13 and 17..21 are 4 px apart.
    assert boundary_f(box(10, 10, 4, 4), box(10, 18, 4, 4), bound_th=3) == 0.0
    assert boundary_f(box(10, 10, 4, 4), box(10, 18, 4, 4), bound_th=4) > 0.0


def test_boundary_f_of_single_pixels_by_hand():
    # Boundaries are the 2x2 blocks ending at each pixel; 100x100 gives the default 2 px tolerance.
    shape = (100, 100)
    assert boundary_f(dot(5, 5, shape), dot(5, 7, shape)) == 1.0
    # 3 px apart: the two nearer columns match (2 px), the outer ones (3 px) do not: P = R = 1/2.
    assert boundary_f(dot(5, 5, shape), dot(5, 8, shape)) == 0.5
    assert boundary_f(dot(5, 5), dot(5, 9), bound_th=2) == 0.0


def test_tolerance_is_a_disk_not_a_square():
    # Nearest boundary pixels (5, 5) and (7, 7) are sqrt(8) = 2.83 px apart.
    assert boundary_f(dot(5, 5), dot(8, 8), bound_th=2) == 0.0
    # At 3 px only that one pair matches: P = R = 1/4.
    assert boundary_f(dot(5, 5), dot(8, 8), bound_th=3) == 0.25


def test_empty_conventions():
    empty, full, some = np.zeros((20, 20), bool), np.ones((20, 20), bool), box(3, 3, 5, 5, (20, 20))
    assert region_j(empty, empty) == 1.0
    assert boundary_f(empty, empty) == 1.0
    for a, b in ((empty, some), (some, empty)):
        assert region_j(a, b) == 0.0
        assert boundary_f(a, b) == 0.0
    # A full-frame mask has no boundary: equal to itself, and F = 0 against a boundary.
    assert boundary_f(full, full) == 1.0
    assert boundary_f(full, some) == 0.0


def test_shape_mismatch_names_the_shapes():
    with pytest.raises(ValueError, match=r"\(4, 4\) and \(4, 5\)"):
        region_j(np.zeros((4, 4)), np.zeros((4, 5)))
    with pytest.raises(ValueError, match=r"\(4, 4\) and \(4, 5\)"):
        boundary_f(np.zeros((4, 4)), np.zeros((4, 5)))
    with pytest.raises(ValueError, match=r"\(2, 4, 4\), \(2, 4, 5\)"):
        masklet_scores(np.zeros((2, 4, 4)), np.zeros((2, 4, 5)))
    with pytest.raises(ValueError, match=r"\(4, 4\)"):
        masklet_scores(np.zeros((4, 4)), np.zeros((4, 4)))
    with pytest.raises(ValueError, match=r"\(3, 4, 4\), \(3, 5, 4\)"):
        match_masklets([np.zeros((3, 4, 4)), np.zeros((3, 5, 4))], [np.zeros((3, 4, 4))])


def test_masklet_scores_average_over_frames():
    some, empty = box(3, 3, 5, 5), np.zeros((40, 40), bool)
    pred = np.stack([some, empty, empty])
    gt = np.stack([some, empty, some])
    davis = masklet_scores(pred, gt)
    np.testing.assert_array_equal(davis.j_frames, [1.0, 1.0, 0.0])
    np.testing.assert_array_equal(davis.f_frames, [1.0, 1.0, 0.0])
    np.testing.assert_array_equal(davis.counted, [True, True, True])
    assert (davis.j, davis.f, davis.jf) == pytest.approx((2 / 3, 2 / 3, 2 / 3))
    present = masklet_scores(pred, gt, ignore_empty_frames=True)
    np.testing.assert_array_equal(present.counted, [True, False, True])
    assert (present.j, present.f, present.jf) == (0.5, 0.5, 0.5)


def test_masklet_scores_mix_j_and_f():
    a = box(10, 10, 10, 10)
    score = masklet_scores(np.stack([box(10, 12, 10, 10), a]), np.stack([a, a]), bound_th=2)
    assert (score.j, score.f, score.jf) == pytest.approx((5 / 6, 1.0, 11 / 12))


def test_match_recovers_a_permutation_and_ignores_noise():
    t = 4
    gts = [np.stack([box(2 + i, 2 + 12 * k, 6, 6, (64, 64)) for i in range(t)]) for k in range(3)]
    noise = np.stack([box(50, 50, 3, 3, (64, 64))] * t)
    result = match_masklets([gts[2], gts[0], gts[1], noise], gts)
    assert sorted(result.pairs) == [(0, 2), (1, 0), (2, 1)]
    np.testing.assert_array_equal(result.pair_scores, [1.0, 1.0, 1.0])
    np.testing.assert_array_equal(result.best_per_gt, [1.0, 1.0, 1.0])
    np.testing.assert_array_equal(result.jf[3], [0.0, 0.0, 0.0])
    assert (result.recall, result.precision) == (1.0, 0.75)


def test_match_threshold_is_inclusive():
    gt = box(10, 10, 10, 10)[None]
    shifted = box(10, 12, 10, 10)[None]  # J = 2/3, F = 1 at 2 px: J&F = 5/6
    hit = match_masklets([shifted], [gt], threshold=0.8, bound_th=2)
    assert hit.pairs == [(0, 0)]
    assert hit.pair_scores == pytest.approx([5 / 6])
    miss = match_masklets([shifted], [gt], threshold=0.85, bound_th=2)
    assert (miss.pairs, miss.recall, miss.precision) == ([], 0.0, 0.0)
    assert miss.best_per_gt == pytest.approx([5 / 6])
    assert match_masklets([gt], [gt], threshold=1.0).pairs == [(0, 0)]


def test_match_is_one_to_one():
    gt = box(5, 5, 8, 8)[None]
    result = match_masklets([gt, gt], [gt])
    assert len(result.pairs) == 1
    assert (result.recall, result.precision) == (1.0, 0.5)


def test_match_does_not_count_shared_empty_frames():
    # GT seen only in frame 0, prediction only in frame 9: DAVIS J&F is 0.8 from 8 empty frames.
    gt, pred = np.zeros((2, 10, 40, 40), bool)
    gt[0, 5:10, 5:10] = True
    pred[9, 5:10, 5:10] = True
    assert masklet_scores(pred, gt).jf == pytest.approx(0.8)
    result = match_masklets([pred], [gt])
    assert result.jf[0, 0] == 0.0
    assert (result.pairs, result.recall, result.precision) == ([], 0.0, 0.0)


def test_assignment_maximises_matched_total():
    # Scores are fractions of 10 frames where a prediction equals a GT exactly (other frames score 0):
    # pred0 is A in 5 frames and B in 4, pred1 is A in 4: J&F(0,A)=0.5, (0,B)=0.4, (1,A)=0.4, (1,B)=0.
    a, b = box(2, 2, 6, 6), box(25, 25, 6, 6)
    empty = np.zeros_like(a)
    gt_a, gt_b = np.stack([a] * 10), np.stack([b] * 10)
    pred0 = np.stack([a] * 5 + [b] * 4 + [empty])
    pred1 = np.stack([a] * 4 + [empty] * 6)
    result = match_masklets([pred0, pred1], [gt_a, gt_b], threshold=0.3)
    np.testing.assert_allclose(result.jf, [[0.5, 0.4], [0.4, 0.0]])
    # Greedy best-first would take (0, A) and leave B unmatched.
    assert sorted(result.pairs) == [(0, 1), (1, 0)]
    # At 0.5 the raw-score optimum (0.4 + 0.4) has no match; (0, A) alone does.
    assert match_masklets([pred0, pred1], [gt_a, gt_b], threshold=0.5).pairs == [(0, 0)]


def test_match_with_no_predictions_or_no_ground_truth():
    gt = box(5, 5, 8, 8)[None]
    no_preds = match_masklets([], [gt, gt])
    assert (no_preds.recall, no_preds.precision, no_preds.pairs) == (0.0, 1.0, [])
    assert no_preds.jf.shape == (0, 2)
    np.testing.assert_array_equal(no_preds.best_per_gt, [0.0, 0.0])
    no_gts = match_masklets([gt], [])
    assert (no_gts.recall, no_gts.precision, no_gts.pairs) == (1.0, 0.0, [])
    assert no_gts.best_per_gt.shape == (0,)
    neither = match_masklets([], [])
    assert (neither.recall, neither.precision) == (1.0, 1.0)


def reference_f(pred: np.ndarray, gt: np.ndarray, radius: int) -> float:
    """Full-frame DAVIS F: dilation by a disk structuring element, no cropping."""
    yy, xx = np.mgrid[-radius : radius + 1, -radius : radius + 1]
    disk = yy**2 + xx**2 <= radius**2
    pb, gb = boundary_map(pred), boundary_map(gt)
    if not pb.any() or not gb.any():
        return float(pb.any() == gb.any())
    precision = (pb & ndimage.binary_dilation(gb, disk)).sum() / pb.sum()
    recall = (gb & ndimage.binary_dilation(pb, disk)).sum() / gb.sum()
    return 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)


def random_masklet(rng: np.random.Generator, t: int, shape: tuple[int, int]) -> np.ndarray:
    """Ragged blobs in random boxes, often touching the image edge."""
    out = np.zeros((t, *shape), dtype=bool)
    for i in range(t):
        y0, x0 = rng.integers(-5, shape[0]), rng.integers(-5, shape[1])
        region = (slice(max(y0, 0), y0 + rng.integers(1, 15)), slice(max(x0, 0), x0 + rng.integers(1, 15)))
        out[i][region] = rng.random(out[i][region].shape) < 0.7
    return out


def test_cropped_sparse_scores_match_full_frame_reference():
    rng = np.random.default_rng(0)
    shape = (30, 37)
    preds = [random_masklet(rng, 6, shape) for _ in range(5)]
    gts = [random_masklet(rng, 6, shape) for _ in range(3)]
    result = match_masklets(preds, gts, bound_th=2)
    for p, pred in enumerate(preds):
        for g, gt in enumerate(gts):
            score = masklet_scores(pred, gt, bound_th=2, ignore_empty_frames=True)
            assert result.jf[p, g] == pytest.approx(score.jf, abs=1e-12)
            for i in range(6):
                assert score.j_frames[i] == pytest.approx(region_j(pred[i], gt[i]), abs=1e-12)
                assert score.f_frames[i] == pytest.approx(reference_f(pred[i], gt[i], 2), abs=1e-12)
