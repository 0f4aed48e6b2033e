"""Write one output shard so that a reader sees all of it or none of it.

A shard is `masklets/{shard}.parquet`, `videos/{shard}.parquet`, `wds/{shard}.tar` and, written
last as the commit, `_done/{shard}.json`. Nothing of the shard is held for all its videos: each
video's tar members go straight into a staged local tar, its masklet rows into a staged local
Parquet file (a row group whenever ROW_GROUP_BYTES of rows are waiting), and only the
small video rows wait for the commit. `commit()` first removes an old marker (a rerun overwrites
the shard), then publishes every file whole (local: atomic rename; remote: one upload each), then
the marker. An exception or a kill before that leaves no marker, so the shard reads as not done
and a rerun redoes it.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import io
import json
import os
import posixpath
import re
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, BinaryIO

import pyarrow as pa
import pyarrow.parquet as pq

from masklet import __version__
from masklet.io import sav, storage
from masklet.io.layout import DONE_DIR, SHARD_ID, check_shard_id, shard_files
from masklet.io.schema import (
    MASKLETS_SCHEMA,
    SCHEMA_VERSION,
    MaskletRecord,
    VideoRecord,
    empty_counts,
    masklets_table,
    repeated_columns,
    videos_table,
)
from masklet.io.storage import RetryPolicy, StagedFile, StorageError
from masklet.io.video import Encoded

_VIDEO_EXT = re.compile(r"[a-z0-9]{1,5}")
# masklet rows wait, as Arrow, until they hold this much, then go to the staged Parquet file as one row
# group: a worker's memory does not grow with the number of videos in its shard, and row groups stay large
ROW_GROUP_BYTES = 64 * 2**20
# masklet records become Arrow a few at a time, once they hold this many frame entries together, or their
# video ends: as Python objects a frame's entry costs about 240 bytes besides its RLE, as Arrow the RLE and
# 24; and one batch's buffers, not a row group's, are what a conversion allocates
BATCH_ENTRIES = 4096


@dataclass(frozen=True)
class SavObject:
    """What a video's SA-V document says of one kept masklet besides its masks."""

    masklet_id: int
    source: str
    edited_frames: int  # a person's count where the masklet was reviewed (`MaskletRecord.edited_frames`)
    review_verdict: str | None = None

    @classmethod
    def of(cls, masklet: MaskletRecord) -> SavObject:
        return cls(masklet.masklet_id, masklet.source, masklet.edited_frames, masklet.review_verdict)


# Per annotated frame, each kept masklet's counts and stability there (`sav.write`'s rows).
SavRows = Iterable[tuple[Sequence[str], Sequence[float]]]


def write_sav_annotation(out: BinaryIO, video: VideoRecord, masklets: Sequence[MaskletRecord]) -> None:
    """Write the SA-V annotation of a video with its kept masklets to `out`, frame by frame.

    Its frames are the video's annotated frames plus any frame a masklet of the video has; a kept
    masklet gets an empty mask (and stability 0) on frames it was not tracked on.
    """
    kept = [m for m in masklets if m.kept]
    axis = sorted(set(video.frame_indices).union(*(m.frame_indices for m in masklets)))
    rows = _sav_rows(axis, kept, empty_counts(int(video.height), int(video.width)))
    write_sav_rows(out, video, [SavObject.of(m) for m in kept], axis, rows)


def write_sav_rows(
    out: BinaryIO, video: VideoRecord, kept: Sequence[SavObject], axis: Sequence[int], rows: SavRows
) -> None:
    """Write the SA-V annotation of a video from its kept masklets' `rows` on the frames of `axis`, read
    once (a stitched video's, which are never in memory together). `video_id` is the sanitised key
    (the tar member name); `original_key` and `source_uri` say where it came from."""
    sav.write(
        out,
        video.video_key,
        rows,
        height=int(video.height),
        width=int(video.width),
        fps=float(video.fps),
        frame_indices=axis,
        # container metadata can undercount frames; never claim fewer than were annotated
        video_frame_count=max(int(video.frame_count), axis[-1] + 1 if axis else 0),
        masklet_ids=[m.masklet_id for m in kept],
        sources=[m.source for m in kept],
        edited_frame_counts=[m.edited_frames for m in kept],
        review_verdicts=[m.review_verdict for m in kept] if any(m.review_verdict for m in kept) else None,
        extra={"original_key": video.original_key, "source_uri": video.source_uri},
    )


def sav_annotation(video: VideoRecord, masklets: Sequence[MaskletRecord]) -> dict:
    """The document `write_sav_annotation` writes, parsed."""
    out = io.BytesIO()
    write_sav_annotation(out, video, masklets)
    return json.loads(out.getvalue())


def _sav_rows(
    axis: Sequence[int], kept: Sequence[MaskletRecord], empty: str
) -> Iterator[tuple[list[str], list[float]]]:
    """Per frame of `axis`, each kept masklet's counts and stability there (empty and 0 where it has none)."""
    cursors = [0] * len(kept)
    for f in axis:
        counts, stability = [], []
        for j, m in enumerate(kept):
            i = cursors[j]
            if i < len(m.frame_indices) and m.frame_indices[i] == f:
                counts.append(m.rle[i] or empty)
                stability.append(m.stability[i])
                cursors[j] = i + 1
            else:
                counts.append(empty)
                stability.append(0.0)
        yield counts, stability
    for j, m in enumerate(kept):
        if cursors[j] != len(m.frame_indices):
            raise ValueError(f"masklet {m.masklet_id} of {m.video_key!r}: its frame_indices are not increasing")


class ShardWriter:
    """Streams one shard's masklet rows and tar to local stages; `commit()` publishes them, marker last.

    Use as a context manager: leaving the block without `commit()` (an exception) discards
    everything staged and publishes nothing.
    """

    def __init__(
        self,
        output_uri: str,
        shard_id: str,
        *,
        model: str,
        config_hash: str,
        write_video: bool = False,
        retry: RetryPolicy | None = None,
    ) -> None:
        self.output_uri = output_uri
        self.shard_id = check_shard_id(shard_id)
        self.model = model
        self.config_hash = config_hash
        self.write_video = write_video
        self._io = {"retry": retry}
        self._files = shard_files(shard_id)
        self._videos: list[VideoRecord] = []
        self._pending: list[pa.Table] = []  # masklet rows not yet in a row group
        self._pending_bytes = 0
        self._masklet_counts: dict[str, tuple[int, int]] = {}  # video key -> (masklets, kept)
        self._keys: set[str] = set()
        self._started_at = _now()
        self._t0 = time.perf_counter()
        for kind in self._files:  # what an earlier attempt of this shard, killed mid-write, left
            storage.remove_stale_stages(self._uri(kind))
        self._tar_stage = StagedFile(self._uri("wds"), **self._io)
        self._parquet_stage = StagedFile(self._uri("masklets"), **self._io)
        # open across add_video calls; closed by commit() or abort()
        self._tar = tarfile.open(self._tar_stage.path, "w", format=tarfile.USTAR_FORMAT)  # noqa: SIM115
        self._parquet = pq.ParquetWriter(
            self._parquet_stage.path,
            MASKLETS_SCHEMA,
            compression="zstd",
            use_dictionary=repeated_columns(MASKLETS_SCHEMA),
        )
        self._open = True

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._open:
            self.abort()

    def add_video(
        self,
        video: VideoRecord,
        masklets: Sequence[MaskletRecord] = (),
        *,
        video_bytes: Encoded | None = None,
        video_ext: str = "mp4",
    ) -> None:
        """Record one video (ok or failed) with all its masklets, kept or not.

        An ok video's SA-V JSON (kept masklets only) and, with `write_video`, its bytes go into
        the tar now; a failed video is a row in videos/ only and carries no masklets.
        """
        self._check_open()
        self._check_video(video, masklets, video_bytes, video_ext)
        if video.status == "ok":
            self._add_document(video, lambda out: write_sav_annotation(out, video, masklets), video_bytes, video_ext)
        self._add_rows(video, masklets)

    def add_streamed_video(
        self,
        video: VideoRecord,
        masklets: Iterable[MaskletRecord],
        write_document: Callable[[BinaryIO], None],
        *,
        video_bytes: Encoded | None = None,
        video_ext: str = "mp4",
    ) -> None:
        """`add_video` for an ok video whose masklets are never held together (a built-in pipeline's, a
        stitched video's): its SA-V JSON is what `write_document` writes (`write_sav_rows`), then its
        masklet rows are taken one at a time. A masklet refused here fails the shard (the document is in
        the tar already)."""
        self._check_open()
        if video.status != "ok":
            raise ValueError(f"video {video.original_key!r}: only an ok video's masklets are streamed")
        self._check_video(video, (), video_bytes, video_ext)
        self._add_document(video, write_document, video_bytes, video_ext)
        ids: set[int] = set()

        def checked() -> Iterator[MaskletRecord]:
            for m in masklets:
                self._check_masklet(video, m, ids)
                yield m

        self._add_rows(video, checked())

    def commit(self, extra: Mapping[str, Any] | None = None, seconds: Mapping[str, float] | None = None) -> dict:
        """Publish the shard's files, then its marker; return the marker (with `extra` under "extra").

        `seconds`: timings to record instead of this writer's own; a derived shard (`masklet filter`,
        `sample`) keeps those of the run that labelled it, as its throughput is that run's.
        """
        self._check_open()
        t0 = time.perf_counter()
        try:
            self._tar.close()
            self._write_row_group()
            self._parquet.close()
            self._remove_marker()
            videos = videos_table(
                self._videos,
                self._masklet_counts,
                shard_id=self.shard_id,
                model=self.model,
                config_hash=self.config_hash,
            )
            files = {"masklets": fingerprint(self._parquet_stage.path)}
            self._parquet_stage.publish()
            files["videos"] = self._write_parquet("videos", videos)
            files["wds"] = fingerprint(self._tar_stage.path)
            self._tar_stage.publish()
            marker = self._marker(files, write_seconds=time.perf_counter() - t0, extra=extra)
            if seconds is not None:
                marker["seconds"] = dict(seconds)
            storage.write_bytes(self._uri("done"), json.dumps(marker, indent=1).encode(), **self._io)
        except BaseException:
            self.abort()
            raise
        self._open = False
        return marker

    def abort(self) -> None:
        """Drop everything staged; nothing of this attempt becomes visible."""
        self._open = False
        try:
            self._tar.close()
            with contextlib.suppress(OSError):  # a disk-full stage cannot be finished; it is dropped anyway
                self._parquet.close()
        finally:
            self._tar_stage.discard()
            self._parquet_stage.discard()

    def _uri(self, name: str) -> str:
        return storage.join(self.output_uri, self._files[name])

    def _check_open(self) -> None:
        if not self._open:
            raise RuntimeError(f"shard {self.shard_id} writer is closed (committed or aborted)")

    def _add_document(
        self, video: VideoRecord, write: Callable[[BinaryIO], None], video_bytes: Encoded | None, video_ext: str
    ) -> None:
        """An ok video's tar members: its SA-V JSON (`write` fills it), with `write_video` its bytes."""
        with tempfile.TemporaryFile() as doc:  # a long video's document is never in memory whole
            write(doc)
            self._add_member(f"{video.video_key}.json", doc)
        if self.write_video:
            name = f"{video.video_key}.{video_ext}"
            if isinstance(video_bytes, bytes):
                self._add_member(name, io.BytesIO(video_bytes))
            else:  # a local copy, copied into the tar as a stream
                with open(video_bytes, "rb") as f:
                    self._add_member(name, f)

    def _add_rows(self, video: VideoRecord, masklets: Iterable[MaskletRecord]) -> None:
        """The video's row and its masklet rows, a row group whenever ROW_GROUP_BYTES of rows wait."""
        self._keys.add(video.video_key)
        self._videos.append(video)
        total = kept = entries = 0
        batch: list[MaskletRecord] = []
        for m in masklets:
            total, kept, entries = total + 1, kept + m.kept, entries + len(m.frame_indices)
            batch.append(m)
            if entries >= BATCH_ENTRIES:
                self._add_batch(batch)
                batch, entries = [], 0
        self._add_batch(batch)
        self._masklet_counts[video.video_key] = (total, kept)

    def _add_batch(self, masklets: list[MaskletRecord]) -> None:
        """Masklet rows as Arrow, waiting for their row group (written when ROW_GROUP_BYTES wait)."""
        if not masklets:
            return
        table = masklets_table(masklets, model=self.model, config_hash=self.config_hash)
        self._pending.append(table)
        self._pending_bytes += table.nbytes
        if self._pending_bytes >= ROW_GROUP_BYTES:
            self._write_row_group()

    def _check_video(
        self, video: VideoRecord, masklets: Sequence[MaskletRecord], video_bytes: Encoded | None, video_ext: str
    ) -> None:
        """Refuse a video before any of it reaches the tar, so a refusal leaves the shard consistent."""
        key = video.video_key
        if key in self._keys:
            raise ValueError(f"video key {key!r} (from {video.original_key!r}) appears twice in shard {self.shard_id}")
        if not _VIDEO_EXT.fullmatch(video_ext):
            raise ValueError(f"video extension {video_ext!r} must match {_VIDEO_EXT.pattern}")
        if self.write_video and video.status == "ok" and video_bytes is None:
            raise ValueError(f"write_video is set but no bytes were given for {video.original_key!r}")
        if video.status == "error" and masklets:
            raise ValueError(f"failed video {video.original_key!r} cannot carry masklets")
        ids = [m.masklet_id for m in masklets]
        if len(set(ids)) != len(ids):
            raise ValueError(f"video {video.original_key!r} has repeated masklet ids {sorted(ids)}")
        for m in masklets:
            self._check_masklet(video, m)

    @staticmethod
    def _check_masklet(video: VideoRecord, m: MaskletRecord, ids: set[int] | None = None) -> None:
        """`m` is of `video` (key and size); with `ids` (those seen so far), its id is new."""
        if m.video_key != video.video_key or (m.height, m.width) != (video.height, video.width):
            raise ValueError(
                f"masklet {m.masklet_id} ({m.video_key!r}, {m.height}x{m.width}) does not belong to video "
                f"{video.video_key!r} ({video.height}x{video.width})"
            )
        if ids is not None:
            if m.masklet_id in ids:
                raise ValueError(f"video {video.original_key!r} has repeated masklet id {m.masklet_id}")
            ids.add(m.masklet_id)

    def _add_member(self, name: str, data: BinaryIO) -> None:
        """A member holding all of `data` (a file or buffer, read from its start)."""
        info = tarfile.TarInfo(name)
        info.size, info.mtime, info.mode = data.seek(0, io.SEEK_END), 0, 0o644
        data.seek(0)
        try:
            self._tar.addfile(info, data)
        except OSError as exc:
            storage.raise_disk_full(exc, self._uri("wds"), self._tar_stage.path)
            raise

    def _write_row_group(self) -> None:
        """The waiting masklet rows, as one row group of the staged masklets file."""
        if not self._pending:
            return
        try:
            self._parquet.write_table(pa.concat_tables(self._pending))
        except OSError as exc:
            storage.raise_disk_full(exc, self._uri("masklets"), self._parquet_stage.path)
            raise
        self._pending, self._pending_bytes = [], 0

    def _write_parquet(self, name: str, table: pa.Table) -> tuple[int, str]:
        with storage.staged_file(self._uri(name), **self._io) as stage:
            pq.write_table(table, stage, compression="zstd", use_dictionary=repeated_columns(table.schema))
            return fingerprint(stage)

    def _remove_marker(self) -> None:
        """A rerun's first step: until the new marker lands, the shard reads as not done."""
        uri = self._uri("done")
        fs, path = storage.url_to_fs(uri)
        retry = self._io["retry"]
        fs.invalidate_cache(posixpath.dirname(path))
        if storage.call("check", uri, fs.exists, path, retry=retry):
            storage.call("delete", uri, fs.rm_file, path, retry=retry)

    def _marker(
        self, files: Mapping[str, tuple[int, str]], *, write_seconds: float, extra: Mapping[str, Any] | None
    ) -> dict:
        ok = [v for v in self._videos if v.status == "ok"]
        return {
            "shard_id": self.shard_id,
            "schema_version": SCHEMA_VERSION,
            "masklet_version": __version__,
            "model": self.model,
            "config_hash": self.config_hash,
            "write_video": self.write_video,
            "counts": {
                "videos": len(self._videos),
                "videos_ok": len(ok),
                "videos_error": len(self._videos) - len(ok),
                "masklets": sum(total for total, _ in self._masklet_counts.values()),
                "masklets_kept": sum(kept for _, kept in self._masklet_counts.values()),
                "frames_processed": sum(len(v.frame_indices) for v in self._videos),
            },
            "seconds": {
                "decode": sum(v.decode_seconds for v in self._videos),
                "model": sum(v.model_seconds for v in self._videos),
                "videos": sum(v.total_seconds for v in self._videos),
                "write": write_seconds,
                "wall": time.perf_counter() - self._t0,
            },
            "started_at": self._started_at,
            "committed_at": _now(),
            "files": [
                {"path": self._files[name], "bytes": size, "sha256": digest} for name, (size, digest) in files.items()
            ],
            "extra": dict(extra or {}),
        }


def fingerprint(path: str) -> tuple[int, str]:
    """Size and sha256 of a local file, as its shard's marker records them (`masklet verify` checks them)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return os.path.getsize(path), digest.hexdigest()


def is_done(output_uri: str, shard_id: str, *, retry: RetryPolicy | None = None) -> bool:
    """Whether the shard's commit marker exists (fresh from the store, not from a listing cache)."""
    uri = storage.join(output_uri, shard_files(shard_id)["done"])
    fs, path = storage.url_to_fs(uri)
    fs.invalidate_cache(posixpath.dirname(path))
    return storage.call("check", uri, fs.exists, path, retry=retry)


def list_done(output_uri: str, *, retry: RetryPolicy | None = None) -> set[str]:
    """The ids of every committed shard, from one listing of `_done/` (paginated by the store)."""
    uri = storage.join(output_uri, DONE_DIR)
    fs, path = storage.url_to_fs(uri)
    fs.invalidate_cache(path)
    try:
        names = storage.call("list", uri, fs.ls, path, detail=False, retry=retry)
    except StorageError as exc:
        if isinstance(exc.__cause__, FileNotFoundError) and not _missing_bucket(exc.__cause__):
            return set()  # nothing committed yet
        raise
    bases = (posixpath.basename(str(n).rstrip("/")) for n in names)
    return {b[: -len(".json")] for b in bases if b.endswith(".json") and SHARD_ID.fullmatch(b[: -len(".json")])}


def _missing_bucket(exc: BaseException) -> bool:
    cause = exc.__cause__
    response = getattr(cause, "response", None) or {}
    return response.get("Error", {}).get("Code") == "NoSuchBucket"


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds")
