"""Image encoder: Hiera trunk + FPN neck, giving the three-level feature pyramid SAM 2 uses.

The neck projects every trunk stage to `d_model` with a 1x1 conv; only the two lowest-resolution
levels receive top-down (nearest-upsampled) features; the stride-32 level is then dropped
("scalp"), leaving strides 4, 8 and 16, each with a sine position encoding.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from masklet.model.hiera import Hiera
from masklet.model.position import SinePositionEncoding

FPN_TOP_DOWN_LEVELS = (2, 3)  # levels (0 = highest resolution) that get top-down features
SCALP = 1  # number of lowest-resolution levels dropped from the output


class FpnNeck(nn.Module):
    """FPN without output convs, summing lateral and top-down features."""

    def __init__(self, d_model: int, backbone_channel_list: Sequence[int]) -> None:
        super().__init__()
        self.position_encoding = SinePositionEncoding(d_model)
        # convs[0] handles the lowest-resolution stage (backbone_channel_list is ordered like that)
        self.convs = nn.ModuleList(
            nn.Sequential(OrderedDict(conv=nn.Conv2d(dim, d_model, kernel_size=1))) for dim in backbone_channel_list
        )

    def forward(self, xs: list[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        n = len(self.convs) - 1
        dtype = self.convs[0].conv.weight.dtype  # the fp32 top-down sum is kept in fp32 under autocast only
        out: list[Tensor] = []  # built from the lowest resolution up, reversed at the end
        prev: Tensor | None = None
        for i in range(n, -1, -1):
            lateral = self.convs[n - i](xs[i])
            if i in FPN_TOP_DOWN_LEVELS and prev is not None:
                top_down = F.interpolate(prev.to(dtype=torch.float32), scale_factor=2.0, mode="nearest")
                prev = (lateral + top_down).to(dtype)
            else:
                prev = lateral
            out.append(prev)
        out.reverse()
        pos = [self.position_encoding(x).to(x.dtype) for x in out]
        return out, pos


class ImageEncoder(nn.Module):
    """Trunk + neck -> (backbone_fpn, vision_pos_enc), highest resolution first, stride 32 dropped."""

    def __init__(self, trunk: Hiera, neck: FpnNeck) -> None:
        super().__init__()
        self.trunk = trunk
        self.neck = neck

    def forward(self, images: Tensor) -> tuple[list[Tensor], list[Tensor]]:
        features, pos = self.neck(self.trunk(images))
        return features[:-SCALP], pos[:-SCALP]
