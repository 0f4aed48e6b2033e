"""Weights by name: the ones shipped inside the package and the official SAM 2 / 2.1 release.

`masklet_demo.pt` is the small model trained on the synthetic corpus (docs/demo-model.md), resolved
per process from the installed package, so every node of a cluster finds its own copy. The official
checkpoints are named by `model.checkpoint: official` (or the preset's own name) and fetched from
Meta's download server, or from a mirror: clusters often have no internet, so `MASKLET_WEIGHTS_MIRROR`
(a folder or bucket URI holding the files under their official names) replaces the server.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from importlib import resources

PACKAGED = {"masklet_demo": "masklet_demo.pt"}
MIRROR_ENV = "MASKLET_WEIGHTS_MIRROR"
OFFICIAL_WORD = "official"
_SAM2_BASE = "https://dl.fbaipublicfiles.com/segment_anything_2/072824"
_SAM21_BASE = "https://dl.fbaipublicfiles.com/segment_anything_2/092824"


@dataclass(frozen=True)
class OfficialCheckpoint:
    """One file of the official release (URLs from the sam2 1.1.0 README; parameter counts from the
    official state dicts, `../shared/reference/sam2-checkpoint-keys`)."""

    file: str
    base_url: str
    hf_repo: str
    params: int

    @property
    def url(self) -> str:
        return f"{self.base_url}/{self.file}"

    @property
    def hf_uri(self) -> str:
        return f"hf://{self.hf_repo}/{self.file}"


OFFICIAL = {
    "sam2_hiera_t": OfficialCheckpoint("sam2_hiera_tiny.pt", _SAM2_BASE, "facebook/sam2-hiera-tiny", 38_946_242),
    "sam2_hiera_s": OfficialCheckpoint("sam2_hiera_small.pt", _SAM2_BASE, "facebook/sam2-hiera-small", 46_044_098),
    "sam2_hiera_b_plus": OfficialCheckpoint(
        "sam2_hiera_base_plus.pt", _SAM2_BASE, "facebook/sam2-hiera-base-plus", 80_833_922
    ),
    "sam2_hiera_l": OfficialCheckpoint("sam2_hiera_large.pt", _SAM2_BASE, "facebook/sam2-hiera-large", 224_430_386),
    "sam2.1_hiera_t": OfficialCheckpoint("sam2.1_hiera_tiny.pt", _SAM21_BASE, "facebook/sam2.1-hiera-tiny", 38_962_754),
    "sam2.1_hiera_s": OfficialCheckpoint(
        "sam2.1_hiera_small.pt", _SAM21_BASE, "facebook/sam2.1-hiera-small", 46_060_610
    ),
    "sam2.1_hiera_b_plus": OfficialCheckpoint(
        "sam2.1_hiera_base_plus.pt", _SAM21_BASE, "facebook/sam2.1-hiera-base-plus", 80_850_434
    ),
    "sam2.1_hiera_l": OfficialCheckpoint(
        "sam2.1_hiera_large.pt", _SAM21_BASE, "facebook/sam2.1-hiera-large", 224_446_898
    ),
}


class WeightsError(ValueError):
    """A weights setting that names nothing loadable, with what to write instead."""


def packaged_weights(model_name: str) -> str | None:
    """The local path of the weights shipped for `model_name`, or None when none ship."""
    name = PACKAGED.get(model_name)
    if name is None:
        return None
    path = resources.files(__name__).joinpath(name)
    return str(path) if path.is_file() else None


def official_uri(model_name: str) -> str:
    """Where the official checkpoint of `model_name` is fetched from: the mirror when one is set."""
    checkpoint = OFFICIAL[model_name]
    mirror = os.environ.get(MIRROR_ENV, "").strip()
    return f"{mirror.rstrip('/')}/{checkpoint.file}" if mirror else checkpoint.url


def how_to_get(model_name: str, key: str = "model.checkpoint") -> str:
    """The ways to give `model_name` weights through the setting `key`, for an error message."""
    if model_name not in OFFICIAL:
        return f"set {key} to a URI of its weights"
    checkpoint = OFFICIAL[model_name]
    return (
        f"set {key} to '{OFFICIAL_WORD}' (fetches {checkpoint.url} once per node; ${MIRROR_ENV}=URI fetches "
        f"URI/{checkpoint.file} instead), to {checkpoint.hf_uri} (needs huggingface_hub), or to any fsspec URI of "
        f"{checkpoint.file}"
    )


def resolve_weights(model_name: str, checkpoint: str | None, key: str = "model.checkpoint") -> str | None:
    """The URI to load for `checkpoint` (a URI, 'official' or the preset's name), else the shipped weights.

    None means the preset has no weights anywhere: the caller decides whether random ones were asked for.
    """
    if checkpoint is None:
        return packaged_weights(model_name)
    if checkpoint in (OFFICIAL_WORD, model_name):
        if model_name not in OFFICIAL:
            raise WeightsError(f"{model_name} has no official checkpoint; {how_to_get(model_name, key)}")
        return official_uri(model_name)
    if checkpoint in OFFICIAL or checkpoint in PACKAGED:
        raise WeightsError(
            f"{key} {checkpoint!r} names another model than {model_name!r}: name that model, or set {key} to "
            f"'{OFFICIAL_WORD}'"
        )
    return checkpoint
