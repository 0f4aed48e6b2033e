"""One long video as several units of work: its plan, its chunks and its stitch, and what a rerun resumes.

With `split.chunk_seconds` set, the worker that meets a video longer than a chunk and its overlap in a
shard does not label it: it records a `SplitVideo` under `_split/{split_id}/plan.json` and commits the
shard without it. The driver then queues one `ChunkUnit` per chunk (any worker may take each; a chunk
is retried on its own) and, when every chunk is in, a `StitchUnit` that joins the chunks' masklets
(masklet.pipelines.stitching) and commits the video as an output shard of its own, `split_id`.

    _split/{split_id}/plan.json          the video's chunks (annotated positions) and its shard
    _split/{split_id}/chunk-{k}.parquet  chunk k's masklets, unfiltered, ids of the chunk's own
    _split/{split_id}/chunk-{k}.json     chunk k's video row (frames, timings), written last: chunk k is in

A rerun (`pending_units`) finds the plans whose video is not committed and queues what they lack.
Importing this module loads neither Ray nor torch.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import posixpath
from dataclasses import dataclass
from typing import Any

from masklet.config import SourceConfig, SplitConfig
from masklet.io import storage
from masklet.io.layout import SHARD_ID
from masklet.io.sources import ManifestRow, Shard
from masklet.io.storage import StorageError

SPLIT_DIR = "_split"


@dataclass(frozen=True)
class SplitVideo:
    """A video of `shard` labelled in chunks: chunk k is annotated positions `spans[k]` (the last one
    runs to the end: None); `video` holds what opening it told (a `VideoRecord`'s fields)."""

    split_id: str
    shard: Shard
    video_key: str
    spans: tuple[tuple[int, int | None], ...]
    video: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        doc = dataclasses.asdict(self)
        doc["spans"] = [list(s) for s in self.spans]
        return doc

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> SplitVideo:
        shard = dict(doc["shard"])
        rows = shard.get("items", [])
        shard["items"] = tuple(ManifestRow(**r) if isinstance(r, dict) else r for r in rows)
        return cls(
            split_id=doc["split_id"],
            shard=Shard(**shard),
            video_key=doc["video_key"],
            spans=tuple((int(a), None if b is None else int(b)) for a, b in doc["spans"]),
            video=dict(doc["video"]),
        )


@dataclass(frozen=True)
class ChunkUnit:
    """Label chunk `index` of a split video."""

    split: SplitVideo
    index: int

    @property
    def id(self) -> str:
        return f"{self.split.split_id}:chunk-{self.index}"


@dataclass(frozen=True)
class StitchUnit:
    """Join a split video's chunks and commit it."""

    split: SplitVideo

    @property
    def id(self) -> str:
        return f"{self.split.split_id}:stitch"


WorkUnit = Shard | ChunkUnit | StitchUnit


def spans(positions: int, chunk: int, overlap: int) -> list[tuple[int, int | None]]:
    """Annotated positions of each chunk of a video of `positions` frames: chunk k starts at k * chunk
    and runs `overlap` frames into the next; the last one (more than `overlap`, at most chunk + overlap
    frames) runs to the end. One chunk (no split) when the video is at most chunk + overlap long."""
    if chunk < 1 or overlap < 0:
        raise ValueError(f"chunks need chunk >= 1 and overlap >= 0, got {chunk} and {overlap}")
    count = max(1, math.ceil((positions - overlap) / chunk))
    return [(k * chunk, (k + 1) * chunk + overlap) for k in range(count - 1)] + [((count - 1) * chunk, None)]


def split_id(shard_id: str, video_key: str) -> str:
    """The output shard id of a split video: `{shard}.{key}`, a digest of the key where that is too long."""
    name = f"{shard_id}.{video_key}"
    if SHARD_ID.fullmatch(name):
        return name
    return f"{shard_id[:150]}.{hashlib.sha256(video_key.encode()).hexdigest()[:16]}"


def plan_split(
    config: SplitConfig,
    source: SourceConfig,
    shard: Shard,
    video_key: str,
    *,
    annotated_fps: float,
    positions: int,
    video: dict[str, Any],
) -> SplitVideo | None:
    """The split of a video of `positions` annotated frames at `annotated_fps`, or None where it is short
    enough for one worker (or splitting is off)."""
    if config.chunk_seconds is None:
        return None
    chunk = max(1, round(config.chunk_seconds * annotated_fps))
    overlap = max(1, round(config.overlap_seconds * annotated_fps))
    if source.max_frames is not None:
        positions = min(positions, source.max_frames)
    parts = spans(positions, chunk, overlap)
    if len(parts) == 1:
        return None
    return SplitVideo(split_id(shard.id, video_key), shard, video_key, tuple(parts), video)


def folder(output_uri: str, split: SplitVideo | str) -> str:
    return storage.join(output_uri, SPLIT_DIR, split if isinstance(split, str) else split.split_id)


def chunk_uri(output_uri: str, split: SplitVideo, index: int, ext: str) -> str:
    return storage.join(folder(output_uri, split), f"chunk-{index}.{ext}")


def write_plan(output_uri: str, split: SplitVideo) -> None:
    """Record the split (before its shard commits). A plan left by another config is replaced with its chunks."""
    uri = storage.join(folder(output_uri, split), "plan.json")
    data = json.dumps(split.to_json(), indent=1, sort_keys=True).encode()
    old = storage.read_bytes_if_present(uri)
    if old is not None and old != data:
        remove(output_uri, split.split_id)
    storage.write_bytes(uri, data)


def remove(output_uri: str, split: SplitVideo | str) -> None:
    """Delete a split's staging folder (its video is committed, or its plan is stale)."""
    uri = folder(output_uri, split)
    fs, path = storage.url_to_fs(uri)
    try:
        storage.call("delete", uri, fs.rm, path, recursive=True)
    except StorageError as exc:
        if not isinstance(exc.__cause__, FileNotFoundError):
            raise


def _names(uri: str) -> list[str]:
    """The names in folder `uri` (one fresh listing), none where it does not exist."""
    fs, path = storage.url_to_fs(uri)
    fs.invalidate_cache(path)
    try:
        names = storage.call("list", uri, fs.ls, path, detail=False)
    except StorageError as exc:
        if isinstance(exc.__cause__, FileNotFoundError):
            return []
        raise
    return sorted(posixpath.basename(str(name).rstrip("/")) for name in names)


def chunks_in(output_uri: str, split: SplitVideo) -> set[int]:
    """The chunks of `split` whose row is written (one listing)."""
    found = set()
    for name in _names(folder(output_uri, split)):
        stem = name.removeprefix("chunk-").removesuffix(".json")
        if name.startswith("chunk-") and name.endswith(".json") and stem.isdigit():
            found.add(int(stem))
    return found & set(range(len(split.spans)))


def pending_units(output_uri: str, committed: set[str]) -> tuple[list[ChunkUnit | StitchUnit], dict[str, set[int]]]:
    """What earlier runs left of split videos whose shard is committed: the units to queue (missing
    chunks, or the stitch of a video whose chunks are all in) and, per split, the chunks still to
    come. The staging of videos committed since is removed."""
    units: list[ChunkUnit | StitchUnit] = []
    waiting: dict[str, set[int]] = {}
    for name in _names(storage.join(output_uri, SPLIT_DIR)):
        if name in committed:
            remove(output_uri, name)
            continue
        data = storage.read_bytes_if_present(storage.join(folder(output_uri, name), "plan.json"))
        if data is None:
            continue  # its shard was interrupted before the plan was written; the shard reruns
        split = SplitVideo.from_json(json.loads(data))
        if split.shard.id not in committed:
            continue  # its shard runs again and splits it again: its chunks come then
        missing = set(range(len(split.spans))) - chunks_in(output_uri, split)
        if missing:
            waiting[split.split_id] = missing
            units += [ChunkUnit(split, k) for k in sorted(missing)]
        else:
            units.append(StitchUnit(split))
    return units, waiting


class SplitQueue:
    """The driver's view of split videos: a shard's splits queue their chunks, a video's last chunk in
    queues its stitch."""

    def __init__(self, waiting: dict[str, set[int]] | None = None) -> None:
        self.waiting = dict(waiting or {})

    def follow(self, unit: WorkUnit, result: Any) -> list[WorkUnit]:
        """The units that `unit`, done with `result` (a ShardResult), makes due."""
        if isinstance(unit, ChunkUnit):
            left = self.waiting.setdefault(unit.split.split_id, set())
            left.discard(unit.index)
            if left:
                return []
            del self.waiting[unit.split.split_id]
            return [StitchUnit(unit.split)]
        due: list[WorkUnit] = []
        for split in getattr(result, "splits", ()):
            self.waiting[split.split_id] = set(range(len(split.spans)))
            due += [ChunkUnit(split, k) for k in range(len(split.spans))]
        return due
