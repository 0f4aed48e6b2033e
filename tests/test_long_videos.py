"""Long videos (issue 20, items 2 and 4): the backward pass decodes each frame about once, whatever
the video's length, a manifest video is downloaded once, and `pipeline.max_objects` bounds the
objects tracked at once, not the objects found.

Decode cost is counted by the stream (`DecodeClock.frames_decoded`) on H.264 videos with B-frames
and a keyframe every second, whose frames carry their own index (tests/videos.py). The objects
test runs the automatic pipeline on the model double over a synthetic procession: objects cross
the frame one after another, never more than two at once.

`pytest tests/test_long_videos.py -k "linear or keyframe_interval" -s` prints the decode figures of
docs/long-videos.md.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fsspec
import numpy as np
import pytest
import torch
from model_double import ProposerDouble, TrackerFactoryDouble, Truth, frame_folder
from videos import encode, read_index

from masklet.config import PipelineConfig, SourceConfig
from masklet.io import sources, video
from masklet.io.schema import MaskletRecord
from masklet.io.sources import VideoInput, iter_videos, list_shards
from masklet.io.video import Frame, VideoStream, open_video
from masklet.jobs.shard import run_video
from masklet.pipelines.autolabel import AutoLabeler
from masklet.pipelines.contract import FrameStream
from masklet.pipelines.tracking import REPLAY_CHUNK, replay_backward
from masklet.synth.scene import Scene, make_scene

pytestmark = pytest.mark.usefixtures("one_torch_thread")

FPS = 24


def keyframed(count: int, *, keyint: int = FPS, **options: Any) -> bytes:
    """`count` index frames with a keyframe every second, as a streaming encoder writes them."""
    return encode(count, fps=FPS, keyint=keyint, **options)


def first_pass(stream: VideoStream) -> list[int]:
    indices = []
    for frame in stream:
        assert read_index(frame.rgb) == frame.index
        indices.append(frame.index)
    return indices


def backward(stream: FrameStream, frames: int, chunk: int = REPLAY_CHUNK) -> list[int]:
    """The frame indices a backward pass over the whole video gets, each checked against its pixels."""
    indices = []
    for _, frame in replay_backward(stream.reopen, frames - 1, chunk):
        assert read_index(frame.rgb) == frame.index
        indices.append(frame.index)
    return indices


# ---- decode: seeks give the first pass's frames, at a cost linear in length


@pytest.mark.parametrize(
    ("make", "backend"),
    [
        (lambda: keyframed(200), "decord"),
        (lambda: encode(200, codec="mpeg4"), "decord"),  # FFmpeg's MPEG-4 Part 2: a keyframe every 12 frames
        (lambda: keyframed(200, codec="libsvtav1", container="matroska"), "pyav"),  # decord's FFmpeg 4 lacks AV1
        (lambda: keyframed(200, width=48, height=32), "pyav"),  # decord packs rows this narrow wrongly
    ],
    ids=["h264-bframes", "mpeg4", "av1-mkv", "h264-narrow"],
)
@pytest.mark.parametrize("fps", [6, None])
def test_reopen_anywhere_gives_the_first_pass_frames(
    make: Any, backend: str, fps: int | None, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING), open_video(make(), key="k", fps=fps, prefetch_frames=4) as stream:
        forward = first_pass(stream)
        assert stream.backend == backend
        n = len(forward)
        for start, stop in [(n - 9, n), (n // 2, n // 2 + 5), (0, 3), (n - 1, None), (3, 4), (1, 1)]:
            again = [f.index for f in stream.reopen(start, stop)]
            assert again == forward[start:stop], (start, stop)
            assert all(read_index(f.rgb) == f.index for f in stream.reopen(start, stop))
        assert backward(stream, n, chunk=7) == forward[::-1]
    assert "gave another frame" not in caplog.text


def test_reopen_in_a_frame_folder_opens_only_the_files_it_needs(tmp_path: Path) -> None:
    with frame_folder(Truth(frames=40), tmp_path).open(fps=6) as stream:  # frame folders are 24 fps: every 4th file
        forward = [f.index for f in stream]
        decoded = stream.clock.frames_decoded
        assert [f.index for f in stream.reopen(7, 9)] == forward[7:9] == [28, 32]
        assert stream.clock.frames_decoded == decoded + 1 + 2  # the reopens' decoder opened on the first file
        assert [f.index for f in stream.reopen(2, 3)] == [8]
        assert stream.clock.frames_decoded == decoded + 1 + 2 + 1


def test_a_seek_that_lands_on_another_frame_is_caught_and_the_video_decoded_from_its_start(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A container whose timestamps mislead the seek: the checksum of the first pass's frame tells."""
    seek = video._Decord.frames

    def off_by_one(self: Any, stride: int, start: int = 0) -> Iterator[Frame]:
        frames = seek(self, stride, start + 1 if start else 0)
        return (Frame(f.index - stride, f.rgb) if start else f for f in frames)

    monkeypatch.setattr(video._Decord, "frames", off_by_one)
    with caplog.at_level(logging.WARNING), open_video(keyframed(100), key="k", prefetch_frames=4) as stream:
        forward = [f.index for f in stream]
        assert backward(stream, len(forward), chunk=16) == forward[::-1]  # backward() checks every frame's pixels
    assert caplog.text.count("seeking to frame") == 1  # then no more seeks in this video


def _decoded(data: bytes, chunk: int) -> tuple[int, int, int]:
    """(frames decoded by the first pass, by a backward pass, by the backward pass as it was before
    seeking: every chunk decoded from the video's first frame), at 6 fps (every 4th frame)."""
    with open_video(data, key="k", fps=6, prefetch_frames=4) as stream:
        n = len(first_pass(stream))
        forward = stream.clock.frames_decoded
        assert backward(stream, n, chunk) == list(range(0, 4 * n, 4))[::-1]
        sought = stream.clock.frames_decoded - forward
        for end in range(n, 0, -chunk):
            assert len(list(stream.reopen(0, end))) == end  # the old way: the prefix up to the chunk's end
        return forward, sought, stream.clock.frames_decoded - forward - sought


def test_backward_decode_is_linear_in_length() -> None:
    """1x and 10x the length (96 and 960 frames at 24 fps, a keyframe a second, annotated at 6 fps), in
    chunks of 8 annotated frames so the 1x video has several: 10x the length decodes at most 11x the
    frames backward, where decoding each chunk's prefix decoded 79x."""
    (f1, b1, old1), (f10, b10, old10) = (_decoded(keyframed(96 * k), chunk=8) for k in (1, 10))
    print(f"\nkeyframe every 24, chunk 8, 96 frames: forward {f1}, backward {b1} (prefix decodes {old1})")
    print(f"keyframe every 24, chunk 8, 960 frames: forward {f10}, backward {b10} (prefix decodes {old10})")
    assert b10 <= 11 * b1
    assert b1 <= 96 * 1.2 and b10 <= 960 * 1.2  # about once per frame
    assert old10 >= 50 * old1  # what it was


def test_backward_decode_costs_at_most_a_keyframe_interval_per_chunk() -> None:
    """x264's default keyframe interval (250 frames, tests/videos.py) and the pipelines' chunk: a chunk
    decodes its frames plus those from the keyframe before it, never the video's prefix."""
    frames, chunks = 960, -(-960 // 4 // REPLAY_CHUNK)
    forward, sought, old = _decoded(encode(frames), chunk=REPLAY_CHUNK)
    print(f"\nkeyframe every 250, chunk {REPLAY_CHUNK}, {frames} frames: forward {forward}, backward {sought} "
          f"(prefix decodes {old})")  # fmt: skip
    assert sought <= frames + chunks * 250
    assert sought < old


def test_a_manifest_video_is_downloaded_once_and_decoded_from_disk(
    tmp_path: Path, s3_bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The worker copies a manifest's remote video once, as a stream, into a local file that the decoders
    read as they go (the stream never holds the encoded video in memory); every reopen decodes from that
    file. A local video is read where it is, not copied."""
    reads: list[tuple[str, str]] = []
    call = sources.storage.call

    def counted(op: str, uri: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        reads.append((uri, fn.__name__.lstrip("_")))  # s3fs names its copy _get_file
        return call(op, uri, fn, *args, **kwargs)

    monkeypatch.setattr(sources.storage, "call", counted)
    s3 = fsspec.filesystem("s3")
    rows, encoded = [], {k: keyframed(96 * k) for k in (1, 10)}
    for k, data in encoded.items():
        s3.pipe(f"{s3_bucket}/v{k}.mp4", data)
        rows.append({"key": f"v{k}", "uri": f"s3://{s3_bucket}/v{k}.mp4"})
    (tmp_path / "here.mp4").write_bytes(keyframed(96))
    rows.append({"key": "here", "uri": str(tmp_path / "here.mp4")})
    (tmp_path / "videos.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    source = SourceConfig(uri=str(tmp_path / "videos.jsonl"), format="manifest", fps=6, prefetch_frames=4)
    [shard] = list_shards(source)
    opened: list[object] = []

    def backward_pass(item: VideoInput, frames: FrameStream) -> list[MaskletRecord]:
        assert isinstance(frames, VideoStream)
        opened.append(frames._source)
        forward = [f.index for f in frames]
        assert backward(frames, len(forward), chunk=8) == forward[::-1]
        return []

    folder = tmp_path / "downloads"
    folder.mkdir()
    reads.clear()
    for item in iter_videos(shard):
        assert isinstance(item, VideoInput) and isinstance(item.content, str)  # a URI, not bytes
        run_video(item, backward_pass, source, folder=str(folder))
    assert [(uri, how) for uri, how in reads] == [(rows[0]["uri"], "get_file"), (rows[1]["uri"], "get_file"),
                                                  (rows[2]["uri"], "info")]  # fmt: skip
    assert opened == [folder / "v1.mp4", folder / "v10.mp4", tmp_path / "here.mp4"]
    assert (folder / "v10.mp4").read_bytes() == encoded[10]


# ---- objects: max_objects bounds those tracked at once


WINDOW, STEP, OBJECTS = 6, 5, 8  # object i is in the frame on frames [STEP * i, STEP * i + WINDOW)
FRAMES = STEP * OBJECTS


def procession() -> Truth:
    """64x48, 40 frames: OBJECTS objects cross the frame one after another, at most two at once, each
    on its own spot of a 4x2 grid (no object overlaps where another was), over a synth scene's panning
    background."""
    base = make_scene(0, 0, width=64, height=48, frames=FRAMES)
    t = np.arange(FRAMES, dtype=np.float64)
    objects = []
    for i in range(OBJECTS):
        inside = (t >= STEP * i) & (t < STEP * i + WINDOW)
        cx = np.where(inside, 8.0 + 16 * (i % 4) + 0.5 * (t - STEP * i), -1000.0)  # drifting right
        cy = np.full(FRAMES, 12.0 + 24 * (i // 4))
        still = {"scale": np.ones(FRAMES), "angle": np.zeros(FRAMES)}
        objects.append(dataclasses.replace(base.objects[0], id=i, depth=i, radius=5.0, cx=cx, cy=cy, **still))
    scene = Scene(64, 48, FRAMES, base.background, tuple(objects))
    truth = Truth(frames=FRAMES)
    rendered = [scene.render(k) for k in range(FRAMES)]
    truth.rgb = [r.rgb for r in rendered]
    truth.visible = [torch.from_numpy(r.visible) for r in rendered]
    assert len({rgb.tobytes() for rgb in truth.rgb}) == FRAMES  # the doubles find a frame by its pixels
    return truth


def label(truth: Truth, **options: Any) -> tuple[dict[int, MaskletRecord], TrackerFactoryDouble]:
    """GT object -> its masklet (one each, or the test fails), and the trackers."""
    trackers = TrackerFactoryDouble(truth)
    labeler = AutoLabeler(PipelineConfig(reseed_every=1, **options), trackers, ProposerDouble(truth))
    records = labeler("vid", iter(truth), lambda start, stop: itertools.islice(truth, start, stop)).records()
    forward = trackers.made[0]
    followed = {r.masklet_id: (forward.removed | forward.follows)[r.masklet_id] for r in records}
    assert sorted(followed.values()) == sorted(set(followed.values()))
    return {followed[r.masklet_id]: r for r in records}, trackers


def frames(first: int, last: int) -> list[int]:
    return list(range(first, min(last, FRAMES - 1) + 1))


def test_max_objects_bounds_objects_tracked_at_once_not_objects_found() -> None:
    truth = procession()
    capped, _ = label(truth, max_objects=2)  # nothing released: the first two objects hold both places
    assert sorted(capped) == [0, 1] and capped[0].frame_indices == frames(0, FRAMES)

    masklets, trackers = label(truth, max_objects=2, drop_lost_after=2)
    assert sorted(masklets) == list(range(OBJECTS))  # every object, in a masklet of its own
    for i, r in masklets.items():  # from its entry to two frames after it left, then released: no entries
        assert r.frame_indices == frames(STEP * i, STEP * i + WINDOW + 1)
        assert r.num_visible == min(WINDOW, FRAMES - STEP * i)
    steps = trackers.made[0].steps
    assert max(len(objs) for _, objs in steps) == 2
    # a released object costs nothing: the tracker's rows are the masklets' entries, one for one (but
    # the first of each, the seed frame's correction that starts it after that frame's step)
    assert sum(len(objs) for _, objs in steps) == sum(len(r.frame_indices) - 1 for r in masklets.values())


def test_an_object_waits_for_a_free_place_and_the_backward_pass_finds_its_entrance() -> None:
    """One place: object i + 1 enters on 5(i + 1), while object i is still tracked; it is admitted when
    object i is released, three frames later, and tracked back from there to its entrance."""
    truth = procession()
    masklets, trackers = label(truth, max_objects=1, drop_lost_after=2)
    assert sorted(masklets) == list(range(OBJECTS))
    assert all(masklets[i].first_frame == STEP * i + 3 for i in range(1, OBJECTS))
    assert max(len(objs) for _, objs in trackers.made[0].steps) == 1

    masklets, trackers = label(truth, max_objects=1, drop_lost_after=2, propagate_backward=True)
    for i in range(1, OBJECTS):
        r = masklets[i]
        assert r.first_frame == STEP * i and r.frame_indices[0] == STEP * i - 2  # back to two frames unseen
        assert r.num_visible == min(WINDOW, FRAMES - STEP * i)


def test_the_backward_pass_releases_lost_objects_and_skips_frames_with_none() -> None:
    """Each late object is born where it enters; going back it is unseen at once, released two frames
    later, and the pass resumes at the next birth back: 3 steps per object, not all the frames before it."""
    truth = procession()
    masklets, trackers = label(truth, max_objects=2, drop_lost_after=2, propagate_backward=True)
    reverse = trackers.made[1:]
    assert all(t.reverse for t in reverse)
    assert [[p for p, _ in t.steps] for t in reverse] == [[STEP * i - k for k in range(3)] for i in range(7, 0, -1)]
    for i in range(1, OBJECTS):
        assert masklets[i].frame_indices == frames(STEP * i - 2, STEP * i + WINDOW + 1)
    without_release, _ = label(truth, max_objects=OBJECTS, propagate_backward=True)
    assert all(r.frame_indices == frames(0, FRAMES) for r in without_release.values())  # as before: to frame 0


@pytest.mark.parametrize("max_objects", [1, 2, 3])
@pytest.mark.parametrize("drop_lost_after", [2, 6, 12])
def test_the_backward_pass_tracks_at_most_max_objects_at_once(max_objects: int, drop_lost_after: int) -> None:
    """Going back, a late object is tracked from its birth to `drop_lost_after` frames before its entrance:
    births closer together than that would crowd one reverse tracker; those over `max_objects` wait for a
    pass of their own, and each still reaches its entrance."""
    truth = procession()
    options = {"max_objects": max_objects, "drop_lost_after": drop_lost_after}
    masklets, trackers = label(truth, **options, propagate_backward=True)
    forward, *reverse = trackers.made
    assert all(t.reverse for t in reverse) and not forward.reverse
    assert max(len(objs) for t in trackers.made for _, objs in t.steps) <= max_objects
    found, _ = label(truth, **options)  # the same objects found, with their entrances now
    assert sorted(masklets) == sorted(found)
    for i, r in masklets.items():
        assert r.first_frame == STEP * i, (i, r.frame_indices)
