"""Greedy box non-maximum suppression in plain torch, a stand-in for `torchvision.ops.batched_nms`.

torchvision is not a dependency, yet automatic mask generation must drop the same duplicates as the
official generator, so this follows torchvision's kernels step by step:

- boxes are ranked by score with a stable sort, so of equal scores the lower index comes first, as in
  torchvision's CPU kernel (ties are common: crop NMS scores masks by the area of their crop);
- IoU is computed in float32 as `inter / (area_i + area_j - inter)` with areas (x1 - x0) * (y1 - y0)
  (no +1), and a box is dropped when its IoU with a kept box is > `iou_threshold` (compared in float64,
  as the C++ kernel promotes it); two empty boxes have IoU NaN and do not suppress each other;
- the kept indices come back in the order torchvision returns: by rank, or, where torchvision switches
  to its per-category path (more than 1000 boxes on CPU, 25000 elsewhere), ascending index re-sorted
  by score with torch's default, unstable sort, which is what that path calls.

Categories are handled by masking IoU between boxes of different categories (torchvision's
coordinate-offset path does the same in effect). Its per-category path sorts each category's scores
separately, so with several categories, more boxes than the switch and tied scores, the box kept
among ties may differ; automatic mask generation uses one category only.

The IoU matrix is computed on the boxes' device in row blocks; the greedy pass, inherently
sequential, runs on CPU over the thresholded matrix, like torchvision's CUDA kernel does with its
bit masks.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

_ROW_BLOCK = 1024  # IoU rows per block: bounds the float32 scratch to 1024 x N


def box_area(boxes: Tensor) -> Tensor:
    """Areas (x1 - x0) * (y1 - y0) of [N, 4] boxes (x0, y0, x1, y1)."""
    return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])


def box_iou(a: Tensor, b: Tensor) -> Tensor:
    """IoU matrix [N, M] of boxes a [N, 4] and b [M, 4] (x0, y0, x1, y1), with torchvision's arithmetic."""
    a, b = a.float(), b.float()
    wh = (torch.minimum(a[:, None, 2:], b[None, :, 2:]) - torch.maximum(a[:, None, :2], b[None, :, :2])).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    return inter / (box_area(a)[:, None] + box_area(b)[None, :] - inter)


def _torchvision_switches_path(boxes: Tensor) -> bool:
    return boxes.numel() > (4000 if boxes.device.type == "cpu" else 100_000)


def batched_nms(boxes: Tensor, scores: Tensor, categories: Tensor | None, iou_threshold: float) -> Tensor:
    """Indices (int64) of the boxes kept by greedy NMS within each category, highest score first.

    boxes [N, 4] (x0, y0, x1, y1), scores [N], categories [N] integer labels or None for one category.
    """
    n = boxes.shape[0]
    if n == 0:
        return torch.empty(0, dtype=torch.int64, device=boxes.device)
    order = scores.sort(descending=True, stable=True).indices
    ranked = boxes[order].float()
    ranked_cat = None if categories is None else categories[order]
    over = np.empty((n, n), dtype=bool)
    for start in range(0, n, _ROW_BLOCK):
        stop = min(start + _ROW_BLOCK, n)
        block = box_iou(ranked[start:stop], ranked).double() > iou_threshold
        if ranked_cat is not None:
            block &= ranked_cat[start:stop, None] == ranked_cat[None, :]
        over[start:stop] = block.cpu().numpy()
    removed = np.zeros(n, dtype=bool)
    kept = []
    for i in range(n):
        if not removed[i]:
            kept.append(i)
            removed[i + 1 :] |= over[i, i + 1 :]
    keep = order[torch.as_tensor(kept, device=order.device)]
    if _torchvision_switches_path(boxes):
        keep = keep.sort().values
        keep = keep[scores[keep].sort(descending=True).indices]
    return keep
