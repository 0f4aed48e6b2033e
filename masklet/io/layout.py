"""The layout of an output root, spelled out once: every writer and reader takes its names from here.

    job.json                    what produced the outputs (config, hash, model, checkpoint sha256)
    progress.json               the last run's progress, rewritten as it goes
    masklets/{shard}.parquet    one row per masklet, kept or not
    videos/{shard}.parquet      one row per video, failures included
    wds/{shard}.tar             SA-V annotation JSON per video [+ the video bytes]
    _done/{shard}.json          the shard's commit marker, written last
    _manifest/{split}/{shard}.jsonl   a manifest input's rows, split by shard when the job was planned
    _split/{shard}.{key}/       a long video labelled in chunks, until it is stitched (masklet.jobs.split)
"""

from __future__ import annotations

import json
import re
from typing import Any

from masklet.io import storage

JOB_FILE = "job.json"
PROGRESS_FILE = "progress.json"
DONE_DIR = "_done"
MANIFEST_DIR = "_manifest"
SHARD_DIRS = {"masklets": "masklets", "videos": "videos", "wds": "wds", "done": DONE_DIR}
_SUFFIXES = {"masklets": ".parquet", "videos": ".parquet", "wds": ".tar", "done": ".json"}
# Hidden names ('.', '_') are skipped by pyarrow.dataset, so a shard id may not start with one.
SHARD_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}")


def check_shard_id(shard_id: str) -> str:
    if not SHARD_ID.fullmatch(shard_id):
        raise ValueError(f"shard id {shard_id!r} must match {SHARD_ID.pattern} (it names files)")
    return shard_id


def shard_files(shard_id: str) -> dict[str, str]:
    """The paths of a shard's files relative to the output root, marker included."""
    check_shard_id(shard_id)
    return {kind: f"{folder}/{shard_id}{_SUFFIXES[kind]}" for kind, folder in SHARD_DIRS.items()}


def read_json(root: str, name: str) -> dict[str, Any] | None:
    """`root/name` parsed (job.json, progress.json), or None where the root has none.

    Raises ValueError naming the file when it is not JSON, StorageError when it cannot be read.
    """
    uri = storage.join(root, name)
    data = storage.read_bytes_if_present(uri)
    if data is None:
        return None
    try:
        return json.loads(data)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{uri} is not valid JSON ({exc})") from exc


def write_json(root: str, name: str, doc: dict[str, Any]) -> None:
    """`root/name` written atomically."""
    storage.write_bytes(storage.join(root, name), json.dumps(doc, indent=1).encode())
