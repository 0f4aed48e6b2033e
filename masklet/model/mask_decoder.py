"""SAM 2 mask decoder: a two-way transformer between prompt tokens and the image embedding, then
hypernetwork heads that turn mask tokens into mask logits at 4x the embedding resolution, an IoU
head and an object-score head (is the object visible at all?).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn

from masklet.model.layers import MLP, Attention, LayerNorm2d

NUM_MULTIMASK_OUTPUTS = 3
DECODER_DEPTH = 2
ATTENTION_DOWNSAMPLE_RATE = 2  # internal width of the token<->image cross attentions is dim / 2
NO_OBJECT_LOGIT = 10.0  # object-score logit reported when the decoder has no object-score head


class TwoWayAttentionBlock(nn.Module):
    """Token self-attention, token->image attention, token MLP, image->token attention (post-norm)."""

    def __init__(self, dim: int, num_heads: int, mlp_dim: int, skip_first_layer_pe: bool) -> None:
        super().__init__()
        self.self_attn = Attention(dim, num_heads)
        self.norm1 = nn.LayerNorm(dim)
        self.cross_attn_token_to_image = Attention(dim, num_heads, ATTENTION_DOWNSAMPLE_RATE)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = MLP(dim, mlp_dim, dim, num_layers=2, activation=nn.ReLU)
        self.norm3 = nn.LayerNorm(dim)
        self.norm4 = nn.LayerNorm(dim)
        self.cross_attn_image_to_token = Attention(dim, num_heads, ATTENTION_DOWNSAMPLE_RATE)
        self.skip_first_layer_pe = skip_first_layer_pe

    def forward(self, queries: Tensor, keys: Tensor, query_pe: Tensor, key_pe: Tensor) -> tuple[Tensor, Tensor]:
        if self.skip_first_layer_pe:
            # the first layer replaces the tokens (which already carry their positions) outright
            queries = self.self_attn(queries, queries, queries)
        else:
            q = queries + query_pe
            queries = queries + self.self_attn(q, q, queries)
        queries = self.norm1(queries)

        # keys are unchanged until the last step, so their positional sum serves both cross attentions
        q, k = queries + query_pe, keys + key_pe
        queries = self.norm2(queries + self.cross_attn_token_to_image(q, k, keys))
        queries = self.norm3(queries + self.mlp(queries))

        q = queries + query_pe
        keys = self.norm4(keys + self.cross_attn_image_to_token(k, q, queries))
        return queries, keys


class TwoWayTransformer(nn.Module):
    """Stack of two-way blocks and a final token->image attention; returns (tokens, image tokens)."""

    def __init__(self, dim: int, num_heads: int, mlp_dim: int, depth: int = DECODER_DEPTH) -> None:
        super().__init__()
        self.layers = nn.ModuleList(TwoWayAttentionBlock(dim, num_heads, mlp_dim, i == 0) for i in range(depth))
        self.final_attn_token_to_image = Attention(dim, num_heads, ATTENTION_DOWNSAMPLE_RATE)
        self.norm_final_attn = nn.LayerNorm(dim)

    def forward(self, image: Tensor, image_pe: Tensor, tokens: Tensor) -> tuple[Tensor, Tensor]:
        """image [1 or B, C, h, w], image_pe [1 or B, C, h, w], tokens [B, N, C].

        An image batch of 1 is shared by all B prompts: the first layer projects it once, and it
        becomes B image-token maps only where the prompts first change it.
        """
        keys = image.flatten(2).transpose(1, 2)
        key_pe = image_pe.flatten(2).transpose(1, 2)
        queries = tokens
        for layer in self.layers:
            queries, keys = layer(queries, keys, tokens, key_pe)
        attn = self.final_attn_token_to_image(queries + tokens, keys + key_pe, keys)
        return self.norm_final_attn(queries + attn), keys


class DecoderOutput(NamedTuple):
    """What the mask decoder returns for B prompts, with M = 3 (multimask) or 1 masks.

    masks: low-res mask logits [B, M, 4h, 4w]; iou: predicted IoU [B, M]; object_score_logits [B, 1]
    (> 0: the object is visible); sam_tokens: the mask output tokens that become object pointers
    [B, M or 1, C].
    """

    masks: Tensor
    iou: Tensor
    object_score_logits: Tensor
    sam_tokens: Tensor


class MaskDecoder(nn.Module):
    """Predicts masks, IoU and object score from an image embedding and prompt embeddings."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_dim: int,
        iou_head_hidden_dim: int,
        use_high_res_features: bool,
        iou_prediction_use_sigmoid: bool,
        pred_obj_scores: bool,
        pred_obj_scores_mlp: bool,
        use_multimask_token_for_obj_ptr: bool,
        dynamic_multimask_via_stability: bool,
        dynamic_multimask_stability_delta: float,
        dynamic_multimask_stability_thresh: float,
    ) -> None:
        super().__init__()
        self.transformer = TwoWayTransformer(dim, num_heads, mlp_dim)
        self.num_mask_tokens = NUM_MULTIMASK_OUTPUTS + 1
        self.iou_token = nn.Embedding(1, dim)
        self.mask_tokens = nn.Embedding(self.num_mask_tokens, dim)
        self.pred_obj_scores = pred_obj_scores
        if pred_obj_scores:
            self.obj_score_token = nn.Embedding(1, dim)
        self.output_upscaling = nn.Sequential(
            nn.ConvTranspose2d(dim, dim // 4, kernel_size=2, stride=2),
            LayerNorm2d(dim // 4),
            nn.GELU(),
            nn.ConvTranspose2d(dim // 4, dim // 8, kernel_size=2, stride=2),
            nn.GELU(),
        )
        self.use_high_res_features = use_high_res_features
        if use_high_res_features:
            # applied once per image in `SAM2Model.encode_image`, not per prompt
            self.conv_s0 = nn.Conv2d(dim, dim // 8, kernel_size=1)
            self.conv_s1 = nn.Conv2d(dim, dim // 4, kernel_size=1)
        self.output_hypernetworks_mlps = nn.ModuleList(MLP(dim, dim, dim // 8, 3) for _ in range(self.num_mask_tokens))
        self.iou_prediction_head = MLP(
            dim, iou_head_hidden_dim, self.num_mask_tokens, 3, sigmoid_output=iou_prediction_use_sigmoid
        )
        if pred_obj_scores:
            self.pred_obj_score_head = MLP(dim, dim, 1, 3) if pred_obj_scores_mlp else nn.Linear(dim, 1)
        self.use_multimask_token_for_obj_ptr = use_multimask_token_for_obj_ptr
        self.dynamic_multimask_via_stability = dynamic_multimask_via_stability
        self.stability_delta = dynamic_multimask_stability_delta
        self.stability_thresh = dynamic_multimask_stability_thresh

    def forward(
        self,
        image_embedding: Tensor,
        image_pe: Tensor,
        sparse: Tensor,
        dense: Tensor,
        multimask_output: bool,
        high_res_features: list[Tensor] | None = None,
    ) -> DecoderOutput:
        """image_embedding [1 or B, C, h, w]; sparse [1 or B, N, C]; dense [1 or B, C, h, w];
        high_res_features: the conv_s0 / conv_s1 projected stride-4 and stride-8 maps (batch 1 or B).

        A batch of 1 on the image side is shared by all B prompts, and vice versa.
        """
        masks, iou, mask_tokens, object_score_logits = self._predict(
            image_embedding, image_pe, sparse, dense, high_res_features
        )
        if multimask_output:
            masks, iou = masks[:, 1:], iou[:, 1:]
        elif self.dynamic_multimask_via_stability:
            masks, iou = self._dynamic_multimask(masks, iou)
        else:
            masks, iou = masks[:, 0:1], iou[:, 0:1]
        if multimask_output and self.use_multimask_token_for_obj_ptr:
            sam_tokens = mask_tokens[:, 1:]
        else:
            # the single-mask token is the object-memory token seen in training, even after one click
            sam_tokens = mask_tokens[:, 0:1]
        return DecoderOutput(masks, iou, object_score_logits, sam_tokens)

    def _predict(
        self,
        image_embedding: Tensor,
        image_pe: Tensor,
        sparse: Tensor,
        dense: Tensor,
        high_res_features: list[Tensor] | None,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """All four masks and IoUs, the mask tokens and the object-score logits."""
        weights = [self.iou_token.weight, self.mask_tokens.weight]
        if self.pred_obj_scores:
            weights.insert(0, self.obj_score_token.weight)
        first = 1 if self.pred_obj_scores else 0  # index of the IoU token
        batch = max(image_embedding.shape[0], sparse.shape[0], dense.shape[0])
        output_tokens = torch.cat(weights, dim=0)[None].expand(batch, -1, -1)
        tokens = torch.cat((output_tokens, sparse.expand(batch, -1, -1)), dim=1)
        src = image_embedding + dense
        c, h, w = src.shape[1:]

        hs, src = self.transformer(src, image_pe, tokens)
        b = src.shape[0]
        iou_token_out = hs[:, first]
        mask_tokens_out = hs[:, first + 1 : first + 1 + self.num_mask_tokens]

        src = src.transpose(1, 2).reshape(b, c, h, w)
        if high_res_features is None:
            upscaled = self.output_upscaling(src)
        else:
            dc1, ln1, act1, dc2, act2 = self.output_upscaling
            feat_s0, feat_s1 = high_res_features
            # in-place sums: these maps are the decoder's largest tensors (B x 256^2 x C/8), a fresh
            # allocation costs more than the addition, and the transposed convs' backward needs no output
            upscaled = dc1(src)
            upscaled += feat_s1
            upscaled = dc2(act1(ln1(upscaled)))
            upscaled += feat_s0
            upscaled = act2(upscaled)

        hyper_in = torch.stack(
            [mlp(mask_tokens_out[:, i]) for i, mlp in enumerate(self.output_hypernetworks_mlps)], dim=1
        )
        b, c, h, w = upscaled.shape
        masks = (hyper_in @ upscaled.view(b, c, h * w)).view(b, -1, h, w)

        iou = self.iou_prediction_head(iou_token_out)
        if self.pred_obj_scores:
            object_score_logits = self.pred_obj_score_head(hs[:, 0])
        else:
            object_score_logits = iou.new_full((iou.shape[0], 1), NO_OBJECT_LOGIT)
        return masks, iou, mask_tokens_out, object_score_logits

    def stability_scores(self, mask_logits: Tensor) -> Tensor:
        """IoU between the masks thresholded at +delta and -delta, [...] for logits [..., H, W]."""
        flat = mask_logits.flatten(-2)
        area_i = torch.sum(flat > self.stability_delta, dim=-1).float()
        area_u = torch.sum(flat > -self.stability_delta, dim=-1).float()
        return torch.where(area_u > 0, area_i / area_u, 1.0)

    def _dynamic_multimask(self, masks: Tensor, iou: Tensor) -> tuple[Tensor, Tensor]:
        """Single-mask output, replaced by the best-IoU multimask output where it is unstable."""
        multi_iou = iou[:, 1:]
        best = torch.argmax(multi_iou, dim=-1)
        rows = torch.arange(multi_iou.shape[0], device=iou.device)
        best_masks = masks[:, 1:][rows, best][:, None]
        best_iou = multi_iou[rows, best][:, None]
        single_masks, single_iou = masks[:, 0:1], iou[:, 0:1]
        stable = self.stability_scores(single_masks) >= self.stability_thresh  # [B, 1]
        return (
            torch.where(stable[..., None, None], single_masks, best_masks),
            torch.where(stable, single_iou, best_iou),
        )
