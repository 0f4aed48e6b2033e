"""The model a pipeline runs: built from the `model` section, its weights fetched and loaded strictly.

This is where the config's promise "never random weights by accident" is kept at load time: weights
come from `model.checkpoint` (a URI, 'official' or the preset's name) or ship with the package, and
untrained weights are built only for `model.init: random`, seeded so every worker holds the same.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from masklet.config import ModelConfig
from masklet.io import checkpoint_files
from masklet.model import SAM2Model, build_model
from masklet.model.checkpoint import CheckpointError, check_state_dict, load_state_dict, read_state_dict

RANDOM_WEIGHTS_SEED = 0


def load_weights(model: torch.nn.Module, uri: str, sha256: str | None = None) -> checkpoint_files.LocalCopy:
    """Fetch `uri` (node cache, retries, sha256 check) and load it into `model` strictly.

    A cached file that turns out unsafe or unreadable is evicted, so the next attempt downloads it
    afresh instead of failing on the same bytes.
    """
    copy = checkpoint_files.fetch(uri, sha256=sha256)
    load_state_dict(model, _read(copy, uri), uri)
    return copy


def _read(copy: checkpoint_files.LocalCopy, uri: str) -> Mapping[str, Any]:
    try:
        return read_state_dict(copy.path, name=uri)
    except CheckpointError:
        checkpoint_files.evict(copy)
        raise


def check_weights(config: ModelConfig, checkpoint_sha256: str | None = None) -> str | None:
    """Fetch `config`'s weights and check them (safe to read, every key and shape) against its model
    built on the meta device, which allocates nothing; return their sha256, None for `init: random`.

    A job calls this before it claims its output root, so a checkpoint its workers would refuse costs
    seconds, not a cluster start. Errors name the key: `model.checkpoint: ...`.
    """
    if config.weights is None:
        return None
    try:
        copy = checkpoint_files.fetch(config.weights, sha256=checkpoint_sha256)
        model = build_model(config.name, image_size=config.image_size, device="meta")
        check_state_dict(model, _read(copy, config.weights), config.weights)
        return copy.sha256
    except (CheckpointError, checkpoint_files.ChecksumError, OSError) as exc:
        raise CheckpointError(f"model.checkpoint: {exc}") from exc


def load_model(
    config: ModelConfig, device: torch.device | str = "cpu", checkpoint_sha256: str | None = None, **build: Any
) -> SAM2Model:
    """Build `config`'s model on `device` with its weights (`checkpoint_sha256`: the bytes job.json pinned).

    `build` goes to `build_model` (e.g. `apply_postprocessing=False` for training).
    """
    dtype = None if config.dtype == "auto" else getattr(torch, config.dtype)
    torch.manual_seed(RANDOM_WEIGHTS_SEED)
    model = build_model(config.name, image_size=config.image_size, device=device, dtype=dtype, **build)
    if config.init == "random":
        return model
    uri = config.weights
    if uri is None:  # the config refuses this; a hand-built ModelConfig may not have been validated
        raise CheckpointError(f"model {config.name} has no weights and model.init is not 'random'")
    load_weights(model, uri, sha256=checkpoint_sha256)
    return model
