"""What the video pipelines share: the tracker surface they drive, and frames replayed backwards.

Backward passes (late-born masklets, objects prompted after the first frame) run a reverse tracker
over frames the forward pass has already consumed. Frames are never kept for this: holding every
decoded frame of a video would make memory grow with its length. The video is decoded again
instead, `REPLAY_CHUNK` frames at a time from the end of the span back to its start: each chunk is
`FrameStream.reopen(start, stop)`, which the runner serves by seeking to the keyframe at or before
the chunk's first frame (masklet.io.video), not by decoding the video's prefix. At most
`REPLAY_CHUNK` frames are held, and a backward pass over n frames decodes about n frames plus, per
chunk, those between the chunk's first frame and the keyframe before it: linear in n.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Protocol

import numpy as np
import torch

from masklet.io.video import Frame
from masklet.model import SAM2Model
from masklet.model.sam2 import ImageFeatures
from masklet.model.tracker import TrackOutput, VideoTracker
from masklet.model.transforms import ArrayLike
from masklet.pipelines.quality import MaskletSequences

REPLAY_CHUNK = 64  # frames held at once by a backward pass


class Tracker(Protocol):
    """The part of `VideoTracker` the pipelines use (a test double implements it too)."""

    def add_object(self, obj_id: int, **prompt: object) -> None: ...

    def encode(self, frame: np.ndarray) -> ImageFeatures: ...

    def step(self, frame: np.ndarray | ImageFeatures) -> TrackOutput: ...

    def correct(self, masks: Mapping[int, ArrayLike]) -> TrackOutput: ...

    def remove_object(self, obj_id: int) -> None: ...


class TrackerFactory(Protocol):
    """A fresh tracker whose first `step` is annotated frame `start` (a position, not a video frame)."""

    def __call__(self, *, reverse: bool, start: int) -> Tracker: ...


def tracker_factory(model: SAM2Model, *, max_cond_frames: int | None = None) -> TrackerFactory:
    """`VideoTracker`s on `model`, run in the model's dtype (autocast when it is not float32)."""
    dtype = next(model.parameters()).dtype

    def make(*, reverse: bool, start: int) -> Tracker:
        return VideoTracker(model, reverse=reverse, start_frame=start, max_cond_frames=max_cond_frames, dtype=dtype)

    return make


Reopen = Callable[[int, int], Iterable[Frame]]  # FrameStream.reopen(start, stop)


def replay_backward(reopen: Reopen, last: int, chunk: int = REPLAY_CHUNK) -> Iterator[tuple[int, Frame]]:
    """(position, frame) for annotated positions last, last - 1, ..., 0, decoding the video again
    one `chunk` of frames at a time (see the module doc). Raises if the video yields fewer frames than before."""
    end = last + 1
    while end > 0:
        start = max(0, end - chunk)
        frames = iter(reopen(start, end))
        try:
            held = list(itertools.islice(frames, end - start))
        finally:
            close = getattr(frames, "close", None)
            if close is not None:
                close()
        if len(held) != end - start:
            raise RuntimeError(f"decoding the video again gave {start + len(held)} frames, not the {end} seen before")
        for k in range(len(held) - 1, -1, -1):
            yield start + k, held[k]
        del held
        end = start


def record(
    sequences: MaskletSequences, frame_index: int, out: TrackOutput, keep: Callable[[int], bool] | None = None
) -> None:
    """Add one tracked frame to `sequences`: every object, or those whose id `keep` accepts."""
    rows = [k for k, o in enumerate(out.obj_ids) if keep is None or keep(o)]
    if not rows:
        return
    index = torch.tensor(rows, device=out.iou.device)
    sequences.add_frame(
        frame_index,
        [out.obj_ids[k] for k in rows],
        out.video_res_logits.index_select(0, index),
        out.iou.index_select(0, index),
        out.object_score_logits.index_select(0, index),
    )
