"""`masklet verify OUT`: does every committed shard still hold the files its marker lists?

A marker (`_done/{shard}.json`) is written after its files, so a job trusts it and never looks at
them again: a parquet deleted or a tar emptied later (a lifecycle rule, a bad copy, a person) would
make a rerun say "nothing to do" over missing data. This check lists each folder once and compares
every file's size with its marker; `checksums` also reads every file and compares its sha256 (markers
written by masklet 0.1.0 from 2026-12-05 on record one). `forget` removes the markers of the shards found damaged, so
the same job's rerun labels them again.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
from collections.abc import Iterable
from dataclasses import dataclass

from masklet.io import storage
from masklet.io.layout import SHARD_DIRS, shard_files
from masklet.io.sinks import list_done

_CHUNK = 1 << 20


@dataclass(frozen=True)
class Damage:
    """One committed shard whose file is not what its marker says."""

    shard_id: str
    path: str  # relative to the output root
    problem: str

    def __str__(self) -> str:
        return f"{self.shard_id}: {self.path} {self.problem}"


@dataclass(frozen=True)
class Verification:
    shards: int
    files: int
    damage: list[Damage]

    @property
    def damaged_shards(self) -> list[str]:
        return sorted({d.shard_id for d in self.damage})


def verify_output(root: str, *, checksums: bool = False) -> Verification:
    """Check every committed shard of `root` against its marker (see the module doc)."""
    done = sorted(list_done(root))
    sizes = {folder: _sizes(storage.join(root, folder)) for kind, folder in SHARD_DIRS.items() if kind != "done"}
    damage: list[Damage] = []
    files = 0
    for shard_id in done:
        marker = _marker(root, shard_id)
        if isinstance(marker, Damage):
            damage.append(marker)
            continue
        for entry in marker.get("files", []):
            files += 1
            found = _check(root, shard_id, entry, sizes, checksums)
            if found is not None:
                damage.append(found)
    return Verification(len(done), files, damage)


def forget(root: str, shard_ids: Iterable[str]) -> None:
    """Remove the markers of `shard_ids`: they read as not done, and the job's rerun redoes them."""
    for shard_id in shard_ids:
        uri = storage.join(root, shard_files(shard_id)["done"])
        fs, path = storage.url_to_fs(uri)
        storage.call("delete", uri, fs.rm_file, path)


def _sizes(folder_uri: str) -> dict[str, int]:
    """File name -> size in one listing of the folder (empty when it does not exist)."""
    fs, path = storage.url_to_fs(folder_uri)
    fs.invalidate_cache(path)
    try:
        entries = storage.call("list", folder_uri, fs.ls, path, detail=True)
    except storage.StorageError as exc:
        if isinstance(exc.__cause__, FileNotFoundError):
            return {}
        raise
    return {posixpath.basename(e["name"].rstrip("/")): int(e.get("size") or 0) for e in entries}


def _marker(root: str, shard_id: str) -> dict | Damage:
    name = shard_files(shard_id)["done"]
    try:
        marker = json.loads(storage.read_bytes(storage.join(root, name)))
    except json.JSONDecodeError as exc:
        return Damage(shard_id, name, f"is not valid JSON ({exc.msg})")
    if not isinstance(marker, dict) or not isinstance(marker.get("files"), list):
        return Damage(shard_id, name, "lists no files")
    return marker


def _check(root: str, shard_id: str, entry: dict, sizes: dict[str, dict[str, int]], checksums: bool) -> Damage | None:
    relative = str(entry.get("path", ""))
    folder, _, name = relative.partition("/")
    if name not in sizes.get(folder, {}):
        return Damage(shard_id, relative, "is missing")
    size, expected = sizes[folder][name], entry.get("bytes")
    if size != expected:
        return Damage(shard_id, relative, f"has {size} bytes; its marker says {expected}")
    if checksums and entry.get("sha256"):
        actual = _sha256(storage.join(root, relative))
        if actual != entry["sha256"]:
            return Damage(shard_id, relative, f"has sha256 {actual[:12]}...; its marker says {entry['sha256'][:12]}...")
    return None


def _sha256(uri: str) -> str:
    fs, path = storage.url_to_fs(uri)
    digest = hashlib.sha256()
    with storage.call("open", uri, fs.open, path, "rb") as f:
        for block in iter(lambda: f.read(_CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()
