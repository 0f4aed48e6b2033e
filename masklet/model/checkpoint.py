"""Load and save model weights from any fsspec URI, checked strictly and safely.

`load_checkpoint` accepts the official SAM 2 layout (`{"model": state_dict, ...}`) and a bare state
dict, reads local paths directly and caches remote files (s3://, https://, ...) under
`$MASKLET_CACHE_DIR` (default `~/.cache/masklet/checkpoints`). Files are read with
`torch.load(weights_only=True)`, so a checkpoint carrying arbitrary pickled objects is refused.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import pickle
import re
import tempfile
import urllib.parse
from collections.abc import Mapping
from typing import Any

import torch

from masklet.io.storage import is_local, staged_file, url_to_fs

CACHE_ENV = "MASKLET_CACHE_DIR"
_SHOW = 5  # keys listed per kind of mismatch


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded into the model: wrong keys or shapes, bad hash, unsafe or unreadable."""


def default_cache_dir() -> str:
    """Where downloaded checkpoints are kept: `$MASKLET_CACHE_DIR` or `~/.cache/masklet/checkpoints`."""
    return os.environ.get(CACHE_ENV) or os.path.join(os.path.expanduser("~"), ".cache", "masklet", "checkpoints")


def file_sha256(path: str) -> str:
    """Hex sha256 of a local file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _cache_name(uri: str) -> str:
    """A cache file name unique to the URI that keeps its base name readable."""
    base = os.path.basename(urllib.parse.urlparse(uri).path) or "checkpoint"
    base = re.sub(r"[^A-Za-z0-9._-]", "_", base)[-80:]
    return f"{hashlib.sha256(uri.encode()).hexdigest()[:16]}-{base}"


def _check_sha256(uri: str, actual: str, expected: str | None) -> None:
    if expected is not None and actual != expected.lower():
        raise CheckpointError(f"checkpoint {uri}: sha256 mismatch: expected {expected.lower()}, got {actual}")


def fetch(uri: str, sha256: str | None = None, cache_dir: str | None = None) -> dict[str, Any]:
    """Make the file at `uri` available locally, verifying `sha256` when given.

    Local files are used in place. Remote files are downloaded once into the cache, through a temp
    file renamed into place only when complete (and matching `sha256`), so an interrupted download
    never leaves a corrupt entry; a cached file that no longer matches `sha256` is downloaded again.
    Returns `{"path", "sha256", "cached"}` (`cached`: served from the cache without a download).
    """
    fs, path = url_to_fs(uri)
    if is_local(fs):
        digest = file_sha256(path)
        _check_sha256(uri, digest, sha256)
        return {"path": path, "sha256": digest, "cached": False}

    cache_dir = cache_dir or default_cache_dir()
    os.makedirs(cache_dir, exist_ok=True)
    target = os.path.join(cache_dir, _cache_name(uri))
    if os.path.exists(target):
        digest = file_sha256(target)
        if sha256 is None or digest == sha256.lower():
            return {"path": target, "sha256": digest, "cached": True}
    fd, stage = tempfile.mkstemp(dir=cache_dir, prefix=f".{os.path.basename(target)}.", suffix=".partial")
    os.close(fd)
    try:
        fs.get_file(path, stage)
        digest = file_sha256(stage)
        _check_sha256(uri, digest, sha256)
        os.replace(stage, target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(stage)
    return {"path": target, "sha256": digest, "cached": False}


def _read(uri: str, path: str) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(
            f"checkpoint {uri}: refused: it holds pickled objects other than tensors and plain containers, "
            f"which could run code when loaded. Re-save it as a plain state dict. ({str(exc).splitlines()[0]})"
        ) from exc
    except (RuntimeError, EOFError, OSError) as exc:
        raise CheckpointError(f"checkpoint {uri}: not a readable torch checkpoint: {exc}") from exc


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


def load_checkpoint(
    model: torch.nn.Module, uri: str, sha256: str | None = None, cache_dir: str | None = None
) -> dict[str, Any]:
    """Load weights from `uri` into `model` strictly; returns `{"uri", "path", "sha256", "cached"}`.

    Raises `CheckpointError` (a `ValueError`) for a sha256 mismatch, an unsafe or unreadable file, or
    keys and shapes that do not match the model exactly.
    """
    info = fetch(uri, sha256=sha256, cache_dir=cache_dir)
    state = _state_dict(uri, _read(uri, info["path"]))
    check_state_dict(model, state, uri)
    model.load_state_dict(state, strict=True)
    return {"uri": uri, **info}


def save_checkpoint(model_or_state_dict: torch.nn.Module | Mapping[str, Any], uri: str, **extra: Any) -> str:
    """Write `{"model": state_dict, **extra}` atomically to `uri`; returns the file's sha256.

    `extra` values must be loadable with `weights_only=True` (tensors, numbers, strings, containers).
    """
    if "model" in extra:
        raise ValueError("'model' is reserved for the state dict")
    state = (
        model_or_state_dict.state_dict() if isinstance(model_or_state_dict, torch.nn.Module) else model_or_state_dict
    )
    state = {k: v.detach().cpu() if isinstance(v, torch.Tensor) else v for k, v in state.items()}
    with staged_file(uri) as stage:
        torch.save({"model": state, **extra}, stage)
        return file_sha256(stage)
