"""The frames of an output's video, for a reviewer to see: decoded at full resolution.

Opened by masklet.io.output_video (the output's tar or the input the row names) at a stride that
lands on every wanted frame, as the report does.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import numpy as np

from masklet.io.output_video import open_output_video
from masklet.io.schema import VideoRecord
from masklet.io.video import VideoDecodeError


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
        stream = open_output_video(
            root, shard_id, video, write_video=write_video, source_format=source_format, **options
        )
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
