"""Make the parity fixtures: what the official SAM 2 / SAM 2.1 code outputs with seeded random weights.

Runs only in a reference venv holding the official `sam2` package (never imported by CI tests):

    python3 -m venv /work/refvenv
    /work/refvenv/bin/pip install torch==2.14.1 torchvision==0.29.1
    SAM2_BUILD_CUDA=0 /work/refvenv/bin/pip install --no-build-isolation sam2==1.1.0
    /work/refvenv/bin/python tests/parity/make_fixtures.py [--out tests/fixtures/parity]

It is deterministic on one machine (CPU, fp32, one thread, fixed seeds); other CPU kernels give other last
bits (see "Memories" below). It writes, all loadable with `torch.load(weights_only=True)`:

    inputs.pt             shared by both flag sets:
        image_square      uint8 [128, 128, 3], already at the model resolution (forward_image input)
        image             uint8 [96, 160, 3], for the image predictor (resized to 128 like the official)
        image_cases       list of prompt sets: name, point_coords [N, 2] / point_labels [N] (image pixels),
                          box [4] (x0 y0 x1 y1), mask_input [1, 32, 32] logits (or None), multimask_output
        frames_zlib       zlib-compressed uint8 [T, 128, 128, 3] video frames at the model resolution,
                          with frames_shape; decode with
                          torch.frombuffer(bytearray(zlib.decompress(bytes(t.numpy()))), dtype=torch.uint8)
        video_hw          the "original" video size [H, W] prompts are given in and outputs resized to
        scenarios         {"forward" | "reverse" | "strided": steps}, replayed on SAM2VideoPredictor; a step
                          is {"op": "add_mask", frame, obj_id, mask [H, W] bool}, {"op": "add_points_or_box",
                          frame, obj_id, points [N, 2] | None, labels [N] | None, box [4] | None}, or
                          {"op": "propagate", start, max_frames, reverse} (propagate_in_video's
                          start_frame_idx / max_frame_num_to_track). Objects are added as the stream
                          reaches their frame, so a streaming tracker can replay the same calls.
        scenario_kwargs   SAM2Base arguments a scenario sets besides spec.json's: "strided" runs with
                          max_cond_frames_in_attn=2 and memory_temporal_stride_for_eval=3 (an object's third
                          prompt demotes its first prompted frame to an ordinary memory)
    {sam2,sam2.1}/spec.json   the constructor kwargs of every official class (nested, "_target_" = class),
                              what SAM2Base hard-codes, the post-processing kwargs, the weight-init
                              recipe, margins (smallest |object score|, IoU gap, near-zero logits), versions
    {sam2,sam2.1}/model.pt    {"model": state_dict} with the official key names (dtype: see Sizes below)
    {sam2,sam2.1}/outputs.pt
        forward_image     SAM2Base.forward_image(image_square): backbone_fpn[0..2] (levels 0 and 1
                          already through conv_s0 / conv_s1), vision_pos_enc[0..2], vision_features
        image[mode]       per image case: low_res_logits [B, M, 32, 32] (mask decoder output before the
                          predictor's clamp to +-32), iou [B, M], object_score_logits [B, 1]
        memory_encoder[mode]  SAM2Base._encode_new_memory in fp32, i.e. before the predictor's bfloat16
                          cast, one object per call as the predictor runs it, on cases of the "forward"
                          scenario: every prompt (from_points, as the predictor encodes prompted frames) and
                          the last frames where every object is tracked and one is present / one absent:
                          frame, obj_ids, from_points, maskmem_features [B, 4, 8, 8], maskmem_pos_enc
                          [1, 4, 8, 8]. The input is video[mode]["forward"]["bfloat16"]'s low_res_logits
                          resized by F.interpolate(..., (128, 128), mode="bilinear", align_corners=False),
                          with its object_score_logits
        video[mode][scenario][memory]  the predictor's outputs with memories stored in `memory`:
                          "bfloat16" (its own choice) or "float32" (its cast disabled, see
                          `_TorchWithoutBfloat16`). One row per (object, frame) returned by a prompt call
                          (the prompted object) or a propagated frame (every object), the same row being
                          returned by both on a prompted frame: obj_ids [K], frames [K], low_res_logits
                          [K, 1, 32, 32] (the stored pred_masks) zlib-compressed as {"zlib": uint8 bytes,
                          "shape"} of float32, object_score_logits [K, 1], obj_ptr [K, C], and for
                          "bfloat16" the stored memory maskmem_features [K, 4, 8, 8] (bfloat16)
    where mode is "postprocess" (the official builders' apply_postprocessing=True) or "raw" (False).

Sizes: official widths cannot fit the 5 MB fixture budget because SAM2Base hard-codes the
mask decoder (2048-wide MLPs, 256-wide IoU head) and the memory mask downsampler's channels (4-16-64-256),
so the models use d_model 16 and Hiera embed_dim 8. Weights are drawn in fp32, rounded to fp16-exact
values and stored as fp16 (an fp32 model loads them exactly). Full-resolution logits are not stored: the
script asserts that the official video-resolution output of every record equals
F.interpolate(low_res_logits, video_hw, mode="bilinear", align_corners=False) exactly.

Official behaviour worth knowing: fill_hole_area=8 (video post-processing) needs the CUDA extension
sam2._C; on CPU the official code warns and skips hole filling, which is what these outputs reflect.
The object-pointer window is min(num_frames, max_obj_ptrs_in_encoder), and SAM 2.1 normalises pointer
temporal encodings by it, so the clip length (10 frames here) matters. SAM2ImagePredictor hard-codes the
feature sizes of a 1024 model (patched here). The JPEG-folder loader is bypassed: frames are given at the
model resolution.

Memories: SAM2VideoPredictor stores memory features in bfloat16, also on CPU. About one stored value in
600-1,500 lies a few fp32 ulps from a bfloat16 rounding midpoint, so other convolution / vector kernels
(oneDNN AVX2 vs AVX-512, ATen's AVX2 vs AVX-512) round some the other way, and the step carries into later
frames: rerun here with ATEN_CPU_CAPABILITY=avx2, the predictor misses its own bfloat16 outputs by up to
1.1e-2, with 98.9% of its stored memory values unchanged. Hence the stored bfloat16 memories (which a test
can inject instead of re-encoding), the fp32 memory-encoder cases, and the fp32-memory runs, which agree
across those kernels to 3e-5. The fp16 rounding of the weights is not
immune either: with ATen's scalar kernels (ATEN_CPU_CAPABILITY=default) torch.randn draws other last bits
and some weights round to another fp16 value, so regenerate with vectorised kernels (AVX2 or AVX-512).
The object-score calibration runs on the "forward" and "reverse" scenarios only, which the weights (and
amg.pt, made from them) were calibrated on.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.metadata
import itertools
import json
import math
import os
import re
import types
import warnings
import zlib
from collections.abc import Iterator
from typing import Any

import numpy as np
import sam2.sam2_video_predictor as video_module
import torch
import torch.nn.functional as F
from sam2.modeling.sam2_base import SAM2Base
from sam2.modeling.sam2_utils import LayerNorm2d
from sam2.sam2_image_predictor import SAM2ImagePredictor
from sam2.sam2_video_predictor import SAM2VideoPredictor

IMAGE_SIZE = 128
D_MODEL = 16
MEM_DIM = 4
EMBED_DIM = 8
NUM_FRAMES = 10
VIDEO_HW = (48, 64)
IMAGE_HW = (96, 160)
SEED = 20240801
MEAN = torch.tensor([0.485, 0.456, 0.406])[:, None, None]
STD = torch.tensor([0.229, 0.224, 0.225])[:, None, None]
DYNAMIC_MULTIMASK = {
    "dynamic_multimask_via_stability": True,
    "dynamic_multimask_stability_delta": 0.05,
    "dynamic_multimask_stability_thresh": 0.98,
}
# fixed inside SAM2Base._build_sam_heads and SAM2VideoPredictor's defaults, recorded for the other side
HARD_CODED = {
    "sam_prompt_encoder": {"mask_in_chans": 16},
    "sam_mask_decoder": {
        "num_multimask_outputs": 3,
        "transformer": {"depth": 2, "mlp_dim": 2048, "num_heads": 8, "attention_downsample_rate": 2},
        "iou_head_depth": 3,
        "iou_head_hidden_dim": 256,
    },
    "video_predictor": {
        "non_overlap_masks": False,
        "clear_non_cond_mem_around_input": False,
        "add_all_frames_to_correct_as_cond": False,
    },
}
MODES = ("postprocess", "raw")
# apply_postprocessing=True in build_sam2 (image) and build_sam2_video_predictor (video)
POSTPROCESS = {
    "image": {"sam_mask_decoder_extra_args": DYNAMIC_MULTIMASK},
    "video": {
        "sam_mask_decoder_extra_args": DYNAMIC_MULTIMASK,
        "binarize_mask_from_pts_for_mem_enc": True,
        "fill_hole_area": 8,
    },
}


def sine(num_pos_feats: int) -> dict[str, Any]:
    return {
        "_target_": "sam2.modeling.position_encoding.PositionEmbeddingSine",
        "num_pos_feats": num_pos_feats,
        "normalize": True,
        "scale": None,
        "temperature": 10000,
    }


def model_spec(flag_set: str) -> dict[str, Any]:
    """sam2_hiera_t.yaml / sam2.1_hiera_t.yaml with small widths: same classes, same flags."""
    feat = IMAGE_SIZE // 16
    rope = {
        "_target_": "sam2.modeling.sam.transformer.RoPEAttention",
        "rope_theta": 10000.0,
        "feat_sizes": [feat, feat],
        "embedding_dim": D_MODEL,
        "num_heads": 1,
        "downsample_rate": 1,
        "dropout": 0.1,
    }
    spec: dict[str, Any] = {
        "_target_": "sam2.modeling.sam2_base.SAM2Base",
        "image_encoder": {
            "_target_": "sam2.modeling.backbones.image_encoder.ImageEncoder",
            "scalp": 1,
            "trunk": {
                "_target_": "sam2.modeling.backbones.hieradet.Hiera",
                "embed_dim": EMBED_DIM,
                "num_heads": 1,
                "stages": [1, 2, 3, 2],
                "global_att_blocks": [5],
                "window_pos_embed_bkg_spatial_size": [7, 7],
                "window_spec": [8, 4, 14, 7],
                "q_pool": 3,
                "q_stride": [2, 2],
                "dim_mul": 2.0,
                "head_mul": 2.0,
            },
            "neck": {
                "_target_": "sam2.modeling.backbones.image_encoder.FpnNeck",
                "position_encoding": sine(D_MODEL),
                "d_model": D_MODEL,
                "backbone_channel_list": [8 * EMBED_DIM, 4 * EMBED_DIM, 2 * EMBED_DIM, EMBED_DIM],
                "fpn_top_down_levels": [2, 3],
                "fpn_interp_model": "nearest",
            },
        },
        "memory_attention": {
            "_target_": "sam2.modeling.memory_attention.MemoryAttention",
            "d_model": D_MODEL,
            "pos_enc_at_input": True,
            "layer": {
                "_target_": "sam2.modeling.memory_attention.MemoryAttentionLayer",
                "activation": "relu",
                "dim_feedforward": 64,
                "dropout": 0.1,
                "pos_enc_at_attn": False,
                "self_attention": rope,
                "d_model": D_MODEL,
                "pos_enc_at_cross_attn_keys": True,
                "pos_enc_at_cross_attn_queries": False,
                "cross_attention": {**rope, "rope_k_repeat": True, "kv_in_dim": MEM_DIM},
            },
            "num_layers": 4,
        },
        "memory_encoder": {
            "_target_": "sam2.modeling.memory_encoder.MemoryEncoder",
            "out_dim": MEM_DIM,
            "in_dim": D_MODEL,
            "position_encoding": sine(MEM_DIM),
            "mask_downsampler": {
                "_target_": "sam2.modeling.memory_encoder.MaskDownSampler",
                "embed_dim": D_MODEL,
                "kernel_size": 3,
                "stride": 2,
                "padding": 1,
            },
            "fuser": {
                "_target_": "sam2.modeling.memory_encoder.Fuser",
                "layer": {
                    "_target_": "sam2.modeling.memory_encoder.CXBlock",
                    "dim": D_MODEL,
                    "kernel_size": 7,
                    "padding": 3,
                    "layer_scale_init_value": 1e-6,
                    "use_dwconv": True,
                },
                "num_layers": 2,
            },
        },
        "num_maskmem": 7,
        "image_size": IMAGE_SIZE,
        "sigmoid_scale_for_mem_enc": 20.0,
        "sigmoid_bias_for_mem_enc": -10.0,
        "use_mask_input_as_output_without_sam": True,
        "directly_add_no_mem_embed": True,
        "use_high_res_features_in_sam": True,
        "multimask_output_in_sam": True,
        "iou_prediction_use_sigmoid": True,
        "use_obj_ptrs_in_encoder": True,
        "add_tpos_enc_to_obj_ptrs": False,
        "only_obj_ptrs_in_the_past_for_eval": True,
        "pred_obj_scores": True,
        "pred_obj_scores_mlp": True,
        "fixed_no_obj_ptr": True,
        "multimask_output_for_tracking": True,
        "use_multimask_token_for_obj_ptr": True,
        "multimask_min_pt_num": 0,
        "multimask_max_pt_num": 1,
        "use_mlp_for_obj_ptr_proj": True,
        "compile_image_encoder": False,
        # SAM2Base defaults the tiny yaml leaves implicit, spelled out
        "backbone_stride": 16,
        "binarize_mask_from_pts_for_mem_enc": False,
        "max_cond_frames_in_attn": -1,
        "memory_temporal_stride_for_eval": 1,
        "non_overlap_masks_for_mem_enc": False,
        "max_obj_ptrs_in_encoder": 16,
        "proj_tpos_enc_in_obj_ptrs": False,
        "use_signed_tpos_enc_to_obj_ptrs": False,
        "soft_no_obj_ptr": False,
        "no_obj_embed_spatial": False,
    }
    if flag_set == "sam2.1":
        spec.update(
            no_obj_embed_spatial=True,
            add_tpos_enc_to_obj_ptrs=True,
            proj_tpos_enc_in_obj_ptrs=True,
            use_signed_tpos_enc_to_obj_ptrs=True,
        )
    return spec


def build(node: Any, **overrides: Any) -> Any:
    """Instantiate a nested spec: a dict with "_target_" is a class called with its other items."""
    if isinstance(node, list):
        return [build(x) for x in node]
    if not isinstance(node, dict):
        return node
    kwargs = {k: build(v) for k, v in node.items() if k != "_target_"} | overrides
    module, _, name = node["_target_"].rpartition(".")
    return getattr(importlib.import_module(module), name)(**kwargs)


def build_model(spec: dict[str, Any], state: dict[str, torch.Tensor], cls: type, **overrides: Any) -> Any:
    model = build({**spec, "_target_": f"{cls.__module__}.{cls.__name__}"}, **overrides)
    model.load_state_dict(state, strict=True)
    return model.eval()


OBJ_SCORE_BIAS = "sam_mask_decoder.pred_obj_score_head.layers.2.bias"
# output layers scaled up so that mask logits and object scores sit well away from 0
GAINS = {
    r"sam_mask_decoder\.output_hypernetworks_mlps\.\d+\.layers\.2\.weight": 10.0,
    r"sam_mask_decoder\.pred_obj_score_head\.layers\.2\.weight": 30.0,
}
INIT_RECIPE = (
    "torch.manual_seed(seed) before building; then, with g = torch.Generator().manual_seed(seed) and "
    "n = torch.randn(p.shape, generator=g) for every parameter p in named_parameters() order: "
    "LayerNorm / LayerNorm2d weights 1 + 0.1 n, other 1-d parameters 0.1 n, the rest n / sqrt(p[0].numel()), "
    "times gains[name] where a gains pattern matches; every state-dict tensor is then rounded to float16 "
    "(stored as float16, exact in float32); finally obj_score_bias_shift is added to " + OBJ_SCORE_BIAS + ", "
    "chosen over a few rounds of the video scenarios to put 0 in a wide gap between object scores, so that "
    "objects come and go with a margin against rounding."
)
CALIBRATION_ROUNDS = 8
# the weights (and amg.pt, made from them) were calibrated on these; later scenarios must not move them
CALIBRATION_SCENARIOS = ("forward", "reverse")
# SAM2Base arguments a scenario runs with, other than the spec's
SCENARIO_KWARGS = {"strided": {"max_cond_frames_in_attn": 2, "memory_temporal_stride_for_eval": 3}}


@torch.no_grad()
def randomize_(model: torch.nn.Module, seed: int) -> None:
    """Overwrite every parameter with INIT_RECIPE's seeded values (before the float16 rounding)."""
    g = torch.Generator().manual_seed(seed)
    norms = {id(m.weight) for m in model.modules() if isinstance(m, (torch.nn.LayerNorm, LayerNorm2d))}
    for name, p in model.named_parameters():
        n = torch.randn(p.shape, generator=g)
        if id(p) in norms:
            p.copy_(1 + 0.1 * n)
        elif p.dim() == 1:
            p.copy_(0.1 * n)
        else:
            gain = next((v for k, v in GAINS.items() if re.fullmatch(k, name)), 1.0)
            p.copy_(gain * n / math.sqrt(p[0].numel()))


def random_state(spec: dict[str, Any], seed: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    model = build(spec)
    randomize_(model, seed)
    return {k: v.half().float() for k, v in model.state_dict().items()}


# ---------------------------------------------------------------- inputs


def scene(t: float, hw: tuple[int, int]) -> tuple[np.ndarray, list[np.ndarray]]:
    """A frame at time t in [0, 1] rendered at `hw`, and the masks of its three objects.

    Gradient background with a coarse checker; an ellipse, a rectangle and a disk with flat colours and
    stripes; the disk moves right and leaves the frame near the end.
    """
    h, w = hw
    y, x = np.meshgrid((np.arange(h) + 0.5) / h, (np.arange(w) + 0.5) / w, indexing="ij")
    ramp = (0.6 * x + 0.4 * y + 0.1 * t)[..., None]
    img = np.array([40, 90, 150]) * (1 - ramp) + np.array([200, 170, 60]) * ramp
    img += 12 * ((np.floor(x * 8) + np.floor(y * 8)) % 2)[..., None]
    stripes = 15 * (np.floor((x + y) * 24) % 2)[..., None]
    ellipse = ((x - 0.3 - 0.25 * t) / 0.16) ** 2 + ((y - 0.35 - 0.1 * t) / 0.11) ** 2 <= 1
    rect = (np.abs(x - 0.7 + 0.2 * t) <= 0.12) & (np.abs(y - 0.7 + 0.05 * t) <= 0.15)
    disk = (x - 0.45 - 0.75 * t) ** 2 + ((y - 0.75) * h / w) ** 2 <= 0.1**2
    masks = [ellipse, rect, disk]
    for mask, colour in zip(masks, ([230, 60, 50], [30, 200, 90], [245, 240, 230]), strict=True):
        img = np.where(mask[..., None], np.array(colour) + stripes, img)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8), masks


def box_of(mask: np.ndarray) -> list[float]:
    ys, xs = np.nonzero(mask)
    return [float(xs.min()), float(ys.min()), float(xs.max()), float(ys.max())]


def centre_of(mask: np.ndarray) -> list[float]:
    ys, xs = np.nonzero(mask)
    return [float(xs.mean()), float(ys.mean())]


def make_inputs() -> dict[str, Any]:
    times = np.linspace(0, 1, NUM_FRAMES)
    frames = np.stack([scene(t, (IMAGE_SIZE, IMAGE_SIZE))[0] for t in times])
    video_masks = [scene(t, VIDEO_HW)[1] for t in times]
    image, image_masks = scene(0.3, IMAGE_HW)
    ellipse, rect, disk = image_masks
    mask_input = torch.from_numpy(scene(0.3, (IMAGE_SIZE // 4, IMAGE_SIZE // 4))[1][1]).float()[None] * 16 - 8

    def case(
        name: str,
        multimask: bool,
        points: list[list[float]] | None = None,
        labels: list[int] | None = None,
        box: list[float] | list[list[float]] | None = None,
        mask: torch.Tensor | None = None,
    ) -> dict[str, Any]:
        return {
            "name": name,
            "point_coords": None if points is None else torch.tensor(points, dtype=torch.float32),
            "point_labels": None if labels is None else torch.tensor(labels, dtype=torch.int32),
            "box": None if box is None else torch.tensor(box, dtype=torch.float32),
            "mask_input": mask,
            "multimask_output": multimask,
        }

    pos, neg = centre_of(ellipse), centre_of(rect)
    image_cases = [
        case("point_multi", True, [pos], [1]),
        case("point_single", False, [pos], [1]),
        case("points_pos_neg", False, [pos, neg, [150.0, 10.0]], [1, 0, 1]),
        case("box_single", False, box=box_of(rect)),
        case("box_multi", True, box=box_of(rect)),
        case("box_point", False, [centre_of(disk)], [0], box=box_of(disk)),
        case("mask_single", False, mask=mask_input),
        case("mask_multi", True, mask=mask_input),
        case("point_mask", False, [neg], [1], mask=mask_input),
        case("box_mask", False, box=box_of(rect), mask=mask_input),
        case("boxes_batched", False, box=[box_of(m) for m in image_masks]),
    ]

    def add_points(
        frame: int,
        obj_id: int,
        points: list[list[float]] | None = None,
        labels: list[int] | None = None,
        box: list[float] | None = None,
    ) -> dict[str, Any]:
        return {
            "op": "add_points_or_box",
            "frame": frame,
            "obj_id": obj_id,
            "points": None if points is None else torch.tensor(points, dtype=torch.float32),
            "labels": None if labels is None else torch.tensor(labels, dtype=torch.int32),
            "box": None if box is None else torch.tensor(box, dtype=torch.float32),
        }

    def add_mask(frame: int, obj_id: int, mask: np.ndarray) -> dict[str, Any]:
        return {"op": "add_mask", "frame": frame, "obj_id": obj_id, "mask": torch.from_numpy(mask)}

    def propagate(start: int, max_frames: int, reverse: bool) -> dict[str, Any]:
        return {"op": "propagate", "start": start, "max_frames": max_frames, "reverse": reverse}

    vm = video_masks
    scenarios = {
        # mask on frame 0, one click on frame 3, a box on frame 5; the disk leaves the frame
        "forward": [
            add_mask(0, 1, vm[0][0]),
            propagate(0, 2, False),
            add_points(3, 2, [centre_of(vm[3][1])], [1]),
            propagate(3, 1, False),
            add_points(5, 3, box=box_of(vm[5][2])),
            propagate(5, 4, False),
        ],
        # from the last frame backwards: box + click on frame 9, clicks on frame 6, a mask on frame 4
        "reverse": [
            add_points(9, 1, [centre_of(vm[9][0])], [1], box=box_of(vm[9][0])),
            propagate(9, 2, True),
            add_points(6, 2, [centre_of(vm[6][1]), centre_of(vm[6][0])], [1, 0]),
            propagate(6, 1, True),
            add_mask(4, 3, vm[4][2]),
            propagate(4, 4, True),
        ],
        # with SCENARIO_KWARGS["strided"], backwards from the last frame: object 1's third prompt (frame 5)
        # pushes frame 9 out of its 2 closest prompted frames, so from frame 4 on frame 9 is an ordinary
        # memory, reached every 3rd frame and, from frame 0, at the far end of the 10-pointer window
        "strided": [
            add_mask(9, 1, vm[9][0]),
            propagate(9, 1, True),
            add_points(7, 1, [centre_of(vm[7][0])], [1]),
            add_points(7, 2, [centre_of(vm[7][1])], [1]),
            propagate(7, 1, True),
            add_points(5, 1, box=box_of(vm[5][0])),
            propagate(5, 5, True),
        ],
    }
    return {
        "image_square": torch.from_numpy(scene(0.5, (IMAGE_SIZE, IMAGE_SIZE))[0]),
        "image": torch.from_numpy(image),
        "image_cases": image_cases,
        "frames_zlib": torch.frombuffer(bytearray(zlib.compress(frames.tobytes(), 9)), dtype=torch.uint8),
        "frames_shape": list(frames.shape),
        "video_hw": list(VIDEO_HW),
        "scenarios": scenarios,
        "scenario_kwargs": SCENARIO_KWARGS,
    }


# ---------------------------------------------------------------- official runs


@torch.no_grad()
def run_forward_image(model: SAM2Base, image: torch.Tensor) -> dict[str, Any]:
    """forward_image on an image at the model resolution, preprocessed like SAM2ImagePredictor."""
    x = (image.permute(2, 0, 1).float() / 255 - MEAN) / STD
    official = SAM2ImagePredictor(model)._transforms(image.numpy())
    assert torch.equal(x, official), "SAM2Transforms is expected to be exact at the model resolution"
    out = model.forward_image(x[None])
    return {
        "backbone_fpn": [f.clone() for f in out["backbone_fpn"]],
        "vision_pos_enc": [p.clone() for p in out["vision_pos_enc"]],
        "vision_features": out["vision_features"].clone(),
    }


@torch.no_grad()
def run_image_cases(model: SAM2Base, image: torch.Tensor, cases: list[dict[str, Any]]) -> list[dict]:
    """Decode every prompt set like SAM2ImagePredictor._predict, keeping the object-score logits it drops."""
    predictor = SAM2ImagePredictor(model)
    # the predictor hard-codes the feature sizes of a 1024 model
    predictor._bb_feat_sizes = [(IMAGE_SIZE // s, IMAGE_SIZE // s) for s in (4, 8, 16)]
    predictor.set_image(image.numpy())
    features = predictor._features
    results = []
    for c in cases:
        mask_in, coords, labels, box = predictor._prep_prompts(
            c["point_coords"], c["point_labels"], c["box"], c["mask_input"], normalize_coords=True
        )
        points = None if coords is None else (coords, labels)
        if box is not None:
            box_labels = torch.tensor([[2, 3]], dtype=torch.int).repeat(box.size(0), 1)
            points = (
                (box, box_labels)
                if points is None
                else (torch.cat([box, points[0]], 1), torch.cat([box_labels, points[1]], 1))
            )
        sparse, dense = model.sam_prompt_encoder(points=points, boxes=None, masks=mask_in)
        low_res, iou, _, obj_score = model.sam_mask_decoder(
            image_embeddings=features["image_embed"],
            image_pe=model.sam_prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=c["multimask_output"],
            repeat_image=points is not None and points[0].shape[0] > 1,
            high_res_features=features["high_res_feats"],
        )
        _, api_iou, api_low_res = predictor.predict(
            c["point_coords"], c["point_labels"], c["box"], c["mask_input"], c["multimask_output"]
        )
        assert np.array_equal(api_low_res, low_res.clamp(-32, 32).squeeze(0).numpy()), c["name"]
        assert np.array_equal(api_iou, iou.squeeze(0).numpy()), c["name"]
        results.append(
            {  # clone: a single-mask output is a view whose storage holds all four masks
                "name": c["name"],
                "low_res_logits": low_res.clone(),
                "iou": iou.clone(),
                "object_score_logits": obj_score.clone(),
            }
        )
    return results


def normalise_frames(frames: torch.Tensor) -> torch.Tensor:
    """The official JPEG-folder preprocessing after decoding: uint8 / 255 in float64, then fp32 mean/std."""
    images = torch.from_numpy(frames.numpy() / 255.0).permute(0, 3, 1, 2).float()
    images -= MEAN
    images /= STD
    return images


class _TorchWithoutBfloat16(types.ModuleType):
    """`torch` as sam2_video_predictor sees it, with bfloat16 meaning float32.

    The predictor casts every memory it stores with `.to(torch.bfloat16)` (in `_run_single_frame_inference`
    and `_run_memory_encoder`); seen through this module it keeps them in fp32, and nothing else changes.
    """

    bfloat16 = torch.float32

    def __getattr__(self, name: str) -> Any:
        return getattr(torch, name)


@contextlib.contextmanager
def stored_memory_dtype(dtype: torch.dtype) -> Iterator[None]:
    """Run SAM2VideoPredictor storing memories in `dtype`: bfloat16 (its own choice) or float32."""
    assert dtype in (torch.bfloat16, torch.float32)
    if dtype == torch.float32:
        video_module.torch = _TorchWithoutBfloat16("torch")
    try:
        yield
    finally:
        video_module.torch = torch


def frame_record(state: dict, frame: int, obj_ids: list[int], video_res: torch.Tensor) -> dict:
    """The outputs the predictor holds for `obj_ids` on `frame` (a fresh prompt's first, in its temp dict)."""
    outs = []
    for obj_id in obj_ids:
        per_obj = state["output_dict_per_obj"][state["obj_id_to_idx"][obj_id]]
        temp = state["temp_output_dict_per_obj"][state["obj_id_to_idx"][obj_id]]
        out = next(
            d[frame]
            for d in (
                temp["cond_frame_outputs"],
                temp["non_cond_frame_outputs"],
                per_obj["cond_frame_outputs"],
                per_obj["non_cond_frame_outputs"],
            )
            if frame in d
        )
        outs.append(out)
    low_res = torch.cat([o["pred_masks"] for o in outs])
    # what the official code returns at video resolution is exactly this resize of the stored logits
    assert torch.equal(video_res, F.interpolate(low_res, VIDEO_HW, mode="bilinear", align_corners=False))
    return {
        "frame": frame,
        "obj_ids": list(obj_ids),
        "low_res_logits": low_res,
        "object_score_logits": torch.cat([o["object_score_logits"] for o in outs]),
        "obj_ptr": torch.cat([o["obj_ptr"] for o in outs]),
    }


def run_video(
    model: SAM2VideoPredictor, frames: torch.Tensor, steps: list[dict], gaps: list[float]
) -> tuple[list[dict], dict[str, Any]]:
    """Replay a scenario on the official video predictor, fed the given frames (the JPEG loader bypassed):
    a record per call (the prompted object of a prompt, every object of a propagated frame), and the
    final inference state.

    Appends to `gaps` the gap between the two best predicted IoUs of every multimask decoding, where the
    tracker picks a mask by argmax.
    """
    images = normalise_frames(frames)
    video_module.load_video_frames = lambda **_: (images, *VIDEO_HW)

    def record_gap(_module: torch.nn.Module, _args: Any, out: tuple[torch.Tensor, ...]) -> None:
        if out[1].shape[-1] > 1:
            top2 = out[1].topk(2, dim=-1).values
            gaps.append(float((top2[..., 0] - top2[..., 1]).min()))

    hook = model.sam_mask_decoder.register_forward_hook(record_gap)
    state = model.init_state(video_path="<frames in memory>")
    records = []
    for s in steps:
        if s["op"] == "propagate":
            for frame, obj_ids, video_res in model.propagate_in_video(
                state, start_frame_idx=s["start"], max_frame_num_to_track=s["max_frames"], reverse=s["reverse"]
            ):
                records.append(frame_record(state, frame, obj_ids, video_res))
            continue
        if s["op"] == "add_mask":
            frame, obj_ids, video_res = model.add_new_mask(state, s["frame"], s["obj_id"], s["mask"])
        else:
            frame, obj_ids, video_res = model.add_new_points_or_box(
                state, s["frame"], s["obj_id"], points=s["points"], labels=s["labels"], box=s["box"]
            )
        k = obj_ids.index(s["obj_id"])
        records.append(frame_record(state, frame, [s["obj_id"]], video_res[k : k + 1]))
    hook.remove()
    return records, state


FIELDS = ("low_res_logits", "object_score_logits", "obj_ptr")


def deflate(t: torch.Tensor) -> dict[str, Any]:
    """A float32 tensor zlib-compressed (absent objects' logits are all NO_OBJ_SCORE and shrink to nothing)."""
    data = zlib.compress(t.float().contiguous().numpy().tobytes(), 9)
    return {"zlib": torch.frombuffer(bytearray(data), dtype=torch.uint8), "shape": list(t.shape)}


def inflate(packed: dict[str, Any]) -> torch.Tensor:
    """`deflate` undone (tests/parity_fixtures.py has the same for the tests, which cannot import this)."""
    data = bytearray(zlib.decompress(bytes(packed["zlib"].numpy())))
    return torch.frombuffer(data, dtype=torch.float32).reshape(packed["shape"])


def video_table(records: list[dict], state: dict[str, Any], dtype: torch.dtype) -> dict[str, Any]:
    """One row per (object, frame) of the records, with the memory the predictor stored there.

    A prompt call and the propagation over its frame return the same values (checked): kept once.
    """
    rows: dict[tuple[int, int], dict[str, torch.Tensor]] = {}
    for r in records:
        for i, obj_id in enumerate(r["obj_ids"]):
            row = {k: r[k][i : i + 1] for k in FIELDS}
            first = rows.setdefault((obj_id, r["frame"]), row)
            assert all(torch.equal(first[k], row[k]) for k in FIELDS), (obj_id, r["frame"])
    memories = {}
    for obj_idx, per_obj in state["output_dict_per_obj"].items():
        for d in (per_obj["cond_frame_outputs"], per_obj["non_cond_frame_outputs"]):
            for frame, out in d.items():
                key = (state["obj_idx_to_id"][obj_idx], frame)
                assert key not in memories and out["maskmem_features"].dtype == dtype, key
                memories[key] = out["maskmem_features"]
    assert set(memories) == set(rows), "every output has a stored memory"
    keys = sorted(rows)
    return {
        "obj_ids": torch.tensor([k[0] for k in keys]),
        "frames": torch.tensor([k[1] for k in keys]),
        "low_res_logits": deflate(torch.cat([rows[k]["low_res_logits"] for k in keys])),
        "object_score_logits": torch.cat([rows[k]["object_score_logits"] for k in keys]),
        "obj_ptr": torch.cat([rows[k]["obj_ptr"] for k in keys]),
        "maskmem_features": torch.cat([memories[k] for k in keys]),
    }


def video_kwargs(mode: str, scenario: str = "") -> dict[str, Any]:
    """SAM2VideoPredictor's arguments, besides the spec, for a mode and scenario."""
    return (POSTPROCESS["video"] if mode == "postprocess" else {}) | SCENARIO_KWARGS.get(scenario, {})


def run_videos(
    spec: dict[str, Any], state: dict[str, torch.Tensor], frames: torch.Tensor, scenarios: dict[str, list]
) -> tuple[dict[str, Any], list[float]]:
    """Every scenario in both modes, the predictor storing memories in bfloat16 (its own choice) and in
    fp32: runs[mode][scenario][dtype] = (model, records, final inference state); and the IoU gaps."""
    runs: dict[str, Any] = {}
    gaps: list[float] = []
    for mode in MODES:
        runs[mode] = {}
        for name, steps in scenarios.items():
            runs[mode][name] = {}
            for dtype in (torch.bfloat16, torch.float32):
                model = build_model(spec, state, SAM2VideoPredictor, **video_kwargs(mode, name))
                with stored_memory_dtype(dtype):
                    runs[mode][name][dtype] = (model, *run_video(model, frames, steps, gaps))
    return runs, gaps


def head_scores(records: list[dict]) -> torch.Tensor:
    """Object scores from the object-score head, sorted (+-10 come from mask prompts, not from the head)."""
    s = torch.cat([r["object_score_logits"].flatten() for r in records])
    return s[s.abs() != 10.0].sort().values


def calibrate(
    spec: dict[str, Any], state: dict[str, torch.Tensor], frames: torch.Tensor, scenarios: dict[str, list]
) -> tuple[float, dict[str, torch.Tensor]]:
    """Shift the object-score bias so that objects come and go with a margin against rounding.

    Starts from minus the median score, then moves 0 into the widest gap between the middle half of the
    scores; keeps the round whose smallest |score| is largest among those with >= 1/5 of each sign.
    Scores come from the predictor's own (bfloat16-memory) runs of `scenarios`, in both modes.
    """
    shift, best, best_margin = None, None, -1.0
    for _ in range(CALIBRATION_ROUNDS):
        trial = {**state, OBJ_SCORE_BIAS: (state[OBJ_SCORE_BIAS] + (shift or 0.0)).half().float()}
        records = []
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for mode in MODES:
                model = build_model(spec, trial, SAM2VideoPredictor, **video_kwargs(mode))
                for steps in scenarios.values():
                    records += run_video(model, frames, steps, [])[0]
        scores = head_scores(records)
        if shift is None:
            shift = -float(scores.median())
            continue
        balanced = min((scores > 0).sum(), (scores <= 0).sum()) >= len(scores) / 5
        if balanced and float(scores.abs().min()) > best_margin:
            best, best_margin = (shift, trial), float(scores.abs().min())
        middle = scores[len(scores) // 4 : -(len(scores) // 4)]
        i = int((middle[1:] - middle[:-1]).argmax())
        shift -= float(middle[i] + middle[i + 1]) / 2
    assert best is not None, "no balanced object scores; change SEED or GAINS"
    return best


@torch.no_grad()
def run_memory_encoder_cases(
    model: SAM2VideoPredictor, state: dict[str, Any], table: dict[str, Any], steps: list[dict]
) -> list[dict[str, Any]]:
    """The official memory encoder in fp32 (before the predictor's bfloat16 cast), one object per call as
    the predictor runs it: on each prompt of `steps` (is_mask_from_pts, as for every prompted frame), and
    on the last frames where every object is tracked and one is present, one absent (the no-object
    embedding). Input: the table's low-res logits resized to the model size, which is how the predictor
    encodes a prompted frame."""
    logits = inflate(table["low_res_logits"])
    keys = [(int(o), int(f)) for o, f in zip(table["obj_ids"], table["frames"], strict=True)]
    rows = {k: i for i, k in enumerate(keys)}
    by_frame: dict[int, list[int]] = {}
    for obj_id, frame in keys:
        by_frame.setdefault(frame, []).append(obj_id)
    tracked = [f for f, objs in by_frame.items() if len(objs) == max(len(v) for v in by_frame.values())]
    scores = {f: torch.cat([table["object_score_logits"][rows[(o, f)]] for o in by_frame[f]]) for f in tracked}
    present = max(f for f in tracked if (scores[f] > 0).any())
    absent = max(f for f in tracked if (scores[f] <= 0).any())
    cases = [(s["frame"], [s["obj_id"]], True) for s in steps if s["op"] != "propagate"]
    cases += [(f, by_frame[f], False) for f in sorted({present, absent})]
    results = []
    for frame, obj_ids, from_points in cases:
        mems, pos = [], None
        for obj_id in obj_ids:
            i = rows[(obj_id, frame)]
            high = F.interpolate(logits[i : i + 1], (IMAGE_SIZE, IMAGE_SIZE), mode="bilinear", align_corners=False)
            if from_points and model.binarize_mask_from_pts_for_mem_enc:
                # binarized: the resize differs by up to 1.2e-7 near 0 between kernels (AVX-512 vs default)
                assert high.abs().min() > 1e-6, (frame, obj_id)
            _, _, feats, _, sizes = model._get_image_feature(state, frame, 1)
            mem, pos = model._encode_new_memory(
                current_vision_feats=feats,
                feat_sizes=sizes,
                pred_masks_high_res=high,
                object_score_logits=table["object_score_logits"][i : i + 1],
                is_mask_from_pts=from_points,
            )
            if from_points:  # exactly how the predictor encodes a prompted frame, then rounds it
                assert torch.equal(mem.to(torch.bfloat16), table["maskmem_features"][i : i + 1]), (frame, obj_id)
            mems.append(mem)
        results.append(
            {
                "frame": frame,
                "obj_ids": obj_ids,
                "from_points": from_points,
                "maskmem_features": torch.cat(mems),
                "maskmem_pos_enc": pos[-1].clone(),
            }
        )
    return results


def margins(records: list[dict], gaps: list[float]) -> dict[str, Any]:
    """How far the recorded outputs are from the thresholds that rounding could flip."""
    scores = torch.cat([r["object_score_logits"].flatten() for r in records])
    logits = torch.cat([r["low_res_logits"].flatten() for r in records])
    logits = logits[logits > -1000]  # NO_OBJ_SCORE
    return {
        "object_scores_positive_negative": [int((scores > 0).sum()), int((scores <= 0).sum())],
        "min_abs_object_score": float(head_scores(records).abs().min()),
        "min_iou_top2_gap_in_tracking": min(gaps),
        "low_res_logits_within_1e-4_of_0": int((logits.abs() < 1e-4).sum()),
    }


def run_flag_set(flag_set: str, inputs: dict[str, Any], out_dir: str) -> dict[str, Any]:
    spec = model_spec(flag_set)
    frames = torch.frombuffer(bytearray(zlib.decompress(bytes(inputs["frames_zlib"].numpy()))), dtype=torch.uint8)
    frames = frames.reshape(inputs["frames_shape"])
    scenarios = inputs["scenarios"]
    calibration = {k: scenarios[k] for k in CALIBRATION_SCENARIOS}
    shift, state = calibrate(spec, random_state(spec, SEED), frames, calibration)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        runs, gaps = run_videos(spec, state, frames, scenarios)
    video: dict[str, Any] = {mode: {name: {} for name in scenarios} for mode in MODES}
    all_records = []
    for mode, name in itertools.product(MODES, scenarios):
        for dtype, (_, records, run_state) in runs[mode][name].items():
            video[mode][name][str(dtype).removeprefix("torch.")] = video_table(records, run_state, dtype)
            all_records += records
        del video[mode][name]["float32"]["maskmem_features"]  # fixture budget; the fp32 dtype was checked
    memory_encoder = {}
    for mode in MODES:
        model, _, run_state = runs[mode]["forward"][torch.bfloat16]
        table = video[mode]["forward"]["bfloat16"]
        memory_encoder[mode] = run_memory_encoder_cases(model, run_state, table, scenarios["forward"])
    outputs: dict[str, Any] = {
        "forward_image": run_forward_image(build_model(spec, state, SAM2Base), inputs["image_square"]),
        "image": {
            mode: run_image_cases(build_model(spec, state, SAM2Base, **kwargs), inputs["image"], inputs["image_cases"])
            for mode, kwargs in (("postprocess", POSTPROCESS["image"]), ("raw", {}))
        },
        "memory_encoder": memory_encoder,
        "video": video,
    }
    meta = {
        "flag_set": flag_set,
        "model": spec,
        "hard_coded": HARD_CODED,
        "postprocess": POSTPROCESS,
        "image_size": IMAGE_SIZE,
        "init": {"seed": SEED, "recipe": INIT_RECIPE, "gains": GAINS, "obj_score_bias_shift": shift},
        "notes": {
            "fill_holes_skipped_on_cpu": any("Skipping the post-processing" in str(w.message) for w in caught),
            **margins(all_records, gaps),
            "image_preprocess": "SAM2Transforms: uint8 -> float32 / 255, Resize((S, S)) (torchvision, "
            "bilinear, antialias), Normalize(mean, std)",
            "video_preprocess": "uint8 / 255.0 in float64 -> float32, -= mean, /= std (frames_zlib are already S x S)",
        },
        "versions": {"torch": torch.__version__, "sam2": importlib.metadata.version("sam2")},
    }
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "spec.json"), "w") as f:
        json.dump(meta, f, indent=1)
    torch.save({"model": {k: v.half() for k, v in state.items()}}, os.path.join(out_dir, "model.pt"))
    torch.save(outputs, os.path.join(out_dir, "outputs.pt"))
    return meta


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fixtures", "parity")
    parser.add_argument("--out", default=os.path.normpath(root))
    args = parser.parse_args()
    torch.set_num_threads(1)  # one reduction order, whatever the machine's core count
    video_module.tqdm = lambda it, **_: it
    inputs = make_inputs()
    os.makedirs(args.out, exist_ok=True)
    torch.save(inputs, os.path.join(args.out, "inputs.pt"))
    for flag_set in ("sam2", "sam2.1"):
        meta = run_flag_set(flag_set, inputs, os.path.join(args.out, flag_set))
        print(flag_set, meta["init"]["obj_score_bias_shift"], json.dumps(meta["notes"], indent=1))
    for dirpath, _, files in sorted(os.walk(args.out)):
        for name in sorted(files):
            path = os.path.join(dirpath, name)
            print(f"{os.path.getsize(path):>9}  {os.path.relpath(path, args.out)}")


if __name__ == "__main__":
    main()
