"""The SAM 2 model: parameters laid out like the official `SAM2Base` (checkpoints load strictly) and
the per-frame computations a tracker composes, all batched over prompts / objects.

- `encode_image`: images -> feature pyramid (the official `forward_image`).
- `decode`: one frame's prompts -> mask logits, IoU, object score, output tokens (prompt encoder +
  mask decoder, as `SAM2ImagePredictor` calls them).
- `segment` / `mask_as_output`: the official `_forward_sam_heads` / `_use_mask_as_output`, adding
  high-res masks, best-mask selection and object pointers.
- `embed_without_memory`, `spatial_memory_tokens`, `pointer_memory_tokens`, `condition_on_memory`:
  the pieces of `_prepare_memory_conditioned_features` (which memories to use is the tracker's choice).
- `encode_memory`: `_encode_new_memory`.

Images must be resized to `image_size` x `image_size` and normalized with `normalize_images` first,
as the official predictors do outside the model. Everything here is inference semantics: training
only stochastic parts (dropout 0.1 in memory attention) are left out.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.init import trunc_normal_

from masklet.model.hiera import Hiera
from masklet.model.image_encoder import FpnNeck, ImageEncoder
from masklet.model.layers import MLP
from masklet.model.mask_decoder import DecoderOutput, MaskDecoder
from masklet.model.memory_attention import MemoryAttention
from masklet.model.memory_encoder import MemoryEncoder
from masklet.model.position import sine_encoding_1d
from masklet.model.presets import ModelSpec, get_spec
from masklet.model.prompt_encoder import PromptEncoder

IMAGE_MEAN = (0.485, 0.456, 0.406)
IMAGE_STD = (0.229, 0.224, 0.225)
NO_OBJ_SCORE = -1024.0  # mask logit everywhere when the object is predicted absent
MASK_INPUT_SCALE, MASK_INPUT_BIAS = 20.0, -10.0  # binary input mask -> logits of +-10
BOX_LABELS = (2, 3)  # point labels of a box's top-left and bottom-right corners
MASK_PROMPT_CHANNELS = 16


def normalize_images(images: Tensor) -> Tensor:
    """RGB images [B, 3, H, W], uint8 or float in [0, 1] -> float32 normalized with the ImageNet
    mean / std the official predictors use (resize to `image_size` first)."""
    x = images.float() / 255.0 if images.dtype == torch.uint8 else images.float()
    mean = torch.tensor(IMAGE_MEAN, device=x.device)[:, None, None]
    std = torch.tensor(IMAGE_STD, device=x.device)[:, None, None]
    return (x - mean) / std


@dataclass
class ImageFeatures:
    """The image encoder's pyramid, highest resolution first (strides 4, 8, 16).

    With high-res features enabled, levels 0 and 1 are already projected by the decoder's conv_s0 /
    conv_s1 (as the official `forward_image` does), so they are ready for every prompt.
    """

    backbone_fpn: list[Tensor]
    vision_pos_enc: list[Tensor]

    @property
    def vision_features(self) -> Tensor:
        """The stride-16 image embedding [B, C, h, w]."""
        return self.backbone_fpn[-1]


class SegmentOutput(NamedTuple):
    """Per-object outputs of one frame (the official `_forward_sam_heads` tuple).

    M = 3 with multimask output, else 1. Low-res masks are at 4x the embedding (256 at 1024),
    high-res ones at image_size. `*_masks` hold the best of the M (highest predicted IoU);
    `obj_ptr` [B, C] is the object pointer for the memory bank.
    """

    low_res_multimasks: Tensor
    high_res_multimasks: Tensor
    ious: Tensor
    low_res_masks: Tensor
    high_res_masks: Tensor
    obj_ptr: Tensor
    object_score_logits: Tensor


class SAM2Model(nn.Module):
    """SAM 2 / SAM 2.1 with the official state-dict layout. Build it with `build_model`."""

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        self.spec = spec
        c, m = spec.hidden_dim, spec.mem_dim
        # parameters are registered in the official order, so state_dict() lists keys like the checkpoints
        self.maskmem_tpos_enc = nn.Parameter(torch.zeros(spec.num_maskmem, 1, 1, m))
        self.no_mem_embed = nn.Parameter(torch.zeros(1, 1, c))
        self.no_mem_pos_enc = nn.Parameter(torch.zeros(1, 1, c))
        self.no_obj_ptr: nn.Parameter | None = None
        if spec.pred_obj_scores and spec.use_obj_ptrs_in_encoder:
            self.no_obj_ptr = nn.Parameter(torch.zeros(1, c))
        self.no_obj_embed_spatial: nn.Parameter | None = None
        if spec.no_obj_embed_spatial:
            self.no_obj_embed_spatial = nn.Parameter(torch.zeros(1, m))
        for p in (
            self.maskmem_tpos_enc,
            self.no_mem_embed,
            self.no_mem_pos_enc,
            self.no_obj_ptr,
            self.no_obj_embed_spatial,
        ):
            if p is not None:
                trunc_normal_(p, std=0.02)

        trunk = Hiera(
            spec.embed_dim,
            spec.num_heads,
            spec.stages,
            spec.global_att_blocks,
            spec.window_spec,
            spec.window_pos_embed_bkg_spatial_size,
        )
        self.image_encoder = ImageEncoder(trunk, FpnNeck(c, trunk.channel_list))
        if spec.use_obj_ptrs_in_encoder:
            # turns a full-res mask prompt into stride-4 logits for the decoder (mask_as_output)
            self.mask_downsample = nn.Conv2d(1, 1, kernel_size=4, stride=4)
        self.memory_attention = MemoryAttention(
            c,
            m,
            spec.memory_attention_layers,
            spec.memory_attention_heads,
            spec.memory_attention_mlp_dim,
            spec.rope_theta,
        )
        self.memory_encoder = MemoryEncoder(c, m)
        emb = spec.image_embedding_size
        self.sam_prompt_encoder = PromptEncoder(c, (emb, emb), (spec.image_size, spec.image_size), MASK_PROMPT_CHANNELS)
        self.sam_mask_decoder = MaskDecoder(
            c,
            spec.decoder_num_heads,
            spec.decoder_mlp_dim,
            spec.iou_head_hidden_dim,
            use_high_res_features=spec.use_high_res_features_in_sam,
            iou_prediction_use_sigmoid=spec.iou_prediction_use_sigmoid,
            pred_obj_scores=spec.pred_obj_scores,
            pred_obj_scores_mlp=spec.pred_obj_scores_mlp,
            use_multimask_token_for_obj_ptr=spec.use_multimask_token_for_obj_ptr,
            dynamic_multimask_via_stability=spec.dynamic_multimask_via_stability,
            dynamic_multimask_stability_delta=spec.dynamic_multimask_stability_delta,
            dynamic_multimask_stability_thresh=spec.dynamic_multimask_stability_thresh,
        )
        self.obj_ptr_proj: nn.Module = nn.Identity()
        if spec.use_obj_ptrs_in_encoder:
            self.obj_ptr_proj = MLP(c, c, c, 3) if spec.use_mlp_for_obj_ptr_proj else nn.Linear(c, c)
        # keeps the time encoding of pointers apart from the spatial encoding of memories
        self.obj_ptr_tpos_proj: nn.Module = nn.Linear(c, m) if spec.proj_tpos_enc_in_obj_ptrs else nn.Identity()

    # ------------------------------------------------------------------ image
    def encode_image(self, images: Tensor) -> ImageFeatures:
        """Normalized images [B, 3, S, S] (S = image_size) -> the feature pyramid."""
        weight = self.image_encoder.trunk.patch_embed.proj.weight
        fpn, pos = self.image_encoder(images.to(device=weight.device, dtype=weight.dtype))
        if self.spec.use_high_res_features_in_sam:
            fpn[0] = self.sam_mask_decoder.conv_s0(fpn[0])
            fpn[1] = self.sam_mask_decoder.conv_s1(fpn[1])
        return ImageFeatures(fpn, pos)

    def embed_without_memory(self, features: ImageFeatures) -> Tensor:
        """The image embedding of a frame with no memory (an image, or a video's first prompted frame):
        the features plus the learned no-memory embedding, [B, C, h, w]."""
        return features.vision_features + self.no_mem_embed.view(1, -1, 1, 1)

    def _high_res(self, features: ImageFeatures) -> list[Tensor] | None:
        return features.backbone_fpn[:2] if self.spec.use_high_res_features_in_sam else None

    # ------------------------------------------------------------------ prompts -> masks
    def decode(
        self,
        features: ImageFeatures,
        point_coords: Tensor | None = None,
        point_labels: Tensor | None = None,
        boxes: Tensor | None = None,
        mask_input: Tensor | None = None,
        multimask_output: bool = True,
        image_embedding: Tensor | None = None,
    ) -> DecoderOutput:
        """Decode B prompts on one frame.

        point_coords [B, N, 2] (x, y) and boxes [B, 4] (x0, y0, x1, y1) are in input-image pixels
        (0..image_size); point_labels [B, N]: 1 positive, 0 negative, -1 padding. A box becomes two
        points placed before the clicks. mask_input [B, 1, H, W] holds mask logits, resized
        (bilinear, antialiased) to 4x the embedding if needed. Features of one image are shared by
        all B prompts. Without points or boxes no sparse token is used (SAM2ImagePredictor with only a
        mask), whereas `segment` adds one padding point like the video path. `image_embedding` defaults
        to `embed_without_memory(features)` (SAM2ImagePredictor); a tracker passes the
        memory-conditioned embedding instead.
        """
        if (point_coords is None) != (point_labels is None):
            raise ValueError("point_coords and point_labels must be given together")
        if boxes is not None:
            box_coords = boxes.reshape(-1, 2, 2)
            box_labels = torch.tensor([BOX_LABELS], dtype=torch.int32, device=boxes.device).expand(
                box_coords.shape[0], 2
            )
            if point_coords is not None and point_labels is not None:
                point_coords = torch.cat([box_coords, point_coords], dim=1)
                point_labels = torch.cat([box_labels, point_labels], dim=1)
            else:
                point_coords, point_labels = box_coords, box_labels
        if mask_input is not None and tuple(mask_input.shape[-2:]) != self.sam_prompt_encoder.mask_input_size:
            mask_input = F.interpolate(
                mask_input.float(),
                size=self.sam_prompt_encoder.mask_input_size,
                mode="bilinear",
                align_corners=False,
                antialias=True,
            )
        sparse, dense = self.sam_prompt_encoder(point_coords, point_labels, mask_input)
        if image_embedding is None:
            image_embedding = self.embed_without_memory(features)
        return self.sam_mask_decoder(
            image_embedding,
            self.sam_prompt_encoder.dense_pe(),
            sparse,
            dense,
            multimask_output,
            self._high_res(features),
        )

    def use_multimask(self, is_init_cond_frame: bool, num_points: int) -> bool:
        """Whether a tracking step asks for 3 masks (the official `_use_multimask`; a box counts as 2 points)."""
        s = self.spec
        return (
            s.multimask_output_in_sam
            and (is_init_cond_frame or s.multimask_output_for_tracking)
            and s.multimask_min_pt_num <= num_points <= s.multimask_max_pt_num
        )

    def segment(
        self,
        features: ImageFeatures,
        image_embedding: Tensor,
        point_coords: Tensor | None = None,
        point_labels: Tensor | None = None,
        mask_input: Tensor | None = None,
        multimask_output: bool = False,
    ) -> SegmentOutput:
        """One tracking step's SAM heads for B objects (the official `_forward_sam_heads`).

        `image_embedding` [B, C, h, w] is the object's (memory-conditioned) embedding. Without points
        a single padding point is used, like the official code. Masks of objects predicted absent are
        set to NO_OBJ_SCORE; their pointer becomes the learned no-object pointer.
        """
        b = image_embedding.shape[0]
        if point_coords is None or point_labels is None:
            point_coords = torch.zeros(b, 1, 2, device=image_embedding.device)
            point_labels = -torch.ones(b, 1, dtype=torch.int32, device=image_embedding.device)
        out = self.decode(
            features,
            point_coords,
            point_labels,
            mask_input=mask_input,
            multimask_output=multimask_output,
            image_embedding=image_embedding,
        )
        low_res = out.masks
        appearing = out.object_score_logits > 0
        if self.spec.pred_obj_scores:
            low_res = torch.where(appearing[:, None, None], low_res, NO_OBJ_SCORE)
        low_res = low_res.float()
        size = (self.spec.image_size, self.spec.image_size)
        high_res = F.interpolate(low_res, size=size, mode="bilinear", align_corners=False)
        token = out.sam_tokens[:, 0]
        if multimask_output:
            best = torch.argmax(out.iou, dim=-1)
            rows = torch.arange(low_res.shape[0], device=low_res.device)
            low_best, high_best = low_res[rows, best][:, None], high_res[rows, best][:, None]
            if out.sam_tokens.shape[1] > 1:
                token = out.sam_tokens[rows, best]
        else:
            low_best, high_best = low_res, high_res
        obj_ptr = self._no_object_pointer(self.obj_ptr_proj(token), appearing.float())
        return SegmentOutput(low_res, high_res, out.iou, low_best, high_best, obj_ptr, out.object_score_logits)

    def mask_as_output(self, features: ImageFeatures, mask: Tensor) -> SegmentOutput:
        """A mask prompt [B, 1, S, S] taken as the output itself (`use_mask_input_as_output_without_sam`).

        Logits are +-10; the object pointer still comes from the decoder, prompted with the mask
        downsampled by `mask_downsample`; visibility is whether the mask has any foreground.
        """
        mask = mask.float()
        high_res = mask * MASK_INPUT_SCALE + MASK_INPUT_BIAS
        low_res = F.interpolate(
            high_res,
            size=(high_res.shape[-2] // 4, high_res.shape[-1] // 4),
            mode="bilinear",
            align_corners=False,
            antialias=True,
        )
        b = mask.shape[0]
        ious = mask.new_ones(b, 1)
        if self.spec.use_obj_ptrs_in_encoder:
            embedding = features.vision_features.expand(b, -1, -1, -1)
            mask_logits = self.mask_downsample(mask.to(self.mask_downsample.weight.dtype))
            obj_ptr = self.segment(features, embedding, mask_input=mask_logits).obj_ptr
        else:
            obj_ptr = torch.zeros(b, self.spec.hidden_dim, device=mask.device)
        appearing = torch.any(mask.flatten(1) > 0.0, dim=1)[:, None].float()
        object_score_logits = MASK_INPUT_SCALE * appearing + MASK_INPUT_BIAS
        obj_ptr = self._no_object_pointer(obj_ptr, appearing)
        return SegmentOutput(low_res, high_res, ious, low_res, high_res, obj_ptr, object_score_logits)

    def _no_object_pointer(self, obj_ptr: Tensor, appearing: Tensor) -> Tensor:
        """Blend in the learned no-object pointer where `appearing` [B, 1] is 0."""
        if self.no_obj_ptr is None:
            return obj_ptr
        appearing = appearing.to(obj_ptr.dtype)
        if self.spec.fixed_no_obj_ptr:
            obj_ptr = appearing * obj_ptr
        return obj_ptr + (1 - appearing) * self.no_obj_ptr

    # ------------------------------------------------------------------ memory
    def encode_memory(
        self,
        features: ImageFeatures,
        high_res_mask_logits: Tensor,
        object_score_logits: Tensor,
        from_points: bool | Tensor = False,
    ) -> tuple[Tensor, Tensor]:
        """A frame's prediction for B objects -> (memory features, memory pos) [B, mem_dim, h, w].

        Logits [B, 1, S, S] become sigmoid probabilities (binary where `from_points` [B] and the
        post-processing flag is on), scaled and shifted, and are fused with the frame's raw image
        features. Objects predicted absent get the no-object spatial embedding (SAM 2.1).
        """
        probs = torch.sigmoid(high_res_mask_logits)
        if self.spec.binarize_mask_from_pts_for_mem_enc:
            binarize = torch.as_tensor(from_points, device=probs.device).reshape(-1, 1, 1, 1)
            probs = torch.where(binarize, (high_res_mask_logits > 0).to(probs.dtype), probs)
        if self.spec.sigmoid_scale_for_mem_enc != 1.0:
            probs = probs * self.spec.sigmoid_scale_for_mem_enc
        if self.spec.sigmoid_bias_for_mem_enc != 0.0:
            probs = probs + self.spec.sigmoid_bias_for_mem_enc
        # NCHW-contiguous like the official input: the FPN's channels-last view takes another conv path
        # whose last-bit differences can flip the bfloat16 rounding of stored memories
        maskmem, pos = self.memory_encoder(features.vision_features.contiguous(), probs)
        if self.no_obj_embed_spatial is not None:
            absent = 1 - (object_score_logits > 0).float()
            no_obj = absent[..., None, None] * self.no_obj_embed_spatial[..., None, None]
            maskmem = (maskmem + no_obj).to(maskmem.dtype)
        return maskmem, pos

    def spatial_memory_tokens(self, maskmem: Tensor, maskmem_pos: Tensor, t_pos: int) -> tuple[Tensor, Tensor]:
        """One memory frame as attention tokens [B, h*w, mem_dim] and their positions.

        t_pos is 0 for conditioning (prompted) frames and 1..num_maskmem-1 for the previous frames,
        num_maskmem-1 being the frame just before; it selects the temporal encoding added to the positions.
        """
        tokens = maskmem.flatten(2).transpose(1, 2)
        pos = maskmem_pos.flatten(2).transpose(1, 2) + self.maskmem_tpos_enc[self.spec.num_maskmem - t_pos - 1]
        return tokens, pos

    def pointer_memory_tokens(
        self, obj_ptrs: Tensor, t_diffs: Tensor, num_frames: int | None = None
    ) -> tuple[Tensor, Tensor]:
        """Object pointers [B, P, C] as attention tokens [B, P * C / mem_dim, mem_dim] and positions.

        t_diffs [P] or [B, P] are the frame distances the official code encodes (signed or absolute,
        per `use_signed_tpos_enc_to_obj_ptrs`, which is the caller's choice of values); they are
        normalized by min(num_frames, max_obj_ptrs_in_encoder) - 1 (num_frames None: video length
        unknown, taken as long). Each pointer is split into C / mem_dim consecutive tokens.
        """
        b, p, c = obj_ptrs.shape
        m = self.spec.mem_dim
        if self.spec.add_tpos_enc_to_obj_ptrs:
            max_ptrs = self.spec.max_obj_ptrs_in_encoder
            t_diff_max = (max_ptrs if num_frames is None else min(num_frames, max_ptrs)) - 1
            dim = c if self.spec.proj_tpos_enc_in_obj_ptrs else m
            pos = sine_encoding_1d(t_diffs.to(obj_ptrs.device, torch.float32) / t_diff_max, dim)
            pos = self.obj_ptr_tpos_proj(pos.to(obj_ptrs.dtype)).expand(b, p, m)
        else:
            pos = obj_ptrs.new_zeros(b, p, m)
        split = c // m
        if split > 1:
            return obj_ptrs.reshape(b, p * split, m), pos.repeat_interleave(split, dim=1)
        return obj_ptrs, pos

    def condition_on_memory(
        self,
        features: ImageFeatures,
        memory: Tensor,
        memory_pos: Tensor,
        num_obj_ptr_tokens: int = 0,
        memory_mask: Tensor | None = None,
    ) -> Tensor:
        """Memory attention of a frame's embedding over B objects' memories -> [B, C, h, w].

        memory / memory_pos [B, M, mem_dim]: spatial memory frames first, then `num_obj_ptr_tokens`
        pointer tokens (see `MemoryAttention`). Frame features of batch 1 are shared by all objects.
        """
        feat = features.vision_features
        _, c, h, w = feat.shape
        b = memory.shape[0]
        curr = feat.flatten(2).transpose(1, 2)  # batch 1, broadcast to the objects inside
        curr_pos = features.vision_pos_enc[-1].flatten(2).transpose(1, 2)
        memory, memory_pos = memory.to(feat.dtype), memory_pos.to(feat.dtype)
        out = self.memory_attention(curr, curr_pos, memory, memory_pos, (h, w), num_obj_ptr_tokens, memory_mask)
        return out.transpose(1, 2).reshape(b, c, h, w)


def build_model(
    name_or_spec: str | ModelSpec,
    *,
    image_size: int | None = None,
    apply_postprocessing: bool = True,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> SAM2Model:
    """A SAM 2 model in eval mode from a preset name (see `presets.PRESETS`) or a custom spec.

    `apply_postprocessing` mirrors the official builders' default: dynamic multimask fallback via
    stability and binarized memory masks on prompted frames. `device="meta"` builds without memory.
    """
    spec = get_spec(name_or_spec) if isinstance(name_or_spec, str) else name_or_spec
    if image_size is not None:
        spec = dataclasses.replace(spec, image_size=image_size)
    if apply_postprocessing:
        spec = spec.with_postprocessing()
    if device is None:
        model = SAM2Model(spec)
    else:
        with torch.device(device):
            model = SAM2Model(spec)
    if dtype is not None:
        model = model.to(dtype=dtype)
    return model.eval()
