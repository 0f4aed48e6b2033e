"""Parity with the official implementation (sam2 1.1.0) on seeded random weights, for SAM 2 and SAM 2.1
flags, with and without the official post-processing.

The fixtures come from tests/parity/make_fixtures.py (its docstring describes them). Our model loads the
official state dict through `load_weights`; the image encoder, `ImagePredictor`, the memory encoder and
a streaming `VideoTracker` replaying the official `SAM2VideoPredictor` calls (objects are prompted as the
stream reaches their frame) must agree to 1e-4 with identical binarized masks.

Stored memories need care. The official predictor stores memory features in bfloat16. About one value
in 600-1,500 lies a few fp32 ulps from a bfloat16 rounding midpoint, so which way it rounds depends on
the CPU's kernels, and that one-ulp step (up to ~3e-2 on values of 4-8) carries into later frames of that
object: the official code itself, rerun with other kernels, misses its own bfloat16 outputs by up to
1.1e-2. Hence:

- the memory encoder is compared on its own, in fp32, before the cast;
- teacher-forced: every memory is the official stored (bfloat16) one, injected instead of ours, so each
  frame is compared on identical memories, to 1e-4 with identical masks;
- fp32 end to end: both sides store memories in fp32 (the official run with its cast disabled), to 1e-4
  with identical masks;
- bfloat16 end to end, as both ship, is a smoke check only: values within 2e-2 and >= 98% of the stored
  memory values bit-equal to the official ones. The official predictor rerun with AVX2 vector kernels
  (`ATEN_CPU_CAPABILITY=avx2`) against its own default-kernel outputs: 1.1e-2 apart, 98.86% bit-equal.
"""

from __future__ import annotations

import zlib
from functools import cache
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from parity_fixtures import FIXTURES, inflate, spec_from_fixture
from torch import Tensor

from masklet.model import SAM2Model, build_model
from masklet.model.image_predictor import ImagePredictor
from masklet.model.tracker import VideoTracker
from masklet.model.transforms import prepare_image
from masklet.pipelines.model_loading import load_weights

FLAG_SETS = ("sam2", "sam2.1")
MODES = ("postprocess", "raw")  # the official builders' apply_postprocessing=True / False
SCENARIOS = ("forward", "reverse", "strided")
ATOL = 1e-4
SMOKE_ATOL = 2e-2  # bfloat16 memories end to end: the official code's own kernel-to-kernel drift is 1.1e-2
SMOKE_MIN_BIT_EQUAL = 0.98  # ... and 98.86% (see above); a real divergence is far beyond both
# the official SAM2Base arguments a scenario may set, as VideoTracker arguments
TRACKER_KWARGS = {"max_cond_frames_in_attn": "max_cond_frames", "memory_temporal_stride_for_eval": "memory_stride"}
MEAN = torch.tensor([0.485, 0.456, 0.406])[:, None, None]
STD = torch.tensor([0.229, 0.224, 0.225])[:, None, None]

pytestmark = [
    pytest.mark.skipif(not (FIXTURES / "inputs.pt").exists(), reason="parity fixtures not generated"),
    pytest.mark.usefixtures("one_torch_thread"),
]


@cache
def model(flag_set: str, mode: str) -> SAM2Model:
    m = build_model(spec_from_fixture(flag_set), apply_postprocessing=mode == "postprocess")
    load_weights(m, str(FIXTURES / flag_set / "model.pt"))
    return m


@cache
def inputs() -> dict[str, Any]:
    return torch.load(FIXTURES / "inputs.pt", weights_only=True)


@cache
def outputs(flag_set: str) -> dict[str, Any]:
    return torch.load(FIXTURES / flag_set / "outputs.pt", weights_only=True)


@cache
def video_frames() -> Tensor:
    """The frames preprocessed like the official loader: uint8 / 255 in float64, then fp32 mean / std."""
    data = inputs()
    raw = torch.frombuffer(bytearray(zlib.decompress(bytes(data["frames_zlib"].numpy()))), dtype=torch.uint8)
    frames = raw.reshape(data["frames_shape"]).numpy()
    return (torch.from_numpy(frames / 255.0).permute(0, 3, 1, 2).float() - MEAN) / STD


def max_diff(a: Tensor, b: Tensor) -> float:
    """Largest absolute difference, on the CPU (benchmarks/gpu replays on CUDA with these helpers)."""
    assert a.shape == b.shape, f"shape {tuple(a.shape)} != {tuple(b.shape)}"
    return (a.double().cpu() - b.double().cpu()).abs().max().item() if a.numel() else 0.0


@pytest.mark.parametrize("flag_set", FLAG_SETS)
def test_image_features(flag_set: str) -> None:
    expected = outputs(flag_set)["forward_image"]
    m = model(flag_set, "raw")
    with torch.inference_mode():
        features = m.encode_image(prepare_image(inputs()["image_square"], m.spec.image_size))
    for name in ("backbone_fpn", "vision_pos_enc"):
        for level, (ours, theirs) in enumerate(zip(getattr(features, name), expected[name], strict=True)):
            assert max_diff(ours, theirs) <= ATOL, f"{name}[{level}]"
    assert max_diff(features.vision_features, expected["vision_features"]) <= ATOL


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("flag_set", FLAG_SETS)
def test_image_predictor(flag_set: str, mode: str) -> None:
    predictor = ImagePredictor(model(flag_set, mode))
    image = inputs()["image"]
    predictor.set_image(image.numpy())
    assert predictor.orig_hw == tuple(image.shape[:2])
    for case, expected in zip(inputs()["image_cases"], outputs(flag_set)["image"][mode], strict=True):
        out = predictor.predict_torch(
            case["point_coords"], case["point_labels"], case["box"], case["mask_input"], case["multimask_output"]
        )
        low_res = expected["low_res_logits"]
        name = case["name"]
        assert max_diff(out.low_res_logits, low_res.clamp(-32, 32)) <= ATOL, name
        assert max_diff(out.iou, expected["iou"]) <= ATOL, name
        assert max_diff(out.object_score_logits, expected["object_score_logits"]) <= ATOL, name
        full = F.interpolate(low_res, predictor.orig_hw, mode="bilinear", align_corners=False) > 0
        assert torch.equal(out.masks, full), name


Key = tuple[int, int]  # (object id, frame)
FIELDS = ("low_res_logits", "object_score_logits", "obj_ptr")


@cache
def official(flag_set: str, mode: str, scenario: str, memory: str) -> dict[Key, dict[str, Tensor]]:
    """The official outputs of a scenario by (object, frame), the predictor storing memories in `memory`:
    "bfloat16" (its own choice; the stored memories come too, as maskmem_features) or "float32"."""
    table = outputs(flag_set)["video"][mode][scenario][memory]
    values = {**table, "low_res_logits": inflate(table["low_res_logits"])}
    names = [k for k in (*FIELDS, "maskmem_features") if k in table]
    keys = zip(table["obj_ids"].tolist(), table["frames"].tolist(), strict=True)
    return {key: {k: values[k][i : i + 1] for k in names} for i, key in enumerate(keys)}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("flag_set", FLAG_SETS)
def test_memory_encoder(flag_set: str, mode: str) -> None:
    """fp32, before the bfloat16 cast: prompted frames (binarized with post-processing) and tracked frames
    with present and absent objects, our batch against the official one object per call."""
    m = model(flag_set, mode)
    rows = official(flag_set, mode, "forward", "bfloat16")
    size = (m.spec.image_size, m.spec.image_size)
    for case in outputs(flag_set)["memory_encoder"][mode]:
        keys = [(obj_id, case["frame"]) for obj_id in case["obj_ids"]]
        low_res = torch.cat([rows[k]["low_res_logits"] for k in keys])
        scores = torch.cat([rows[k]["object_score_logits"] for k in keys])
        from_points = torch.full((len(keys),), case["from_points"])
        with torch.inference_mode():
            features = m.encode_image(video_frames()[case["frame"]][None])
            high_res = F.interpolate(low_res, size=size, mode="bilinear", align_corners=False)
            maskmem, pos = m.encode_memory(features, high_res, scores, from_points)
        where = f"frame {case['frame']}, objects {case['obj_ids']}"
        assert max_diff(maskmem, case["maskmem_features"]) <= ATOL, where
        assert max_diff(pos[:1], case["maskmem_pos_enc"]) <= ATOL, where


def replay(
    m: SAM2Model,
    scenario: str,
    memory_dtype: torch.dtype = torch.bfloat16,
    inject: dict[Key, dict[str, Tensor]] | None = None,
) -> tuple[dict[Key, dict[str, Tensor]], dict[Key, Tensor]]:
    """Feed the official calls to a streaming tracker: prompts when the stream reaches their frame, then
    the frames `propagate_in_video` visits. Returns our outputs and the memories we stored, by key.

    With `inject` (the official outputs with their stored memories), every memory stored is the official
    one instead of ours, so each frame is compared on identical memories.
    """
    frames = video_frames()
    steps = inputs()["scenarios"][scenario]
    kwargs = {TRACKER_KWARGS[k]: v for k, v in inputs()["scenario_kwargs"].get(scenario, {}).items()}
    tracker = VideoTracker(
        m,
        video_hw=tuple(inputs()["video_hw"]),
        reverse=next(s["reverse"] for s in steps if s["op"] == "propagate"),
        start_frame=steps[0]["frame"],
        num_frames=len(frames),
        memory_dtype=memory_dtype,
        **kwargs,
    )
    stored: dict[Key, Tensor] = {}
    add = tracker.bank.add

    def add_and_record(obj_id: int, frame: int, spatial: Tensor, pointer: Tensor, prompted: bool) -> None:
        stored[(obj_id, frame)] = spatial
        add(obj_id, frame, spatial, pointer, prompted)

    tracker.bank.add = add_and_record  # type: ignore[method-assign]
    encode = m.encode_memory

    def encode_official(features: Any, masks: Tensor, scores: Tensor, from_points: Tensor) -> tuple[Tensor, Tensor]:
        """Ours for the position encoding; the official stored memories (exact in bfloat16) as features."""
        assert inject is not None and masks.shape[0] == len(tracker.obj_ids), "one call for every object"
        _, pos = encode(features, masks, scores, from_points)
        keys = [(obj_id, tracker.frame_index) for obj_id in tracker.obj_ids]
        return torch.cat([inject[k]["maskmem_features"] for k in keys]).to(pos.device, torch.float32), pos

    if inject is not None:
        m.encode_memory = encode_official  # type: ignore[method-assign]
    try:
        ours: dict[Key, dict[str, Tensor]] = {}
        for s in steps:
            if s["op"] != "propagate":
                assert tracker.frame_index == s["frame"], "the scenario prompts a frame the stream is not at"
                if s["op"] == "add_mask":
                    tracker.add_object(s["obj_id"], mask=s["mask"])
                else:
                    tracker.add_object(s["obj_id"], points=s["points"], labels=s["labels"], box=s["box"])
                continue
            start, n = s["start"], s["max_frames"]
            if s["reverse"]:
                order = range(start, max(start - n, 0) - 1, -1)
            else:
                order = range(start, min(start + n, len(frames) - 1) + 1)
            for f in order:
                assert tracker.frame_index == f
                out = tracker.step(frames[f])
                for i, obj_id in enumerate(out.obj_ids):
                    ours[(obj_id, f)] = {
                        "low_res_logits": out.low_res_logits[i : i + 1],
                        "object_score_logits": out.object_score_logits[i : i + 1, None],
                        "obj_ptr": out.obj_ptr[i : i + 1],
                    }
        return ours, stored
    finally:
        if inject is not None:
            del m.encode_memory


def check(ours: dict[Key, dict[str, Tensor]], theirs: dict[Key, dict[str, Tensor]], atol: float, masks: bool) -> None:
    assert set(ours) == set(theirs), "not the same (object, frame) outputs as the official calls"
    for key in sorted(theirs, key=lambda k: (k[1], k[0])):
        a, b = ours[key], theirs[key]
        where = f"object {key[0]} on frame {key[1]}"
        if masks:
            assert torch.equal(a["low_res_logits"].cpu() > 0, b["low_res_logits"] > 0), f"masks differ: {where}"
        for k in FIELDS:
            assert max_diff(a[k], b[k]) <= atol, f"{k} of {where}: {max_diff(a[k], b[k]):.3g}"


@pytest.mark.parametrize("scenario", SCENARIOS)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("flag_set", FLAG_SETS)
def test_video_teacher_forced(flag_set: str, mode: str, scenario: str) -> None:
    theirs = official(flag_set, mode, scenario, "bfloat16")
    ours, stored = replay(model(flag_set, mode), scenario, inject=theirs)
    assert all(torch.equal(stored[k][None], theirs[k]["maskmem_features"]) for k in theirs), "injected as stored"
    check(ours, theirs, ATOL, masks=True)


@pytest.mark.parametrize("scenario", SCENARIOS)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("flag_set", FLAG_SETS)
def test_video_fp32_memories(flag_set: str, mode: str, scenario: str) -> None:
    ours, _ = replay(model(flag_set, mode), scenario, memory_dtype=torch.float32)
    check(ours, official(flag_set, mode, scenario, "float32"), ATOL, masks=True)


@pytest.mark.parametrize("scenario", SCENARIOS)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("flag_set", FLAG_SETS)
def test_video_bfloat16_smoke(flag_set: str, mode: str, scenario: str) -> None:
    theirs = official(flag_set, mode, scenario, "bfloat16")
    ours, stored = replay(model(flag_set, mode), scenario)
    check(ours, theirs, SMOKE_ATOL, masks=False)
    assert all(stored[k].dtype == torch.bfloat16 for k in theirs), "memories stored in bfloat16 by default"
    equal = sum(int((stored[k][None] == theirs[k]["maskmem_features"]).sum()) for k in theirs)
    total = sum(theirs[k]["maskmem_features"].numel() for k in theirs)
    assert equal >= SMOKE_MIN_BIT_EQUAL * total, f"{equal} of {total} stored memory values bit-equal"
