"""SAM prompt encoder: points (boxes come in as two corner points) -> sparse tokens, mask -> dense map.

SAM 2 always sends boxes as points labelled 2 (top-left) and 3 (bottom-right) and always appends one
padding point (label -1) after the points, so this module has a single point path.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from masklet.model.layers import LayerNorm2d
from masklet.model.position import RandomFourierEncoding

NUM_POINT_EMBEDDINGS = 4  # negative / positive click, box top-left / bottom-right
NOT_A_POINT = -1


class PromptEncoder(nn.Module):
    """Embeds point prompts with random-Fourier positions plus a learned per-label embedding, and a
    low-res mask prompt (4x the embedding size) with a small strided conv net."""

    def __init__(
        self,
        embed_dim: int,
        image_embedding_size: tuple[int, int],
        input_image_size: tuple[int, int],
        mask_in_chans: int,
    ) -> None:
        super().__init__()
        self.embed_dim = embed_dim
        self.input_image_size = input_image_size
        self.image_embedding_size = image_embedding_size
        self.pe_layer = RandomFourierEncoding(embed_dim // 2)
        self.point_embeddings = nn.ModuleList(nn.Embedding(1, embed_dim) for _ in range(NUM_POINT_EMBEDDINGS))
        self.not_a_point_embed = nn.Embedding(1, embed_dim)
        self.mask_input_size = (4 * image_embedding_size[0], 4 * image_embedding_size[1])
        self.mask_downscaling = nn.Sequential(
            nn.Conv2d(1, mask_in_chans // 4, kernel_size=2, stride=2),
            LayerNorm2d(mask_in_chans // 4),
            nn.GELU(),
            nn.Conv2d(mask_in_chans // 4, mask_in_chans, kernel_size=2, stride=2),
            LayerNorm2d(mask_in_chans),
            nn.GELU(),
            nn.Conv2d(mask_in_chans, embed_dim, kernel_size=1),
        )
        self.no_mask_embed = nn.Embedding(1, embed_dim)

    def dense_pe(self) -> Tensor:
        """Positional encoding of the image-embedding grid, [1, C, h, w]."""
        return self.pe_layer.grid(*self.image_embedding_size)

    def embed_points(self, coords: Tensor, labels: Tensor) -> Tensor:
        """coords [B, N, 2] (x, y in input-image pixels), labels [B, N] -> [B, N + 1, C] (padding point added)."""
        coords = coords + 0.5  # centre of the pixel
        coords = torch.cat([coords, torch.zeros_like(coords[:, :1])], dim=1)
        labels = torch.cat([labels, torch.full_like(labels[:, :1], NOT_A_POINT)], dim=1)[..., None]
        embedding = self.pe_layer.points(coords, self.input_image_size)
        embedding = torch.where(labels == NOT_A_POINT, self.not_a_point_embed.weight, embedding)
        for label, point_embed in enumerate(self.point_embeddings):
            embedding = torch.where(labels == label, embedding + point_embed.weight, embedding)
        return embedding

    def forward(self, coords: Tensor | None, labels: Tensor | None, masks: Tensor | None) -> tuple[Tensor, Tensor]:
        """Returns sparse [B, N (+1), C] and dense [B or 1, C, h, w] embeddings.

        Without points the sparse embedding is empty; without a mask the dense one is the learned
        no-mask embedding, batch 1, which the decoder shares across prompts. B is the batch of the
        points, else of the mask, else 1.
        """
        weight = self.no_mask_embed.weight
        if coords is not None and labels is not None:
            sparse = self.embed_points(coords, labels)
        else:
            bs = 1 if masks is None else masks.shape[0]
            sparse = weight.new_empty((bs, 0, self.embed_dim))
        if masks is not None:
            dense = self.mask_downscaling(masks.to(weight.dtype))
        else:
            h, w = self.image_embedding_size
            dense = weight.reshape(1, -1, 1, 1).expand(1, -1, h, w)
        return sparse, dense
