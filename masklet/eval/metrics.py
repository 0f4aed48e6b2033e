"""DAVIS-style video segmentation metrics: region J, boundary F, per-masklet J&F, and matching.

J and F follow the DAVIS 2017 evaluation (Pont-Tuset et al.): J is the IoU, F the boundary
F-measure of `boundary_map` boundaries within a disk tolerance, and empty-vs-empty scores 1.0
for both. Masks are boolean; anything non-zero is foreground. Boundaries and their dilations are
computed once per mask and frame, on the object's bounding box, and every pairwise count is a
sparse matrix product, so `match_masklets` costs about the sum of the object sizes rather than
the number of pairs times the frame size.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage, sparse
from scipy.optimize import linear_sum_assignment


def boundary_map(mask: np.ndarray) -> np.ndarray:
    """DAVIS `seg2bmap` boundaries of a [..., H, W] mask.

    A pixel is on the boundary when it differs from its east, south or south-east neighbour, so
    the boundary sits on the mask's own pixels and on the row above / column left of it. The
    image border is not a boundary: a mask covering the whole frame has none.
    """
    m = np.asarray(mask, dtype=bool)
    e, s, se = np.zeros_like(m), np.zeros_like(m), np.zeros_like(m)
    e[..., :, :-1] = m[..., :, 1:]
    s[..., :-1, :] = m[..., 1:, :]
    se[..., :-1, :-1] = m[..., 1:, 1:]
    b = (m ^ e) | (m ^ s) | (m ^ se)
    b[..., -1, :] = m[..., -1, :] ^ e[..., -1, :]
    b[..., :, -1] = m[..., :, -1] ^ s[..., :, -1]
    b[..., -1, -1] = False
    return b


def bound_pixels(shape: tuple[int, ...], bound_th: float = 0.008) -> float:
    """Tolerance radius in pixels: a fraction of the image diagonal (rounded up) when below 1."""
    if bound_th < 0:
        raise ValueError(f"bound_th must be >= 0, got {bound_th}")
    return bound_th if bound_th >= 1 else math.ceil(bound_th * math.hypot(shape[-2], shape[-1]))


def region_j(pred: np.ndarray, gt: np.ndarray) -> float:
    """Jaccard index (IoU) of two [H, W] masks; 1.0 when both are empty."""
    p, g = _pair(pred, gt)
    union = np.count_nonzero(p | g)
    return np.count_nonzero(p & g) / union if union else 1.0


def boundary_f(pred: np.ndarray, gt: np.ndarray, bound_th: float = 0.008) -> float:
    """DAVIS boundary F-measure of two [H, W] masks; 1.0 when both boundaries are empty, 0.0 if one is."""
    p, g = _pair(pred, gt)
    return float(_frame_scores([p], [g], bound_pixels(p.shape, bound_th))[1][0, 0])


@dataclass(frozen=True)
class MaskletScore:
    """J, F and their mean over the frames in `counted`; per-frame values cover all T frames."""

    j: float
    f: float
    jf: float
    j_frames: np.ndarray  # [T] float
    f_frames: np.ndarray  # [T] float
    counted: np.ndarray  # [T] bool, frames that enter the means


def masklet_scores(
    pred: np.ndarray, gt: np.ndarray, bound_th: float = 0.008, ignore_empty_frames: bool = False
) -> MaskletScore:
    """J&F of one predicted masklet against one ground-truth masklet, both [T, H, W].

    Pass only annotated frames (e.g. SA-V's 6 fps subset; DAVIS semi-supervised also drops the
    first and last frame). By default every frame counts, empty-vs-empty as 1.0, as DAVIS does.
    With `ignore_empty_frames` only frames where either mask is non-empty count, so two masklets
    that never co-occur score 0 instead of the share of frames where both are absent; with no
    frame left (both empty throughout) the score is 1.0, as for empty-vs-empty.
    """
    m = _score_matrices([pred], [gt], bound_th, ignore_empty_frames)
    return MaskletScore(
        j=float(m.j[0, 0]),
        f=float(m.f[0, 0]),
        jf=float(m.jf[0, 0]),
        j_frames=m.j_frames[0, 0],
        f_frames=m.f_frames[0, 0],
        counted=m.counted[0, 0],
    )


@dataclass(frozen=True)
class MatchResult:
    """One-to-one matching of predicted to ground-truth masklets.

    Matrices are [num_preds, num_gts]. Recall is matched GT / GT and precision matched preds /
    preds; an empty denominator gives 1.0 (nothing missed, nothing spurious), so no predictions
    against some GT give recall 0, precision 1, and predictions against no GT recall 1, precision 0.
    """

    j: np.ndarray
    f: np.ndarray
    jf: np.ndarray
    pairs: list[tuple[int, int]]  # (pred index, gt index), only pairs with jf >= threshold
    pair_scores: np.ndarray  # [len(pairs)] jf of each pair
    best_per_gt: np.ndarray  # [num_gts] best jf of any prediction, regardless of the assignment
    recall: float
    precision: float


def match_masklets(
    preds: Sequence[np.ndarray],
    gts: Sequence[np.ndarray],
    threshold: float = 0.5,
    bound_th: float = 0.008,
) -> MatchResult:
    """Match automatic masklets to ground truth by J&F, each [T, H, W].

    Pair scores use `masklet_scores(..., ignore_empty_frames=True)`: with the DAVIS convention a
    prediction that never meets a GT object seen in few frames would score ~1 from the shared
    empty frames and count as a match. The assignment is Hungarian on J&F with sub-threshold
    scores set to 0, so it maximises the total J&F of matched pairs and a sub-threshold pair can
    never displace a match; a pair counts as a match when its J&F >= threshold.
    """
    m = _score_matrices(preds, gts, bound_th, ignore_empty_frames=True)
    num_preds, num_gts = m.jf.shape
    gain = np.where(m.jf >= threshold, m.jf, 0.0)
    rows, cols = linear_sum_assignment(gain, maximize=True)
    keep = m.jf[rows, cols] >= threshold
    rows, cols = rows[keep], cols[keep]
    return MatchResult(
        j=m.j,
        f=m.f,
        jf=m.jf,
        pairs=[(int(r), int(c)) for r, c in zip(rows, cols, strict=True)],
        pair_scores=m.jf[rows, cols],
        best_per_gt=m.jf.max(axis=0) if num_preds else np.zeros(num_gts),
        recall=len(cols) / num_gts if num_gts else 1.0,
        precision=len(rows) / num_preds if num_preds else 1.0,
    )


@dataclass(frozen=True)
class _Matrices:
    j: np.ndarray  # [P, G]
    f: np.ndarray
    jf: np.ndarray
    j_frames: np.ndarray  # [P, G, T]
    f_frames: np.ndarray
    counted: np.ndarray  # [P, G, T] bool


def _score_matrices(
    preds: Sequence[np.ndarray], gts: Sequence[np.ndarray], bound_th: float, ignore_empty_frames: bool
) -> _Matrices:
    """Per-frame J and F of every (pred, gt) pair, and their means over the counted frames."""
    masks = [np.asarray(x, dtype=bool) for x in (*preds, *gts)]
    shapes = {x.shape for x in masks}
    if len(shapes) > 1 or any(len(s) != 3 for s in shapes):
        raise ValueError(f"expected masklets of one [T, H, W] shape, got shapes {sorted(shapes)}")
    num_preds, num_gts = len(preds), len(gts)
    t = masks[0].shape[0] if masks else 0
    j_frames = np.ones((num_preds, num_gts, t))
    f_frames = np.ones((num_preds, num_gts, t))
    counted = np.ones((num_preds, num_gts, t), dtype=bool)
    if num_preds and num_gts:
        radius = bound_pixels(masks[0].shape, bound_th)
        for i in range(t):
            p, g = [x[i] for x in masks[:num_preds]], [x[i] for x in masks[num_preds:]]
            j_frames[..., i], f_frames[..., i], p_on, g_on = _frame_scores(p, g, radius)
            if ignore_empty_frames:
                counted[..., i] = p_on[:, None] | g_on[None, :]
    n = counted.sum(-1)
    j = np.where(n > 0, (j_frames * counted).sum(-1) / np.maximum(n, 1), 1.0)
    f = np.where(n > 0, (f_frames * counted).sum(-1) / np.maximum(n, 1), 1.0)
    return _Matrices(j, f, (j + f) / 2, j_frames, f_frames, counted)


def _pair(pred: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Two [H, W] masks as bool arrays."""
    if np.ndim(pred) != 2 or np.shape(pred) != np.shape(gt):
        raise ValueError(f"expected pred and gt of one [H, W] shape, got {np.shape(pred)} and {np.shape(gt)}")
    return np.asarray(pred, dtype=bool), np.asarray(gt, dtype=bool)


def _frame_scores(
    preds: Sequence[np.ndarray], gts: Sequence[np.ndarray], radius: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """J [P, G], F [P, G] and which masks are non-empty ([P], [G]) for the [H, W] masks of one frame.

    Pairwise pixel counts are products of sparse [N, H*W] pixel-set matrices, so the cost follows
    object sizes and overlaps, not frame size times the number of pairs.
    """
    size = preds[0].size
    p_sets = [_pixel_sets(m, radius) for m in preds]
    g_sets = [_pixel_sets(m, radius) for m in gts]

    def counts(a: int, b: int) -> np.ndarray:
        return (_sparse([s[a] for s in p_sets], size) @ _sparse([s[b] for s in g_sets], size).T).toarray()

    area_p, area_g = (np.array([len(s[0]) for s in sets]) for sets in (p_sets, g_sets))
    n_p, n_g = (np.array([len(s[1]) for s in sets]) for sets in (p_sets, g_sets))
    inter = counts(0, 0)
    union = area_p[:, None] + area_g[None, :] - inter
    j = np.where(union > 0, inter / np.maximum(union, 1), 1.0)
    precision = counts(1, 2) / np.maximum(n_p, 1)[:, None]  # pred boundary near gt's
    recall = counts(2, 1) / np.maximum(n_g, 1)[None, :]  # gt boundary near pred's
    total = precision + recall
    f = np.where(total > 0, 2 * precision * recall / np.where(total > 0, total, 1), 0.0)
    p_edge, g_edge = (n_p > 0)[:, None], (n_g > 0)[None, :]
    f = np.where(p_edge & g_edge, f, np.where(~p_edge & ~g_edge, 1.0, 0.0))
    return j, f, area_p > 0, area_g > 0


def _pixel_sets(mask: np.ndarray, radius: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Flat pixel indices of an [H, W] mask, of its boundary, and of that boundary dilated by a disk.

    Works on the bounding box padded by the radius plus the row/column `boundary_map` adds, so
    the cost follows the object's size. Padding is clipped at the image edge, which is also
    where `boundary_map` stops; inside the image the padded box ends on background, which keeps
    the crop's boundary equal to the full frame's. A distance transform dilates at the same cost
    for any radius (DAVIS at 1080p uses 18 px): the disk holds offsets with dy^2 + dx^2 <= r^2.
    """
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    if not len(rows):
        none = np.zeros(0, dtype=np.int64)
        return none, none, none
    w, pad = mask.shape[1], int(radius) + 1
    y0, x0 = max(rows[0] - pad, 0), max(cols[0] - pad, 0)
    crop = mask[y0 : rows[-1] + pad + 1, x0 : cols[-1] + pad + 1]
    boundary = boundary_map(crop)
    dilated = ndimage.distance_transform_edt(~boundary) <= radius if boundary.any() else boundary

    def flat(m: np.ndarray) -> np.ndarray:
        ys, xs = np.nonzero(m)
        return (ys + y0) * w + xs + x0

    return flat(crop), flat(boundary), flat(dilated)


def _sparse(sets: list[np.ndarray], size: int) -> sparse.csr_matrix:
    """Rows of pixel indices as an [N, size] 0/1 matrix with exact integer products."""
    indptr = np.concatenate([[0], np.cumsum([len(s) for s in sets])])
    indices = np.concatenate(sets)
    return sparse.csr_matrix((np.ones(len(indices), dtype=np.int64), indices, indptr), shape=(len(sets), size))
