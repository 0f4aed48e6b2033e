"""Where automatic mask generation prompts: point grids and the crops of the image it looks at.

Both reproduce the official `sam2.utils.amg` values exactly (same numpy operations, same integer
rounding), because which points and crops are used decides which masks come out.
"""

from __future__ import annotations

import math

import numpy as np

CropBox = tuple[int, int, int, int]  # x0, y0, x1, y1 in pixels, x1 / y1 exclusive


def point_grid(n_per_side: int) -> np.ndarray:
    """[n * n, 2] (x, y) points in [0, 1], centred in the cells of an n x n grid; x varies fastest."""
    if n_per_side < 1:
        raise ValueError(f"a point grid needs at least 1 point per side, got {n_per_side}")
    offset = 1 / (2 * n_per_side)
    side = np.linspace(offset, 1 - offset, n_per_side)
    xs = np.tile(side[None, :], (n_per_side, 1))
    ys = np.tile(side[:, None], (1, n_per_side))
    return np.stack([xs, ys], axis=-1).reshape(-1, 2)


def layer_point_grids(n_per_side: int, n_layers: int, downscale: int) -> list[np.ndarray]:
    """One grid per crop layer 0..n_layers; layer i has int(n_per_side / downscale**i) points per side,
    so the smaller crops of deeper layers are not prompted more densely than the image."""
    return [point_grid(int(n_per_side / downscale**i)) for i in range(n_layers + 1)]


def crop_boxes(image_hw: tuple[int, int], n_layers: int, overlap_ratio: float) -> tuple[list[CropBox], list[int]]:
    """The whole image (layer 0), then for layer i = 1..n_layers a 2^i x 2^i tiling of overlapping crops.

    Crops of layer i overlap by int(overlap_ratio * short_side * 2 / 2^i) pixels, so that an object cut
    by one crop's edge is whole in a neighbour. Returns the boxes and the layer of each, crops of a
    layer listed column by column (x0 outer, y0 inner), as the official code does.
    """
    h, w = image_hw
    short_side = min(h, w)
    boxes: list[CropBox] = [(0, 0, w, h)]
    layers = [0]
    for layer in range(1, n_layers + 1):
        per_side = 2**layer
        overlap = int(overlap_ratio * short_side * (2 / per_side))
        crop_w = math.ceil((overlap * (per_side - 1) + w) / per_side)
        crop_h = math.ceil((overlap * (per_side - 1) + h) / per_side)
        for x0 in (int((crop_w - overlap) * i) for i in range(per_side)):
            for y0 in (int((crop_h - overlap) * i) for i in range(per_side)):
                boxes.append((x0, y0, min(x0 + crop_w, w), min(y0 + crop_h, h)))
                layers.append(layer)
    return boxes, layers
