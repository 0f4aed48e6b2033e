"""Paint a video's masklets on its annotated frames: an animated WebP of the kept ones, a strip of the dropped.

Frames come from the output's own tar when the job wrote the video bytes there, else from the input
the video row names (`source_uri`: `TAR#member`, a manifest's uri or a frame folder), read through
masklet.io.sources and decoded with masklet.io.video at a stride that visits only the annotated
frames. Frames are resized to `WIDTH` on arrival, so memory holds small frames only.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from contextlib import closing
from dataclasses import dataclass

import numpy as np
from matplotlib import colormaps
from PIL import Image, ImageDraw, ImageFont

from masklet.io import rle
from masklet.io.layout import shard_files
from masklet.io.outputs import iter_video_members
from masklet.io.schema import MaskletRecord, VideoRecord
from masklet.io.sources import ManifestRow, Shard, VideoInput, iter_videos
from masklet.io.video import VideoDecodeError, VideoStream, open_video

WIDTH = 480  # pixels of the animation (small videos are enlarged): objects and ids readable, small enough to inline
MAX_FRAMES = 120  # annotated frames animated per video (the first ones)
MAX_DROPPED = 12  # tiles in the dropped strip
TILE_WIDTH = 160
ALPHA = 0.5
PALETTE = (np.asarray(colormaps["tab10"].colors) * 255).astype(np.uint8)


class FramesUnavailable(Exception):
    """The video's frames cannot be had; the message says why, for the report to show."""


@dataclass(frozen=True)
class Overlay:
    """What a video section shows: its animation and dropped strip, or why there are none."""

    animation: bytes | None = None
    frames: int = 0
    annotated: int = 0
    dropped_strip: bytes | None = None
    problem: str | None = None


def color(masklet_id: int) -> tuple[int, int, int]:
    r, g, b = PALETTE[masklet_id % len(PALETTE)]
    return int(r), int(g), int(b)


def frame_axis(video: VideoRecord, masklets: Sequence[MaskletRecord]) -> list[int]:
    """The annotated frames of the video and of its masklets: the frame axis of its SA-V JSON."""
    return sorted(set(video.frame_indices).union(*(m.frame_indices for m in masklets)))


def render(
    root: str,
    shard_id: str,
    video: VideoRecord,
    masklets: Sequence[MaskletRecord],
    *,
    write_video: bool,
    source_format: str | None,
) -> Overlay:
    """The overlay of one ok video; a video whose frames cannot be read gets `problem` instead."""
    axis = frame_axis(video, masklets)
    if not axis:
        return Overlay(problem="the video has no annotated frame")
    wanted, annotated = axis[:MAX_FRAMES], len(axis)
    try:
        frames = _decode(root, shard_id, video, wanted, write_video=write_video, source_format=source_format)
    except (FramesUnavailable, VideoDecodeError, OSError) as exc:
        return Overlay(annotated=annotated, problem=f"frames unavailable: {exc}")
    if not frames:
        return Overlay(annotated=annotated, problem="frames unavailable: no annotated frame could be decoded")
    kept = [m for m in masklets if m.kept]
    dropped = [m for m in masklets if not m.kept]
    images = [_paint(index, rgb, kept) for index, rgb in frames.items()]
    step = _step(wanted)
    duration = int(min(500, max(100, 1000 * step / float(video.fps))))  # real time, within 2 to 10 frames/s
    buffer = io.BytesIO()
    images[0].save(
        buffer, format="WEBP", save_all=True, append_images=images[1:], duration=duration, loop=0, quality=70
    )
    return Overlay(
        animation=buffer.getvalue(),
        frames=len(images),
        annotated=annotated,
        dropped_strip=_strip(dropped, frames) if dropped else None,
    )


def _step(wanted: Sequence[int]) -> int:
    """The decode stride that lands on every wanted frame: their greatest common divisor."""
    return math.gcd(*wanted) or 1


def _decode(
    root: str, shard_id: str, video: VideoRecord, wanted: list[int], *, write_video: bool, source_format: str | None
) -> dict[int, np.ndarray]:
    """The wanted frames, resized to WIDTH, by frame index; frames the video turns out not to have are left out."""
    step = _step(wanted)
    options = {"fps": float(video.fps) / step, "max_frames": wanted[-1] // step + 1, "prefetch_frames": 4}
    if write_video:
        stream = _stream_from_output(root, shard_id, video, options)
    else:
        stream = _source_input(video, source_format).open(min_frames=1, **options)
    height = max(1, round(int(video.height) * WIDTH / int(video.width)))
    want = set(wanted)
    with stream:
        return {f.index: _resize(f.rgb, WIDTH, height) for f in stream if f.index in want}


def _stream_from_output(root: str, shard_id: str, video: VideoRecord, options: dict) -> VideoStream:
    with closing(iter_video_members(root, shard_id)) as members:
        for key, _, data in members:
            if key == video.video_key:
                return open_video(data, key=key, min_frames=1, **options)
    raise FramesUnavailable(f"{shard_files(shard_id)['wds']} holds no video bytes for {video.video_key!r}")


def _source_input(video: VideoRecord, source_format: str | None) -> VideoInput:
    """The video's input, found again through masklet.io.sources from its `source_uri`."""
    uri, _, member = video.source_uri.partition("#")
    if source_format == "frames":
        shard = Shard("report", uri, "frames", (uri,))
    elif member and source_format in ("wds", None):
        shard = Shard("report", uri, "wds")
    else:
        shard = Shard("report", uri, "manifest", (ManifestRow(0, video.original_key, video.source_uri),))
    with closing(iter_videos(shard)) as samples:
        for sample in samples:
            if sample.key == video.video_key:
                if isinstance(sample, VideoInput):
                    return sample
                raise FramesUnavailable(sample.reason)
    raise FramesUnavailable(f"{uri} no longer holds video {video.original_key!r}")


def _resize(rgb: np.ndarray, width: int, height: int) -> np.ndarray:
    if rgb.shape[1] == width:
        return rgb
    return np.asarray(Image.fromarray(rgb).resize((width, height), Image.Resampling.BILINEAR))


def _mask(m: MaskletRecord, position: int, shape: tuple[int, int]) -> np.ndarray | None:
    """The masklet's mask at one of its frames, resampled (nearest) to `shape`; None where not visible."""
    if not m.rle[position]:
        return None
    full = rle.decode({"size": [m.height, m.width], "counts": m.rle[position]})
    rows = np.arange(shape[0]) * m.height // shape[0]
    cols = np.arange(shape[1]) * m.width // shape[1]
    return full[np.ix_(rows, cols)].astype(bool)


def _edge(mask: np.ndarray) -> np.ndarray:
    inner = mask.copy()
    inner[1:] &= mask[:-1]
    inner[:-1] &= mask[1:]
    inner[:, 1:] &= mask[:, :-1]
    inner[:, :-1] &= mask[:, 1:]
    return mask & ~inner


def _blend(rgb: np.ndarray, mask: np.ndarray, rgb_color: tuple[int, int, int]) -> None:
    paint = np.asarray(rgb_color, dtype=np.float32)
    rgb[mask] = rgb[mask] * (1 - ALPHA) + paint * ALPHA
    rgb[_edge(mask)] = paint


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=size)


def _paint(index: int, rgb: np.ndarray, kept: Sequence[MaskletRecord]) -> Image.Image:
    """One animation frame: every kept masklet in its colour with its id at its centre."""
    canvas = rgb.astype(np.float32)
    labels = []
    for m in kept:
        position = _position(m, index)
        mask = None if position is None else _mask(m, position, rgb.shape[:2])
        if mask is not None and mask.any():
            _blend(canvas, mask, color(m.masklet_id))
            ys, xs = np.nonzero(mask)
            labels.append((m.masklet_id, float(xs.mean()), float(ys.mean())))
    image = Image.fromarray(canvas.astype(np.uint8))
    draw = ImageDraw.Draw(image)
    font = _font(14)
    for masklet_id, x, y in labels:
        draw.text((x, y), str(masklet_id), fill="white", font=font, anchor="mm", stroke_width=2, stroke_fill="black")
    draw.text((4, 4), f"frame {index}", fill="white", font=_font(11), stroke_width=2, stroke_fill="black")
    return image


def _position(m: MaskletRecord, index: int) -> int | None:
    try:
        return m.frame_indices.index(index)
    except ValueError:
        return None


def _strip(dropped: Sequence[MaskletRecord], frames: dict[int, np.ndarray]) -> bytes:
    """One tile per dropped masklet (its largest mask, in red) captioned with its id and reason."""
    tiles = [_tile(m, frames) for m in dropped[:MAX_DROPPED]]
    strip = Image.new(
        "RGB", (sum(t.width for t in tiles) + 4 * (len(tiles) - 1), max(t.height for t in tiles)), "white"
    )
    x = 0
    for tile in tiles:
        strip.paste(tile, (x, 0))
        x += tile.width + 4
    buffer = io.BytesIO()
    strip.save(buffer, format="PNG")
    return buffer.getvalue()


def _tile(m: MaskletRecord, frames: dict[int, np.ndarray]) -> Image.Image:
    shown = [
        (area, pos) for pos, (index, area) in enumerate(zip(m.frame_indices, m.area, strict=True)) if index in frames
    ]
    any_frame = next(iter(frames.values()))
    height = max(1, round(any_frame.shape[0] * TILE_WIDTH / any_frame.shape[1]))
    caption = 30
    tile = Image.new("RGB", (TILE_WIDTH, height + caption), "white")
    if shown and max(shown)[0] > 0:
        position = max(shown)[1]
        rgb = frames[m.frame_indices[position]].astype(np.float32)
        _blend(rgb, _mask(m, position, rgb.shape[:2]), (230, 40, 40))
        tile.paste(Image.fromarray(rgb.astype(np.uint8)).resize((TILE_WIDTH, height)), (0, 0))
        where = f"frame {m.frame_indices[position]}"
    else:
        tile.paste(Image.new("RGB", (TILE_WIDTH, height), "#888888"), (0, 0))
        where = "never visible" if m.num_visible == 0 else "not on the frames shown"
    draw = ImageDraw.Draw(tile)
    font = _font(11)
    draw.text((3, height + 2), f"#{m.masklet_id} {where}", fill="black", font=font)
    draw.text((3, height + 16), str(m.reject_reason), fill=(180, 20, 20), font=font)
    return tile
