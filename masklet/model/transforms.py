"""Turning user images, prompts and masks into model inputs, and model outputs back into image space.

The two official predictors prepare pixels differently, so both recipes are here: the image
predictor (`SAM2Transforms`: float / 255, bilinear antialiased resize, mean / std) and the video
predictor (Pillow's default antialiased bicubic resize of the uint8 frame, then / 255, mean / std).
Prompt coordinates follow both predictors: pixels of the original image, divided by its (W, H) and
multiplied by the model's input size.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from masklet.model.sam2 import normalize_images

ArrayLike = np.ndarray | Tensor


def rgb_tensor(image: ArrayLike, device: torch.device | str | None = None) -> Tensor:
    """A uint8 [H, W, 3] image (numpy or torch) as a uint8 [3, H, W] tensor on `device`."""
    x = torch.from_numpy(np.ascontiguousarray(image)) if isinstance(image, np.ndarray) else image
    if x.ndim != 3 or x.shape[2] != 3 or x.dtype != torch.uint8:
        raise ValueError(f"expected a uint8 RGB image [H, W, 3], got {x.dtype} {tuple(x.shape)}")
    return x.to(device).permute(2, 0, 1)


def prepare_image(image: ArrayLike, image_size: int, device: torch.device | str | None = None) -> Tensor:
    """A uint8 [H, W, 3] image -> the normalized model input [1, 3, S, S] of `SAM2ImagePredictor`.

    The resize is done in float on the unrounded [0, 1] values, bilinear with antialiasing, as
    torchvision's `Resize` does on tensors; the aspect ratio is not kept.
    """
    x = rgb_tensor(image, device)[None].float() / 255.0
    if tuple(x.shape[-2:]) != (image_size, image_size):
        x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False, antialias=True)
    return normalize_images(x)


def resize_video_frame(frame: ArrayLike, image_size: int, device: torch.device | str | None = None) -> Tensor:
    """A uint8 [H, W, 3] video frame -> uint8 [1, 3, S, S], resized as `SAM2VideoPredictor` loads frames.

    The official loader resizes with Pillow's default filter (antialiased bicubic), one axis at a
    time, rounding to uint8 after each pass; doing the same two passes in float on the device
    matches Pillow to within one grey level on a few pixels in 10^5.
    """
    x = rgb_tensor(frame, device)[None].float()
    for size in ((x.shape[2], image_size), (image_size, image_size)):
        if tuple(x.shape[2:]) != size:
            x = F.interpolate(x, size=size, mode="bicubic", antialias=True).round_().clamp_(0, 255)
    return x.to(torch.uint8)


def prepare_video_frame(frame: ArrayLike, image_size: int, device: torch.device | str | None = None) -> Tensor:
    """A uint8 [H, W, 3] video frame -> the normalized model input [1, 3, S, S] of `SAM2VideoPredictor`."""
    return normalize_images(resize_video_frame(frame, image_size, device))


def scale_coords(coords: Tensor, orig_hw: tuple[int, int], image_size: int) -> Tensor:
    """(x, y) pixel coordinates [..., 2] of an H x W image -> model-input pixels, like the predictors."""
    h, w = orig_hw
    return coords / torch.tensor([w, h], dtype=coords.dtype, device=coords.device) * image_size


def prepare_mask_prompt(mask: ArrayLike, image_size: int, device: torch.device | str | None = None) -> Tensor:
    """A binary mask [H, W] at any size -> [1, 1, S, S] in {0, 1}, as `SAM2VideoPredictor.add_new_mask`
    makes it (antialiased bilinear resize, then >= 0.5)."""
    m = torch.as_tensor(np.asarray(mask) if isinstance(mask, np.ndarray) else mask, device=device)
    if m.ndim != 2:
        raise ValueError(f"expected a mask [H, W], got shape {tuple(m.shape)}")
    m = m.bool()[None, None].float()
    if tuple(m.shape[-2:]) != (image_size, image_size):
        m = F.interpolate(m, size=(image_size, image_size), mode="bilinear", align_corners=False, antialias=True)
        m = (m >= 0.5).float()
    return m


def resize_logits(logits: Tensor, size: tuple[int, int]) -> Tensor:
    """Mask logits [B, M, h, w] -> [B, M, H, W] (bilinear, as both predictors return full-size masks)."""
    if tuple(logits.shape[-2:]) == tuple(size):
        return logits
    return F.interpolate(logits.float(), size=size, mode="bilinear", align_corners=False)
