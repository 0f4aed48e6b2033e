"""Prompted segmentation of single images with the semantics of the official `SAM2ImagePredictor`.

`set_image` embeds an image once; `predict` then decodes any number of prompt sets against it.
Prompts are in pixels of the original image (or in [0, 1] with `normalize_coords=False`), masks come
back at the original size. Several boxes (or point sets of equal length) are decoded in one batch.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from masklet.model.sam2 import ImageFeatures, SAM2Model
from masklet.model.transforms import ArrayLike, prepare_image, resize_logits, scale_coords

LOW_RES_CLAMP = 32.0  # the official predictor clamps returned low-res logits (they are fed back as mask inputs)


class Prediction(NamedTuple):
    """`predict_torch` output for B prompt sets with M masks each (M = 3 with multimask output).

    masks [B, M, H, W] at the original size (bool, or logits with `return_logits`), iou [B, M],
    low_res_logits [B, M, S/4, S/4] clamped to +-32, object_score_logits [B, 1] (> 0: object present).
    """

    masks: Tensor
    iou: Tensor
    low_res_logits: Tensor
    object_score_logits: Tensor


class ImagePredictor:
    """`SAM2ImagePredictor` for a `SAM2Model`: embed once with `set_image`, then `predict` many prompts.

    `dtype=torch.bfloat16` runs the model under autocast (for CUDA); outputs are always float32.
    """

    def __init__(self, model: SAM2Model, mask_threshold: float = 0.0, dtype: torch.dtype = torch.float32) -> None:
        self.model = model
        self.mask_threshold = mask_threshold
        self.dtype = dtype
        self._features: ImageFeatures | None = None
        self._orig_hw: tuple[int, int] | None = None

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def image_size(self) -> int:
        return self.model.spec.image_size

    @property
    def orig_hw(self) -> tuple[int, int]:
        """(H, W) of the image set last."""
        if self._orig_hw is None:
            raise RuntimeError("an image must be set with set_image(...) before this")
        return self._orig_hw

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    @contextlib.contextmanager
    def _inference(self) -> Iterator[None]:
        with torch.inference_mode(), self._autocast():
            yield

    def set_image(self, image: ArrayLike) -> None:
        """Embed a uint8 RGB image [H, W, 3] (numpy or torch); later prompts refer to its pixels."""
        with self._inference():
            x = prepare_image(image, self.image_size, self.device)
            self.set_features(self.model.encode_image(x), (int(image.shape[0]), int(image.shape[1])))

    def set_features(self, features: ImageFeatures, orig_hw: tuple[int, int]) -> None:
        """Use features already computed for an image of size `orig_hw` (e.g. a tracked video frame)."""
        self._features, self._orig_hw = features, (int(orig_hw[0]), int(orig_hw[1]))

    def predict(
        self,
        point_coords: ArrayLike | None = None,
        point_labels: ArrayLike | None = None,
        box: ArrayLike | None = None,
        mask_input: ArrayLike | None = None,
        multimask_output: bool = True,
        return_logits: bool = False,
        normalize_coords: bool = True,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Masks for one prompt set, or a batch of them, as numpy (the official return values).

        point_coords [N, 2] or [B, N, 2] (x, y) with point_labels [N] / [B, N] (1 foreground,
        0 background), box [4] or [B, 4] (x0, y0, x1, y1), mask_input [1, S/4, S/4] or
        [B, 1, S/4, S/4] low-res logits from an earlier call. Returns (masks [(B,) M, H, W],
        iou_predictions [(B,) M], low_res_logits [(B,) M, S/4, S/4]); the batch axis only when B > 1.
        """
        out = self.predict_torch(
            point_coords, point_labels, box, mask_input, multimask_output, return_logits, normalize_coords
        )
        return tuple(_numpy(x) for x in out[:3])  # type: ignore[return-value]

    def predict_torch(
        self,
        point_coords: ArrayLike | None = None,
        point_labels: ArrayLike | None = None,
        box: ArrayLike | None = None,
        mask_input: ArrayLike | None = None,
        multimask_output: bool = True,
        return_logits: bool = False,
        normalize_coords: bool = True,
    ) -> Prediction:
        """`predict` with tensors on the model's device, always batched [B, ...], plus object scores."""
        if self._features is None or self._orig_hw is None:
            raise RuntimeError("an image must be set with set_image(...) before predict(...)")
        if (point_coords is None) != (point_labels is None):
            raise ValueError("point_coords and point_labels must be given together")
        device = self.device
        coords = labels = boxes = masks_in = None
        if point_coords is not None and point_labels is not None:
            coords = self._to_input_coords(
                torch.as_tensor(point_coords, dtype=torch.float32, device=device), normalize_coords
            )
            labels = torch.as_tensor(point_labels, dtype=torch.int32, device=device)
            if coords.ndim == 2:
                coords, labels = coords[None], labels[None]
        if box is not None:
            boxes = torch.as_tensor(box, dtype=torch.float32, device=device).reshape(-1, 2, 2)
            boxes = self._to_input_coords(boxes, normalize_coords).reshape(-1, 4)
        if mask_input is not None:
            masks_in = torch.as_tensor(mask_input, dtype=torch.float32, device=device)
            if masks_in.ndim == 3:
                masks_in = masks_in[None]
        with self._inference():
            out = self.model.decode(self._features, coords, labels, boxes, masks_in, multimask_output)
            low_res = out.masks.float()
            masks = resize_logits(low_res, self._orig_hw)
            if not return_logits:
                masks = masks > self.mask_threshold
            return Prediction(
                masks,
                out.iou.float(),
                low_res.clamp(-LOW_RES_CLAMP, LOW_RES_CLAMP),
                out.object_score_logits.float(),
            )

    def _to_input_coords(self, coords: Tensor, normalize: bool) -> Tensor:
        """Pixels of the original image (or [0, 1] when not `normalize`) -> model-input pixels."""
        return scale_coords(coords, self.orig_hw, self.image_size) if normalize else coords * self.image_size


def _numpy(x: Tensor) -> np.ndarray:
    """A batch of one loses its batch axis, as in the official predictor."""
    x = x.detach().cpu()
    return (x[0] if x.shape[0] == 1 else x).numpy()
