"""An output row's video decoded again, for the frames the report and a reviewer see.

From the output's own tar when the job wrote the video bytes there (`output.write_video`), else from
the input the video row names (`source_uri`: `TAR#member`, a manifest's uri or a frame folder),
found again through masklet.io.sources.
"""

from __future__ import annotations

from contextlib import closing
from typing import Any

from masklet.io.layout import shard_files
from masklet.io.outputs import iter_video_members
from masklet.io.schema import VideoRecord
from masklet.io.sources import ManifestRow, Shard, VideoInput, iter_videos
from masklet.io.video import VideoStream, open_video


class FramesUnavailable(ValueError):
    """The video's frames cannot be had; the message says why."""


def open_output_video(
    root: str, shard_id: str, video: VideoRecord, *, write_video: bool, source_format: str | None, **options: Any
) -> VideoStream:
    """The video of row `video` of shard `shard_id` of the output at `root`, opened with open_video's
    `options`; FramesUnavailable where it is not there, OSError where its input cannot be read."""
    if write_video:
        with closing(iter_video_members(root, shard_id)) as members:
            for key, _, data in members:
                if key == video.video_key:
                    return open_video(data, key=key, min_frames=1, **options)
        raise FramesUnavailable(f"{shard_files(shard_id)['wds']} holds no video bytes for {video.video_key!r}")
    uri, _, member = video.source_uri.partition("#")
    if source_format == "frames":
        shard = Shard("frames", uri, "frames", (uri,))
    elif member and source_format in ("wds", None):
        shard = Shard("frames", uri, "wds")
    else:
        shard = Shard("frames", uri, "manifest", (ManifestRow(0, video.original_key, video.source_uri),))
    with closing(iter_videos(shard)) as samples:
        for sample in samples:
            if sample.key == video.video_key:
                if isinstance(sample, VideoInput):
                    return sample.open(min_frames=1, **options)
                raise FramesUnavailable(f"its input cannot be read: {sample.reason}")
    raise FramesUnavailable(f"{uri} no longer holds video {video.original_key!r}")
