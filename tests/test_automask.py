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


# ---------------------------------------------------------------- memory: chunks, same bits


@pytest.fixture(scope="module")
def tiny_512() -> SAM2Model:
    """The tiny SAM 2.1 at 512 pixels with seeded random weights: real decoder widths (256 channels,
    32 x 32 image tokens), so that chunks run the same kernels as at 1024."""
    torch.manual_seed(0)
    return build_model("sam2.1_hiera_t", image_size=512)


def _decode_all(model: SAM2Model, features: Any, batch: int, **kwargs: Any) -> list[torch.Tensor]:
    """Decoder outputs for `batch` grid prompts (an image embedding per prompt if kwargs say so)."""
    size = model.spec.image_size
    points = torch.as_tensor(point_grid(8), dtype=torch.float32)[:batch] * size
    labels = torch.ones(batch, 1, dtype=torch.int32)
    kwargs = dict(kwargs)
    if kwargs.pop("per_prompt_image", False):
        embedding = model.embed_without_memory(features)
        kwargs["image_embedding"] = embedding * torch.linspace(0.5, 1.5, batch).view(batch, 1, 1, 1)
    if "mask_input" in kwargs:
        kwargs["mask_input"] = kwargs["mask_input"][:batch]
    return list(model.decode(features, points[:, None], labels, **kwargs))


@pytest.mark.parametrize("high_res", [True, False])
def test_the_decoder_in_chunks_gives_the_same_outputs(
    tiny_512: SAM2Model, monkeypatch: pytest.MonkeyPatch, high_res: bool
) -> None:
    """On CPU without autograd the decoder makes its per-prompt image maps a few prompts at a time (a
    large batch's would be fresh memory at every step): every output is the whole batch's, with uneven
    chunks, one or three masks, a mask prompt, an image embedding per prompt (a tracker's) and without
    the high-resolution features. Bit for bit on the AMD EPYC (Zen 4) it was written on; another CPU's
    matrix kernels may round a product of fewer rows differently, so the test allows float rounding."""
    from masklet.model import mask_decoder

    model = tiny_512
    if not high_res:
        torch.manual_seed(0)
        model = build_model(dataclasses.replace(model.spec, use_high_res_features_in_sam=False))
    side = model.spec.image_size // 16
    per_prompt = side * side * 256  # image-token values of one prompt
    mask_input = torch.randn(13, 1, 4 * side, 4 * side, generator=torch.Generator().manual_seed(1))
    settings: list[dict[str, Any]] = [
        {"multimask_output": True},
        {"multimask_output": False},
        {"multimask_output": True, "per_prompt_image": True},
        {"multimask_output": False, "mask_input": mask_input},
    ]
    with torch.inference_mode():
        features = model.encode_image(prepare_image(AMG["image"].numpy(), model.spec.image_size))
        for kwargs in settings if high_res else settings[:1]:
            for batch in (5, 13):  # chunks of 3 + 2, 4 + 3 + 3 + 3
                monkeypatch.setattr(mask_decoder, "CHUNK_BYTES", 2**40)
                whole = _decode_all(model, features, batch, **kwargs)
                # 4 prompts per chunk of image tokens, 2 per chunk of upscaled maps (twice as large); then
                # one prompt per chunk (maps of one prompt this large still take the whole batch's kernels)
                for chunk in (4, 1):
                    monkeypatch.setattr(mask_decoder, "CHUNK_BYTES", chunk * per_prompt * 4)
                    assert mask_decoder._chunk(whole[0], 13, per_prompt) == chunk
                    chunked = _decode_all(model, features, batch, **kwargs)
                    for a, b in zip(whole, chunked, strict=True):
                        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5, msg=f"{list(kwargs)} {batch} {chunk}")


def test_reused_decoder_buffers_hold_nothing_returned(tiny_512: SAM2Model, monkeypatch: pytest.MonkeyPatch) -> None:
    """Within `reuse_buffers()` the chunked path's image-token buffer serves call after call (and a smaller
    batch), and no output of one call changes with the next."""
    from masklet.model import mask_decoder

    monkeypatch.setattr(mask_decoder, "CHUNK_BYTES", 4 * 2**20)  # 4 prompts of 32 x 32 x 256 floats
    with torch.inference_mode():
        features = tiny_512.encode_image(prepare_image(AMG["image"].numpy(), tiny_512.spec.image_size))
        alone = _decode_all(tiny_512, features, 13)
        with mask_decoder.reuse_buffers():
            first = _decode_all(tiny_512, features, 13)
            kept = [t.clone() for t in first]
            buffer = mask_decoder._BUFFERS.get()["image_tokens"]  # type: ignore[index]
            second = _decode_all(tiny_512, features, 9, multimask_output=False)
            assert mask_decoder._BUFFERS.get()["image_tokens"] is buffer  # type: ignore[index]
        assert mask_decoder._BUFFERS.get() is None
    assert all(torch.equal(a, b) and torch.equal(a, c) for a, b, c in zip(first, kept, alone, strict=True))
    assert second[0].shape == (9, 1, 128, 128)


def test_decoder_chunks_are_even_and_never_a_single_prompt() -> None:
    from masklet.model.mask_decoder import _spans

    def sizes(total: int, chunk: int) -> list[int]:
        spans = _spans(total, chunk)
        assert spans[0][0] == 0 and spans[-1][1] == total
        assert all(a[1] == b[0] for a, b in zip(spans, spans[1:], strict=False))
        return [stop - start for start, stop in spans]

    assert sizes(64, 4) == [4] * 16 and sizes(13, 4) == [4, 3, 3, 3] and sizes(4, 4) == [4]
    assert sizes(3, 2) == [3] and sizes(5, 2) == [3, 2] and sizes(3, 1) == [1, 1, 1] and sizes(1, 4) == [1]
    assert _spans(4, 2, offset=8) == [(8, 10), (10, 12)]


def test_the_decoder_keeps_whole_batches_for_autograd(model: SAM2Model, monkeypatch: pytest.MonkeyPatch) -> None:
    from masklet.model import mask_decoder

    monkeypatch.setattr(mask_decoder, "CHUNK_BYTES", 1)
    with torch.inference_mode():
        assert mask_decoder._chunk(torch.zeros(1), 13, 100) == 1
    with torch.enable_grad():
        assert mask_decoder._chunk(torch.zeros(1), 13, 100) == 0
        features = model.encode_image(prepare_image(AMG["image"].numpy(), model.spec.image_size))
        out = model.decode(features, torch.rand(5, 1, 2) * 100, torch.ones(5, 1, dtype=torch.int32))
    assert out.masks.requires_grad


@pytest.mark.parametrize("name", ["all_candidates", "thresholds", "crops_all", "min_region_area", "m2m", "single_mask"])
def test_measuring_and_painting_in_chunks_gives_the_same_results(
    model: SAM2Model, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    """Crop-size logits made three masks at a time (stability, boxes, the returned masks): the same
    masks, scores, boxes, logits and RLEs as all at once."""
    from masklet.pipelines import automask

    case = next(c for c in AMG["cases"] if c["name"] == name)
    config = AutoMaskConfig(**{**case["kwargs"], "points_per_batch": 13})
    image = AMG["image"].numpy()
    monkeypatch.setattr(automask, "MAP_CHUNK_BYTES", 2**40)
    whole = AutoMaskGenerator(model, config).generate(image)
    monkeypatch.setattr(automask, "MAP_CHUNK_BYTES", 3 * 96 * 160 * 4)  # three image-size masks
    chunked = AutoMaskGenerator(model, config).generate(image)
    _assert_same(whole, chunked)


def test_generation_with_chunked_decoding_gives_the_same_results(
    tiny_512: SAM2Model, monkeypatch: pytest.MonkeyPatch
) -> None:
    from masklet.model import mask_decoder
    from masklet.pipelines import automask

    config = AutoMaskConfig(
        points_per_side=6, points_per_batch=13, pred_iou_thresh=0.0, stability_score_thresh=0.0, box_nms_thresh=1.0
    )
    image = AMG["image"].numpy()
    monkeypatch.setattr(mask_decoder, "CHUNK_BYTES", 2**40)
    monkeypatch.setattr(automask, "MAP_CHUNK_BYTES", 2**40)
    whole = AutoMaskGenerator(tiny_512, config).generate(image)
    monkeypatch.setattr(mask_decoder, "CHUNK_BYTES", 4 * 2**20)  # 4 prompts of 32 x 32 x 256 floats
    monkeypatch.setattr(automask, "MAP_CHUNK_BYTES", 5 * 96 * 160 * 4)
    chunked = AutoMaskGenerator(tiny_512, config).generate(image)
    assert len(whole) == len(chunked) == 6 * 6 * 3  # every candidate (no thresholds, no NMS), in one order
    # the decoder's chunks may round differently on another CPU (see above): the same masks but for a pixel
    # at a logit's zero crossing, the same scores to float rounding
    assert (whole.masks != chunked.masks).float().mean() < 1e-4
    for name in ("low_res_logits", "predicted_iou", "object_score_logits"):
        torch.testing.assert_close(getattr(chunked, name), getattr(whole, name), rtol=1e-4, atol=1e-4, msg=name)
    # a ratio of pixel counts at two thresholds: a pixel flipped at a threshold moves it by 1 / area
    torch.testing.assert_close(chunked.stability_score, whole.stability_score, rtol=0, atol=1e-2)
    assert torch.equal(whole.point_coords, chunked.point_coords)


def _assert_same(a: AutoMasks, b: AutoMasks) -> None:
    assert len(a) > 3
    for field in dataclasses.fields(AutoMasks):
        x, y = getattr(a, field.name), getattr(b, field.name)
        assert (x == y) if field.name == "rles" else torch.equal(x, y), field.name


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
