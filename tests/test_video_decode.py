"""masklet.io.video: streaming decode at the annotation fps, backends, bad videos, prefetch, frame prep."""

from __future__ import annotations

import gc
import io
import re
import subprocess
import sys
import threading
import time
import weakref
from collections.abc import Iterator
from pathlib import Path

import av
import numpy as np
import pytest
from videos import encode, index_frame, jpeg, read_index, unknown_codec

from masklet.io.prefetch import Prefetcher
from masklet.io.video import (
    FrameFiles,
    VideoDecodeError,
    frame_stride,
    open_video,
)
from masklet.io.video_writer import encode_mp4


def decode_all(source, **kwargs) -> tuple[list[int], object]:
    with open_video(source, key="k", **kwargs) as stream:
        indices = []
        for frame in stream:
            assert frame.rgb.dtype == np.uint8 and frame.rgb.shape == (stream.height, stream.width, 3)
            if stream.width >= 60:
                assert read_index(frame.rgb) == frame.index  # the frame really is that original frame
            indices.append(frame.index)
    return indices, stream


def decoder_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("masklet-decode")]


@pytest.mark.parametrize(
    ("source_fps", "fps", "stride"),
    [(24, 6, 4), (30, 6, 5), (25, 6, 4), (29.97, 6, 5), (60, 6, 10), (30, 12, 3), (5, 6, 1)]
    + [(24, None, 1), (None, 6, 1)],
)
def test_stride_is_source_over_target_fps_rounded_half_up(source_fps, fps, stride) -> None:
    assert frame_stride(source_fps, fps) == stride


def test_sav_rate_every_4th_frame_with_original_indices() -> None:
    stream = open_video(encode(30, fps=24), key="k", fps=6)
    # known before iterating
    assert (stream.source_fps, stream.frame_count, stream.height, stream.width) == (24.0, 30, 48, 64)
    assert (stream.stride, stream.backend) == (4, "decord")
    stream.close()
    assert decode_all(encode(30, fps=24), fps=6)[0] == [0, 4, 8, 12, 16, 20, 24, 28]


def test_max_frames_caps_the_frames_yielded_and_none_keeps_all() -> None:
    data = encode(30, fps=30)
    assert decode_all(data, fps=6, max_frames=3)[0] == [0, 5, 10]
    assert decode_all(data, fps=None)[0] == list(range(30))


def test_reopen_gives_positions_start_to_stop_within_max_frames() -> None:
    """What a backward pass asks for: annotated positions start..stop-1, as the first pass numbered them."""
    with open_video(encode(30, fps=24), key="k", fps=6, max_frames=6) as stream:
        assert [f.index for f in stream] == [0, 4, 8, 12, 16, 20]
        assert [f.index for f in stream.reopen(2, 4)] == [8, 12]
        assert [f.index for f in stream.reopen(4)] == [f.index for f in stream.reopen(4, 99)] == [16, 20]
        assert [f.index for f in stream.reopen()] == [0, 4, 8, 12, 16, 20]
        assert list(stream.reopen(3, 3)) == []
        with pytest.raises(ValueError, match="start <= stop"):
            stream.reopen(4, 2)
        copy = iter(stream.reopen(1))
        next(copy)  # one copy holds the seeking decoder; another, meanwhile, opens its own
        assert [f.index for f in stream.reopen(0, 2)] == [0, 4]
        copy.close()
    with open_video(encode(30, fps=24), key="k", fps=6) as stream:  # 8 frames: 0, 4, ..., 28
        assert list(stream.reopen(8)) == list(stream.reopen(20)) == []  # past the end: nothing, not an error
        assert [f.index for f in stream.reopen(7)] == [28]
    assert decoder_threads() == []


@pytest.mark.parametrize("container", ["mp4", "matroska"])
def test_pyav_reads_what_decord_cannot(container: str) -> None:
    data = encode(10, codec="libsvtav1", container=container)  # decord's FFmpeg 4 has no AV1 decoder
    indices, stream = decode_all(data, fps=12)
    assert stream.backend == "pyav"
    assert (stream.source_fps, stream.frame_count, stream.stride) == (24.0, 10, 2)  # mkv: count from packets
    assert indices == [0, 2, 4, 6, 8]


@pytest.mark.parametrize(
    ("codec", "container", "pix_fmt", "backend"),
    [
        ("ffv1", "matroska", "yuv420p", "decord"),
        ("libx264", "matroska", "yuv444p", "decord"),
        ("libsvtav1", "mp4", "yuv420p", "pyav"),
    ],
)
def test_odd_dimensions_decode(codec: str, container: str, pix_fmt: str, backend: str) -> None:
    data = encode(6, width=17, height=33, codec=codec, container=container, pix_fmt=pix_fmt)
    indices, stream = decode_all(data)
    assert (stream.height, stream.width, stream.backend) == (33, 17, backend)
    assert indices == list(range(6))


@pytest.mark.parametrize(("width", "height"), [(16, 1024), (8, 8), (48, 32)])
def test_narrow_videos_decode_to_their_own_pixels(width: int, height: int) -> None:
    """decord packs the rows of videos 2..72 pixels wide into [H, W, 4..48]: PyAV decodes those."""
    with open_video(encode(3, width=width, height=height), key="k") as stream:
        frames = list(stream)
    assert (stream.height, stream.width, stream.backend) == (height, width, "pyav")
    for frame in frames:
        assert frame.rgb.shape == (height, width, 3)
        error = np.abs(frame.rgb.astype(int) - index_frame(frame.index, width, height)).mean()
        assert error < 12, error


@pytest.mark.parametrize(("codec", "container"), [("libx264", "mp4"), ("ffv1", "matroska")])
def test_grayscale_decodes_to_rgb(codec: str, container: str) -> None:
    with open_video(encode(4, codec=codec, container=container, pix_fmt="gray"), key="k") as stream:
        for frame in stream:
            assert frame.rgb.shape == (48, 64, 3)
            assert np.array_equal(frame.rgb[..., 0], frame.rgb[..., 2])
            assert read_index(frame.rgb) == frame.index


def faststart(mp4: bytes, tmp_path: Path) -> bytes:
    """The same MP4 with its index first, as web videos are: cut short, it still opens."""
    path = tmp_path / "faststart.mp4"
    with av.open(io.BytesIO(mp4)) as src, av.open(str(path), "w", options={"movflags": "faststart"}) as dst:
        stream = dst.add_stream_from_template(src.streams.video[0])
        for packet in src.demux(src.streams.video[0]):
            if packet.dts is not None:
                packet.stream = stream
                dst.mux(packet)
    return path.read_bytes()


def test_bad_videos_raise_clear_errors(tmp_path: Path) -> None:
    mp4 = encode(50)
    cases = {
        b"": "empty (0 bytes)",
        mp4[: len(mp4) // 2]: "truncated, corrupt or not a video",  # index at the end, cut off
        b"<html>not found</html>" * 10: "truncated, corrupt or not a video",
        unknown_codec(mp4): "unsupported codec",
        encode(1): "1 frame(s); at least 2",
    }
    for data, reason in cases.items():
        with pytest.raises(VideoDecodeError, match=re.escape(reason)) as info:
            decode_all(data)
        assert isinstance(info.value, ValueError) and info.value.key == "k"
    assert decode_all(encode(1), min_frames=1)[0] == [0]  # a still is fine where asked for


def test_truncation_found_while_decoding_surfaces_in_the_consumer(tmp_path: Path) -> None:
    data = faststart(encode(50), tmp_path)
    assert decode_all(data)[0] == list(range(50))
    cut = data[: int(len(data) * 0.9)]
    seen = []
    stream = open_video(cut, key="k")
    with pytest.raises(VideoDecodeError, match="header says 50 frames: the file is truncated"), stream:
        seen.extend(frame.index for frame in stream)
    assert 0 < len(seen) < 50
    assert decoder_threads() == []


@pytest.mark.parametrize("codec", ["mpeg4", "libx264"])
def test_an_avi_cut_short_is_truncated_not_a_shorter_video(codec: str) -> None:
    """decord counts only the frames before the cut (9 of 48); the AVI header still says 48."""
    data = encode(48, codec=codec, container="avi")
    assert decode_all(data)[0] == list(range(48))
    stream = open_video(data[: int(len(data) * 0.65)], key="k")
    assert (stream.backend, stream.frame_count) == ("decord", 48)
    with pytest.raises(VideoDecodeError, match="header says 48 frames: the file is truncated"), stream:
        for _ in stream:
            pass


def write_frames(folder: Path, count: int, *, size=(48, 64)) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        path = folder / f"{i:05d}.jpg"
        path.write_bytes(jpeg(index_frame(i, size[1], size[0])))
        paths.append(path)
    return paths


def frame_files(paths: list[Path]) -> FrameFiles:
    return FrameFiles(tuple(int(p.stem) for p in paths), tuple(str(p) for p in paths))


def test_frame_folder_decodes_at_the_annotation_fps(tmp_path: Path) -> None:
    indices, stream = decode_all(frame_files(write_frames(tmp_path / "v", 10)), fps=6)
    assert (stream.backend, stream.source_fps, stream.frame_count, stream.stride) == ("jpeg", 24.0, 10, 4)
    assert indices == [0, 4, 8]


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (lambda p: p.unlink(), "is missing"),
        (lambda p: p.write_bytes(p.read_bytes()[:-300]), "not a complete JPEG"),
        (lambda p: p.write_bytes(b"garbage" * 50), "not a complete JPEG"),
        (lambda p: p.write_bytes(jpeg(index_frame(4, 32, 24))), "is 32x24, the first frame 64x48"),
    ],
)
def test_frame_folder_with_a_bad_frame(tmp_path: Path, damage, reason: str) -> None:
    paths = write_frames(tmp_path / "v", 8)
    damage(paths[4])
    seen = []
    stream = open_video(frame_files(paths), key="k", prefetch_frames=2)
    with pytest.raises(VideoDecodeError, match=re.escape(reason)), stream:
        seen.extend(frame.index for frame in stream)
    assert seen == [0, 1, 2, 3]


def test_prefetch_stays_within_its_depth_and_early_close_stops_the_thread() -> None:
    made = []

    def produce() -> Iterator[int]:
        for i in range(1000):
            made.append(i)
            yield i

    prefetch = Prefetcher(produce, depth=3)
    items = iter(prefetch)
    assert next(items) == 0
    time.sleep(0.2)  # let the producer run ahead as far as it may
    assert len(made) <= 1 + 3 + 1  # consumed + queued + the one waiting to be queued
    items.close()  # leaving a loop early does this
    assert not any(t.name == "masklet-prefetch" for t in threading.enumerate())
    assert len(made) < 10


def test_early_close_of_a_video_leaves_no_thread() -> None:
    with open_video(encode(60), key="k", prefetch_frames=2) as stream:
        for frame in stream:
            if frame.index == 3:
                break
    assert decoder_threads() == []
    stream = open_video(encode(60), key="k")
    next(iter(stream))
    stream.close()  # closed without finishing the loop
    assert decoder_threads() == []


def test_producer_errors_reach_the_consumer() -> None:
    def produce() -> Iterator[int]:
        yield 1
        raise KeyError("boom")

    with pytest.raises(KeyError, match="boom"):
        list(Prefetcher(produce, depth=2))


@pytest.fixture(scope="module")
def long_video() -> bytes:
    return encode_mp4((index_frame(i, 320, 240) for i in range(640)), fps=24)


def _resident_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


def test_memory_is_bounded_by_the_prefetch_depth_not_the_video_length(long_video: bytes) -> None:
    """Resident memory, not Python's allocations: a decoder's own buffers count. decord decodes ahead of a
    slow reader and holds the frames (110-120 MB of this 147 MB video, measured), so a video this size
    decodes with PyAV."""
    depth = 4
    base = peak = _resident_bytes()
    count = 0
    with open_video(long_video, key="long", prefetch_frames=depth) as stream:
        for frame in stream:
            assert frame.index == count
            time.sleep(0.0005)  # a slow consumer: the queue stays full
            count += 1
            peak = max(peak, _resident_bytes())
    assert count == 640
    # holding every frame would take 147 MB; the queue, the frame being decoded, the one the consumer holds
    # and the compressed video are depth + 8 frames (3 MB); the rest is the decoder's first use (15 MB here)
    assert peak - base < 40e6, f"resident memory grew {(peak - base) / 1e6:.1f} MB"
    assert stream.backend == "pyav"


def test_a_closed_stream_is_freed_at_once_not_by_the_garbage_collector() -> None:
    """A stream and its prefetcher referred to each other: each chunk of a backward pass, each chunk of a
    split video, left its decoder and queued frames to the cyclic collector (2.6 MB a chunk, measured)."""
    data = encode(48, fps=24, keyint=12)
    gc.disable()
    try:
        stream = open_video(data, fps=None, prefetch_frames=2)
        next(iter(stream))  # left early, frames still queued
        stream.close()
        again = stream.reopen(10, 20)
        assert [f.index for f in again] == list(range(10, 20))
        refs = [weakref.ref(stream), weakref.ref(again)]
        del stream, again
        assert [r() for r in refs] == [None, None]
    finally:
        gc.enable()


def test_decord_decodes_only_videos_whose_frames_fit_its_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    """Over the budget PyAV decodes the video, to the same pixels (H.264 4:2:0) and the same reopens."""
    from masklet.io import video

    data = encode(40, keyint=8)
    with open_video(data, key="k") as small:
        by_decord = [f.rgb for f in small]
        again = [f.rgb for f in small.reopen(30, 34)]
    monkeypatch.setattr(video, "DECORD_MAX_DECODED_BYTES", 40 * 64 * 48 * 3 - 1)
    with open_video(data, key="k") as large:
        by_pyav = [f.rgb for f in large]
        reopened = [f.rgb for f in large.reopen(30, 34)]
    assert (small.backend, large.backend) == ("decord", "pyav")
    assert len(by_pyav) == 40 and all(np.array_equal(a, b) for a, b in zip(by_decord, by_pyav, strict=True))
    assert all(np.array_equal(a, b) for a, b in zip(again, reopened, strict=True)) and len(reopened) == 4


@pytest.mark.parametrize("budget", [None, 1])  # decord, then PyAV
def test_a_local_file_decodes_as_its_bytes_do(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, budget: int | None
) -> None:
    """A downloaded video is decoded from the disk as decoding goes (its path, never its bytes, held): the
    same frames, reopens, frame count and backend as from the bytes."""
    from masklet.io import video

    if budget is not None:
        monkeypatch.setattr(video, "DECORD_MAX_DECODED_BYTES", budget)
    data = encode(40, keyint=8)
    path = tmp_path / "v.mp4"
    path.write_bytes(data)
    seen = []
    for source in (data, path):
        with open_video(source, key="k", fps=6) as stream:
            seen.append((stream.backend, stream.frame_count, [(f.index, f.rgb) for f in stream]))
            seen[-1] += ([(f.index, f.rgb) for f in stream.reopen(3, 6)],)
            assert stream._source is source
    (backend, count, frames, again), (backend2, count2, frames2, again2) = seen
    assert (backend, count) == (backend2, count2) == ("decord" if budget is None else "pyav", 40)
    for a, b in ((frames, frames2), (again, again2)):
        assert [i for i, _ in a] == [i for i, _ in b]
        assert all(np.array_equal(x, y) for (_, x), (_, y) in zip(a, b, strict=True))
    assert [i for i, _ in again] == [12, 16, 20]
    (tmp_path / "empty.mp4").write_bytes(b"")
    with pytest.raises(VideoDecodeError, match="empty"):
        open_video(tmp_path / "empty.mp4", key="k")


def test_a_large_video_only_decord_reads_still_decodes(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from masklet.io import video

    def refuse(*args: object) -> None:
        raise av.InvalidDataError(1094995529, "Invalid data found when processing input")

    monkeypatch.setattr(video, "DECORD_MAX_DECODED_BYTES", 1)
    monkeypatch.setattr(video, "_PyAV", refuse)
    indices, stream = decode_all(encode(6))
    assert stream.backend == "decord" and indices == list(range(6))
    assert "PyAV cannot decode it" in caplog.text
    with pytest.raises(VideoDecodeError, match="not a video FFmpeg can read"):
        open_video(b"\x00" * 1000, key="junk")  # neither reads it: the error is PyAV's


def test_a_bad_video_leaves_nothing_on_stderr(tmp_path: Path) -> None:
    """Its error row says what is wrong. Left alone, decord's C++ logger printed the whole file (its "name"
    when opened from memory) and ffmpeg its own lines ("moov atom not found")."""
    (tmp_path / "junk.mp4").write_bytes(bytes(range(256)) * 20)
    script = (
        "from masklet.io.video import open_video\n"
        f"try:\n    open_video(open({str(tmp_path / 'junk.mp4')!r}, 'rb').read(), key='junk')\n"
        "except ValueError as exc:\n    print(exc)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert "video 'junk'" in done.stdout
    assert done.stderr == "", done.stderr[:300]
