"""Weights that ship inside the package, so a fresh install runs with a model that finds objects.

`masklet_demo.pt` is the small model trained on the synthetic corpus (docs/demo-model.md). Resolved
per process from the installed package, so every node of a cluster finds its own copy.
"""

from __future__ import annotations

from importlib import resources

PACKAGED = {"masklet_demo": "masklet_demo.pt"}


def packaged_weights(model_name: str) -> str | None:
    """The local path of the weights shipped for `model_name`, or None when none ship."""
    name = PACKAGED.get(model_name)
    if name is None:
        return None
    path = resources.files(__name__).joinpath(name)
    return str(path) if path.is_file() else None
