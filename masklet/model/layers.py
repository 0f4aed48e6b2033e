"""Small building blocks shared by the SAM 2 modules: MLP, channel LayerNorm and projected attention.

Parameter names follow the official implementation so that checkpoints load strictly.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from masklet.model.position import rotate_


class MLP(nn.Module):
    """`num_layers` linear layers with an activation between them (not after the last one).

    Used for the Hiera feed-forward, the decoder hypernetworks, the IoU / object-score heads and the
    object-pointer projection; `sigmoid_output` squashes the IoU head to [0, 1] when configured.
    """

    def __init__(
        self,
        input_dim: int,
        hidden_dim: int,
        output_dim: int,
        num_layers: int,
        activation: type[nn.Module] = nn.ReLU,
        sigmoid_output: bool = False,
    ) -> None:
        super().__init__()
        dims_in = [input_dim] + [hidden_dim] * (num_layers - 1)
        dims_out = [hidden_dim] * (num_layers - 1) + [output_dim]
        self.layers = nn.ModuleList(nn.Linear(i, o) for i, o in zip(dims_in, dims_out, strict=True))
        self.act = activation()
        self.sigmoid_output = sigmoid_output

    def forward(self, x: Tensor) -> Tensor:
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < last:
                x = self.act(x)
        return torch.sigmoid(x) if self.sigmoid_output else x


class LayerNorm2d(nn.Module):
    """LayerNorm over the channel dimension of an NCHW map, with the official eps of 1e-6.

    Written out (mean, biased variance, rsqrt) like the official module rather than through
    `F.layer_norm` on a permuted copy, to keep the arithmetic identical.
    """

    def __init__(self, num_channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        u = x.mean(1, keepdim=True)
        s = (x - u).pow(2).mean(1, keepdim=True)
        x = self.weight[:, None, None] * ((x - u) / torch.sqrt(s + self.eps))
        x += self.bias[:, None, None]  # in place: a fresh map of this size costs more than the sum
        return x

    def forward_(self, x: Tensor) -> Tensor:
        """`forward(x)`, bit for bit, computed in x's memory (inference only: x is overwritten)."""
        u = x.mean(1, keepdim=True)
        x -= u
        s = x.pow(2).mean(1, keepdim=True)
        x /= torch.sqrt(s + self.eps)
        x *= self.weight[:, None, None]  # weight * y == y * weight
        x += self.bias[:, None, None]
        return x


class Attention(nn.Module):
    """Multi-head attention with separate q/k/v/out projections, as in SAM.

    The internal width is `dim // downsample_rate` (the two-way transformer's cross attentions use 2);
    keys and values may come from a narrower space (`kv_dim`, the 64-channel memories). When a RoPE
    table is given, it rotates the queries and the first `keys - num_k_exclude_rope` keys; the
    excluded tail holds the object-pointer tokens, which have no spatial position.
    """

    def __init__(self, dim: int, num_heads: int, downsample_rate: int = 1, kv_dim: int | None = None) -> None:
        super().__init__()
        kv_dim = dim if kv_dim is None else kv_dim
        self.internal_dim = dim // downsample_rate
        if self.internal_dim % num_heads:
            raise ValueError(f"num_heads={num_heads} must divide the internal width {self.internal_dim}")
        self.num_heads = num_heads
        self.q_proj = nn.Linear(dim, self.internal_dim)
        self.k_proj = nn.Linear(kv_dim, self.internal_dim)
        self.v_proj = nn.Linear(kv_dim, self.internal_dim)
        self.out_proj = nn.Linear(self.internal_dim, dim)

    def _heads(self, x: Tensor) -> Tensor:
        b, n, c = x.shape
        return x.reshape(b, n, self.num_heads, c // self.num_heads).transpose(1, 2)

    def forward(
        self,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        rope: Tensor | None = None,
        num_k_exclude_rope: int = 0,
        key_mask: Tensor | None = None,
    ) -> Tensor:
        """q [B, Nq, dim], k/v [B, Nk, kv_dim] -> [B, Nq, dim]; either side may have batch 1 instead of B.

        `rope` is a complex RoPE table [Nq, head_dim // 2] (`rope_freqs`) for the Nq query positions
        (keys reuse it once per memory frame). `key_mask` [B, Nk] (True = attend) lets objects with
        fewer memories share a batch.
        """
        q = self._heads(self.q_proj(q))
        k = self._heads(self.k_proj(k))
        v = self._heads(self.v_proj(v))
        if q.shape[0] != k.shape[0]:
            # one side has batch 1 (an image shared by many prompts): project it once, then broadcast
            batch = max(q.shape[0], k.shape[0])
            q, k, v = q.expand(batch, -1, -1, -1), k.expand(batch, -1, -1, -1), v.expand(batch, -1, -1, -1)
        if rope is not None:
            # q and k are fresh projections, so they can be rotated in place (no concatenation)
            rotate_(q, rope)
            num_rope = k.shape[-2] - num_k_exclude_rope
            if num_rope > 0:
                rotate_(k[:, :, :num_rope], rope)
        mask = None if key_mask is None else key_mask[:, None, None, :]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        b, h, n, c = out.shape
        return self.out_proj(out.transpose(1, 2).reshape(b, n, h * c))
