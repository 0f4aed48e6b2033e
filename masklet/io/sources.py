"""Input shards: list them without reading them, then stream the videos of one shard.

Layouts (`source.format`), all at fsspec URIs (plain paths, file://, s3://, gs://, ...):
- wds: WebDataset tar shards in the video2dataset layout, per sample `{key}.mp4|.webm|.mkv|.avi`,
  optional `{key}.json` (metadata) and `{key}.prompts.json` (raw, parsed by the pipeline); other
  members are ignored. `uri` is a tar, a directory of tars, a glob or a brace pattern
  (`s3://b/videos/shard-{000000..000999}.tar`). Shard id: the tar's file name without `.tar`.
- manifest: parquet, csv or jsonl files (glob or brace patterns too) with a `uri` column and
  optional `key` and `prompts` columns; other columns become metadata; relative uris are relative
  to the manifest. Cut into shards of `videos_per_shard` rows, id `{manifest stem}-{index:06d}`.
  A missing key is the uri's file name without its extension.
- frames: `ROOT/{video}/{frame:05d}.jpg` (SA-V, DAVIS); video folders sorted by name, cut into
  shards of `videos_per_shard`, id `{root name}-{index:06d}`; original frame index = file number.
Ids depend only on the input, so a rerun maps to the same outputs (for manifests and frame folders:
as long as rows or folders are not inserted before others).

Tar members are grouped webdataset-style (a sample's members are consecutive) but the key is the
video member's name minus its extension, so keys may contain dots: `a.b.mp4` goes with `a.b.json`.
Keys are sanitised for use as tar member names (`VideoInput.key`): characters other than
[A-Za-z0-9_-] become `_`, and a key that changed or is longer than 80 characters gets an 8-hex
hash of the original so two originals never meet; the original stays in `original_key`.

Where each problem is caught:
- list_shards (driver, once): nothing matches, two inputs give the same shard id, a manifest that
  cannot be read or has no `uri` column -> ValueError. It lists directories and reads manifests,
  never a tar shard or a video. Names from a brace pattern are taken as they are (no request per
  name); a missing one fails its shard when read, with FileNotFoundError naming it.
- iter_videos (worker, streaming): one VideoError per bad sample, and iteration goes on: a member
  name with `..` or an absolute path (refused, never read), a link or special member, a
  zero-byte video, metadata that is not a JSON object, prompts that are not UTF-8, a sample
  without a video, a duplicate key, a manifest row without a uri or not parseable, a frame
  folder without frames or with a gap in its frame numbers. A tar that breaks mid-stream ends the
  shard with a VideoError keyed by the shard id, after every sample read before the break: a member
  cut short, and (see masklet.io.tars) a corrupt or cut header or an end that is not two zero blocks.
- VideoInput.open (worker): a uri that cannot be read (missing, denied, unreachable), then
  everything masklet.io.video checks on open -> VideoDecodeError; while iterating, decode errors
  -> VideoDecodeError. `VideoInput.error(exc.reason)` turns either into a VideoError.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import itertools
import json
import os
import posixpath
import re
import tempfile
import weakref
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import fsspec
import pyarrow.parquet as pq
from braceexpand import braceexpand

from masklet.config import SourceConfig
from masklet.io import storage
from masklet.io.layout import SHARD_ID
from masklet.io.storage import StorageError, is_local, url_to_fs, where_relative
from masklet.io.tars import MAX_MEMBER_BYTES, TarDamaged, TarMember, read_tar, sanitize_key
from masklet.io.video import Encoded, FrameFiles, VideoDecodeError, VideoStream, open_video

VIDEO_EXTENSIONS = ("mp4", "webm", "mkv", "avi")
# a video member larger than this is written to a local file and decoded from there (`SpilledMember`)
SPILL_MEMBER_BYTES = 64 * 2**20
MANIFEST_EXTENSIONS = ("parquet", "csv", "jsonl")
FRAME_EXTENSIONS = ("jpg", "jpeg")
COMPRESSION_SUFFIXES = (".gz", ".bz2", ".xz", ".zst")
_GLOB_CHARS = re.compile(r"[*?\[]")


@dataclass(frozen=True)
class ManifestRow:
    """One manifest row as listed; `problem` says why it could not be parsed."""

    row: int
    key: str
    uri: str | None
    prompts: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    problem: str | None = None


@dataclass(frozen=True)
class Shard:
    """A unit of work. `uri` is the tar, the manifest or the frames root; `items` its rows or folders,
    or, for a manifest split when listed (`list_shards(..., spill=...)`), `rows_uri` the file of its rows."""

    id: str
    uri: str
    format: Literal["wds", "manifest", "frames"]
    items: tuple[ManifestRow, ...] | tuple[str, ...] = ()
    rows_uri: str | None = None


@dataclass(frozen=True)
class VideoError:
    """A sample that cannot be processed, with a reason a person can act on; the shard goes on."""

    key: str
    source_uri: str
    reason: str
    original_key: str = ""

    def __post_init__(self) -> None:
        if not self.original_key:
            object.__setattr__(self, "original_key", self.key)


@dataclass(frozen=True)
class VideoInput:
    """One video of a shard. `content`: the member's bytes (or, for a large one, its local copy, kept while
    this input is), an fsspec URI, or the JPEG frame files."""

    key: str
    original_key: str
    source_uri: str
    content: bytes | SpilledMember | str | FrameFiles
    ext: str | None
    metadata: dict[str, Any] = field(default_factory=dict)
    prompts: str | None = None

    def read_bytes(self) -> bytes:
        """The encoded video in memory; a uri is fetched through the storage layer's retries (see `_fetch`)."""
        if isinstance(self.content, FrameFiles):
            raise TypeError(f"video {self.key!r} is a folder of frames, not an encoded file")
        if isinstance(self.content, bytes):
            return self.content
        if isinstance(self.content, SpilledMember):
            return Path(self.content).read_bytes()
        with self._fetch(self.content):
            return storage.read_bytes(self.content)

    def local(self, folder: str) -> Encoded:
        """The encoded video where a decoder reads it without holding a copy: a tar member's bytes as they
        are (a large member's local copy, while this input is kept), a local file where it is, a remote
        file downloaded into `folder` as a stream (a 2-hour video is never in memory whole)."""
        if isinstance(self.content, FrameFiles):
            raise TypeError(f"video {self.key!r} is a folder of frames, not an encoded file")
        if isinstance(self.content, bytes):
            return self.content
        if isinstance(self.content, SpilledMember):
            return Path(self.content)
        uri = self.content
        ext = self.ext if self.ext and self.ext.isalnum() else "video"  # a name FFmpeg may guess the format from
        with self._fetch(uri):
            fs, path = storage.url_to_fs(uri)
            if is_local(fs):
                storage.call("read", uri, fs.info, path)  # there (a missing file is the input's fault)
                return Path(path)
            copy = Path(folder) / f"{self.key}.{ext}"
            storage.get_file(uri, str(copy))
        return copy

    @contextlib.contextmanager
    def _fetch(self, uri: str) -> Iterator[None]:
        """A video that is missing, denied or unreadable for good is a VideoDecodeError (the input's
        fault); a transient fault that outlasts the retries is a StorageError (the machine's: the shard
        is retried)."""
        try:
            yield
        except StorageError as exc:
            if exc.transient:
                raise
            cause = exc.__cause__
            if isinstance(cause, FileNotFoundError):
                raise VideoDecodeError(self.key, f"{uri} does not exist") from exc
            if isinstance(cause, PermissionError):
                raise VideoDecodeError(self.key, f"access to {uri} is denied: {cause}") from exc
            raise VideoDecodeError(self.key, f"{uri} cannot be read: {cause}") from exc
        except (ValueError, ImportError) as exc:  # an unknown protocol, a malformed URI
            raise VideoDecodeError(self.key, f"{uri} cannot be read: {exc}") from exc

    def open(
        self, *, fps: float | None, max_frames: int | None = None, prefetch_frames: int = 16, min_frames: int = 2
    ) -> VideoStream:
        """Start decoding (see masklet.io.video.open_video); keep this input while the stream is used.
        Raises VideoDecodeError."""
        source: Encoded | FrameFiles
        if isinstance(self.content, FrameFiles):
            source = self.content
        elif isinstance(self.content, SpilledMember):
            source = Path(self.content)
        else:
            source = self.read_bytes()
        return open_video(
            source, key=self.key, fps=fps, max_frames=max_frames, prefetch_frames=prefetch_frames, min_frames=min_frames
        )

    def error(self, reason: str) -> VideoError:
        return VideoError(self.key, self.source_uri, reason, self.original_key)


# ---- listing ----


def list_shards(source: SourceConfig, spill: str | None = None) -> list[Shard]:
    """Every shard of the source, in a stable order; reads no tar shard and no video.

    Manifests are read as a stream; with `spill` (a folder URI every worker reaches, a job's output
    root) each shard's rows go to a file there instead of memory, so listing a manifest of 10^7 rows
    keeps the driver's memory flat."""
    if source.format == "wds":
        shards = [Shard(_tar_stem(uri), uri, "wds") for uri in _expand(source.uri, "tar")]
    elif source.format == "manifest":
        shards = [
            shard
            for uri in _expand(source.uri, *MANIFEST_EXTENSIONS)
            for shard in _manifest_shards(uri, source.videos_per_shard, spill)
        ]
    else:
        shards = _frame_shards(source.uri, source.videos_per_shard)
    if not shards:
        raise ValueError(f"source {source.uri!r} holds no videos (its manifests have no rows)")
    seen: dict[str, str] = {}
    for shard in shards:
        if not SHARD_ID.fullmatch(shard.id):
            raise ValueError(
                f"{shard.uri} gives shard id {shard.id!r}, which cannot name output files (it must match "
                f"{SHARD_ID.pattern}): rename it"
            )
        if shard.id in seen and seen[shard.id] != shard.uri:
            raise ValueError(f"{seen[shard.id]} and {shard.uri} both give shard id {shard.id!r}; rename one")
        seen[shard.id] = shard.uri
    return shards


def _expand(pattern: str, *extensions: str) -> list[str]:
    """Brace-expand, then glob; a name without one of `extensions` is a directory to look in."""
    uris: list[str] = []
    for uri in braceexpand(pattern):
        name = _strip_suffix(_basename(uri), COMPRESSION_SUFFIXES)
        if not _GLOB_CHARS.search(uri) and name.lower().endswith(tuple(f".{ext}" for ext in extensions)):
            uris.append(uri)
            continue
        fs, path = url_to_fs(uri)
        globs = [path] if _GLOB_CHARS.search(path) else [f"{path.rstrip('/')}/*.{ext}" for ext in extensions]
        found = {p for g in globs for p in storage.call("list", uri, fs.glob, g)}
        uris.extend(_to_uri(fs, p) for p in sorted(found))
    if not uris:
        kinds = ", ".join(f".{ext}" for ext in extensions)
        raise ValueError(f"no {kinds} files match {pattern!r}{where_relative(pattern)}")
    return list(dict.fromkeys(uris))


def _manifest_shards(uri: str, size: int, spill: str | None) -> Iterator[Shard]:
    stem = _manifest_stem(uri)
    rows = _iter_manifest(uri)
    if spill is None:
        for index, chunk in enumerate(_chunks(rows, size)):
            yield Shard(f"{stem}-{index:06d}", uri, "manifest", chunk)
        return
    folder = storage.join(spill, _spill_name(uri, size))
    fs, path = url_to_fs(folder)
    fs.invalidate_cache(path)
    listed = storage.call("list", folder, fs.glob, f"{path}/*.jsonl")
    written = {posixpath.basename(p) for p in listed}  # by an earlier run of this job
    for index, chunk in enumerate(_chunks(rows, size)):
        shard_id = f"{stem}-{index:06d}"
        rows_uri = storage.join(folder, f"{shard_id}.jsonl")
        if f"{shard_id}.jsonl" not in written:
            lines = "".join(json.dumps(asdict(r), default=str) + "\n" for r in chunk)
            storage.write_bytes(rows_uri, lines.encode())
        yield Shard(shard_id, uri, "manifest", rows_uri=rows_uri)


def _chunks(rows: Iterable[ManifestRow], size: int) -> Iterator[tuple[ManifestRow, ...]]:
    it = iter(rows)
    while chunk := tuple(itertools.islice(it, size)):
        yield chunk


def _spill_name(uri: str, size: int) -> str:
    """A folder name for the split of this manifest as it is now: another file at the same URI (or
    another shard size) is split afresh, never served from an older split."""
    fs, path = url_to_fs(uri)
    info = storage.call("stat", uri, fs.info, path)
    version = {k: str(info.get(k)) for k in ("size", "mtime", "ETag", "LastModified", "VersionId") if k in info}
    digest = hashlib.sha256(json.dumps([uri, size, version], sort_keys=True).encode()).hexdigest()[:16]
    return f"{_manifest_stem(uri)}-{digest}"


def _shard_rows(shard: Shard) -> Iterable[ManifestRow]:
    if shard.rows_uri is None:
        return shard.items  # type: ignore[return-value]
    text = storage.read_bytes(shard.rows_uri).decode()
    return [ManifestRow(**json.loads(line)) for line in text.splitlines()]


def _iter_manifest(uri: str) -> Iterator[ManifestRow]:
    """The manifest's rows, streamed: a 10^7-row file is never held whole."""
    ext = _manifest_stem(uri, want_ext=True)
    base = posixpath.dirname(uri)
    has_uri = rows = 0
    try:
        with fsspec.open(uri, "rb", compression="infer") as f:
            for row, record in enumerate(_records(f, ext)):
                rows += 1
                has_uri = has_uri or (isinstance(record, dict) and "uri" in record)
                yield _manifest_row(row, record, base)
    except (OSError, ValueError, csv.Error) as exc:
        raise ValueError(f"cannot read manifest {uri}: {exc}") from exc
    if rows and not has_uri:
        raise ValueError(f"manifest {uri} has no 'uri' column")


def _records(f: Any, ext: str) -> Iterator[dict[str, Any] | str]:
    """Rows as dicts, streamed; a jsonl line that does not parse is kept as its error message."""
    if ext == "parquet":
        for batch in pq.ParquetFile(f).iter_batches(batch_size=65536):
            yield from batch.to_pylist()
        return
    text = io.TextIOWrapper(f, encoding="utf-8", newline="")
    if ext == "csv":
        yield from csv.DictReader(text)
        return
    for number, line in enumerate(text, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            record = f"line {number} is not valid JSON: {exc}"
        yield record if isinstance(record, (dict, str)) else f"line {number} is not a JSON object"


def _manifest_row(row: int, record: dict[str, Any] | str, base: str) -> ManifestRow:
    if isinstance(record, str):
        return ManifestRow(row, f"row-{row}", None, problem=record)
    uri = record.get("uri")
    uri = str(uri).strip() if uri is not None else ""
    if uri and "://" not in uri and not uri.startswith("/") and base:
        uri = _relative_to(base, uri)
    key = record.get("key")
    key = str(key) if key not in (None, "") else _uri_key(uri) or f"row-{row}"
    prompts = record.get("prompts")
    if prompts is not None and not isinstance(prompts, str):
        prompts = json.dumps(prompts)
    metadata = {k: v for k, v in record.items() if k not in ("uri", "key", "prompts")}
    return ManifestRow(row, key, uri or None, prompts or None, metadata)


def _frame_shards(root: str, per_shard: int) -> list[Shard]:
    fs, path = url_to_fs(root)
    if not storage.call("check", root, fs.isdir, path):
        raise ValueError(f"frames root {root!r} is not a directory{where_relative(root)}")
    entries = storage.call("list", root, fs.ls, path, detail=True)
    folders = sorted(_to_uri(fs, e["name"]) for e in entries if e["type"] == "directory")
    if not folders:
        raise ValueError(f"no video folders under {root!r} (expected ROOT/{{video}}/{{frame:05d}}.jpg)")
    name = _basename(root.rstrip("/"))
    return [
        Shard(f"{name}-{index:06d}", root, "frames", tuple(folders[start : start + per_shard]))
        for index, start in enumerate(range(0, len(folders), per_shard))
    ]


# ---- streaming ----


def iter_videos(shard: Shard, max_member_bytes: int = MAX_MEMBER_BYTES) -> Iterator[VideoInput | VideoError]:
    """The shard's samples in order, one in memory at a time; bad ones become VideoError (a tar member
    over `max_member_bytes` is one, unread)."""
    if shard.format == "wds":
        samples: Iterable[VideoInput | VideoError] = _tar_samples(shard, max_member_bytes)
    elif shard.format == "manifest":
        samples = (_row_input(shard, row) for row in _shard_rows(shard))
    else:
        samples = (_folder_input(uri) for uri in shard.items)
    seen: set[str] = set()
    for sample in samples:
        if isinstance(sample, VideoInput):
            if sample.key in seen:
                sample = sample.error("duplicate key: an earlier video of this shard has the same key")
            seen.add(sample.key)
        yield sample


@dataclass
class _Sample:
    """The tar members of one sample seen so far; `key` is None until its video arrives."""

    key: str | None
    members: dict[str, bytes] = field(default_factory=dict)  # suffix after the key (whole name until known)
    video: tuple[str, str, bytes | SpilledMember] | None = None  # member name, extension, content


def _tar_samples(shard: Shard, max_member_bytes: int) -> Iterator[VideoInput | VideoError]:
    current = _Sample(None)
    try:
        with fsspec.open(shard.uri, "rb") as f:
            for member in read_tar(f, shard.uri, max_member_bytes):
                name = member.name
                ext = None if member.refused else _video_extension(name)
                belongs = ext is None and current.key is not None and name.startswith(current.key + ".")
                if current.video is not None and not belongs:
                    yield _finish(shard, current)
                    current = _Sample(None)
                if member.refused:
                    yield _member_error(shard, name, member.refused)
                elif ext is not None:
                    key = name[: -len(ext) - 1]
                    yield from _orphans(shard, current, key)
                    current = _Sample(key, current.members, (name, ext, _video_member(member, ext)))
                elif belongs:
                    current.members[name[len(current.key) + 1 :]] = member.read()
                else:
                    if current.members and _group(name) != _group(next(iter(current.members))):
                        yield from _orphans(shard, current, None)
                    current.members[name] = member.read()
    except TarDamaged as exc:
        yield from _flush(shard, current)
        yield VideoError(sanitize_key(shard.id), shard.uri, f"{exc}; samples after it are lost", shard.id)
        return
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"shard {shard.uri} does not exist") from exc
    yield from _flush(shard, current)


class SpilledMember(os.PathLike):
    """A large video member written out of the tar to a local file, which is removed when nothing refers
    to this object any more (the `VideoInput` that holds it is done with)."""

    def __init__(self, member: TarMember, ext: str) -> None:
        fd, self.path = tempfile.mkstemp(prefix="masklet-member-", suffix=f".{ext}")
        os.close(fd)
        weakref.finalize(self, Path(self.path).unlink, missing_ok=True)
        member.save(self.path)

    def __fspath__(self) -> str:
        return self.path


def _video_member(member: TarMember, ext: str) -> bytes | SpilledMember:
    """A video member's bytes, or over SPILL_MEMBER_BYTES a local copy: a long video in a tar is decoded
    from the disk, never held in memory whole."""
    return member.read() if member.size <= SPILL_MEMBER_BYTES else SpilledMember(member, ext)


def _member_error(shard: Shard, name: str, reason: str) -> VideoError:
    """An error keyed by the member's whole name, made tar-safe like any key."""
    return VideoError(sanitize_key(name), f"{shard.uri}#{name}", reason, name)


def _video_extension(name: str) -> str | None:
    ext = name.rsplit(".", 1)[-1].lower() if "." in _basename(name) else ""
    return ext if ext in VIDEO_EXTENSIONS else None


def _group(name: str) -> str:
    """The webdataset key (up to the first dot of the file name): which members can belong together."""
    head, _, base = name.rpartition("/")
    return f"{head}/{base.split('.', 1)[0]}"


def _orphans(shard: Shard, sample: _Sample, key: str | None) -> Iterator[VideoError]:
    """Members waiting for a video: those of `key` move to the new sample, the rest are reported."""
    kept = {}
    for name, data in sample.members.items():
        if key is not None and name.startswith(key + "."):
            kept[name[len(key) + 1 :]] = data
        else:
            reason = f"member {name!r} belongs to no video: no {'/'.join(VIDEO_EXTENSIONS)} member with its key"
            yield _member_error(shard, name, reason)
    sample.members = kept


def _flush(shard: Shard, sample: _Sample) -> Iterator[VideoInput | VideoError]:
    if sample.video is not None:
        yield _finish(shard, sample)
    else:
        yield from _orphans(shard, sample, None)


def _finish(shard: Shard, sample: _Sample) -> VideoInput | VideoError:
    assert sample.key is not None and sample.video is not None
    name, ext, data = sample.video
    video = VideoInput(sanitize_key(sample.key), sample.key, f"{shard.uri}#{name}", data, ext)
    if not data:
        return video.error(f"video member {name!r} is empty (0 bytes)")
    metadata: Any = {}
    if "json" in sample.members:
        try:
            metadata = json.loads(sample.members["json"])
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            return video.error(f"metadata {sample.key}.json is not valid JSON: {exc}")
        if not isinstance(metadata, dict):
            return video.error(f"metadata {sample.key}.json is not a JSON object")
    prompts = sample.members.get("prompts.json")
    try:
        return replace(video, metadata=metadata, prompts=prompts.decode("utf-8") if prompts is not None else None)
    except UnicodeDecodeError as exc:
        return video.error(f"prompts {sample.key}.prompts.json are not UTF-8 text: {exc}")


def _row_input(shard: Shard, row: ManifestRow) -> VideoInput | VideoError:
    where = f"{shard.uri}#row={row.row}"
    key = sanitize_key(row.key)
    if row.problem:
        return VideoError(key, where, f"manifest row {row.row}: {row.problem}", row.key)
    if not row.uri:
        return VideoError(key, where, f"manifest row {row.row} has no uri (missing or empty 'uri' value)", row.key)
    ext = _video_extension(row.uri.split("?", 1)[0])
    return VideoInput(key, row.key, row.uri, row.uri, ext, row.metadata, row.prompts)


def _folder_input(folder: str) -> VideoInput | VideoError:
    name = _basename(folder.rstrip("/"))
    key = sanitize_key(name)
    fs, path = url_to_fs(folder)
    frames: dict[int, list[str]] = {}
    for found in storage.call("list", folder, fs.ls, path, detail=False):
        stem, _, ext = _basename(found).rpartition(".")
        if ext.lower() in FRAME_EXTENSIONS and stem.isdigit():
            frames.setdefault(int(stem), []).append(_to_uri(fs, found))
    problem = _frame_gaps(frames)
    if problem:
        return VideoError(key, folder, problem, name)
    indices = tuple(sorted(frames))
    content = FrameFiles(indices, tuple(frames[i][0] for i in indices))
    return VideoInput(key, name, folder, content, None)


def _frame_gaps(frames: dict[int, list[str]]) -> str | None:
    """Frames must be numbered in one constant step (1 for SA-V and DAVIS); say what breaks it."""
    if not frames:
        return f"the frame folder holds no frames named {{number}}.{'/.'.join(FRAME_EXTENSIONS)}"
    doubled = [files for files in frames.values() if len(files) > 1]
    if doubled:
        return f"two files for one frame: {', '.join(doubled[0])}"
    numbers = sorted(frames)
    steps = [b - a for a, b in itertools.pairwise(numbers)]
    step = min(steps, default=1)
    span = f"frames {numbers[0]:05d}..{numbers[-1]:05d}"
    if any(s % step for s in steps):
        return f"frame numbers are irregular ({span} with gaps of {sorted(set(steps))}): expected one constant step"
    missing = [n for n in range(numbers[0], numbers[-1], step) if n not in frames]
    if missing:
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        shown = ", ".join(f"{n:05d}" for n in missing[:5])
        return f"frames missing from the folder: {shown}{more} ({span} in steps of {step})"
    return None


# ---- names ----


def _to_uri(fs: fsspec.AbstractFileSystem, path: str) -> str:
    return path if is_local(fs) else fs.unstrip_protocol(path)


def _basename(uri: str) -> str:
    return uri.rsplit("/", 1)[-1]


def _strip_suffix(name: str, suffixes: tuple[str, ...]) -> str:
    for suffix in suffixes:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def _tar_stem(uri: str) -> str:
    return _strip_suffix(_strip_suffix(_basename(uri), COMPRESSION_SUFFIXES), (".tar",))


def _manifest_stem(uri: str, want_ext: bool = False) -> str:
    """`list` and `csv` for `s3://b/list.csv.gz`: the shard id prefix or the format."""
    name = _strip_suffix(_basename(uri), COMPRESSION_SUFFIXES)
    stem, _, ext = name.rpartition(".")
    ext = ext.lower()
    if ext not in MANIFEST_EXTENSIONS:
        raise ValueError(f"manifest {uri} must end in .{', .'.join(MANIFEST_EXTENSIONS)} (optionally compressed)")
    return ext if want_ext else stem


def _relative_to(base: str, path: str) -> str:
    """`s3://b/lists` + `../videos/a.mp4` -> `s3://b/videos/a.mp4`: object stores don't resolve `..`."""
    protocol, sep, root = base.rpartition("://")
    return f"{protocol}{sep}{posixpath.normpath(posixpath.join(root, path))}"


def _uri_key(uri: str) -> str:
    name = _basename(uri.split("?", 1)[0])
    return name.rsplit(".", 1)[0] if "." in name else name
