"""Automatic mask generation: parity with the official `SAM2AutomaticMaskGenerator`, and its parts.

The parity fixture (tests/parity/make_amg_fixtures.py, run in the reference venv) holds the official
generator's masks and scores for the small seeded SAM 2.1 model of tests/fixtures/parity on one
synthetic frame, in ten settings (filters, NMS, crop layers, small-region clean-up, m2m, single mask),
plus the official point grids and crop boxes and torchvision NMS results on tied scores.
"""

from __future__ import annotations

import dataclasses
import zlib
from typing import Any

import numpy as np
import pytest
import torch
from parity_fixtures import FIXTURES, spec_from_fixture

from masklet.io.rle import decode
from masklet.model import SAM2Model, build_model
from masklet.model.transforms import prepare_image, scale_coords
from masklet.pipelines.automask import AutoMaskConfig, AutoMaskGenerator, AutoMasks
from masklet.pipelines.grids import crop_boxes, layer_point_grids, point_grid
from masklet.pipelines.mask_ops import fill_holes_and_remove_sprinkles, masks_to_boxes, stability_score
from masklet.pipelines.nms import batched_nms, box_iou

AMG = torch.load(FIXTURES / "amg.pt", weights_only=True)
# masks may differ from the official ones by rounding (logits within ~1e-5 of the threshold); at most this
# fraction of a case's masks may be non-identical, and every mask must still have IoU >= 0.99 with its match
MAX_NON_IDENTICAL = 0.01
SCORE_ATOL = 1e-4


@pytest.fixture(scope="module")
def model() -> SAM2Model:
    folder = FIXTURES / AMG["flag_set"]
    # apply_postprocessing: the official build_sam2 default
    model = build_model(spec_from_fixture(AMG["flag_set"]), apply_postprocessing=True)
    state = torch.load(folder / "model.pt", weights_only=True)["model"]
    model.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
    return model


def _official_masks(case: dict[str, Any]) -> np.ndarray:
    n, h, w = case["shape"]
    bits = np.unpackbits(np.frombuffer(zlib.decompress(bytes(case["masks_zlib"].numpy())), dtype=np.uint8))
    return bits[: n * h * w].reshape(n, h, w).astype(bool)


def _match(ours: AutoMasks, case: dict[str, Any]) -> list[int]:
    """For each official mask, the index of an unused mask of ours from the same prompt and crop with the
    highest mask IoU (then the closest predicted IoU: one prompt can give identical masks)."""
    ref = torch.from_numpy(_official_masks(case))
    keys = torch.cat([ours.point_coords, ours.crop_boxes.float()], dim=1)
    crop = case["crop_box"]
    ref_keys = torch.cat([case["point_coords"], crop[:, :2], crop[:, :2] + crop[:, 2:]], dim=1)
    used: set[int] = set()
    matches = []
    for i, key in enumerate(ref_keys):
        same = [j for j in (keys == key).all(dim=1).nonzero()[:, 0].tolist() if j not in used]
        assert same, f"{case['name']}: no mask of ours left from the prompt of official mask {i}"
        inter = (ours.masks[same] & ref[i]).flatten(1).sum(1)
        union = (ours.masks[same] | ref[i]).flatten(1).sum(1)
        mask_iou = torch.where(union > 0, inter / union.clamp(min=1), 1.0).tolist()
        score_gap = (ours.predicted_iou[same] - case["predicted_iou"][i]).abs().tolist()
        best = max(range(len(same)), key=lambda k: (mask_iou[k], -score_gap[k]))
        assert mask_iou[best] >= 0.99, f"{case['name']}: official mask {i} best IoU {mask_iou[best]:.4f}"
        used.add(same[best])
        matches.append(same[best])
    return matches


@pytest.mark.parametrize("case", AMG["cases"], ids=[c["name"] for c in AMG["cases"]])
def test_same_masks_as_the_official_generator(model: SAM2Model, case: dict[str, Any]) -> None:
    ours = AutoMaskGenerator(model, AutoMaskConfig(**case["kwargs"])).generate(AMG["image"].numpy())
    ref = torch.from_numpy(_official_masks(case))
    n = len(ref)
    assert n > 0 and len(ours) == n
    # usually bit-identical and in the official order; else rounding moved pixels, maybe the order of ties
    index = torch.arange(n) if torch.equal(ours.masks, ref) else torch.tensor(_match(ours, case))
    identical = (ours.masks[index] == ref).flatten(1).all(1)
    assert int((~identical).sum()) <= MAX_NON_IDENTICAL * n
    official_stability = case["stability_score"].nan_to_num(0.0)  # 0 / 0 of an empty mask
    torch.testing.assert_close(ours.predicted_iou[index], case["predicted_iou"], atol=SCORE_ATOL, rtol=0)
    torch.testing.assert_close(ours.stability_score[index], official_stability, atol=SCORE_ATOL, rtol=0)
    records = ours.records()
    bbox = torch.tensor([records[i]["bbox"] for i in index.tolist()])
    area = torch.tensor([records[i]["area"] for i in index.tolist()])
    assert torch.equal(bbox[identical], case["bbox"][identical])
    assert torch.equal(area[identical], case["area"][identical])
    assert [records[i]["crop_box"] for i in index.tolist()] == case["crop_box"].tolist()


def test_outputs_agree_with_each_other(model: SAM2Model) -> None:
    """RLE, boxes and low-res logits describe the returned masks; object scores belong to the prompt."""
    case = next(c for c in AMG["cases"] if c["name"] == "crops_all")
    image = AMG["image"].numpy()
    ours = AutoMaskGenerator(model, AutoMaskConfig(**case["kwargs"])).generate(image)
    assert all(np.array_equal(decode(rle), m) for rle, m in zip(ours.rles, ours.masks.numpy(), strict=True))
    assert torch.equal(ours.boxes, masks_to_boxes(ours.masks).float())
    assert len(set(map(tuple, ours.crop_boxes.tolist()))) > 1
    for i in range(0, len(ours), 17):
        x0, y0, x1, y1 = ours.crop_boxes[i].tolist()
        up = torch.nn.functional.interpolate(
            ours.low_res_logits[i][None, None], size=(y1 - y0, x1 - x0), mode="bilinear"
        )
        assert torch.equal(ours.masks[i, y0:y1, x0:x1], up[0, 0] > 0)
        assert not ours.masks[i].any() or ours.masks[i, y0:y1, x0:x1].sum() == ours.masks[i].sum()
        with torch.no_grad():
            features = model.encode_image(prepare_image(image[y0:y1, x0:x1], model.spec.image_size))
            point = scale_coords(
                ours.point_coords[i] - torch.tensor([x0, y0]), (y1 - y0, x1 - x0), model.spec.image_size
            )
            out = model.decode(features, point[None, None], torch.ones(1, 1, dtype=torch.int32))
        assert torch.isclose(out.iou[0], ours.predicted_iou[i], atol=1e-6).any()
        torch.testing.assert_close(out.object_score_logits[0, 0], ours.object_score_logits[i], atol=1e-5, rtol=0)


def test_records_have_the_official_keys_and_xywh_boxes(model: SAM2Model) -> None:
    config = AutoMaskConfig(points_per_side=4, pred_iou_thresh=0.0, stability_score_thresh=0.0, box_nms_thresh=1.0)
    ours = AutoMaskGenerator(model, config).generate(AMG["image"].numpy())
    r = ours.records()[0]
    assert set(r) == {
        "segmentation",
        "area",
        "bbox",
        "predicted_iou",
        "point_coords",
        "stability_score",
        "crop_box",
        "object_score",
    }
    x0, y0, x1, y1 = ours.boxes[0].tolist()
    assert r["bbox"] == [x0, y0, x1 - x0, y1 - y0] and r["crop_box"] == [0.0, 0.0, 160.0, 96.0]
    assert r["area"] == int(ours.masks[0].sum()) and len(ours.point_coords[0]) == 2


# ---------------------------------------------------------------- parts


@pytest.mark.parametrize("key", sorted(AMG["point_grids"]))
def test_point_grids_equal_the_official(key: str) -> None:
    n, layers, scale = map(int, key.split(","))
    ours = layer_point_grids(n, layers, scale)
    assert len(ours) == len(AMG["point_grids"][key])
    for grid, official in zip(ours, AMG["point_grids"][key], strict=True):
        assert np.array_equal(grid, official.numpy())


def test_point_grid_is_centred_in_cells_x_fastest() -> None:
    assert point_grid(2).tolist() == [[0.25, 0.25], [0.75, 0.25], [0.25, 0.75], [0.75, 0.75]]


@pytest.mark.parametrize("key", sorted(AMG["crop_boxes"]))
def test_crop_boxes_equal_the_official(key: str) -> None:
    h, w, layers, ratio = key.split(",")
    boxes, layer_of = crop_boxes((int(h), int(w)), int(layers), float(ratio))
    official_boxes, official_layers = AMG["crop_boxes"][key]
    assert [list(b) for b in boxes] == official_boxes and layer_of == official_layers


@pytest.mark.parametrize("i", range(len(AMG["nms"])))
def test_nms_equals_torchvision_on_tied_scores(i: int) -> None:
    case = AMG["nms"][i]
    keep = batched_nms(case["boxes"], case["scores"], None, case["iou_threshold"])
    assert torch.equal(keep, case["keep"])


def _nms(boxes: list[list[float]], scores: list[float], threshold: float, categories: list[int] | None = None) -> list:
    cats = None if categories is None else torch.tensor(categories)
    return batched_nms(torch.tensor(boxes), torch.tensor(scores), cats, threshold).tolist()


def test_nms_by_hand() -> None:
    a, b, c = [0.0, 0.0, 10.0, 10.0], [0.0, 3.0, 10.0, 13.0], [0.0, 6.0, 10.0, 16.0]  # IoU a-b, b-c 7/13, a-c 1/4
    assert _nms([a, b, c], [0.9, 0.8, 0.7], 0.5) == [0, 2]  # c survives: b, which overlaps it, was dropped
    assert _nms([c, b, a], [0.7, 0.8, 0.9], 0.5) == [2, 0]  # highest score first
    assert _nms([a, b, c], [0.9, 0.8, 0.7], 0.6) == [0, 1, 2]
    half = [0.0, 0.0, 10.0, 5.0]  # IoU with a is exactly 0.5: only IoU > threshold suppresses
    assert _nms([a, half], [0.9, 0.8], 0.5) == [0, 1] and _nms([a, half], [0.9, 0.8], 0.49) == [0]
    assert _nms([a, a, a], [0.5, 0.5, 0.5], 0.7) == [0]  # ties: the lowest index wins
    assert _nms([a, a], [0.5, 0.5], 0.7, categories=[0, 1]) == [0, 1]  # no suppression across categories
    point = [3.0, 3.0, 3.0, 3.0]  # empty boxes: IoU 0 / 0 is NaN, which suppresses nothing
    assert _nms([point, point, a], [0.9, 0.8, 0.7], 0.5) == [0, 1, 2]
    assert _nms([], [], 0.5) == []


def test_box_iou() -> None:
    iou = box_iou(torch.tensor([[0.0, 0.0, 10.0, 10.0]]), torch.tensor([[5.0, 0.0, 15.0, 10.0], [20, 20, 30, 30]]))
    assert iou.tolist() == [[pytest.approx(50 / 150), 0.0]]


def test_stability_score_by_hand() -> None:
    logits = torch.tensor([[[3.0, 1.5, 0.5, -0.5], [-2.0, -2.0, -2.0, -2.0]]])  # [1, 2, 4]
    # > 1: 2 pixels, > -1: 4 pixels
    assert stability_score(logits, 0.0, 1.0).tolist() == [0.5]
    assert stability_score(logits, 1.0, 1.0).tolist() == [pytest.approx(1 / 3)]  # > 2: 1 pixel, > 0: 3
    assert stability_score(torch.full((2, 3, 3), -5.0), 0.0, 1.0).tolist() == [0.0, 0.0]  # empty: 0, not NaN


def test_masks_to_boxes_inclusive_and_empty() -> None:
    masks = torch.zeros(3, 6, 8, dtype=torch.bool)
    masks[0, 1:4, 2:7] = True
    masks[1, 5, 0] = True
    assert masks_to_boxes(masks).tolist() == [[2, 1, 6, 3], [0, 5, 0, 5], [0, 0, 0, 0]]


def test_small_holes_filled_and_islands_removed() -> None:
    fg = torch.zeros(2, 10, 10, dtype=torch.bool)
    fg[0, 1:7, 1:7] = True
    fg[0, 3:5, 3] = False  # a 2-pixel hole
    fg[0, 7, 7] = True  # touches the blob only diagonally: part of it (8-connectivity)
    fg[0, 9, 0:3] = True  # a 3-pixel island
    fg[1, 9, 0:2] = True  # the same place in the next mask: its own 2-pixel island, not merged with mask 0's
    fg[1, 0:5, 5:10] = True
    logits = torch.where(fg, 4.0, -4.0)
    out = fill_holes_and_remove_sprinkles(logits, max_area=3)
    expected = logits.clone()
    expected[0, 3:5, 3] = 10.0
    expected[0, 9, 0:3] = -10.0
    expected[1, 9, 0:2] = -10.0
    assert torch.equal(out, expected)
    # the background left of mask 1's block is one big component: not a hole; at max_area 2 the island stays
    kept = fill_holes_and_remove_sprinkles(logits, max_area=2)
    assert torch.equal(kept[0, 9, 0:3], logits[0, 9, 0:3]) and torch.equal(kept[0, 3:5, 3], torch.full((2,), 10.0))


def test_config_rejects_impossible_settings() -> None:
    with pytest.raises(ValueError, match="points_per_batch"):
        AutoMaskConfig(points_per_batch=0)
    with pytest.raises(ValueError, match="leaves no point"):
        AutoMaskConfig(points_per_side=4, crop_n_layers=2, crop_n_points_downscale_factor=4)
    with pytest.raises(ValueError, match="box_nms_thresh"):
        AutoMaskConfig(box_nms_thresh=1.5)


def test_config_defaults_are_the_official() -> None:
    assert dataclasses.asdict(AutoMaskConfig()) == AMG["defaults"]
