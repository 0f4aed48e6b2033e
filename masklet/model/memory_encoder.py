"""Memory encoder: fuses a frame's image features with its predicted mask into a memory feature map.

The mask (already turned into scaled probabilities by the caller) is downsampled 16x by strided
convs, added to projected image features, mixed by ConvNeXt blocks and projected to the narrow
memory width, with a sine position encoding.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from masklet.model.layers import LayerNorm2d
from masklet.model.position import SinePositionEncoding

MASK_STRIDE = 2  # each downsampling conv: kernel 3, stride 2, padding 1, channels x4
MASK_DOWNSAMPLE_LAYERS = 4  # total stride 2**4 = 16, the image embedding's stride
FUSER_LAYERS = 2


class MaskDownSampler(nn.Module):
    """Four stride-2 convs (1 -> 4 -> 16 -> 64 -> 256 channels, LayerNorm2d + GELU) and a 1x1 conv."""

    def __init__(self, embed_dim: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        chans = 1
        for _ in range(MASK_DOWNSAMPLE_LAYERS):
            out = chans * MASK_STRIDE**2
            layers += [nn.Conv2d(chans, out, kernel_size=3, stride=MASK_STRIDE, padding=1), LayerNorm2d(out), nn.GELU()]
            chans = out
        layers.append(nn.Conv2d(chans, embed_dim, kernel_size=1))
        self.encoder = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.encoder(x)


class CXBlock(nn.Module):
    """ConvNeXt block: depthwise 7x7 conv, LayerNorm2d, pointwise MLP (GELU), layer scale, residual."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.gamma = nn.Parameter(1e-6 * torch.ones(dim))
        self.dwconv = nn.Conv2d(dim, dim, kernel_size=7, padding=3, groups=dim)
        self.norm = LayerNorm2d(dim)
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.act = nn.GELU()
        self.pwconv2 = nn.Linear(4 * dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        y = self.norm(self.dwconv(x)).permute(0, 2, 3, 1)
        y = self.gamma * self.pwconv2(self.act(self.pwconv1(y)))
        return x + y.permute(0, 3, 1, 2)


class Fuser(nn.Module):
    """A stack of CXBlocks (kept as its own module for the checkpoint's `fuser.layers.N` names)."""

    def __init__(self, dim: int, num_layers: int = FUSER_LAYERS) -> None:
        super().__init__()
        self.layers = nn.ModuleList(CXBlock(dim) for _ in range(num_layers))

    def forward(self, x: Tensor) -> Tensor:
        for layer in self.layers:
            x = layer(x)
        return x


class MemoryEncoder(nn.Module):
    """(image features [1 or B, C, h, w], mask probabilities [B, 1, 16h, 16w]) -> memory [B, mem_dim, h, w] + pos."""

    def __init__(self, dim: int, mem_dim: int) -> None:
        super().__init__()
        self.mask_downsampler = MaskDownSampler(dim)
        self.pix_feat_proj = nn.Conv2d(dim, dim, kernel_size=1)
        self.fuser = Fuser(dim)
        self.position_encoding = SinePositionEncoding(mem_dim)
        self.out_proj = nn.Conv2d(dim, mem_dim, kernel_size=1) if mem_dim != dim else nn.Identity()

    def forward(self, pix_feat: Tensor, masks: Tensor) -> tuple[Tensor, Tensor]:
        masks = self.mask_downsampler(masks.to(self.pix_feat_proj.weight.dtype))
        x = self.pix_feat_proj(pix_feat.to(masks.device)) + masks
        x = self.out_proj(self.fuser(x))
        return x, self.position_encoding(x).to(x.dtype)
