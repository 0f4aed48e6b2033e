"""Checkpoint files: fetched from any fsspec URI into a node-local cache, and saved atomically.

Local paths are used in place. Remote files (s3://, https://, hf://, ...) are downloaded once per
node into `$MASKLET_CACHE_DIR` (default `~/.cache/masklet/checkpoints`) through the storage layer's
retries, under a per-file lock so that the workers starting together on one node make one download.
A cached copy is reused when it matches the sha256 the job pinned; without a pinned sha256 (the
first look at a URI) one metadata request (size, ETag, version, mtime) revalidates it, so an object
overwritten in place is downloaded again rather than served stale.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import tempfile
import urllib.parse
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from masklet.io import storage

CACHE_ENV = "MASKLET_CACHE_DIR"
# what an fsspec `info()` says about a remote object's version: s3fs, http, gcsfs, huggingface_hub
_FINGERPRINT_KEYS = (
    "size",
    "ETag",
    "etag",
    "VersionId",
    "LastModified",
    "Last-Modified",
    "mtime",
    "updated",
    "generation",
    "blob_id",
    "lfs",
)


class ChecksumError(ValueError):
    """The bytes at a URI are not the ones the job pinned (sha256 mismatch)."""


@dataclass(frozen=True)
class LocalCopy:
    """A checkpoint readable on this machine: `path`, its `sha256`, and whether the cache served it."""

    uri: str
    path: str
    sha256: str
    cached: bool
    in_cache: bool  # `path` is a cache entry (safe to delete), not the user's own file


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
        raise ChecksumError(f"checkpoint {uri}: sha256 mismatch: expected {expected.lower()}, got {actual}")


def _fingerprint(info: Mapping[str, Any]) -> dict[str, str]:
    return {k: str(info[k]) for k in _FINGERPRINT_KEYS if info.get(k) is not None}


@contextlib.contextmanager
def _node_lock(target: str) -> Iterator[None]:
    """One process per node fetches a given cache entry; the others wait and then find it cached."""
    with open(f"{target}.lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _stat(uri: str, fs: Any, path: str) -> dict[str, str]:
    """The object's version as the store says now (not from a listing this process cached earlier)."""
    fs.invalidate_cache(path)
    return _fingerprint(storage.call("stat", uri, fs.info, path))


def fetch(uri: str, sha256: str | None = None, cache_dir: str | None = None) -> LocalCopy:
    """Make the file at `uri` available locally, verifying `sha256` when given.

    Raises `storage.StorageError` (an OSError naming the URI) when the file cannot be read, after
    retrying transient faults, and `ChecksumError` when its bytes are not the pinned ones. An
    interrupted download never leaves a cache entry: it is staged and renamed into place.
    """
    fs, path = storage.url_to_fs(uri)
    if storage.is_local(fs):
        if not os.path.isfile(path):
            raise storage.StorageError(f"checkpoint {uri}: no such file", uri, transient=False)
        digest = file_sha256(path)
        _check_sha256(uri, digest, sha256)
        return LocalCopy(uri, path, digest, cached=False, in_cache=False)

    cache_dir = cache_dir or default_cache_dir()
    os.makedirs(cache_dir, exist_ok=True)
    target = os.path.join(cache_dir, _cache_name(uri))
    with _node_lock(target):
        remote: dict[str, str] | None = None
        if os.path.exists(target):
            if sha256 is None:
                remote = _stat(uri, fs, path)
            if sha256 is not None or (remote and remote == _read_fingerprint(target)):
                digest = file_sha256(target)
                if sha256 is None or digest == sha256.lower():
                    return LocalCopy(uri, target, digest, cached=True, in_cache=True)
        if remote is None:
            remote = _stat(uri, fs, path)
        digest = _download(uri, fs, path, target, sha256)
        with open(f"{target}.json", "w") as f:
            json.dump({"uri": uri, "sha256": digest, "fingerprint": remote}, f)
    return LocalCopy(uri, target, digest, cached=False, in_cache=True)


def _download(uri: str, fs: Any, path: str, target: str, sha256: str | None) -> str:
    fd, stage = tempfile.mkstemp(dir=os.path.dirname(target), prefix=f".{os.path.basename(target)}.", suffix=".partial")
    os.close(fd)
    try:
        storage.call("download", uri, fs.get_file, path, stage)
        digest = file_sha256(stage)
        _check_sha256(uri, digest, sha256)
        os.replace(stage, target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(stage)
    return digest


def _read_fingerprint(target: str) -> dict[str, str] | None:
    try:
        with open(f"{target}.json") as f:
            return json.load(f).get("fingerprint")
    except (OSError, ValueError):
        return None


def evict(copy: LocalCopy) -> None:
    """Drop a cache entry that turned out unusable (unsafe or unreadable), so nothing serves it again."""
    if copy.in_cache:
        for name in (copy.path, f"{copy.path}.json"):
            with contextlib.suppress(FileNotFoundError):
                os.remove(name)


def save_checkpoint(state_dict: Mapping[str, Any], uri: str, **extra: Any) -> str:
    """Write `{"model": state_dict, **extra}` atomically to `uri`; returns the file's sha256.

    Tensors are saved on the CPU; `extra` values must be loadable with `weights_only=True`
    (tensors, numbers, strings, containers).
    """
    import torch

    if "model" in extra:
        raise ValueError("'model' is reserved for the state dict")
    state = {k: v.detach().cpu() if isinstance(v, torch.Tensor) else v for k, v in state_dict.items()}
    with storage.staged_file(uri) as stage:
        torch.save({"model": state, **extra}, stage)
        return file_sha256(stage)
