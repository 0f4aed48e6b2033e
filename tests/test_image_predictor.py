"""ImagePredictor on a tiny random model: the official SAM2ImagePredictor's shapes, coordinates and
return values. Numerical parity with the official predictor is in tests/test_parity.py."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from tiny_sam2 import TINY, tiny_model

from masklet.model import normalize_images
from masklet.model.image_predictor import ImagePredictor
from masklet.model.transforms import prepare_image

H, W = 60, 90
LOW = TINY.image_size // 4


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    rng = np.random.default_rng(0)
    img = rng.integers(0, 90, size=(H, W, 3), dtype=np.uint8)
    img[10:40, 20:60] = (220, 60, 40)
    return img


@pytest.fixture(scope="module")
def predictor(image: np.ndarray) -> ImagePredictor:
    p = ImagePredictor(tiny_model())
    p.set_image(image)
    return p


def test_shapes_like_the_official_predictor(predictor: ImagePredictor) -> None:
    assert predictor.orig_hw == (H, W)
    masks, iou, low_res = predictor.predict(np.array([[40.0, 25.0]]), np.array([1]))
    assert masks.shape == (3, H, W) and masks.dtype == bool
    assert iou.shape == (3,) and low_res.shape == (3, LOW, LOW)
    masks, iou, low_res = predictor.predict(box=np.array([20, 10, 60, 40]), multimask_output=False)
    assert masks.shape == (1, H, W) and iou.shape == (1,) and low_res.shape == (1, LOW, LOW)
    boxes = np.array([[20, 10, 60, 40], [0, 0, 30, 30], [50, 20, 89, 59]])
    masks, iou, low_res = predictor.predict(box=boxes, multimask_output=False)
    assert masks.shape == (3, 1, H, W) and iou.shape == (3, 1) and low_res.shape == (3, 1, LOW, LOW)


def test_prompts_are_scaled_from_original_pixels(predictor: ImagePredictor, image: np.ndarray) -> None:
    """A click at (x, y) of the H x W image is the model-input pixel (x / W, y / H) * S."""
    model, s = predictor.model, TINY.image_size
    out = predictor.predict_torch(np.array([[40.0, 25.0], [70.0, 50.0]]), np.array([1, 0]), box=[20, 10, 60, 40])
    x = F.interpolate(
        torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255,
        size=(s, s),
        mode="bilinear",
        align_corners=False,
        antialias=True,
    )
    with torch.inference_mode():
        features = model.encode_image(normalize_images(x))
        coords = torch.tensor([[[40.0 / W * s, 25.0 / H * s], [70.0 / W * s, 50.0 / H * s]]])
        box = torch.tensor([[20.0 / W * s, 10.0 / H * s, 60.0 / W * s, 40.0 / H * s]])
        expected = model.decode(features, coords, torch.tensor([[1, 0]]), box, multimask_output=True)
    assert torch.allclose(out.low_res_logits, expected.masks.clamp(-32, 32), atol=1e-5)
    assert torch.allclose(out.iou, expected.iou, atol=1e-6)
    normalized = predictor.predict_torch(
        np.array([[40.0 / W, 25.0 / H], [70.0 / W, 50.0 / H]]),
        np.array([1, 0]),
        box=[20.0 / W, 10.0 / H, 60.0 / W, 40.0 / H],
        normalize_coords=False,
    )
    assert torch.allclose(normalized.low_res_logits, out.low_res_logits, atol=1e-5)


def test_masks_are_upsampled_logits(predictor: ImagePredictor) -> None:
    logits, _, low_res = predictor.predict(np.array([[40.0, 25.0]]), np.array([1]), return_logits=True)
    masks, _, _ = predictor.predict(np.array([[40.0, 25.0]]), np.array([1]))
    assert logits.dtype == np.float32 and np.array_equal(masks, logits > 0)
    assert np.abs(low_res).max() <= 32.0  # clamped, ready to be fed back


def test_low_res_logits_feed_back_as_mask_input(predictor: ImagePredictor) -> None:
    _, iou, low_res = predictor.predict(np.array([[40.0, 25.0]]), np.array([1]))
    best = low_res[np.argmax(iou)][None]
    masks, iou, _ = predictor.predict(
        np.array([[40.0, 25.0], [10.0, 50.0]]), np.array([1, 0]), mask_input=best, multimask_output=False
    )
    assert masks.shape == (1, H, W)
    only_mask, _, _ = predictor.predict(mask_input=best, multimask_output=False)
    assert only_mask.shape == (1, H, W)


def test_prepare_image_is_a_bilinear_antialiased_resize(image: np.ndarray) -> None:
    x = prepare_image(image, 64)
    manual = F.interpolate(
        torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255,
        size=(64, 64),
        mode="bilinear",
        align_corners=False,
        antialias=True,
    )
    assert torch.equal(x, normalize_images(manual))
    with pytest.raises(ValueError, match="uint8 RGB"):
        prepare_image(image.astype(np.float32), 64)


def test_errors(image: np.ndarray) -> None:
    predictor = ImagePredictor(tiny_model())
    with pytest.raises(RuntimeError, match="set_image"):
        predictor.predict(np.array([[1.0, 2.0]]), np.array([1]))
    predictor.set_image(image)
    with pytest.raises(ValueError, match="together"):
        predictor.predict(np.array([[1.0, 2.0]]))


def test_bfloat16_autocast(image: np.ndarray) -> None:
    predictor = ImagePredictor(tiny_model(), dtype=torch.bfloat16)
    predictor.set_image(image)
    out = predictor.predict_torch(np.array([[40.0, 25.0]]), np.array([1]), return_logits=True)
    assert out.masks.dtype == out.iou.dtype == out.low_res_logits.dtype == torch.float32
    assert torch.isfinite(out.masks).all()
