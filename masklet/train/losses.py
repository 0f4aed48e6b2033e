"""The SAM 2 training losses of one decoded frame (the official `MultiStepMultiMasksAndIous`).

Masks: focal + dice (20:1 by default), and with several masks only the one of least loss is
supervised, so the model may keep alternatives for ambiguous prompts. Predicted IoU: L1 against the
real IoU of every mask. Object score: binary cross-entropy on whether the object is in the frame.
Mask and IoU losses count only where the object is present; everything is averaged over objects.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from masklet.model.sam2 import SegmentOutput
from masklet.train.config import LossConfig

FOCAL_ALPHA, FOCAL_GAMMA = 0.25, 2.0


def focal_loss(logits: Tensor, target: Tensor) -> Tensor:
    """Mean sigmoid focal loss over pixels: [N, M, S, S] vs [N, 1, S, S] -> [N, M]."""
    target = target.expand_as(logits)
    prob = logits.sigmoid()
    ce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    p_t = prob * target + (1 - prob) * (1 - target)
    alpha_t = FOCAL_ALPHA * target + (1 - FOCAL_ALPHA) * (1 - target)
    return (alpha_t * ce * (1 - p_t) ** FOCAL_GAMMA).flatten(2).mean(-1)


def dice_loss(logits: Tensor, target: Tensor) -> Tensor:
    """1 - soft dice: [N, M, S, S] vs [N, 1, S, S] -> [N, M]."""
    prob = logits.sigmoid().flatten(2)
    target = target.flatten(2)
    inter = (prob * target).sum(-1)
    return 1 - (2 * inter + 1) / (prob.sum(-1) + target.sum(-1) + 1)


def mask_ious(logits: Tensor, target: Tensor) -> Tensor:
    """IoU of each binarized mask: [N, M, S, S] vs [N, 1, S, S] -> [N, M] (no gradient)."""
    pred = (logits.detach() > 0).flatten(2)
    gt = target.bool().flatten(2)
    inter = (pred & gt).sum(-1).float()
    union = (pred | gt).sum(-1).float()
    return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(inter))


def frame_loss(out: SegmentOutput, target: Tensor, weights: LossConfig) -> dict[str, Tensor]:
    """Losses of one frame's outputs for N objects against target masks [N, 1, S, S] (bool).

    Returns the weighted `total` and its unweighted parts, each averaged over the N objects.
    """
    target = target.float()
    logits = out.high_res_multimasks.float()
    present = target.flatten(1).any(-1).float()  # [N]
    focal, dice = focal_loss(logits, target), dice_loss(logits, target)
    best = torch.argmin(weights.focal * focal + weights.dice * dice, dim=-1)
    rows = torch.arange(len(best), device=best.device)
    n = max(len(best), 1)
    parts = {
        "focal": (focal[rows, best] * present).sum() / n,
        "dice": (dice[rows, best] * present).sum() / n,
        "iou": ((out.ious.float() - mask_ious(logits, target)).abs().mean(-1) * present).sum() / n,
        "object_score": F.binary_cross_entropy_with_logits(
            out.object_score_logits.float()[:, 0], present, reduction="sum"
        )
        / n,
    }
    parts["total"] = (
        weights.focal * parts["focal"]
        + weights.dice * parts["dice"]
        + weights.iou * parts["iou"]
        + weights.object_score * parts["object_score"]
    )
    return parts
