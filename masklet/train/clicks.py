"""Simulated user prompts for training: a click or a box from a ground-truth mask, and corrective
clicks in the error region of a prediction, as the SAM 2 paper's interactive training does."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from masklet.model.sam2 import BOX_LABELS


def _uniform_pixel(region: Tensor, rng: np.random.Generator) -> tuple[Tensor, bool]:
    """(x, y) of a uniformly drawn pixel of `region` [S, S] (centre of the image if it is empty)."""
    ys, xs = torch.nonzero(region, as_tuple=True)
    if len(ys) == 0:
        s = region.shape[-1]
        return torch.tensor([s / 2, s / 2]), False
    i = int(rng.integers(len(ys)))
    return torch.stack([xs[i], ys[i]]).float() + 0.5, True


def positive_clicks(masks: Tensor, rng: np.random.Generator) -> tuple[Tensor, Tensor]:
    """One positive click inside each mask [N, S, S] -> coords [N, 1, 2] (x, y pixels), labels [N, 1]."""
    coords = torch.stack([_uniform_pixel(m, rng)[0] for m in masks])[:, None]
    return coords, torch.ones(len(masks), 1, dtype=torch.int32)


def noisy_boxes(masks: Tensor, rng: np.random.Generator, noise: float) -> Tensor:
    """The bounding box of each mask [N, S, S], each corner moved by up to `noise` of the box side -> [N, 4]."""
    s = masks.shape[-1]
    boxes = []
    for m in masks:
        ys, xs = torch.nonzero(m, as_tuple=True)
        box = np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=np.float64)
        side = np.array([box[2] - box[0], box[3] - box[1]] * 2)
        box = np.clip(box + rng.uniform(-noise, noise, 4) * side, 0, s)
        box[2:] = np.maximum(box[2:], box[:2] + 1)
        boxes.append(box)
    return torch.tensor(np.stack(boxes), dtype=torch.float32)


def box_labels(n: int) -> Tensor:
    """Point labels [n, 2] of boxes given as their two corners."""
    return torch.tensor([BOX_LABELS], dtype=torch.int32).expand(n, 2)


def corrective_clicks(pred: Tensor, gt: Tensor, rng: np.random.Generator) -> tuple[Tensor, Tensor]:
    """One click per object in the error region of pred [N, S, S] vs gt [N, S, S] (bool): positive where
    the object was missed, negative where background was taken -> coords [N, 1, 2], labels [N, 1].
    With no error a positive click inside the object (or a negative one if it is absent) is used."""
    coords, labels = [], []
    for p, g in zip(pred, gt, strict=True):
        xy, found = _uniform_pixel(p ^ g, rng)
        if not found:
            xy, inside = _uniform_pixel(g, rng)
            label = int(inside)
        else:
            x, y = int(xy[0]), int(xy[1])
            label = int(g[y, x])
        coords.append(xy)
        labels.append(label)
    return torch.stack(coords)[:, None], torch.tensor(labels, dtype=torch.int32)[:, None]
