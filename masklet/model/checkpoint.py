"""Strict, safe loading of a local checkpoint file into the model.

Accepts the official SAM 2 layout (`{"model": state_dict, ...}`) and a bare state dict. Files are
read with `torch.load(weights_only=True)`, so a checkpoint carrying arbitrary pickled objects is
refused, and every key and shape must match the model exactly. Where the file comes from (a URI,
the node cache) is `masklet.io.checkpoint_files`' business; `name` only labels the errors.
"""

from __future__ import annotations

import pickle
import re
from collections.abc import Mapping
from typing import Any

import torch

_SHOW = 5  # keys listed per kind of mismatch
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded into the model: wrong keys or shapes, unsafe or unreadable."""


def read_state_dict(path: str, name: str | None = None) -> Mapping[str, Any]:
    """The state dict in the local file `path` (`name`: what errors call it, default the path)."""
    name = name or path
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError as exc:
        reason = _ANSI.sub("", str(exc)).strip().splitlines()[0]
        raise CheckpointError(
            f"checkpoint {name}: refused: it holds pickled objects other than tensors and plain containers, "
            f"which could run code when loaded. Re-save it as a plain state dict. ({reason})"
        ) from exc
    except (RuntimeError, EOFError, OSError) as exc:
        raise CheckpointError(f"checkpoint {name}: not a readable torch checkpoint: {_ANSI.sub('', str(exc))}") from exc
    return _state_dict(name, obj)


def _state_dict(uri: str, obj: Any) -> Mapping[str, Any]:
    """The state dict inside a loaded file: `obj["model"]` (official layout) or `obj` itself."""
    if isinstance(obj, Mapping):
        if isinstance(obj.get("model"), Mapping):
            return obj["model"]
        if all(isinstance(v, torch.Tensor) for v in obj.values()):
            return obj
        keys = ", ".join(repr(k) for k in list(obj)[:10])
        raise CheckpointError(
            f"checkpoint {uri}: expected a state dict or {{'model': state_dict, ...}}, got a dict with keys {keys}"
        )
    raise CheckpointError(f"checkpoint {uri}: expected a state dict, got {type(obj).__name__}")


def _shape(value: Any) -> list[int] | None:
    return list(value.shape) if isinstance(value, torch.Tensor) else None


def _listing(title: str, lines: list[str]) -> str:
    shown = "\n".join(f"    {line}" for line in lines[:_SHOW])
    more = f"\n    ... and {len(lines) - _SHOW} more" if len(lines) > _SHOW else ""
    return f"  {title} ({len(lines)}):\n{shown}{more}"


def check_state_dict(model: torch.nn.Module, state: Mapping[str, Any], uri: str = "<state dict>") -> None:
    """Raise `CheckpointError` listing missing, unexpected and mis-shaped keys, if there are any."""
    expected = model.state_dict()
    missing = [f"{k} {_shape(v)}" for k, v in expected.items() if k not in state]
    unexpected = [f"{k} {_shape(v)}" for k, v in state.items() if k not in expected]
    misshaped = [
        f"{k}: checkpoint {_shape(v)} vs model {_shape(expected[k])}"
        for k, v in state.items()
        if k in expected and _shape(v) != _shape(expected[k])
    ]
    if not (missing or unexpected or misshaped):
        return
    counts = f"{len(missing)} missing, {len(unexpected)} unexpected, {len(misshaped)} mis-shaped"
    parts = [f"checkpoint {uri} does not fit {type(model).__name__}: {counts}"]
    parts += [
        _listing(title, lines)
        for title, lines in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", misshaped))
        if lines
    ]
    raise CheckpointError("\n".join(parts))


def load_state_dict(model: torch.nn.Module, state: Mapping[str, Any], name: str = "<state dict>") -> None:
    """Load `state` into `model` strictly, after `check_state_dict` has named every mismatch."""
    check_state_dict(model, state, name)
    model.load_state_dict(state, strict=True)
