"""The frames of an output's video, for a reviewer to see: decoded at full resolution.

From the output's own tar when the job wrote the video bytes there, else from the input the video row
names (`source_uri`: `TAR#member`, a manifest's uri or a frame folder), read through masklet.io.sources
and decoded with masklet.io.video at a stride that lands on every wanted frame, as the report does.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import closing

import numpy as np

from masklet.io.outputs import iter_video_members
from masklet.io.schema import VideoRecord
from masklet.io.sources import ManifestRow, Shard, VideoInput, iter_videos
from masklet.io.video import VideoDecodeError, VideoStream, open_video


def video_frames(
    root: str, shard_id: str, video: VideoRecord, wanted: Sequence[int], *, write_video: bool, source_format: str | None
) -> Iterator[tuple[int, np.ndarray]]:
    """(frame index, RGB uint8 [H, W, 3]) of each wanted frame, in order; ValueError naming the video
    when its frames cannot be had, are not all there, or are not the size its masks are."""
    wanted = sorted(set(wanted))
    if not wanted:
        return
    step = math.gcd(*wanted) or 1
    options = {"fps": float(video.fps) / step, "max_frames": wanted[-1] // step + 1, "prefetch_frames": 4}
    where = f"video {video.video_key!r} ({video.source_uri})"
    try:
        if write_video:
            stream = _from_output(root, shard_id, video, options)
        else:
            stream = _from_source(video, source_format, options)
        todo = iter(wanted)
        due = next(todo)
        with stream:
            for frame in stream:
                if frame.index == due:
                    if frame.rgb.shape[:2] != (video.height, video.width):
                        raise ValueError(
                            f"{where}: frame {due} decodes at {frame.rgb.shape[1]}x{frame.rgb.shape[0]}, its masks "
                            f"are {video.width}x{video.height}"
                        )
                    yield due, frame.rgb
                    due = next(todo, None)
                    if due is None:
                        return
    except VideoDecodeError as exc:
        raise ValueError(f"{where}: cannot decode its frames ({exc})") from exc
    raise ValueError(f"{where}: the video ends before frame {due}")


def _from_output(root: str, shard_id: str, video: VideoRecord, options: dict) -> VideoStream:
    with closing(iter_video_members(root, shard_id)) as members:
        for key, _, data in members:
            if key == video.video_key:
                return open_video(data, key=key, min_frames=1, **options)
    raise ValueError(f"the output's tar of shard {shard_id} holds no video bytes for {video.video_key!r}")


def _from_source(video: VideoRecord, source_format: str | None, options: dict) -> VideoStream:
    uri, _, member = video.source_uri.partition("#")
    if source_format == "frames":
        shard = Shard("review", uri, "frames", (uri,))
    elif member and source_format in ("wds", None):
        shard = Shard("review", uri, "wds")
    else:
        shard = Shard("review", uri, "manifest", (ManifestRow(0, video.original_key, video.source_uri),))
    with closing(iter_videos(shard)) as samples:
        for sample in samples:
            if sample.key == video.video_key:
                if isinstance(sample, VideoInput):
                    return sample.open(min_frames=1, **options)
                raise ValueError(f"its input cannot be read: {sample.reason}")
    raise ValueError(f"{uri} no longer holds video {video.original_key!r}")
