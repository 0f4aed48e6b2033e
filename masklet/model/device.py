"""Which torch device a config's `device: auto | cpu | cuda[:N]` means, the same for jobs, training and eval."""

from __future__ import annotations

import torch


class DeviceError(ValueError):
    """A device asked for by name that this machine does not have."""


def resolve_device(name: str) -> torch.device:  # name: a model.device setting
    """`auto`: the first visible GPU (in a Ray worker, the one Ray gave it: cuda:0 under
    CUDA_VISIBLE_DEVICES), else the CPU. A named GPU this machine lacks is refused in words, not
    with torch's assertion from deep inside the first tensor copy."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
            raise DeviceError(
                f"model.device {name!r}: this machine has no GPU torch can use (torch {torch.__version__}, {build}); "
                "use device auto or cpu"
            )
        if (device.index or 0) >= count:
            visible = f"{count} visible GPU(s), cuda:0..cuda:{count - 1}"
            raise DeviceError(f"model.device {name!r}: this machine has {visible}")
    return device
