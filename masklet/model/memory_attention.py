"""Memory attention: conditions the current frame's features on the memory bank.

Each layer is pre-norm: self-attention over the frame's tokens, cross-attention from the frame to the
memories (spatial memory tokens of several frames, then object-pointer tokens), and a ReLU MLP. Both
attentions use 2D axial RoPE; the memory keys reuse the frame's RoPE table once per memory frame,
and the object-pointer tokens at the end of the memory get none. The official settings are fixed
here: positions are added (x0.1) to the input once, and to the cross-attention keys in every layer.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from masklet.model.layers import Attention
from masklet.model.position import axial_rope_table, rope_freqs

INPUT_POS_SCALE = 0.1


class MemoryAttentionLayer(nn.Module):
    """One self-attention + memory cross-attention + MLP layer."""

    def __init__(self, dim: int, mem_dim: int, num_heads: int, mlp_dim: int) -> None:
        super().__init__()
        self.self_attn = Attention(dim, num_heads)
        self.cross_attn_image = Attention(dim, num_heads, kv_dim=mem_dim)
        self.linear1 = nn.Linear(dim, mlp_dim)
        self.linear2 = nn.Linear(mlp_dim, dim)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.norm3 = nn.LayerNorm(dim)

    def forward(
        self,
        tgt: Tensor,
        memory: Tensor,
        memory_keys: Tensor,
        rope: Tensor,
        num_obj_ptr_tokens: int,
        memory_mask: Tensor | None,
    ) -> Tensor:
        """`memory_keys` is memory + memory_pos. A `tgt` of batch 1 (the same frame for every object)
        runs self-attention once and is broadcast to the memory's batch for the cross-attention."""
        x = self.norm1(tgt)
        tgt = tgt + self.self_attn(x, x, x, rope=rope)
        x = self.norm2(tgt).expand(memory.shape[0], -1, -1)
        tgt = tgt + self.cross_attn_image(
            x, memory_keys, memory, rope=rope, num_k_exclude_rope=num_obj_ptr_tokens, key_mask=memory_mask
        )
        x = self.norm3(tgt)
        # ReLU in place: the hidden map is the layer's largest (B x h*w x mlp_dim) and a fresh copy of
        # it costs more than the ReLU; linear1's backward does not need its output
        return tgt + self.linear2(F.relu(self.linear1(x), inplace=True))


class MemoryAttention(nn.Module):
    """Stack of `MemoryAttentionLayer`s and a final LayerNorm."""

    def __init__(
        self, dim: int, mem_dim: int, num_layers: int, num_heads: int, mlp_dim: int, rope_theta: float
    ) -> None:
        super().__init__()
        self.layers = nn.ModuleList(MemoryAttentionLayer(dim, mem_dim, num_heads, mlp_dim) for _ in range(num_layers))
        self.norm = nn.LayerNorm(dim)
        self.rope_dim = dim // num_heads
        self.rope_theta = rope_theta
        self._rope_cache: dict[tuple[int, int, torch.device], Tensor] = {}

    def _rope(self, h: int, w: int, device: torch.device) -> Tensor:
        key = (h, w, device)
        table = self._rope_cache.get(key)
        if table is None:
            table = rope_freqs(*axial_rope_table(self.rope_dim, h, w, self.rope_theta)).to(device)
            self._rope_cache[key] = table
        return table

    def forward(
        self,
        curr: Tensor,
        curr_pos: Tensor,
        memory: Tensor,
        memory_pos: Tensor,
        feat_size: tuple[int, int],
        num_obj_ptr_tokens: int = 0,
        memory_mask: Tensor | None = None,
    ) -> Tensor:
        """curr/curr_pos [B or 1, h*w, C] (row-major tokens of an h x w map), memory/memory_pos [B, M, mem_dim]
        whose last `num_obj_ptr_tokens` tokens are object pointers -> [B, h*w, C].

        The M - num_obj_ptr_tokens spatial tokens must be whole frames of h*w tokens. `memory_mask`
        [B, M] (True = real token) marks padding when objects with different memory lengths share a
        batch; padding must not change any real token's position in the layout above. A frame of batch 1
        is shared by all B objects (computed once until the first cross-attention).
        """
        rope = self._rope(feat_size[0], feat_size[1], curr.device)
        out = curr + INPUT_POS_SCALE * curr_pos
        memory_keys = memory + memory_pos  # the same in every layer
        for layer in self.layers:
            out = layer(out, memory, memory_keys, rope, num_obj_ptr_tokens, memory_mask)
        return self.norm(out)
