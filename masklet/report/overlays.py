"""A video's view for the report: its annotated frames encoded once, every masklet's masks on them.

Frames come from masklet.io.output_video (the output's tar, or the input the video row names),
decoded at a stride that visits only the annotated frames. Each frame is downscaled (never enlarged)
to at most `WIDTH` pixels wide on arrival and encoded once as WebP; each masklet's masks are COCO
RLE at that same size (the stored strings as they are when the video is no larger), which the
page's script decodes onto a canvas: fill or outline, opacity and which masklets show are decided
in the browser, not baked into pixels.
`animate` paints the same view into an animated WebP for `masklet show --out clip.webp`.
"""

from __future__ import annotations

import colorsys
import io
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from scipy import ndimage

from masklet.io import rle
from masklet.io.output_video import FramesUnavailable, open_output_video
from masklet.io.schema import MaskletRecord, VideoRecord
from masklet.io.video import VideoDecodeError

WIDTH = 480  # widest a frame is stored (larger videos are downscaled; smaller ones are shown enlarged)
DISPLAY_WIDTH = 480  # CSS pixels a frame is drawn at
MAX_FRAMES = 120  # annotated frames shown per video (the first ones)
FRAME_QUALITY = 80  # WebP quality of a stored frame
ALPHA = 0.4  # fill opacity of the animation (the page has a slider)


@dataclass(frozen=True)
class View:
    """What the page's viewer draws: the shown frames (WebP, encoded once) and each masklet's masks.

    `masks[masklet_id][i]` is the COCO counts string of the masklet on `frame_indices[i]` at
    `height` x `width` (the stored frame size), "" where it is not visible or not tracked.
    """

    frame_indices: list[int]
    images: list[bytes]
    height: int
    width: int
    masks: dict[int, list[str]]
    step_ms: int  # play speed: real time, within 2 to 10 frames/s

    @property
    def display(self) -> tuple[int, int]:
        """(height, width) in CSS pixels of the drawn frame."""
        return max(1, round(self.height * DISPLAY_WIDTH / self.width)), DISPLAY_WIDTH


@dataclass(frozen=True)
class Overlay:
    """A video's view, or why it has none."""

    view: View | None = None
    annotated: int = 0
    problem: str | None = None

    @property
    def frames(self) -> int:
        return 0 if self.view is None else len(self.view.frame_indices)


def colors(masklet_ids: Iterable[int]) -> dict[int, str]:
    """A colour per masklet of one video, distinct within it: hues a golden angle apart, in id order.

    The viewer, its list and the dropped tiles all take a masklet's colour from here.
    """
    result = {}
    for i, masklet_id in enumerate(sorted(set(masklet_ids))):
        hue = (0.02 + i * 0.381966) % 1.0
        light = 0.5 if i % 2 == 0 else 0.62
        r, g, b = colorsys.hls_to_rgb(hue, light, 0.95)
        result[masklet_id] = f"#{round(r * 255):02x}{round(g * 255):02x}{round(b * 255):02x}"
    return result


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
    """The view of one ok video; a video whose frames cannot be read gets `problem` instead."""
    axis = frame_axis(video, masklets)
    if not axis:
        return Overlay(problem="the video has no annotated frame")
    wanted, annotated = axis[:MAX_FRAMES], len(axis)
    height, width = stored_size(int(video.height), int(video.width))
    try:
        frames = _decode(
            root, shard_id, video, wanted, (height, width), write_video=write_video, source_format=source_format
        )
    except (FramesUnavailable, VideoDecodeError, OSError) as exc:
        return Overlay(annotated=annotated, problem=f"frames unavailable: {exc}")
    if not frames:
        return Overlay(annotated=annotated, problem="frames unavailable: no annotated frame could be decoded")
    indices = sorted(frames)
    step = _step(wanted)
    view = View(
        frame_indices=indices,
        images=[_webp(frames[i]) for i in indices],
        height=height,
        width=width,
        masks={m.masklet_id: masks_on(m, indices, (height, width)) for m in masklets},
        step_ms=int(min(500, max(100, 1000 * step / float(video.fps)))),
    )
    return Overlay(view=view, annotated=annotated)


def stored_size(height: int, width: int) -> tuple[int, int]:
    """The size frames and masks are stored at: the video's, downscaled to at most WIDTH wide."""
    if width <= WIDTH:
        return height, width
    return max(1, round(height * WIDTH / width)), WIDTH


def masks_on(m: MaskletRecord, indices: Sequence[int], size: tuple[int, int]) -> list[str]:
    """The masklet's counts on each of `indices` at `size` ("" where not visible): the stored strings
    when the masks are that size, else decoded, resampled (nearest) and encoded again."""
    position = {f: p for p, f in enumerate(m.frame_indices)}
    out = [m.rle[position[f]] if f in position else "" for f in indices]
    if (m.height, m.width) == size:
        return out
    visible = [i for i, counts in enumerate(out) if counts]
    if not visible:
        return out
    full = rle.decode_batch([{"size": [m.height, m.width], "counts": out[i]} for i in visible])
    rows = np.arange(size[0]) * m.height // size[0]
    cols = np.arange(size[1]) * m.width // size[1]
    small = full[:, rows][:, :, cols]
    for k, (i, encoded) in enumerate(zip(visible, rle.encode_batch(small), strict=True)):
        out[i] = encoded["counts"] if small[k].any() else ""
    return out


def _webp(rgb: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="WEBP", quality=FRAME_QUALITY, method=4)
    return buffer.getvalue()


def _step(wanted: Sequence[int]) -> int:
    """The decode stride that lands on every wanted frame: their greatest common divisor."""
    return math.gcd(*wanted) or 1


def _decode(
    root: str,
    shard_id: str,
    video: VideoRecord,
    wanted: list[int],
    size: tuple[int, int],
    *,
    write_video: bool,
    source_format: str | None,
) -> dict[int, np.ndarray]:
    """The wanted frames at `size`, by frame index; frames the video turns out not to have are left out."""
    step = _step(wanted)
    options = {"fps": float(video.fps) / step, "max_frames": wanted[-1] // step + 1, "prefetch_frames": 4}
    stream = open_output_video(root, shard_id, video, write_video=write_video, source_format=source_format, **options)
    want = set(wanted)
    with stream:
        return {f.index: _resize(f.rgb, *size) for f in stream if f.index in want}


def _resize(rgb: np.ndarray, height: int, width: int) -> np.ndarray:
    if rgb.shape[:2] == (height, width):
        return rgb
    return np.asarray(Image.fromarray(rgb).resize((width, height), Image.Resampling.BILINEAR))


# ---------------------------------------------------------------- the animation of `masklet show --out x.webp`


def animate(view: View, shown: Sequence[int], palette: dict[int, str]) -> bytes:
    """An animated WebP of the view with the masklets `shown` filled, outlined and labelled with their ids."""
    height, width = view.display
    images = []
    for position, (index, data) in enumerate(zip(view.frame_indices, view.images, strict=True)):
        with Image.open(io.BytesIO(data)) as stored:
            canvas = np.asarray(stored.convert("RGB").resize((width, height), Image.Resampling.BILINEAR))
        canvas = canvas.astype(np.float32)
        masks = []
        for masklet_id in shown:
            counts = view.masks[masklet_id][position]
            if counts:
                small = rle.decode({"size": [view.height, view.width], "counts": counts})
                mask = small[np.ix_(np.arange(height) * view.height // height, np.arange(width) * view.width // width)]
                if mask.any():
                    masks.append((masklet_id, mask))
        for masklet_id, mask in masks:
            paint = np.asarray(_rgb(palette[masklet_id]), dtype=np.float32)
            canvas[mask] = canvas[mask] * (1 - ALPHA) + paint * ALPHA
            canvas[edge(mask, 2)] = paint
        image = Image.fromarray(canvas.astype(np.uint8))
        draw = ImageDraw.Draw(image)
        font = _font(14)
        for masklet_id, (x, y) in label_points(masks, (18, 28)).items():
            draw.text(
                (x, y), str(masklet_id), fill="white", font=font, anchor="mm", stroke_width=2, stroke_fill="black"
            )
        draw.text((4, 4), f"frame {index}", fill="white", font=_font(11), stroke_width=2, stroke_fill="black")
        images.append(image)
    buffer = io.BytesIO()
    images[0].save(
        buffer, format="WEBP", save_all=True, append_images=images[1:], duration=view.step_ms, loop=0, quality=70
    )
    return buffer.getvalue()


def edge(mask: np.ndarray, width: int = 1) -> np.ndarray:
    """The mask's pixels within `width` of its border (4-neighbourhood, the image border counts)."""
    inner = ndimage.binary_erosion(mask, iterations=width, border_value=0)
    return mask & ~inner


def label_points(masks: Sequence[tuple[int, np.ndarray]], box: tuple[int, int]) -> dict[int, tuple[int, int]]:
    """Where each mask's label goes: its pixel farthest from its border whose `box` (height, width),
    centred there, stays on the frame and clear of the labels placed before; none where no such pixel is.

    The page's script places its labels by the same rule.
    """
    placed: dict[int, tuple[int, int]] = {}
    bh, bw = box
    for masklet_id, mask in masks:
        distance = ndimage.distance_transform_cdt(np.pad(mask, 1), metric="taxicab")[1:-1, 1:-1].astype(np.float64)
        h, w = mask.shape
        ys, xs = np.mgrid[0:h, 0:w]
        ok = (ys >= bh // 2) & (ys < h - bh // 2) & (xs >= bw // 2) & (xs < w - bw // 2) & mask
        for py, px in placed.values():
            ok &= (np.abs(ys - py) >= bh) | (np.abs(xs - px) >= bw)
        if ok.any():
            y, x = np.unravel_index(np.argmax(np.where(ok, distance, -1)), mask.shape)
            placed[masklet_id] = (int(y), int(x))
    return {k: (x, y) for k, (y, x) in placed.items()}


def _rgb(hex_color: str) -> tuple[int, int, int]:
    return int(hex_color[1:3], 16), int(hex_color[3:5], 16), int(hex_color[5:7], 16)


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=size)
