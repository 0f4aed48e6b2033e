"""Positional encodings of SAM 2: 2D sine (FPN and memories), random Fourier (prompts), 1D sine
(object-pointer time offsets) and 2D axial rotary embeddings (memory attention).

The formulas are written exactly as in the official code (same operation order), so that fp32
results match to the last few ulps.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


class SinePositionEncoding(nn.Module):
    """DETR-style normalized 2D sine encoding of a feature map's grid: [y features, x features].

    Depends only on the map's size, so it is computed once per (H, W, device) and cached; the
    returned tensor is an expanded view of the cache and must not be modified in place.
    """

    def __init__(self, num_pos_feats: int, temperature: float = 10000.0) -> None:
        super().__init__()
        if num_pos_feats % 2:
            raise ValueError(f"num_pos_feats must be even, got {num_pos_feats}")
        self.half = num_pos_feats // 2
        self.temperature = temperature
        self.scale = 2 * math.pi
        self._cache: dict[tuple[int, int, torch.device], Tensor] = {}

    def _grid(self, h: int, w: int, device: torch.device) -> Tensor:
        eps = 1e-6
        y_embed = torch.arange(1, h + 1, dtype=torch.float32, device=device)
        x_embed = torch.arange(1, w + 1, dtype=torch.float32, device=device)
        y_embed = y_embed / (y_embed[-1:] + eps) * self.scale
        x_embed = x_embed / (x_embed[-1:] + eps) * self.scale
        dim_t = torch.arange(self.half, dtype=torch.float32, device=device)
        dim_t = self.temperature ** (2 * (dim_t // 2) / self.half)
        pos_x = x_embed[:, None] / dim_t
        pos_y = y_embed[:, None] / dim_t
        # interleave sin of even and cos of odd frequencies: [sin f0, cos f1, sin f2, cos f3, ...]
        pos_x = torch.stack((pos_x[:, 0::2].sin(), pos_x[:, 1::2].cos()), dim=2).flatten(1)
        pos_y = torch.stack((pos_y[:, 0::2].sin(), pos_y[:, 1::2].cos()), dim=2).flatten(1)
        pe = torch.cat((pos_y[:, None, :].expand(h, w, -1), pos_x[None, :, :].expand(h, w, -1)), dim=2)
        return pe.permute(2, 0, 1).contiguous()

    def forward(self, x: Tensor) -> Tensor:
        """Encoding for the grid of `x` [B, C, H, W], as [B, num_pos_feats, H, W] in x's dtype."""
        b, _, h, w = x.shape
        key = (h, w, x.device)
        pe = self._cache.get(key)
        if pe is None:
            pe = self._cache[key] = self._grid(h, w, x.device)
        return pe.to(x.dtype)[None].expand(b, -1, -1, -1)


class RandomFourierEncoding(nn.Module):
    """Positional encoding with random spatial frequencies (SAM's prompt encoder).

    The Gaussian frequency matrix is a persistent buffer: it is part of the checkpoint.
    """

    def __init__(self, num_pos_feats: int) -> None:
        super().__init__()
        self.register_buffer("positional_encoding_gaussian_matrix", torch.randn(2, num_pos_feats))

    def _encode(self, coords: Tensor) -> Tensor:
        """coords [..., 2] (x, y) normalized to [0, 1], fp32 -> [..., 2 * num_pos_feats]."""
        gaussian = self.positional_encoding_gaussian_matrix
        coords = 2 * coords - 1
        coords = coords @ gaussian.float()  # fp32 positions even when the model is in half precision
        coords = 2 * math.pi * coords
        return torch.cat([torch.sin(coords), torch.cos(coords)], dim=-1).to(gaussian.dtype)

    def grid(self, h: int, w: int) -> Tensor:
        """Dense encoding of pixel centres of an h x w grid, [1, C, h, w]."""
        device = self.positional_encoding_gaussian_matrix.device
        grid = torch.ones((h, w), device=device, dtype=torch.float32)
        y_embed = (grid.cumsum(dim=0) - 0.5) / h
        x_embed = (grid.cumsum(dim=1) - 0.5) / w
        return self._encode(torch.stack([x_embed, y_embed], dim=-1)).permute(2, 0, 1)[None]

    def points(self, coords: Tensor, image_size: tuple[int, int]) -> Tensor:
        """coords [B, N, 2] in input-image pixels (x, y), image_size (H, W) -> [B, N, C]."""
        x = coords[..., 0] / image_size[1]
        y = coords[..., 1] / image_size[0]
        return self._encode(torch.stack([x, y], dim=-1).to(torch.float))


def sine_encoding_1d(pos: Tensor, dim: int, temperature: float = 10000.0) -> Tensor:
    """1D sine encoding [..., dim] = [sin(pos / t_i), cos(pos / t_i)] (object-pointer time offsets)."""
    pe_dim = dim // 2
    dim_t = torch.arange(pe_dim, dtype=torch.float32, device=pos.device)
    dim_t = temperature ** (2 * (dim_t // 2) / pe_dim)
    pos_embed = pos.unsqueeze(-1) / dim_t
    return torch.cat([pos_embed.sin(), pos_embed.cos()], dim=-1)


def axial_rope_table(dim: int, h: int, w: int, theta: float = 10000.0) -> tuple[Tensor, Tensor]:
    """(cos, sin) of 2D axial RoPE angles for an h x w grid flattened row-major, each [h*w, dim // 2].

    The first dim // 4 rotation pairs turn with the column (x), the last dim // 4 with the row (y),
    each at frequencies theta ** (-4k / dim), like the official `compute_axial_cis`.
    """
    freqs = 1.0 / (theta ** (torch.arange(0, dim, 4)[: (dim // 4)].float() / dim))
    t = torch.arange(h * w, dtype=torch.float32)
    t_x = t % w
    t_y = torch.div(t, w, rounding_mode="floor")
    angles = torch.cat([torch.outer(t_x, freqs), torch.outer(t_y, freqs)], dim=-1)
    return torch.cos(angles), torch.sin(angles)


def rope_freqs(cos: Tensor, sin: Tensor) -> Tensor:
    """A (cos, sin) table as the unit complex numbers [M, d // 2] that `rotate_` multiplies by."""
    return torch.complex(cos, sin)


def rotate_(x: Tensor, freqs: Tensor) -> Tensor:
    """Rotate adjacent channel pairs of x [..., M, d] in place by complex `freqs` [n, d // 2] and return x.

    M may be a multiple of n, in which case the table repeats (every memory frame gets the same
    spatial positions). The product is taken in fp32 as complex numbers, like the official
    `apply_rotary_enc`; an fp32 x is updated without a copy, others via an fp32 temporary.
    """
    n, m = freqs.shape[0], x.shape[-2]
    if m % n:
        raise ValueError(f"{m} rotary tokens are not a whole number of {n}-token frames")
    frames = x.unflatten(-2, (m // n, n))
    if x.dtype == torch.float32:
        torch.view_as_complex(frames.unflatten(-1, (-1, 2))).mul_(freqs)
    else:
        rotated = torch.view_as_complex(frames.float().unflatten(-1, (-1, 2))) * freqs
        frames.copy_(torch.view_as_real(rotated).flatten(-2))
    return x
