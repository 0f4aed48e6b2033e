"""Forward passes of a tiny SAM 2 model on CPU: shapes and the official semantics of every step.

Numerical parity with the official implementation is checked separately against fixtures; these
tests pin the behaviour (multimask, prompts, batching, object scores, memory) on random weights.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from tiny_sam2 import TINY

from masklet.model import NO_OBJ_SCORE, ImageFeatures, SAM2Model, build_model, normalize_images
from masklet.model.position import axial_rope_table, rope_freqs, rotate_

S, E = TINY.image_size, TINY.image_embedding_size  # 128, 8


def _assert_close(actual: torch.Tensor, expected: torch.Tensor, atol: float = 1e-5, rtol: float = 1.3e-6) -> None:
    """Like torch.testing.assert_close (same shape, dtype and values within tolerance), without its slow import."""
    assert actual.shape == expected.shape, f"shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    assert actual.dtype == expected.dtype, f"dtype {actual.dtype} != {expected.dtype}"
    diff = (actual.double() - expected.double()).abs().max().item() if actual.numel() else 0.0
    assert torch.allclose(actual, expected, atol=atol, rtol=rtol), f"max abs difference {diff:.3g}"


def _perturb(model: SAM2Model) -> SAM2Model:
    """Random values for the parameters the official init leaves at zero, so they matter in tests."""
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))
    return model


@pytest.fixture(scope="module")
def model() -> SAM2Model:
    torch.manual_seed(0)
    return _perturb(build_model(TINY, apply_postprocessing=False))


@pytest.fixture(scope="module")
def features(model: SAM2Model) -> ImageFeatures:
    torch.manual_seed(1)
    with torch.no_grad():
        return model.encode_image(torch.randn(2, 3, S, S))


def _first(features: ImageFeatures) -> ImageFeatures:
    return ImageFeatures([f[:1] for f in features.backbone_fpn], [p[:1] for p in features.vision_pos_enc])


POINTS = torch.tensor([[[30.0, 40.0], [90.0, 100.0]], [[64.0, 64.0], [10.0, 120.0]], [[5.0, 5.0], [70.0, 20.0]]])
LABELS = torch.tensor([[1, 0], [1, 1], [1, -1]], dtype=torch.int32)
BOXES = torch.tensor([[20.0, 30.0, 100.0, 110.0], [0.0, 0.0, 127.0, 127.0], [50.0, 10.0, 80.0, 60.0]])


def test_encode_image_returns_the_official_pyramid(features: ImageFeatures) -> None:
    c = TINY.hidden_dim
    # levels 0 and 1 already went through conv_s0 (C/8) and conv_s1 (C/4)
    assert [tuple(f.shape) for f in features.backbone_fpn] == [(2, c // 8, 32, 32), (2, c // 4, 16, 16), (2, c, E, E)]
    assert [tuple(p.shape) for p in features.vision_pos_enc] == [(2, c, 32, 32), (2, c, 16, 16), (2, c, E, E)]
    assert features.vision_features is features.backbone_fpn[-1]
    assert all(torch.isfinite(f).all() for f in features.backbone_fpn)


def test_encode_image_is_per_image(model: SAM2Model, features: ImageFeatures) -> None:
    torch.manual_seed(1)
    images = torch.randn(2, 3, S, S)
    with torch.no_grad():
        second = model.encode_image(images[1:])
    for a, b in zip(features.backbone_fpn, second.backbone_fpn, strict=True):
        _assert_close(a[1:], b, atol=1e-5, rtol=1e-5)


def test_multimask_gives_three_masks_and_single_gives_one(model: SAM2Model, features: ImageFeatures) -> None:
    feats = _first(features)
    with torch.no_grad():
        multi = model.decode(feats, POINTS[:1, :1], LABELS[:1, :1], multimask_output=True)
        single = model.decode(feats, POINTS[:1, :1], LABELS[:1, :1], multimask_output=False)
    assert multi.masks.shape == (1, 3, 4 * E, 4 * E) and multi.iou.shape == (1, 3)
    assert multi.sam_tokens.shape == (1, 3, TINY.hidden_dim)  # use_multimask_token_for_obj_ptr
    assert single.masks.shape == (1, 1, 4 * E, 4 * E) and single.iou.shape == (1, 1)
    assert single.sam_tokens.shape == (1, 1, TINY.hidden_dim)
    assert multi.object_score_logits.shape == single.object_score_logits.shape == (1, 1)
    assert ((multi.iou >= 0) & (multi.iou <= 1)).all()  # iou_prediction_use_sigmoid
    assert not torch.allclose(multi.masks[:, :1], single.masks)  # token 0 is not among the multimask outputs


def test_box_is_two_corner_points_before_the_clicks(model: SAM2Model, features: ImageFeatures) -> None:
    feats = _first(features)
    corners = BOXES[:1].reshape(1, 2, 2)
    corner_labels = torch.tensor([[2, 3]], dtype=torch.int32)
    with torch.no_grad():
        box = model.decode(feats, boxes=BOXES[:1])
        as_points = model.decode(feats, corners, corner_labels)
        box_and_click = model.decode(feats, POINTS[:1], LABELS[:1], boxes=BOXES[:1])
        combined = model.decode(feats, torch.cat([corners, POINTS[:1]], 1), torch.cat([corner_labels, LABELS[:1]], 1))
        click = model.decode(feats, POINTS[:1], LABELS[:1])
    _assert_close(box.masks, as_points.masks)
    _assert_close(box_and_click.masks, combined.masks)
    assert not torch.allclose(box.masks, click.masks)


def test_padding_points_and_negative_clicks_matter_as_labels(model: SAM2Model, features: ImageFeatures) -> None:
    feats = _first(features)
    with torch.no_grad():
        pos = model.decode(feats, POINTS[:1, :1], torch.tensor([[1]]))
        neg = model.decode(feats, POINTS[:1, :1], torch.tensor([[0]]))
        padded = model.decode(feats, POINTS[:1], torch.tensor([[1, -1]]))
        moved_pad = model.decode(feats, torch.tensor([[[30.0, 40.0], [0.0, 7.0]]]), torch.tensor([[1, -1]]))
    assert not torch.allclose(pos.masks, neg.masks)
    with pytest.raises(ValueError, match="together"):
        model.decode(feats, POINTS[:1])
    # a padding point's coordinates are ignored
    _assert_close(padded.masks, moved_pad.masks)


def test_batch_of_prompts_equals_one_at_a_time(model: SAM2Model, features: ImageFeatures) -> None:
    feats = _first(features)
    masks = torch.randn(3, 1, 4 * E, 4 * E)
    for multimask in (True, False):
        with torch.no_grad():
            batch = model.decode(feats, POINTS, LABELS, BOXES, masks, multimask_output=multimask)
            singles = [
                model.decode(feats, POINTS[i : i + 1], LABELS[i : i + 1], BOXES[i : i + 1], masks[i : i + 1], multimask)
                for i in range(3)
            ]
        for field in range(4):
            _assert_close(batch[field], torch.cat([s[field] for s in singles]), atol=1e-5, rtol=1e-5)


def test_images_and_prompts_pair_up_by_batch(model: SAM2Model, features: ImageFeatures) -> None:
    with torch.no_grad():
        both = model.decode(features, POINTS[:2], LABELS[:2])
        second = model.decode(
            ImageFeatures([f[1:] for f in features.backbone_fpn], [p[1:] for p in features.vision_pos_enc]),
            POINTS[1:2],
            LABELS[1:2],
        )
    _assert_close(both.masks[1:], second.masks, atol=1e-5, rtol=1e-5)


def test_mask_prompt_is_resized_and_used(model: SAM2Model, features: ImageFeatures) -> None:
    feats = _first(features)
    full = torch.zeros(1, 1, S, S)
    full[..., 20:90, 30:100] = 8.0
    low = torch.nn.functional.interpolate(full, size=(4 * E, 4 * E), mode="bilinear", antialias=True)
    with torch.no_grad():
        from_full = model.decode(feats, mask_input=full, multimask_output=False)
        from_low = model.decode(feats, mask_input=low, multimask_output=False)
        without = model.decode(feats, multimask_output=False)
    _assert_close(from_full.masks, from_low.masks)
    assert not torch.allclose(from_full.masks, without.masks)
    assert without.masks.shape == (1, 1, 4 * E, 4 * E)  # no prompt at all still decodes


def test_dynamic_multimask_falls_back_to_best_multimask_when_unstable(model: SAM2Model) -> None:
    def variant(thresh: float) -> SAM2Model:
        spec = dataclasses.replace(
            TINY, dynamic_multimask_via_stability=True, dynamic_multimask_stability_thresh=thresh
        )
        other = build_model(spec, apply_postprocessing=False)
        other.load_state_dict(model.state_dict())
        return other

    torch.manual_seed(2)
    with torch.no_grad():
        feats = model.encode_image(torch.randn(1, 3, S, S))
        args = (feats, POINTS[:1, :1], LABELS[:1, :1])
        single = model.decode(*args, multimask_output=False)
        multi = model.decode(*args, multimask_output=True)
        always_stable = variant(0.0).decode(*args, multimask_output=False)
        never_stable = variant(1.1).decode(*args, multimask_output=False)
        stability = model.sam_mask_decoder.stability_scores(single.masks)
    _assert_close(always_stable.masks, single.masks)
    best = multi.iou.argmax(-1)
    _assert_close(never_stable.masks, multi.masks[:, best])
    _assert_close(never_stable.iou, multi.iou[:, best])
    assert stability.shape == (1, 1) and 0 <= stability.item() <= 1


def _force_object_score(model: SAM2Model, logit: float) -> SAM2Model:
    other = build_model(TINY, apply_postprocessing=False)
    other.load_state_dict(model.state_dict())
    head = other.sam_mask_decoder.pred_obj_score_head.layers[-1]
    with torch.no_grad():
        head.weight.zero_()
        head.bias.fill_(logit)
    return other


def test_segment_selects_the_best_mask_and_makes_an_object_pointer(model: SAM2Model, features: ImageFeatures) -> None:
    visible = _force_object_score(model, 5.0)
    embedding = visible.embed_without_memory(features)
    with torch.no_grad():
        out = visible.segment(features, embedding, POINTS[:2, :1], LABELS[:2, :1], multimask_output=True)
    assert out.low_res_multimasks.shape == (2, 3, 4 * E, 4 * E)
    assert out.high_res_multimasks.shape == (2, 3, S, S)
    assert out.low_res_masks.shape == (2, 1, 4 * E, 4 * E) and out.high_res_masks.shape == (2, 1, S, S)
    assert out.obj_ptr.shape == (2, TINY.hidden_dim)
    best = out.ious.argmax(-1)
    _assert_close(out.low_res_masks[:, 0], out.low_res_multimasks[torch.arange(2), best])
    with torch.no_grad():
        no_points = visible.segment(features, embedding)
    assert no_points.low_res_masks.shape == (2, 1, 4 * E, 4 * E)


def test_absent_object_gets_no_object_masks_and_pointer(model: SAM2Model, features: ImageFeatures) -> None:
    absent = _force_object_score(model, -5.0)
    with torch.no_grad():
        out = absent.segment(features, absent.embed_without_memory(features), POINTS[:2, :1], LABELS[:2, :1])
    assert (out.low_res_masks == NO_OBJ_SCORE).all() and (out.high_res_masks == NO_OBJ_SCORE).all()
    _assert_close(out.obj_ptr, absent.no_obj_ptr.expand(2, -1))  # fixed_no_obj_ptr


def test_mask_as_output(model: SAM2Model, features: ImageFeatures) -> None:
    masks = torch.zeros(2, 1, S, S)
    masks[0, :, 10:60, 20:90] = 1
    visible, absent = _force_object_score(model, 5.0), _force_object_score(model, -5.0)
    with torch.no_grad():
        out = visible.mask_as_output(features, masks)
        decoder_says_absent = absent.mask_as_output(features, masks)
    assert set(out.high_res_masks.unique().tolist()) == {-10.0, 10.0}
    assert out.low_res_masks.shape == (2, 1, 4 * E, 4 * E)
    assert out.object_score_logits.flatten().tolist() == [10.0, -10.0]  # from the mask, not the decoder
    assert (out.ious == 1).all()
    _assert_close(out.obj_ptr[1], model.no_obj_ptr[0])  # empty mask
    assert not torch.allclose(out.obj_ptr[0], model.no_obj_ptr[0])
    # the pointer still comes from the decoder, whose own object score gates it (as officially)
    _assert_close(decoder_says_absent.obj_ptr, model.no_obj_ptr.expand(2, -1))
    _assert_close(decoder_says_absent.object_score_logits, out.object_score_logits)


def test_use_multimask_policy(model: SAM2Model) -> None:
    assert model.use_multimask(True, 1) and model.use_multimask(False, 1) and model.use_multimask(True, 0)
    assert not model.use_multimask(True, 2)
    single_only = SAM2Model(dataclasses.replace(TINY, multimask_output_for_tracking=False))
    assert single_only.use_multimask(True, 1) and not single_only.use_multimask(False, 1)


def test_encode_memory(model: SAM2Model, features: ImageFeatures) -> None:
    torch.manual_seed(3)
    logits = torch.randn(2, 1, S, S) * 4
    present, absent = torch.tensor([[2.0], [2.0]]), torch.tensor([[2.0], [-2.0]])
    with torch.no_grad():
        mem, pos = model.encode_memory(features, logits, present)
        mem_absent, _ = model.encode_memory(features, logits, absent)
    assert mem.shape == pos.shape == (2, TINY.mem_dim, E, E)
    _assert_close(mem_absent[0], mem[0])
    # SAM 2.1: an absent object's memory carries the no-object embedding
    _assert_close(mem_absent[1] - mem[1], model.no_obj_embed_spatial[0, :, None, None].expand(-1, E, E))


def test_memory_of_clicked_frames_is_binarized_with_postprocessing(model: SAM2Model, features: ImageFeatures) -> None:
    post = build_model(TINY, apply_postprocessing=True)
    post.load_state_dict(model.state_dict())
    torch.manual_seed(4)
    logits = torch.randn(2, 1, S, S) * 4
    hard = torch.where(logits > 0, 1e4, -1e4)  # sigmoid(+-1e4) is exactly 1 / 0
    score = torch.ones(2, 1)
    with torch.no_grad():
        binarized, _ = post.encode_memory(features, logits, score, from_points=torch.tensor([True, False]))
        reference, _ = post.encode_memory(features, torch.cat([hard[:1], logits[1:]]), score)
        soft, _ = model.encode_memory(features, logits, score, from_points=True)  # flag off: sigmoid
        soft_ref, _ = model.encode_memory(features, logits, score)
    _assert_close(binarized, reference)
    _assert_close(soft, soft_ref)


def _memory(model: SAM2Model, features: ImageFeatures, num_objects: int = 2) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Two memory frames (one conditioning, one previous) and three pointers per object."""
    torch.manual_seed(5)
    score = torch.ones(num_objects, 1)
    tokens, pos = [], []
    for t_pos in (0, TINY.num_maskmem - 1):
        mem, mem_pos = model.encode_memory(features, torch.randn(num_objects, 1, S, S), score)
        a, b = model.spatial_memory_tokens(mem, mem_pos, t_pos)
        tokens.append(a)
        pos.append(b)
    ptr_tokens, ptr_pos = model.pointer_memory_tokens(
        torch.randn(num_objects, 3, TINY.hidden_dim), torch.tensor([5, 1, 2]), num_frames=10
    )
    return torch.cat(tokens + [ptr_tokens], 1), torch.cat(pos + [ptr_pos], 1), ptr_tokens.shape[1]


def test_memory_tokens_and_conditioning_shapes(model: SAM2Model) -> None:
    with torch.no_grad():
        features = model.encode_image(torch.randn(1, 3, S, S))  # one frame shared by two objects
        memory, memory_pos, num_ptr = _memory(model, features)
        out = model.condition_on_memory(features, memory, memory_pos, num_ptr)
    split = TINY.hidden_dim // TINY.mem_dim
    assert num_ptr == 3 * split
    assert memory.shape == memory_pos.shape == (2, 2 * E * E + num_ptr, TINY.mem_dim)
    assert out.shape == (2, TINY.hidden_dim, E, E)
    assert not torch.allclose(out[0], out[1])  # different memories per object


def test_pointer_tokens_split_and_time_encoding(model: SAM2Model) -> None:
    ptrs = torch.randn(1, 2, TINY.hidden_dim)
    tokens, pos = model.pointer_memory_tokens(ptrs, torch.tensor([1, 4]), num_frames=5)
    split = TINY.hidden_dim // TINY.mem_dim
    _assert_close(tokens, ptrs.reshape(1, 2 * split, TINY.mem_dim))
    # each pointer's tokens share its time encoding; different distances encode differently
    _assert_close(pos[0, 0], pos[0, split - 1])
    assert not torch.allclose(pos[0, 0], pos[0, split])
    sam2 = SAM2Model(dataclasses.replace(TINY, add_tpos_enc_to_obj_ptrs=False, proj_tpos_enc_in_obj_ptrs=False))
    assert (sam2.pointer_memory_tokens(ptrs, torch.tensor([1, 4]))[1] == 0).all()  # SAM 2: no time encoding


def test_object_pointers_have_no_rotary_position(model: SAM2Model) -> None:
    with torch.no_grad():
        features = model.encode_image(torch.randn(1, 3, S, S))
        memory, memory_pos, num_ptr = _memory(model, features, num_objects=1)
        out = model.condition_on_memory(features, memory, memory_pos, num_ptr)
        n = memory.shape[1]
        # swapping two pointer tokens (with their positions) changes nothing: attention is order-free there
        swap_ptr = torch.arange(n)
        swap_ptr[[n - 1, n - num_ptr]] = swap_ptr[[n - num_ptr, n - 1]]
        _assert_close(
            model.condition_on_memory(features, memory[:, swap_ptr], memory_pos[:, swap_ptr], num_ptr),
            out,
            atol=1e-5,
            rtol=1e-5,
        )
        # swapping two spatial tokens changes the result: they carry RoPE positions
        swap_sp = torch.arange(n)
        swap_sp[[0, 5]] = swap_sp[[5, 0]]
        moved = model.condition_on_memory(features, memory[:, swap_sp], memory_pos[:, swap_sp], num_ptr)
    assert not torch.allclose(moved, out, atol=1e-5)


def test_padded_memory_with_mask_equals_unpadded(model: SAM2Model) -> None:
    with torch.no_grad():
        features = model.encode_image(torch.randn(1, 3, S, S))
        memory, memory_pos, num_ptr = _memory(model, features, num_objects=1)
        out = model.condition_on_memory(features, memory, memory_pos, num_ptr)
        spatial = memory.shape[1] - num_ptr
        frame = torch.randn(1, E * E, TINY.mem_dim)
        extra_ptrs = torch.randn(1, 2, TINY.mem_dim)
        padded = torch.cat([memory[:, :spatial], frame, memory[:, spatial:], extra_ptrs], 1)
        padded_pos = torch.cat([memory_pos[:, :spatial], frame, memory_pos[:, spatial:], extra_ptrs], 1)
        valid = torch.ones(1, padded.shape[1], dtype=torch.bool)
        valid[:, spatial : spatial + E * E] = False
        valid[:, -2:] = False
        masked = model.condition_on_memory(features, padded, padded_pos, num_ptr + 2, valid)
    _assert_close(masked, out, atol=1e-5, rtol=1e-5)


def test_first_frame_embedding_adds_the_no_memory_embedding(model: SAM2Model, features: ImageFeatures) -> None:
    emb = model.embed_without_memory(features)
    _assert_close(emb - features.vision_features, model.no_mem_embed.view(1, -1, 1, 1).expand_as(emb))


def test_rope_matches_complex_rotation() -> None:
    cos, sin = axial_rope_table(8, 3, 4)
    x = torch.randn(2, 1, 24, 8)  # two frames of 3x4 tokens
    as_complex = torch.view_as_complex(x.reshape(2, 1, 24, 4, 2))
    rotation = torch.polar(torch.ones_like(cos), torch.atan2(sin, cos)).repeat(2, 1)
    expected = torch.view_as_real(as_complex * rotation).flatten(3)
    _assert_close(rotate_(x.clone(), rope_freqs(cos, sin)), expected)
    # token 5 sits at column 1, row 1: x-angle and y-angle of frequency 0 are both 1 radian
    _assert_close(torch.atan2(sin[5], cos[5])[[0, 2]], torch.tensor([1.0, 1.0]))


def test_normalize_images() -> None:
    white = torch.full((1, 3, 2, 2), 255, dtype=torch.uint8)
    out = normalize_images(white)
    _assert_close(out[0, :, 0, 0], (1 - torch.tensor([0.485, 0.456, 0.406])) / torch.tensor([0.229, 0.224, 0.225]))
    _assert_close(normalize_images(white.float() / 255), out)


def test_half_precision_and_autocast_run(model: SAM2Model) -> None:
    images = torch.randn(1, 3, S, S)
    bf16 = build_model(TINY, dtype=torch.bfloat16)
    bf16.load_state_dict(model.state_dict())
    with torch.no_grad():
        feats = bf16.encode_image(images)
        out = bf16.decode(feats, POINTS[:1], LABELS[:1], BOXES[:1])
        seg = bf16.segment(feats, bf16.embed_without_memory(feats), POINTS[:1], LABELS[:1])
        mem, mem_pos = bf16.encode_memory(feats, seg.high_res_masks, torch.tensor([[-1.0]]))
        tokens, pos = bf16.spatial_memory_tokens(mem, mem_pos, 0)
        ptr_tokens, ptr_pos = bf16.pointer_memory_tokens(seg.obj_ptr[:, None], torch.tensor([1]))
        cond = bf16.condition_on_memory(feats, torch.cat([tokens, ptr_tokens], 1), torch.cat([pos, ptr_pos], 1), 2)
    assert out.masks.dtype == torch.bfloat16 and torch.isfinite(out.masks.float()).all()
    assert mem.dtype == seg.obj_ptr.dtype == cond.dtype == torch.bfloat16
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        feats = model.encode_image(images)
        seg = model.segment(feats, model.embed_without_memory(feats), POINTS[:1], LABELS[:1], multimask_output=True)
    assert seg.high_res_masks.dtype == torch.float32 and torch.isfinite(seg.obj_ptr.float()).all()
