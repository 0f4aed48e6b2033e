"""SAM 2 mask decoder: a two-way transformer between prompt tokens and the image embedding, then
hypernetwork heads that turn mask tokens into mask logits at 4x the embedding resolution, an IoU
head and an object-score head (is the object visible at all?).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from masklet.model.layers import MLP, Attention, LayerNorm2d

NUM_MULTIMASK_OUTPUTS = 3
DECODER_DEPTH = 2
ATTENTION_DOWNSAMPLE_RATE = 2  # internal width of the token<->image cross attentions is dim / 2
NO_OBJECT_LOGIT = 10.0  # object-score logit reported when the decoder has no object-score head
# CPU inference: per-prompt maps are made a chunk of prompts at a time, at most this many bytes per map
# (below glibc's largest mmap threshold, 32 MiB, so that freed chunks are reused instead of returned)
CHUNK_BYTES = 16 * 2**20
# the decoder's internal buffers kept between calls within `reuse_buffers()` (this thread / task only)
_BUFFERS: ContextVar[dict[str, Tensor] | None] = ContextVar("mask_decoder_buffers", default=None)


@contextmanager
def reuse_buffers() -> Iterator[None]:
    """Within this context (in this thread or task), decoder calls keep their internal per-batch buffers
    (the [B, hw, C] image tokens of the chunked CPU path, 256 MB for 64 prompts at 1024) and reuse them,
    instead of taking fresh memory from the OS at each call, for callers that decode batch after batch
    (automatic mask generation). Nothing a call returns lives in them. Freed on exit."""
    token = _BUFFERS.set({})
    try:
        yield
    finally:
        _BUFFERS.reset(token)


def _buffer(name: str, shape: tuple[int, ...], like: Tensor) -> Tensor:
    """An uninitialized tensor of `shape` like `like`: within `reuse_buffers()` a view of the one kept
    under `name` (replaced by a larger one when needed), else fresh."""
    kept = _BUFFERS.get()
    if kept is None:
        return like.new_empty(shape)
    numel = 1
    for n in shape:
        numel *= n
    buffer = kept.get(name)
    if buffer is None or buffer.numel() < numel or buffer.dtype != like.dtype or buffer.device != like.device:
        buffer = kept[name] = like.new_empty(numel)
    return buffer[:numel].view(shape)


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
        queries = self.attend_tokens(queries, query_pe)
        # keys are unchanged until the last step, so their positional sum serves both cross attentions
        q, k = queries + query_pe, keys + key_pe
        queries = self.mix_tokens(queries, self.cross_attn_token_to_image(q, k, keys))
        q = queries + query_pe
        keys = self.norm4(keys + self.cross_attn_image_to_token(k, q, queries))
        return queries, keys

    def attend_tokens(self, queries: Tensor, query_pe: Tensor) -> Tensor:
        """The token self-attention step (token side only)."""
        if self.skip_first_layer_pe:
            # the first layer replaces the tokens (which already carry their positions) outright
            queries = self.self_attn(queries, queries, queries)
        else:
            q = queries + query_pe
            queries = queries + self.self_attn(q, q, queries)
        return self.norm1(queries)

    def mix_tokens(self, queries: Tensor, token_to_image: Tensor) -> Tensor:
        """The token side after the token->image attention: residual, norm, MLP, norm."""
        queries = self.norm2(queries + token_to_image)
        return self.norm3(queries + self.mlp(queries))


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
        # after the first layer the image tokens are row-major: so are their positions (faster sums, same
        # values and result layout); the first layer keeps the view, its sums' layout decides `linear`'s path
        pe_rows = key_pe.contiguous()
        queries = tokens
        for i, layer in enumerate(self.layers):
            queries, keys = layer(queries, keys, tokens, key_pe if i == 0 else pe_rows)
        attn = self.final_attn_token_to_image(queries + tokens, keys + pe_rows, keys)
        return self.norm_final_attn(queries + attn), keys

    def forward_chunked(self, image: Tensor, image_pe: Tensor, tokens: Tensor, chunk: int) -> tuple[Tensor, Tensor]:
        """`forward` with the image-token maps [B, hw, C] made `chunk` prompts at a time (bit for bit on
        the AMD EPYC measured; a CPU whose matrix kernels round a product of fewer rows otherwise may
        differ by float rounding: tests/test_automask.py allows that).

        For inference on CPU, where B x hw x C maps (256 MB for 64 prompts at 1024) are fresh memory
        from the OS at every step (page faults, zeroing) and too large for any cache. The token side
        [B, N, C] runs at the full batch exactly as in `forward` (small matrix products round
        differently with the number of rows), the image side per chunk of prompts (its rows are
        thousands per prompt and computed alike in any chunk): each layer's image->token update is
        written chunk by chunk into one [B, hw, C] buffer, and the next token->image attention (the
        next layer's or the final one) reads each chunk right after it is written. Returns (tokens,
        image tokens [B, hw, C]) like `forward`.
        """
        keys = image.flatten(2).transpose(1, 2)
        key_pe = image_pe.flatten(2).transpose(1, 2)
        # Sums with the B-sized image tokens take a row-major copy of the positions (a sum with the
        # channel-major view is several times slower, same values, same row-major result). The first
        # layer's projections keep the views: their inputs' layout decides how `linear` multiplies.
        pe_rows = key_pe.contiguous()
        b = tokens.shape[0]
        first = self.layers[0]
        queries = first.attend_tokens(tokens, tokens)
        if keys.shape[0] == 1:  # an image shared by all prompts: its attention inputs are projected once
            attn = first.cross_attn_token_to_image(queries + tokens, keys + key_pe, keys)
        else:
            attn = _token_to_image_chunked(first.cross_attn_token_to_image, queries + tokens, keys, key_pe, chunk)
        queries = first.mix_tokens(queries, attn)
        out: Tensor | None = None
        for i, layer in enumerate(self.layers):
            last = i + 1 == len(self.layers)
            # the token side of whoever reads this layer's image tokens next, computed before them
            consumer = self.final_attn_token_to_image if last else self.layers[i + 1].cross_attn_token_to_image
            next_queries = queries if last else self.layers[i + 1].attend_tokens(queries, tokens)
            read_q = consumer._heads(consumer.q_proj(next_queries + tokens))
            read = read_q.new_empty(read_q.shape)

            update = layer.cross_attn_image_to_token
            token_k = update._heads(update.k_proj(queries + tokens))
            token_v = update._heads(update.v_proj(queries))
            shared_q = update._heads(update.q_proj(keys + key_pe)) if keys.shape[0] == 1 else None
            if out is None:
                out = _buffer("image_tokens", (b, *keys.shape[1:]), keys)
            pe = key_pe if i == 0 else pe_rows
            # the residual sum in row-major memory: same values, a faster sum (the image is channel-major)
            shared_residual = keys.contiguous() if shared_q is not None else None
            for start, stop in _spans(b, chunk):
                n = stop - start
                if shared_q is not None and shared_residual is not None:
                    q, residual = shared_q.expand(n, -1, -1, -1), shared_residual
                else:
                    old = keys[start:stop]
                    q = update._heads(update.q_proj(old + pe))
                    residual = old if i else old.contiguous()
                o = F.scaled_dot_product_attention(q, token_k[start:stop], token_v[start:stop])
                o = update.out_proj(o.transpose(1, 2).reshape(n, o.shape[2], -1))
                new = layer.norm4(residual + o)
                out[start:stop] = new  # may overwrite this chunk's old image tokens: they are no longer read
                k = consumer._heads(consumer.k_proj(new + pe_rows))
                v = consumer._heads(consumer.v_proj(new))
                read[start:stop] = F.scaled_dot_product_attention(read_q[start:stop], k, v)
            keys = out
            heads, n_tokens, head_dim = read.shape[1:]
            attn = consumer.out_proj(read.transpose(1, 2).reshape(b, n_tokens, heads * head_dim))
            if last:
                queries = self.norm_final_attn(queries + attn)
            else:
                queries = self.layers[i + 1].mix_tokens(next_queries, attn)
        assert out is not None
        return queries, out


def _token_to_image_chunked(attn: Attention, q: Tensor, keys: Tensor, key_pe: Tensor, chunk: int) -> Tensor:
    """`attn(q, keys + key_pe, keys)` for per-prompt image tokens keys [B, hw, C], `chunk` prompts at a time."""
    b = q.shape[0]
    q = attn._heads(attn.q_proj(q))
    read = q.new_empty(q.shape)
    for start, stop in _spans(b, chunk):
        k = attn._heads(attn.k_proj(keys[start:stop] + key_pe))
        v = attn._heads(attn.v_proj(keys[start:stop]))
        read[start:stop] = F.scaled_dot_product_attention(q[start:stop], k, v)
    heads, n_tokens, head_dim = read.shape[1:]
    return attn.out_proj(read.transpose(1, 2).reshape(b, n_tokens, heads * head_dim))


def _chunk(like: Tensor, batch: int, per_prompt: int) -> int:
    """Prompts per chunk for maps of `per_prompt` elements (of `like`'s dtype) each, or 0 for the whole
    batch at once: chunks are for inference on CPU only (on an accelerator the caching allocator
    reuses memory, and training needs the autograd graph of one batch)."""
    if like.device.type != "cpu" or torch.is_grad_enabled():
        return 0
    chunk = max(1, CHUNK_BYTES // (per_prompt * like.element_size()))
    return chunk if batch > chunk else 0


def _like(feature: Tensor, x: Tensor) -> Tensor:
    """`feature` in channels-last memory when `x` is (the transposed convs' outputs are, here): a sum of
    maps in different memory orders walks one of them across memory, several times slower; same values."""
    if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        return feature.contiguous(memory_format=torch.channels_last)
    return feature


def _spans(total: int, chunk: int, offset: int = 0) -> list[tuple[int, int]]:
    """(start, stop) of `total` prompts cut into nearly equal chunks of at most `chunk`, one more where
    that avoids a chunk of a single prompt (unless `chunk` <= 1): torch multiplies and convolves a batch
    of one by other kernels (e.g. the native transposed conv below 20480 input values, not oneDNN's),
    which round differently from the whole batch's."""
    n = max(1, -(-total // max(chunk, 1)))
    if chunk > 1 and n > 1 and total // n < 2:
        n -= 1
    base, extra = divmod(total, n)
    bounds = [offset]
    for i in range(n):
        bounds.append(bounds[-1] + base + (i < extra))
    return list(zip(bounds[:-1], bounds[1:], strict=True))


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

        chunk = _chunk(src, batch, h * w * c)
        if chunk:
            hs, src = self.transformer.forward_chunked(src, image_pe, tokens, chunk)
        else:
            hs, src = self.transformer(src, image_pe, tokens)
        b = src.shape[0]
        iou_token_out = hs[:, first]
        mask_tokens_out = hs[:, first + 1 : first + 1 + self.num_mask_tokens]
        hyper_in = torch.stack(
            [mlp(mask_tokens_out[:, i]) for i, mlp in enumerate(self.output_hypernetworks_mlps)], dim=1
        )
        if chunk:
            masks = self._masks_chunked(src, hyper_in, (c, h, w), high_res_features, chunk)
        else:
            upscaled = self._upscale(src, (c, h, w), high_res_features)
            b, c, h, w = upscaled.shape
            masks = (hyper_in @ upscaled.view(b, c, h * w)).view(b, -1, h, w)

        iou = self.iou_prediction_head(iou_token_out)
        if self.pred_obj_scores:
            object_score_logits = self.pred_obj_score_head(hs[:, 0])
        else:
            object_score_logits = iou.new_full((iou.shape[0], 1), NO_OBJECT_LOGIT)
        return masks, iou, mask_tokens_out, object_score_logits

    def _upscale(self, src: Tensor, chw: tuple[int, int, int], high_res_features: list[Tensor] | None) -> Tensor:
        """Image tokens [B, hw, C] -> the upscaled per-pixel features [B, C / 8, 4h, 4w]."""
        src = src.transpose(1, 2).reshape(src.shape[0], *chw)
        if high_res_features is None:
            return self.output_upscaling(src)
        dc1, ln1, act1, dc2, act2 = self.output_upscaling
        feat_s0, feat_s1 = high_res_features
        # in-place sums: these maps are the decoder's largest tensors (B x 256^2 x C/8), a fresh
        # allocation costs more than the addition, and the transposed convs' backward needs no output
        upscaled = dc1(src)
        upscaled += feat_s1
        upscaled = dc2(act1(ln1(upscaled)))
        upscaled += feat_s0
        return act2(upscaled)

    def _masks_chunked(
        self,
        src: Tensor,
        hyper_in: Tensor,
        chw: tuple[int, int, int],
        high_res_features: list[Tensor] | None,
        chunk: int,
    ) -> Tensor:
        """`hyper_in @ _upscale(src)` (as `forward_chunked`), `chunk` prompts at a time through the first transposed
        conv (maps of h x w x C per prompt, like the image tokens), half as many (at least two) through
        the second (twice as large), into one [B, M, 4h, 4w] tensor; for inference (in-place norm)."""
        c, h, w = chw
        b = src.shape[0]
        masks = hyper_in.new_empty((b, hyper_in.shape[1], 4 * h, 4 * w))
        flat = masks.flatten(2)
        dc1, ln1, act1, dc2, act2 = self.output_upscaling
        feat_s0, feat_s1 = high_res_features if high_res_features is not None else (None, None)
        # a view of all B (channels-last strides), sliced: a chunk of one prompt keeps the batch stride, by
        # which the transposed convs pick the memory layout of their outputs, which the layer norm's and
        # GELU's rounding depend on
        src = src.transpose(1, 2).reshape(b, c, h, w)
        for start, stop in _spans(b, chunk):
            x = dc1(src[start:stop])
            if feat_s1 is not None:
                feat_s1 = _like(feat_s1, x)
                x += feat_s1 if feat_s1.shape[0] == 1 else feat_s1[start:stop]
            x = act1(ln1.forward_(x))
            for first, last in _spans(stop - start, max(chunk // 2, min(chunk, 2)), start):
                y = dc2(x[first - start : last - start])
                if feat_s0 is not None:
                    feat_s0 = _like(feat_s0, y)
                    y += feat_s0 if feat_s0.shape[0] == 1 else feat_s0[first:last]
                torch.bmm(hyper_in[first:last], act2(y).flatten(2), out=flat[first:last])
        return masks

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
