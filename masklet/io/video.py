"""Streaming video decode at the annotation fps, with the original index of every frame.

Inputs: container bytes (a tar member), a local file (a video downloaded from storage, or a large tar
member written out: decoded from the disk, so memory never holds the compressed video), a binary file
object (read whole), or the JPEG files of a frame folder (SA-V / DAVIS layout). Memory never holds all
of a video's frames.

Backends: decord (what the official predictor uses for video files) for a video whose decoded frames
all fit in DECORD_MAX_DECODED_BYTES: decord decodes ahead of a slower reader and holds what it
decoded, up to about a thousand frames, so a longer or larger video would cost memory that grows
with its length (a thousand 1080p frames are 6 GB). PyAV, which decodes only the frames asked for,
decodes the others, and those decord cannot open (its bundled FFmpeg 4 lacks e.g. AV1); both give
the same pixels for H.264 4:2:0 (tests/test_video_decode.py). JPEG frames are decoded by PyAV's mjpeg
decoder, so Pillow is not needed. PyAV is imported where it is used: a machine without it (the GPU
check's) decodes every video with decord.

Frame selection: stride = max(1, round-half-up(source_fps / fps)); frames 0, stride, 2*stride, ...
are yielded with their original index (SA-V: 24 fps annotated at 6 fps -> every 4th frame; 30 fps
at 6 fps -> every 5th, i.e. 6.0 fps; 25 fps -> every 4th, i.e. 6.25 fps). `fps=None`, or a video
whose fps is unknown, keeps every frame. `max_frames` caps the number of frames yielded.

Decoding again (`VideoStream.reopen(start, stop)`, for a backward pass): the annotated frames from
position `start` are reached by seeking to the keyframe at or before them and decoding from there
(decord's `seek_accurate`; PyAV by the keyframe's timestamp in the packet index; a JPEG folder
opens that file), never by decoding the video's prefix again, and one seeking decoder serves all the
reopens of a stream. Seeks are checked: the first pass keeps a checksum of every annotated frame it
decoded (a few bytes a frame), and a reopened frame that differs from the first pass's at its
position (a container whose timestamps mislead the seek) turns seeking off for that video, which is
then decoded from its start again. `DecodeClock.frames_decoded` counts every frame a backend decodes,
those decoded only to reach a wanted one included (for decord, from its keyframe index: its seek
decodes from the keyframe before the frame, its skip seeks past a keyframe it crosses).

Where problems show (all as VideoDecodeError, a ValueError naming the key):
- open_video: empty input; bytes neither backend can open (truncated, corrupt, not a video,
  unsupported codec, no video stream); a first frame that does not decode; fewer than
  `min_frames` frames (default 2: a masklet follows an object across frames, so a still image
  is not a video to track).
- iteration, in the decoder thread, re-raised in the consumer: decode errors after the first
  frame; a video that ends more than TRUNCATION_TOLERANCE frames before the count in its header
  (an MP4 cut after its index or an AVI cut anywhere, which FFmpeg reads to the cut silently: the
  count is the larger of the decoder's and the header's); a missing, truncated or
  corrupt JPEG; a JPEG whose size differs from the first frame's.
A truncated Matroska/WebM file, which has no frame count up front, ends early without an error.
"""

from __future__ import annotations

import array
import bisect
import contextlib
import io
import itertools
import logging
import math
import os
import sys
import threading
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import decord
import fsspec
import numpy as np

from masklet.io.errors import InputError
from masklet.io.prefetch import Prefetcher

log = logging.getLogger(__name__)
# decord decodes ahead of a reader slower than itself, holding the frames (decord 0.6.0: about a thousand
# frames ahead, the whole of a shorter video; a 600-frame 640x360 video read at 100 frames a second holds
# 0.4 GB, at 1080p a thousand frames are 6 GB), where PyAV decodes only the frames asked for: decord decodes
# a video only if all its frames decoded fit in this, about the prefetch queue of a 720p video
DECORD_MAX_DECODED_BYTES = 32 * 2**20
# ffmpeg's own lines ("moov atom not found") would repeat, unasked, what a video's error row says
decord.logging.set_level(decord.logging.QUIET)
_STDERR_LOCK = threading.Lock()


@contextlib.contextmanager
def _stderr_silenced() -> Iterator[None]:
    """Process-wide stderr to /dev/null while decord opens a container from memory.

    On an open error decord's C++ logger prints the file name, which for bytes is the whole video: a
    corrupt 1 GB upload would become 1 GB of binary in the job's log. The reason reaches the video's
    error row through the exception; what other threads write to stderr in these milliseconds is lost.
    """
    with _STDERR_LOCK:
        sys.stderr.flush()
        saved = os.dup(2)
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(devnull, 2)
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            os.close(devnull)


FRAME_FOLDER_FPS = 24.0  # SA-V's JPEGImages_24fps and DAVIS are 24 fps; the files do not say so
TRUNCATION_TOLERANCE = 2  # frames a decoder may drop without a truncated file (MP4 edit lists)


class VideoDecodeError(InputError):
    """A video that cannot be decoded; `reason` says what is wrong in words a person can act on."""

    def __init__(self, key: str, reason: str) -> None:
        super().__init__(f"video {key!r}: {reason}" if key else reason)
        self.key = key
        self.reason = reason

    def __reduce__(self) -> tuple:  # crosses process boundaries whole
        return (type(self), (self.key, self.reason))


@dataclass(frozen=True)
class Frame:
    """One decoded frame: its index in the original video and its pixels, uint8 [H, W, 3]."""

    index: int
    rgb: np.ndarray


@dataclass(frozen=True)
class FrameFiles:
    """The JPEG files of one video, in order, with each file's original frame index."""

    indices: tuple[int, ...]
    uris: tuple[str, ...]
    fps: float = FRAME_FOLDER_FPS

    def __post_init__(self) -> None:
        if len(self.indices) != len(self.uris):
            raise ValueError(f"{len(self.indices)} frame indices for {len(self.uris)} frame files")


def frame_stride(source_fps: float | None, fps: float | None) -> int:
    """Source frames per annotated frame: source_fps / fps rounded half up, at least 1."""
    if fps is None or not source_fps or not math.isfinite(source_fps):
        return 1
    return max(1, math.floor(source_fps / fps + 0.5))


class _Decoder:
    """What every backend reports on open, and a frame iterator run in the decoder thread; every frame
    it decodes, kept or not, counts on `clock`."""

    backend: str
    fps: float | None
    frame_count: int
    height: int
    width: int
    clock: DecodeClock
    _first: np.ndarray | None  # the frame decoded on open, until a pass from the start hands it out

    def frames(self, stride: int, start: int = 0) -> Iterator[Frame]:
        """Frames start * stride, (start + 1) * stride, ... to the end. From where the decoder stands it
        decodes on; elsewhere it seeks (to the keyframe at or before the frame, decoding from there)."""
        raise NotImplementedError

    def close(self) -> None:
        """Release the backend's resources; nothing by default."""

    def _opening(self, stride: int, start: int) -> tuple[Frame | None, int]:
        """The frame decoded on open, if this pass starts there, and the index to read next; the open's
        frame is handed out once."""
        first, self._first = self._first, None
        if start == 0 and first is not None:
            return Frame(0, first), stride
        return None, start * stride


class _Decord(_Decoder):
    backend = "decord"

    def __init__(self, data: Encoded, clock: DecodeClock) -> None:
        with _stderr_silenced():
            self._reader = decord.VideoReader(_media(data))
        self._first: np.ndarray | None = self._reader.next().asnumpy()
        self.clock = clock
        clock.frames_decoded += 1
        self._next = 1  # the frame the reader's next() returns
        self._keyframes: list[int] | None = None
        if self._first.ndim != 3 or self._first.shape[2] != 3:
            # decord packs the rows of narrow videos (width 2..72) wrongly: [H, W, 6] for 16 pixels wide
            raise RuntimeError(f"decord decoded a frame of shape {self._first.shape}, not [H, W, 3]")
        # decord counts the frames it can index: for an AVI cut short, those before the cut, where the
        # header still holds the whole count; the larger is the video's, so the cut shows when decoding ends
        self.frame_count = max(len(self._reader), _header_frame_count(data))
        self.fps = float(self._reader.get_avg_fps()) or None
        self.height, self.width = self._first.shape[:2]

    def frames(self, stride: int, start: int = 0) -> Iterator[Frame]:
        first, index = self._opening(stride, start)
        if first is not None:
            yield first
        while (rgb := self._read(index)) is not None:
            yield Frame(index, rgb)
            index += stride

    def _read(self, index: int) -> np.ndarray | None:
        """Frame `index`, None past the end. Ahead, decord skips to it (seeking to the last keyframe it
        crosses); behind, `seek_accurate` seeks to the keyframe at or before it and decodes from there."""
        if index >= len(self._reader):
            return None
        if self._keyframes is None:
            self._keyframes = [int(k) for k in self._reader.get_key_indices()]
        at = bisect.bisect_right(self._keyframes, index) - 1
        keyframe = self._keyframes[at] if at >= 0 else 0
        if index >= self._next:
            if index > self._next:
                self._reader.skip_frames(index - self._next)
            decoded = index + 1 - max(keyframe, self._next)
        else:
            self._reader.seek_accurate(index)
            decoded = index + 1 - keyframe
        try:
            rgb = self._reader.next().asnumpy()
        except StopIteration:
            return None
        self._next = index + 1
        self.clock.frames_decoded += decoded
        return rgb

    def close(self) -> None:
        self._reader = None  # frees the decoder and its copy of the container now, not at garbage collection


class _PyAV(_Decoder):
    backend = "pyav"

    def __init__(self, data: Encoded, key: str, clock: DecodeClock) -> None:
        import av

        self._data, self.clock = data, clock
        self._container = av.open(_media(data))
        try:
            if not self._container.streams.video:
                raise VideoDecodeError(key, "the file has no video stream")
            stream = self._container.streams.video[0]
            if stream.codec_context is None:
                raise VideoDecodeError(key, "unsupported codec: FFmpeg has no decoder for its video stream")
            stream.thread_type = "AUTO"
            self._stream = stream
            self._decoded = self._container.decode(stream)
            first = next(self._decoded, None)
            if first is None:
                raise VideoDecodeError(key, "the video stream holds no frame")
            clock.frames_decoded += 1
            self._next = 1  # the frame `_decoded` gives next
            self._sought: int | None = None  # pts of the keyframe just sought, until it comes out
            self._packets: tuple[list[int], list[int]] | None = None
            self._first: np.ndarray | None = first.to_ndarray(format="rgb24")
            rate = stream.average_rate or stream.guessed_rate
            self.fps = float(rate) if rate else None
            self.frame_count = stream.frames or _count_packets(data)
            self.height, self.width = first.height, first.width
        except BaseException:
            self._container.close()
            raise

    def frames(self, stride: int, start: int = 0) -> Iterator[Frame]:
        first, index = self._opening(stride, start)
        if first is not None:
            yield first
        if index < self._next or (start > 0 and self._keyframe(index)[0] > self._next):
            self._seek(index)
        for frame in self._decoded:
            self.clock.frames_decoded += 1
            if self._sought is not None:
                if frame.pts is not None and frame.pts < self._sought:
                    continue  # a leading frame of an open GOP, shown before the keyframe
                self._sought = None
            position, self._next = self._next, self._next + 1
            if position >= index and (position - index) % stride == 0:
                yield Frame(position, frame.to_ndarray(format="rgb24"))

    def _keyframe(self, index: int) -> tuple[int, int | None]:
        """(frame, pts) of the keyframe at or before frame `index`; (0, None) where the packets do not
        say (before the first keyframe, or a packet without a timestamp)."""
        if self._packets is None:
            import av

            with av.open(_media(self._data)) as container:
                stream = container.streams.video[0]
                # a discarded packet (before an MP4 edit list's start) gives no frame
                packets = [(p.pts, p.is_keyframe) for p in container.demux(stream) if p.size and not p.is_discard]
            timed = sorted((pts, key) for pts, key in packets if pts is not None)
            keyframes = [k for k, (_, key) in enumerate(timed) if key] if len(timed) == len(packets) else []
            self._packets = ([pts for pts, _ in timed], keyframes)
        timestamps, keyframes = self._packets
        at = bisect.bisect_right(keyframes, index) - 1
        return (keyframes[at], timestamps[keyframes[at]]) if at >= 0 else (0, None)

    def _seek(self, index: int) -> None:
        """Stand on the keyframe at or before frame `index`: sought by its timestamp, or, where the
        packets give none, the container opened again at its first frame."""
        import av

        frame, pts = self._keyframe(index)
        if pts is None:
            self._container.close()
            self._container = av.open(_media(self._data))
            self._stream = self._container.streams.video[0]
            self._stream.thread_type = "AUTO"
        else:
            self._container.seek(pts, stream=self._stream, backward=True, any_frame=False)
        self._decoded = self._container.decode(self._stream)
        self._next, self._sought = frame, pts

    def close(self) -> None:
        self._container.close()


# An encoded video: its bytes in memory, or a local file (a download, a tar member written out), which the
# decoders read from the disk as they go instead of holding it
Encoded = bytes | Path


def _media(data: Encoded) -> io.BytesIO | str:
    """What PyAV and decord open: a buffer over the bytes, or the file's path."""
    return io.BytesIO(data) if isinstance(data, bytes) else str(data)


def encoded_size(data: Encoded) -> int:
    return len(data) if isinstance(data, bytes) else data.stat().st_size


def _header_frame_count(data: Encoded) -> int:
    """The frame count the container's header states (AVI, MP4), 0 where it states none or PyAV is absent."""
    try:
        import av
    except ImportError:
        return 0
    try:
        with av.open(_media(data)) as container:
            return int(container.streams.video[0].frames or 0)
    except (av.FFmpegError, IndexError):
        return 0


def _count_packets(data: Encoded) -> int:
    """Frames of a container that does not store the count (Matroska, WebM): demux, don't decode."""
    import av

    with av.open(_media(data)) as container:
        stream = container.streams.video[0]
        return sum(1 for packet in container.demux(stream) if packet.size)


class _Jpegs(_Decoder):
    backend = "jpeg"

    def __init__(self, files: FrameFiles, key: str, clock: DecodeClock) -> None:
        if not files.uris:
            raise VideoDecodeError(key, "the frame folder holds no JPEG frames")
        import av

        self._files, self._key, self.clock = files, key, clock
        self._codec = av.CodecContext.create("mjpeg", "r")
        self._first: np.ndarray | None = self._decode(0, first=True)
        self.height, self.width = self._first.shape[:2]
        self.frame_count, self.fps = len(files.uris), files.fps

    def frames(self, stride: int, start: int = 0) -> Iterator[Frame]:
        begin = start * stride
        if begin == 0 and self._first is not None:
            yield Frame(self._files.indices[0], self._first)
            begin = stride
        self._first = None
        for position in range(begin, len(self._files.uris), stride):
            yield Frame(self._files.indices[position], self._decode(position))

    def _decode(self, position: int, first: bool = False) -> np.ndarray:
        import av

        uri = self._files.uris[position]
        self.clock.frames_decoded += 1
        try:
            with fsspec.open(uri, "rb") as f:
                data = f.read()
        except FileNotFoundError as exc:
            raise VideoDecodeError(self._key, f"frame file {uri} is missing") from exc
        except OSError as exc:
            raise VideoDecodeError(self._key, f"frame file {uri} cannot be read: {exc}") from exc
        if not _is_complete_jpeg(data):
            raise VideoDecodeError(self._key, f"frame file {uri} is not a complete JPEG (truncated or corrupt)")
        try:
            decoded = self._codec.decode(av.Packet(data))
        except av.FFmpegError as exc:
            raise VideoDecodeError(self._key, f"frame file {uri} is a corrupt JPEG: {exc}") from exc
        if not decoded:
            raise VideoDecodeError(self._key, f"frame file {uri} decoded to no image")
        rgb = decoded[0].to_ndarray(format="rgb24")
        if not first and rgb.shape[:2] != (self.height, self.width):
            raise VideoDecodeError(
                self._key,
                f"frame file {uri} is {rgb.shape[1]}x{rgb.shape[0]}, the first frame {self.width}x{self.height}",
            )
        return rgb


def _is_complete_jpeg(data: bytes) -> bool:
    """Starts with SOI and has an EOI after its last SOS: FFmpeg decodes a truncated JPEG silently.

    Markers cannot occur inside entropy-coded data (0xFF is byte-stuffed), and an embedded EXIF
    thumbnail ends before the main image's scan starts, so its EOI does not count.
    """
    return data.startswith(b"\xff\xd8") and data.rfind(b"\xff\xd9") > data.rfind(b"\xff\xda") >= 0


def _open_decoder(source: Encoded | FrameFiles, key: str, clock: DecodeClock) -> _Decoder:
    """decord for a video whose decoded frames all fit in DECORD_MAX_DECODED_BYTES (or whose header
    PyAV cannot read), else PyAV, which also decodes what decord cannot open; decord after all where
    only it reads a larger video. Decided before decord opens it: an open starts its read-ahead."""
    if isinstance(source, FrameFiles):
        return _Jpegs(source, key, clock)
    data = source
    if not encoded_size(data):
        raise VideoDecodeError(key, "the video file is empty (0 bytes)")
    size = _decoded_bytes(data)
    if size is None or size <= DECORD_MAX_DECODED_BYTES:
        try:
            return _Decord(data, clock)
        except Exception as exc:  # decord raises RuntimeError, DECORDError, AssertionError, ...
            log.debug("decord cannot open video %r (%s); trying PyAV", key, exc)
        return _open_pyav(data, key, clock)
    try:
        return _open_pyav(data, key, clock)
    except VideoDecodeError as exc:
        try:
            decoder = _Decord(data, clock)
        except Exception:
            raise exc from None
        log.warning("video %r: PyAV cannot decode it (%s); decord does, and may hold all its frames decoded", key, exc)
        return decoder


def _decoded_bytes(data: Encoded) -> int | None:
    """The bytes of all the frames of a video decoded to RGB, from its container's header (PyAV; the
    count from the duration where the header has none); None where PyAV cannot tell."""
    try:
        import av

        with av.open(_media(data)) as container:
            stream = container.streams.video[0]
            frames = stream.frames
            if not frames and stream.duration and stream.time_base and stream.average_rate:
                frames = math.ceil(float(stream.duration * stream.time_base * stream.average_rate))
            if not frames and container.duration and stream.average_rate:
                frames = math.ceil(container.duration / 1e6 * float(stream.average_rate))
            return int(frames) * stream.codec_context.width * stream.codec_context.height * 3 if frames else None
    except Exception:  # no PyAV, not a container it reads, no video stream: decord is tried first
        return None


def _open_pyav(data: Encoded, key: str, clock: DecodeClock) -> _PyAV:
    """PyAV's decoder; what keeps it from decoding the first frame, as a VideoDecodeError."""
    try:
        import av
    except ImportError as exc:  # a machine with decord only (the GPU check's)
        raise VideoDecodeError(key, f"PyAV is not installed ({exc})") from exc
    try:
        return _PyAV(data, key, clock)
    except VideoDecodeError:
        raise
    except av.DecoderNotFoundError as exc:
        raise VideoDecodeError(key, f"unsupported codec: FFmpeg has no decoder for it ({exc})") from exc
    except av.InvalidDataError as exc:
        reason = "not a video FFmpeg can read: the file is truncated, corrupt or not a video"
        raise VideoDecodeError(key, f"{reason} ({exc})") from exc
    except Exception as exc:
        raise VideoDecodeError(key, f"cannot decode the first frame: {exc}") from exc


@dataclass
class DecodeClock:
    """What decoding a video cost, shared by a stream and its reopened copies: the time a consumer spent
    waiting for decoded frames (decoding that prefetch did not hide behind the consumer's work), and
    the frames the backends decoded."""

    wait_seconds: float = 0.0
    frames_decoded: int = 0


def _checksum(rgb: np.ndarray) -> int:
    """CRC-32 of every 8th row (0.3 ms for 1080p): a seek that lands on another frame shows in it (a
    frame identical there to the wanted one is, for tracking, that frame)."""
    return zlib.crc32(np.ascontiguousarray(rgb[::8]))


class _Replays:
    """What a stream shares with its reopened copies: the checksums of the frames its first pass
    decoded, by position; whether seeking still gives those frames; and the decoder that seeks, lent to
    one copy at a time (opening the video again would copy and index the whole container every time)."""

    def __init__(self, source: Encoded | FrameFiles, key: str, clock: DecodeClock) -> None:
        self.source, self.key, self.clock = source, key, clock
        self.checksums = array.array("L")
        self.seeking = True
        self.decoder: _Decoder | None = None
        self._lent = False

    def lend(self) -> _Decoder:
        """The seeking decoder; while a copy holds it, a new one, which the borrower closes."""
        if self._lent:
            return _open_decoder(self.source, self.key, self.clock)
        if self.decoder is None:
            self.decoder = _open_decoder(self.source, self.key, self.clock)
        self._lent = True
        return self.decoder

    def give_back(self) -> None:
        self._lent = False

    def close(self) -> None:
        if self.decoder is not None:
            self.decoder.close()
            self.decoder = None


class VideoStream:
    """An opened video: its properties are known before iterating; frames are decoded ahead.

    Iterate once (or use as a context manager); leaving the loop early stops the decoder thread.
    `frame_indices` lists the frames yielded so far; `reopen(start, stop)` decodes annotated positions
    start..stop-1 again, for a backward pass, from the bytes or local file it was opened from (never from
    the storage source).
    A stream of a span of the video (`open_video(..., start=, stop=)`, a chunk of a split video) counts
    its positions from the span's first: its reopens stay inside the span.
    """

    def __init__(
        self,
        source: Encoded | FrameFiles,
        decoder: _Decoder,
        *,
        key: str,
        fps: float | None,
        max_frames: int | None,
        prefetch: int,
        replays: _Replays | None = None,
        start: int = 0,
        stop: int | None = None,
        span: tuple[int, int | None] | None = None,
    ):
        self.key = key
        self.backend = decoder.backend
        self.source_fps = decoder.fps
        self.frame_count = decoder.frame_count
        self.height, self.width = decoder.height, decoder.width
        self.fps = fps
        self.stride = frame_stride(decoder.fps, fps)
        self.max_frames = max_frames
        self.frame_indices: list[int] = []
        self.clock = decoder.clock
        self._source = source
        self._prefetch_depth = prefetch
        self._decoder = decoder
        self._released = False  # the decoder closed, or given back to the stream it was lent by
        self._first_pass = replays is None
        self._replays = replays or _Replays(source, key, self.clock)
        self._start = start
        self._stop = min((n for n in (stop, max_frames) if n is not None), default=None)
        self._span = span or (start, stop)  # the first pass's annotated positions: reopens count from its start
        self._fallback: _Decoder | None = None
        self._prefetch = Prefetcher(self._decode, prefetch, name=f"masklet-decode:{key}")

    def __iter__(self) -> Iterator[Frame]:
        frames = iter(self._prefetch)
        try:
            while True:
                t0 = time.perf_counter()
                try:
                    frame = next(frames)
                except StopIteration:
                    return
                finally:
                    self.clock.wait_seconds += time.perf_counter() - t0
                self.frame_indices.append(frame.index)
                yield frame
        finally:
            self.close()

    @property
    def checksums(self) -> list[int]:
        """A CRC-32 of each frame the first pass decoded (its `frame_indices`'), to tell whether another
        decode of the same frames (a seek to them) gave the same pixels."""
        return list(self._replays.checksums)

    def reopen(self, start: int = 0, stop: int | None = None) -> VideoStream:
        """Annotated positions start..stop-1 (to the end when stop is None) again, as the first pass
        yielded them. The copies of a stream share one decoder that seeks, so a backward pass decodes
        each frame about once, not the video's prefix for every chunk; waits and frames count on one clock."""
        if start < 0 or (stop is not None and stop < start):
            raise ValueError(f"reopen needs 0 <= start <= stop, got start={start}, stop={stop}")
        first, end = self._span
        stop = end if stop is None else first + stop if end is None else min(first + stop, end)
        return VideoStream(
            self._source,
            self._replays.lend(),
            key=self.key,
            fps=self.fps,
            max_frames=self.max_frames,
            prefetch=self._prefetch_depth,
            replays=self._replays,
            start=first + start,
            stop=stop,
            span=self._span,
        )

    def close(self) -> None:
        self._prefetch.close()
        if not self._released:
            self._released = True
            if self._decoder is self._replays.decoder:
                self._replays.give_back()
            else:
                self._decoder.close()
        if self._fallback is not None:
            self._fallback.close()
        if self._first_pass:
            self._replays.close()

    def __enter__(self) -> VideoStream:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _decode(self) -> Iterator[Frame]:
        """Runs in the decoder thread: anything that goes wrong becomes a VideoDecodeError."""
        frames = self._first_frames() if self._first_pass else self._frames_again()
        limit = None if self._stop is None else max(0, self._stop - self._start)
        count, last = 0, max(0, self._start - 1) * self.stride  # a copy that starts past the end is not cut short
        try:
            for frame in itertools.islice(frames, limit):
                count, last = count + 1, frame.index
                yield frame
        except VideoDecodeError:
            raise
        except Exception as exc:
            raise VideoDecodeError(
                self.key, f"decoding failed after frame {last}, the file is probably truncated or corrupt: {exc}"
            ) from exc
        ran_to_end = limit is None or count < limit
        # Frame folders number their frames by file name and raise on any bad file instead.
        if ran_to_end and self.backend != "jpeg" and last + self.stride < self.frame_count - TRUNCATION_TOLERANCE:
            raise VideoDecodeError(
                self.key,
                f"the video ends at frame {last} but its header says {self.frame_count} frames: the file is truncated",
            )

    def _first_frames(self) -> Iterator[Frame]:
        """The first pass: every frame's checksum is kept for the copies to check theirs against."""
        for frame in self._decoder.frames(self.stride, self._start):
            self._replays.checksums.append(_checksum(frame.rgb))
            yield frame

    def _frames_again(self) -> Iterator[Frame]:
        """A copy's frames, sought. A frame whose checksum is not the first pass's at its position ends
        seeking in this video: from there on, copies decode from the first frame, as the first pass did."""
        replays, position, first = self._replays, self._start, self._span[0]
        if replays.seeking:
            for frame in self._decoder.frames(self.stride, self._start):
                seen = position - first  # the first pass's checksums start at its span's first position
                if seen < len(replays.checksums) and _checksum(frame.rgb) != replays.checksums[seen]:
                    replays.seeking = False
                    log.warning(
                        "video %r: seeking to frame %d gave another frame; decoding it from the start instead",
                        self.key,
                        frame.index,
                    )
                    break
                yield frame
                position += 1
            else:
                return
        self._fallback = _open_decoder(self._source, self.key, self.clock)
        yield from itertools.islice(self._fallback.frames(self.stride), position, None)


def open_video(
    source: Encoded | BinaryIO | FrameFiles,
    *,
    key: str = "",
    fps: float | None = None,
    max_frames: int | None = None,
    prefetch_frames: int = 16,
    min_frames: int = 2,
    start: int = 0,
    stop: int | None = None,
) -> VideoStream:
    """Open a video and decode its first frame; raise VideoDecodeError if it is not a usable video.

    `source`: the encoded video in memory, a local file (`Path`, read as decoding goes), a binary file
    object (read whole) or a folder's JPEG frames. `start`, `stop`: the stream is annotated positions
    start..stop-1 only (a chunk of a split video; its first frame is sought, as a backward pass's are);
    its positions count from `start`."""
    if max_frames is not None and max_frames < 1:
        raise ValueError(f"max_frames must be >= 1 or None, got {max_frames}")
    if not isinstance(source, (bytes, Path, FrameFiles)):
        source = bytes(source) if isinstance(source, (bytearray, memoryview)) else source.read()
    decoder = _open_decoder(source, key, DecodeClock())
    if decoder.frame_count < min_frames:
        decoder.close()
        raise VideoDecodeError(
            key, f"the video has {decoder.frame_count} frame(s); at least {min_frames} are needed to track masklets"
        )
    if start < 0 or (stop is not None and stop <= start):
        decoder.close()
        raise ValueError(f"a span needs 0 <= start < stop, got start={start}, stop={stop}")
    return VideoStream(
        source, decoder, key=key, fps=fps, max_frames=max_frames, prefetch=prefetch_frames, start=start, stop=stop
    )
