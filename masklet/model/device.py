"""Which torch device a config's `device: auto | cpu | cuda[:N]` means, the same for jobs, training and eval."""

from __future__ import annotations

import torch


def resolve_device(name: str) -> torch.device:
    """`auto`: the first visible GPU (in a Ray worker, the one Ray gave it: cuda:0 under
    CUDA_VISIBLE_DEVICES), else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)
