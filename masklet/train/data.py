"""Training clips from SA-V annotated videos: decoded once, sampled many times.

Frames are decoded at the annotated frame indices only and kept as the exact uint8 model input of
the video tracker (`resize_video_frame`, which `prepare_video_frame` normalizes), so training sees the pixels
inference sees and costs no resize per step. Masks stay as RLE until a clip needs them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from masklet.io import rle
from masklet.io.annotated import AnnotatedVideo, iter_annotated
from masklet.io.sources import VideoError
from masklet.io.video import VideoDecodeError
from masklet.model.sam2 import normalize_images
from masklet.model.transforms import resize_video_frame
from masklet.train.config import ClipConfig, DataConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainingVideo:
    """A video's annotated frames as model input (uint8 [F, 3, S, S]) and its masks as RLE [frame][object]."""

    key: str
    frames: Tensor
    masklet: list[list[rle.RLE]]

    @property
    def num_objects(self) -> int:
        return len(self.masklet[0]) if self.masklet else 0


@dataclass(frozen=True)
class Clip:
    """One training sample: normalized frames [T, 3, S, S] and ground truth [T, N, S, S] (bool)."""

    key: str
    frames: Tensor
    masks: Tensor


class NoTrainingData(ValueError):
    """Nothing usable to train on; the message lists why the videos were skipped."""


def load_videos(config: DataConfig, image_size: int) -> list[TrainingVideo]:
    """Decode every annotated video under `config.uri`; skipped ones are logged with their reason."""
    videos, errors = [], []
    for item in iter_annotated(config.uri, config.annotation, config.videos_uri):
        if config.max_videos is not None and len(videos) >= config.max_videos:
            break
        if isinstance(item, VideoError):
            errors.append(f"{item.original_key}: {item.reason}")
            continue
        try:
            video = _decode(item, image_size)
        except VideoDecodeError as exc:
            errors.append(f"{item.video.original_key}: {exc.reason}")
            continue
        if video.num_objects:
            videos.append(video)
        else:
            errors.append(f"{item.video.original_key}: the annotation has no masklets")
    for line in errors:
        log.warning("skipped %s", line)
    if not videos:
        shown = "; ".join(errors[:5]) or "no annotation members found"
        raise NoTrainingData(f"no usable annotated video under {config.uri} ({config.annotation}): {shown}")
    return videos


def _decode(item: AnnotatedVideo, image_size: int) -> TrainingVideo:
    ann = item.annotation
    wanted = {index: t for t, index in enumerate(ann.frame_indices)}
    frames: list[Tensor | None] = [None] * len(wanted)
    with item.video.open(fps=None) as stream:
        for frame in stream:
            t = wanted.get(frame.index)
            if t is not None:
                frames[t] = resize_video_frame(frame.rgb, image_size, "cpu")
            if frame.index >= ann.frame_indices[-1]:
                break
    missing = [ann.frame_indices[t] for t, f in enumerate(frames) if f is None]
    if missing:
        raise VideoDecodeError(item.video.key, f"annotated frame(s) {missing[:5]} are not in the video")
    pixels = torch.cat(frames)  # type: ignore[arg-type]
    return TrainingVideo(item.video.key, pixels, ann.masklet)


class ClipSampler:
    """Random clips: a video, a stride, a start, then objects visible on the clip's first frame."""

    def __init__(self, videos: list[TrainingVideo], config: ClipConfig, image_size: int) -> None:
        self.videos = [v for v in videos if len(v.masklet) >= config.frames]
        if not self.videos:
            raise NoTrainingData(f"no video has the {config.frames} annotated frames a clip needs")
        self.config = config
        self.image_size = image_size

    def sample(self, rng: np.random.Generator) -> Clip:
        """A clip with at least one object on its first frame, preferably `min_objects` (retried up to 100
        times)."""
        c = self.config
        fallback = None
        for _ in range(100):
            video = self.videos[int(rng.integers(len(self.videos)))]
            longest = max((len(video.masklet) - 1) // max(c.frames - 1, 1), 1)
            widest = min(c.max_stride, longest)
            stride = int(rng.integers(min(c.min_stride, widest), widest + 1))
            start = int(rng.integers(len(video.masklet) - (c.frames - 1) * stride))
            picks = list(range(start, start + c.frames * stride, stride))
            visible = self._visible(video.masklet[start])
            if len(visible) >= c.min_objects:
                return self._clip(video, picks, visible, rng)
            if visible and fallback is None:
                fallback = (video, picks, visible)
        if fallback is None:
            raise NoTrainingData("100 random clips in a row had no visible object on their first frame")
        return self._clip(*fallback, rng)

    def _visible(self, frame: list[rle.RLE]) -> list[int]:
        """Objects with pixels on this frame at the model's input size: a tiny object can vanish in the
        resize, and a prompt cannot be drawn from an empty mask."""
        present = [o for o, r in enumerate(frame) if rle.area(r) > 0]
        if not present:
            return []
        resized = self._resize(torch.from_numpy(rle.decode_batch([frame[o] for o in present]))[None])[0]
        return [o for o, m in zip(present, resized, strict=True) if m.any()]

    def _clip(self, video: TrainingVideo, picks: list[int], visible: list[int], rng: np.random.Generator) -> Clip:
        objects = rng.permutation(visible)[: self.config.max_objects].tolist()
        masks = torch.from_numpy(np.stack([rle.decode_batch([video.masklet[t][o] for o in objects]) for t in picks]))
        frames, masks = video.frames[picks], self._resize(masks)
        if rng.random() < self.config.hflip:
            frames, masks = frames.flip(-1), masks.flip(-1)
        return Clip(video.key, normalize_images(frames), masks)

    def _resize(self, masks: Tensor) -> Tensor:
        """[T, N, H, W] bool -> [T, N, S, S] bool, as mask prompts are resized (antialiased, >= 0.5)."""
        s = self.image_size
        t, n = masks.shape[:2]
        x = F.interpolate(
            masks.reshape(t * n, 1, *masks.shape[2:]).float(),
            size=(s, s),
            mode="bilinear",
            align_corners=False,
            antialias=True,
        )
        return (x >= 0.5).reshape(t, n, s, s)
