"""Hiera trunk of the SAM 2 image encoder (https://arxiv.org/abs/2306.00989), hierarchical ViT.

Four stages at strides 4, 8, 16 and 32. The first block of stages 2-4 halves the resolution by
max-pooling its queries (and its skip connection) and doubles width and heads. Blocks attend inside
non-overlapping windows, except the configured global-attention blocks. The absolute position
embedding is a bicubically resized background plus a tiled per-window embedding
(https://arxiv.org/abs/2311.05613).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from masklet.model.layers import MLP

Q_STRIDE = 2  # resolution drop between stages (all official configs)


def _pool(x: Tensor) -> Tensor:
    """2x2 max-pool of a channels-last map [B, H, W, C] (floor on odd sizes)."""
    return F.max_pool2d(x.permute(0, 3, 1, 2), Q_STRIDE, Q_STRIDE).permute(0, 2, 3, 1)


def window_partition(x: Tensor, window: int) -> Tensor:
    """[B, H, W, C] -> [B * nWindows, window, window, C], zero-padding H and W up to multiples of window."""
    b, h, w, c = x.shape
    pad_h, pad_w = -h % window, -w % window
    if pad_h or pad_w:
        x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
    hp, wp = h + pad_h, w + pad_w
    x = x.view(b, hp // window, window, wp // window, window, c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, window, window, c)


def window_unpartition(windows: Tensor, window: int, hw: tuple[int, int]) -> Tensor:
    """Inverse of `window_partition` for an unpadded size hw, dropping the padding."""
    h, w = hw
    hp, wp = h + (-h % window), w + (-w % window)
    b = windows.shape[0] // ((hp // window) * (wp // window))
    x = windows.reshape(b, hp // window, wp // window, window, window, -1)
    x = x.permute(0, 1, 3, 2, 4, 5).reshape(b, hp, wp, -1)
    return x[:, :h, :w, :] if hp > h or wp > w else x


class MultiScaleAttention(nn.Module):
    """Self-attention over a channels-last window, optionally pooling the queries (stage change)."""

    def __init__(self, dim: int, dim_out: int, num_heads: int, q_pool: bool) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.q_pool = q_pool
        self.qkv = nn.Linear(dim, dim_out * 3)
        self.proj = nn.Linear(dim_out, dim_out)

    def forward(self, x: Tensor) -> Tensor:
        b, h, w, _ = x.shape
        q, k, v = self.qkv(x).reshape(b, h * w, 3, self.num_heads, -1).unbind(2)
        if self.q_pool:
            q = _pool(q.reshape(b, h, w, -1))
            h, w = q.shape[1:3]
            q = q.reshape(b, h * w, self.num_heads, -1)
        x = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        return self.proj(x.transpose(1, 2).reshape(b, h, w, -1))


class MultiScaleBlock(nn.Module):
    """Pre-norm transformer block (windowed or global attention + GELU MLP), LayerNorm eps 1e-6."""

    def __init__(self, dim: int, dim_out: int, num_heads: int, q_pool: bool, window_size: int) -> None:
        super().__init__()
        self.dim, self.dim_out = dim, dim_out
        self.q_pool = q_pool
        self.window_size = window_size
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = MultiScaleAttention(dim, dim_out, num_heads, q_pool)
        self.norm2 = nn.LayerNorm(dim_out, eps=1e-6)
        self.mlp = MLP(dim_out, 4 * dim_out, dim_out, num_layers=2, activation=nn.GELU)
        if dim != dim_out:
            self.proj = nn.Linear(dim, dim_out)

    def forward(self, x: Tensor) -> Tensor:
        shortcut = x  # [B, H, W, C]
        x = self.norm1(x)
        if self.dim != self.dim_out:
            # the skip path is projected from the *normed* input, then pooled like the queries
            shortcut = self.proj(x)
            if self.q_pool:
                shortcut = _pool(shortcut)
        window = self.window_size
        if window > 0:
            x = window_partition(x, window)
        x = self.attn(x)
        if window > 0:
            if self.q_pool:
                window //= Q_STRIDE
            x = window_unpartition(x, window, (shortcut.shape[1], shortcut.shape[2]))
        x = shortcut + x
        return x + self.mlp(self.norm2(x))


class PatchEmbed(nn.Module):
    """7x7 stride-4 convolution to tokens, returned channels-last [B, H/4, W/4, C]."""

    def __init__(self, embed_dim: int, in_chans: int = 3) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=7, stride=4, padding=3)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x).permute(0, 2, 3, 1)


class Hiera(nn.Module):
    """The trunk: returns one NCHW feature map per stage, highest resolution first."""

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        stages: Sequence[int],
        global_att_blocks: Sequence[int],
        window_spec: Sequence[int],
        window_pos_embed_bkg_spatial_size: tuple[int, int],
    ) -> None:
        super().__init__()
        if len(stages) != len(window_spec):
            raise ValueError("stages and window_spec must have the same length")
        self.pos_embed = nn.Parameter(torch.zeros(1, embed_dim, *window_pos_embed_bkg_spatial_size))
        self.pos_embed_window = nn.Parameter(torch.zeros(1, embed_dim, window_spec[0], window_spec[0]))
        self.patch_embed = PatchEmbed(embed_dim)
        ends = [sum(stages[: i + 1]) - 1 for i in range(len(stages))]
        self.stage_ends = ends
        self.blocks = nn.ModuleList()
        dim, heads, stage = embed_dim, num_heads, 0
        for i in range(sum(stages)):
            # the first block of a stage still uses the previous stage's window size (it pools inside it)
            window = 0 if i in global_att_blocks else window_spec[stage]
            starts_stage = i - 1 in ends
            dim_out = dim
            if starts_stage:
                dim_out, heads, stage = dim * 2, heads * 2, stage + 1
            self.blocks.append(MultiScaleBlock(dim, dim_out, heads, q_pool=starts_stage, window_size=window))
            dim = dim_out
        self.channel_list = [self.blocks[e].dim_out for e in ends[::-1]]

    def _pos_embed(self, h: int, w: int) -> Tensor:
        pos = F.interpolate(self.pos_embed, size=(h, w), mode="bicubic")
        win = self.pos_embed_window
        pos = pos + win.tile([1, 1, h // win.shape[2], w // win.shape[3]])
        return pos.permute(0, 2, 3, 1)

    def forward(self, x: Tensor) -> list[Tensor]:
        x = self.patch_embed(x)
        x = x + self._pos_embed(x.shape[1], x.shape[2])
        outputs = []
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i in self.stage_ends:
                outputs.append(x.permute(0, 3, 1, 2))
        return outputs
