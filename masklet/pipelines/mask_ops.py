"""Per-mask measurements and clean-up shared by automatic mask generation and masklet scoring.

Definitions follow the official SAM 2 code (`sam2.utils.amg`, `SAM2Transforms.postprocess_masks`),
so that scores and kept masks compare with the official generator's.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage
from torch import Tensor

# 8-connectivity within each mask of an [N, H, W] stack, none across masks: one labelling call per stack
_EIGHT_CONNECTED_PER_MASK = np.zeros((3, 3, 3), dtype=bool)
_EIGHT_CONNECTED_PER_MASK[1] = True
_CLEANUP_LOGIT = 10.0  # margin by which a filled hole / removed sprinkle crosses the threshold


def stability_score(logits: Tensor, mask_threshold: float, offset: float) -> Tensor:
    """IoU of the masks thresholded at `mask_threshold + offset` and `- offset`, for logits [..., H, W].

    The first mask lies inside the second, so the IoU is a ratio of areas: a mask whose edge moves
    little when the cut-off moves scores near 1. A mask empty at the lower cut-off scores 0 (the
    official code divides 0 by 0 and gets NaN; either fails any positive threshold). Areas are summed
    as the official code does, rows in int16 (W < 32768), then int32: twice as fast on CPU as a sum of
    bools, which torch reduces in int64.
    """
    inner = (logits > mask_threshold + offset).sum(-1, dtype=torch.int16).sum(-1, dtype=torch.int32)
    outer = (logits > mask_threshold - offset).sum(-1, dtype=torch.int16).sum(-1, dtype=torch.int32)
    return torch.where(outer > 0, inner / outer.clamp(min=1), 0.0)


def masks_to_boxes(masks: Tensor) -> Tensor:
    """Boxes (x0, y0, x1, y1) int64 [N, 4] of bool masks [N, H, W], with x1 / y1 the last pixel inside
    (inclusive, as the official `batched_mask_to_box`); an empty mask gets (0, 0, 0, 0).

    Rows and columns are reduced with `amax` on the masks' bytes: torch's `any` over a bool stack is
    several times slower on CPU, and this runs on every candidate of automatic mask generation."""
    n, h, w = masks.shape
    pixels = masks.view(torch.uint8)
    rows, cols = pixels.amax(-1), pixels.amax(-2)  # [N, H], [N, W], 1 where the mask has a pixel
    top = rows.argmax(-1)
    bottom = h - 1 - rows.flip(-1).argmax(-1)
    left = cols.argmax(-1)
    right = w - 1 - cols.flip(-1).argmax(-1)
    boxes = torch.stack([left, top, right, bottom], dim=-1)
    return torch.where(rows.amax(-1, keepdim=True) > 0, boxes, 0)


def small_components(binary: Tensor, max_area: int) -> Tensor:
    """Pixels of the 8-connected components of `binary` [N, H, W] with at most `max_area` pixels.

    Labelling runs on CPU (scipy), one call for the whole stack.
    """
    labels, _ = ndimage.label(binary.cpu().numpy(), structure=_EIGHT_CONNECTED_PER_MASK)
    sizes = np.bincount(labels.ravel())
    small = sizes <= max_area
    small[0] = False  # label 0 is the complement of `binary`
    return torch.from_numpy(small[labels]).to(binary.device)


def fill_holes_and_remove_sprinkles(logits: Tensor, max_area: int, mask_threshold: float = 0.0) -> Tensor:
    """Mask logits [N, H, W] with small holes filled and small islands removed.

    What the official image predictor does with `max_hole_area = max_sprinkle_area = max_area` (the
    automatic generator's `min_mask_region_area`) before upsampling: background components (pixels <=
    threshold, 8-connected, border-touching ones included) of at most `max_area` pixels are set to
    threshold + 10, and foreground components of the original mask of at most `max_area` pixels to
    threshold - 10. Areas count pixels of these logits (the decoder's low-res grid, 256 x 256 for a
    1024 model), not of the image.
    """
    foreground = logits > mask_threshold
    holes = small_components(~foreground, max_area)
    sprinkles = small_components(foreground, max_area)
    out = torch.where(holes, mask_threshold + _CLEANUP_LOGIT, logits)
    return torch.where(sprinkles, mask_threshold - _CLEANUP_LOGIT, out)
