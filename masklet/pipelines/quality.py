"""Per-frame quality of tracked masks, gathered into per-masklet sequences for the output rows.

A tracker step gives, for N objects, mask logits, a predicted IoU and an object-score logit. Here
they become what a `MaskletRecord` holds: COCO RLE counts (encoded in one batch per frame, on the
worker, so dense masks never leave it), predicted IoU, SAM stability score and object score.

Visibility: an object is visible on a frame when its object score is > 0 *and* its mask
(logits > mask_threshold) is non-empty. A mask whose object score says "absent" is stored empty,
so `MaskletRecord.from_frames`, which counts visibility from mask areas, agrees with the model.
The scores are stored on every tracked frame, visible or not; the masklet means use visible ones.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from masklet.io import rle
from masklet.io.schema import SOURCES, MaskletRecord, empty_counts
from masklet.pipelines.mask_ops import stability_score


@dataclass(frozen=True)
class FrameQuality:
    """One frame's N objects: RLE counts ("" where not visible) and scores, as float32 values."""

    counts: list[str]
    pred_iou: list[float]
    stability: list[float]
    object_score: list[float]
    height: int
    width: int


def frame_quality(
    logits: Tensor,
    pred_iou: Tensor,
    object_score: Tensor,
    *,
    mask_threshold: float = 0.0,
    stability_offset: float = 1.0,
) -> FrameQuality:
    """Masks, RLEs and scores of N objects from logits [N, H, W] (or [N, 1, H, W]) at video size.

    Stability is computed on the logits as SAM does (IoU of the masks cut at mask_threshold
    +- stability_offset), before the object score blanks absent objects. One device->host copy
    (the binary masks) per frame.
    """
    if logits.ndim == 4 and logits.shape[1] == 1:
        logits = logits[:, 0]
    if logits.ndim != 3:
        raise ValueError(f"expected mask logits [N, H, W] or [N, 1, H, W], got {tuple(logits.shape)}")
    n, h, w = logits.shape
    if pred_iou.shape != (n,) or object_score.shape != (n,):
        raise ValueError(f"{n} masks but pred_iou {tuple(pred_iou.shape)} and object_score {tuple(object_score.shape)}")
    logits = logits.float()
    stability = stability_score(logits, mask_threshold, stability_offset)
    present = object_score > 0
    masks = (logits > mask_threshold) & present[:, None, None]
    encoded = rle.encode_tensor(masks)
    visible = masks.flatten(1).any(1).tolist()
    # float32 values, exactly what the Parquet columns will hold
    scores = torch.stack([pred_iou.float(), stability.float(), object_score.float()]).cpu().tolist()
    return FrameQuality(
        counts=[r["counts"] if v else "" for r, v in zip(encoded, visible, strict=True)],
        pred_iou=scores[0],
        stability=scores[1],
        object_score=scores[2],
        height=h,
        width=w,
    )


class MaskletSequences:
    """Per-object sequences of one video, filled one frame at a time, turned into records at the end.

    Objects may start late (a new masklet) or be visited twice (forward and backward passes both
    reach a prompted frame): the last values given for an (object, frame) win, and frames are
    sorted on output. Only RLE strings and floats are held, never masks.
    """

    def __init__(
        self, video_key: str, *, source: str = "auto", mask_threshold: float = 0.0, stability_offset: float = 1.0
    ) -> None:
        if source not in SOURCES:
            raise ValueError(f"masklet source must be one of {SOURCES}, got {source!r}")
        self.video_key = video_key
        self.source = source
        self.mask_threshold = mask_threshold
        self.stability_offset = stability_offset
        self._size: tuple[int, int] | None = None
        self._frames: dict[int, dict[int, tuple[str, float, float, float]]] = {}

    @property
    def obj_ids(self) -> list[int]:
        return sorted(self._frames)

    def add_frame(
        self, frame_index: int, obj_ids: Sequence[int], logits: Tensor, pred_iou: Tensor, object_score: Tensor
    ) -> None:
        """Record the tracker's outputs for `obj_ids` on original video frame `frame_index`."""
        where = f"video {self.video_key!r} frame {frame_index}"
        if len(obj_ids) != len(set(obj_ids)):
            raise ValueError(f"{where}: repeated object ids {list(obj_ids)}")
        if len(obj_ids) != logits.shape[0]:
            raise ValueError(f"{where}: {len(obj_ids)} ids for {logits.shape[0]} masks")
        if not obj_ids:
            return
        q = frame_quality(
            logits, pred_iou, object_score, mask_threshold=self.mask_threshold, stability_offset=self.stability_offset
        )
        if self._size is None:
            self._size = (q.height, q.width)
        elif self._size != (q.height, q.width):
            raise ValueError(f"{where}: masks {q.height}x{q.width}, earlier ones {self._size[0]}x{self._size[1]}")
        for i, obj in enumerate(obj_ids):
            entry = (q.counts[i], q.pred_iou[i], q.stability[i], q.object_score[i])
            self._frames.setdefault(int(obj), {})[int(frame_index)] = entry

    def records(self, edit_counts: Mapping[int, int] | None = None) -> list[MaskletRecord]:
        """One record per object, by increasing id; all kept (the filters decide later)."""
        if self._size is None:
            return []
        h, w = self._size
        empty = empty_counts(h, w)
        edits = edit_counts or {}
        records = []
        for obj in self.obj_ids:
            frames = sorted(self._frames[obj])
            counts, pred_iou, stability, score = zip(*(self._frames[obj][f] for f in frames), strict=True)
            records.append(
                MaskletRecord.from_frames(
                    self.video_key,
                    obj,
                    source=self.source,
                    frame_indices=frames,
                    rles=[{"size": [h, w], "counts": c or empty} for c in counts],
                    pred_iou=pred_iou,
                    stability=stability,
                    object_score=score,
                    edit_count=edits.get(obj, 0),
                )
            )
        return records
