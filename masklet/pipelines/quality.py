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

import errno
import math
import os
import tempfile
from array import array
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
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


class _Spill:
    """RLE counts in a local temporary file (unlinked at once: nothing is left behind by a crash), written
    through a buffer: at 1080p a masklet-frame's RLE is 1 to 2 KB, which for a long video is what would
    otherwise fill a worker's memory (2 hours, 64 objects at once: about 4 GB of local disk instead)."""

    BUFFER_BYTES = 1 << 20

    def __init__(self) -> None:
        self._file = tempfile.TemporaryFile(prefix="masklet-rle-")  # noqa: SIM115 (closed with its owner)
        self._buffer = bytearray()
        self._flushed = 0

    def add(self, data: bytes) -> int:
        """Append `data`; where it starts."""
        start = self._flushed + len(self._buffer)
        self._buffer += data
        if len(self._buffer) >= self.BUFFER_BYTES:
            self.flush()
        return start

    def flush(self) -> None:
        try:
            self._file.write(self._buffer)
            self._file.flush()
        except OSError as exc:
            if exc.errno == errno.ENOSPC:  # the machine's fault, retried; the folder to enlarge is named
                where = tempfile.gettempdir()
                raise OSError(exc.errno, f"no space left in {where} for a video's RLEs (set TMPDIR elsewhere)") from exc
            raise
        self._flushed += len(self._buffer)
        self._buffer.clear()

    def read(self, start: int, length: int) -> bytes:
        """`length` bytes from `start` (flushed)."""
        return os.pread(self._file.fileno(), length, start) if length else b""


class _Entries:
    """One object's frame entries in the order given, packed: 28 bytes each, its RLE in the video's
    `_Spill`, where Python objects (a dict slot, a tuple, a str, three floats) took about 280 and the RLE,
    for every masklet-frame of a video."""

    def __init__(self, spill: _Spill) -> None:
        self.spill = spill
        self.frames = array("i")
        self.scores = array("f")  # pred_iou, stability, object_score of each entry
        self.starts = array("q")  # where each entry's RLE counts start in the spill
        self.lengths = array("i")

    def add(self, frame: int, counts: str, pred_iou: float, stability: float, object_score: float) -> None:
        data = counts.encode("ascii")
        self.frames.append(frame)
        self.scores.extend((pred_iou, stability, object_score))
        self.starts.append(self.spill.add(data))
        self.lengths.append(len(data))

    def latest(self) -> np.ndarray:
        """Indices of the entries that stand, by increasing frame: the last one given for each frame."""
        frames = np.frombuffer(self.frames, dtype=np.int32)
        order = np.argsort(frames, kind="stable")
        ordered = frames[order]
        return order[np.append(ordered[1:] != ordered[:-1], True)]  # the last of each run of one frame

    def counts_of(self, at: np.ndarray) -> list[str]:
        """The RLE counts of entries `at`."""
        starts = np.frombuffer(self.starts, dtype=np.int64)[at].tolist()
        lengths = np.frombuffer(self.lengths, dtype=np.int32)[at].tolist()
        return [str(self.spill.read(a, n), "ascii") for a, n in zip(starts, lengths, strict=True)]


class MaskletSequences:
    """Per-object sequences of one video, filled one frame at a time, turned into records at the end.

    Objects may start late (a new masklet) or be visited twice (forward and backward passes both
    reach a prompted frame): the last values given for an (object, frame) win, and frames are
    sorted on output. Scores are held packed (`_Entries`), RLE bytes in a local file (`_Spill`),
    never masks.
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
        self._entries: dict[int, _Entries] = {}
        self._spill = _Spill()

    @property
    def obj_ids(self) -> list[int]:
        return sorted(self._entries)

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
            entries = self._entries.setdefault(int(obj), _Entries(self._spill))
            entries.add(int(frame_index), q.counts[i], q.pred_iou[i], q.stability[i], q.object_score[i])

    def finish(self, edit_counts: Mapping[int, int] | None = None) -> PackedMasklets:
        """The video's masklets (`edit_counts`: automatic edits per object), as they stand now."""
        return PackedMasklets(self, edit_counts or {})

    def records(self, edit_counts: Mapping[int, int] | None = None) -> list[MaskletRecord]:
        """One record per object, by increasing id; all kept (the filters decide later)."""
        return self.finish(edit_counts).records()


class PackedMasklets:
    """A video's masklets from its `MaskletSequences`, a `masklet.pipelines.streamed.MaskletStore`: a record
    is built when asked for, of one masklet whole or of every masklet on a window of `window_frames`
    frames (64 objects on 256 frames: 16,384 entries, a few MB as records)."""

    def __init__(self, sequences: MaskletSequences, edit_counts: Mapping[int, int], window_frames: int = 256) -> None:
        self.video_key, self.source = sequences.video_key, sequences.source
        self._size = sequences._size
        self._entries = sequences._entries
        sequences._spill.flush()  # every RLE is read from the file from here on
        self._edits = dict(edit_counts)
        # per object: the entries that stand, and their frames (increasing)
        self._standing = {obj: self._entries[obj].latest() for obj in sorted(self._entries)}
        self._frames = {
            obj: np.frombuffer(self._entries[obj].frames, dtype=np.int32)[at] for obj, at in self._standing.items()
        }
        every = np.unique(np.concatenate(list(self._frames.values()))) if self._frames else np.zeros(0, np.int32)
        cuts = every[window_frames::window_frames].tolist()
        self.windows: list[tuple[float, float]] = list(zip([-math.inf, *cuts], [*cuts, math.inf], strict=True))
        self._every = every

    def ids(self) -> list[int]:
        return list(self._standing)

    def masklet(self, masklet_id: int) -> MaskletRecord:
        return self._record(masklet_id, 0, len(self._standing[masklet_id]))

    def window(self, k: int, ids: set[int] | None = None) -> list[MaskletRecord]:
        lo, hi = self.windows[k]
        out = []
        for obj, frames in self._frames.items():
            if ids is not None and obj not in ids:
                continue
            a, b = np.searchsorted(frames, [lo, hi]).tolist()
            if b > a:
                out.append(self._record(obj, a, b))
        return out

    def frames(self) -> set[int]:
        return set(self._every.tolist())

    def records(self) -> list[MaskletRecord]:
        """Every masklet, by increasing id."""
        return [self.masklet(obj) for obj in self.ids()]

    def _record(self, obj: int, a: int, b: int) -> MaskletRecord:
        """Object `obj`'s standing entries a..b-1 (by frame) as a record."""
        assert self._size is not None, "objects have entries, so a size"
        h, w = self._size
        empty, size = empty_counts(h, w), [h, w]  # one size list for every frame's RLE
        entries, at = self._entries[obj], self._standing[obj][a:b]
        scores = np.frombuffer(entries.scores, dtype=np.float32).reshape(-1, 3)[at]
        return MaskletRecord.from_frames(
            self.video_key,
            obj,
            source=self.source,
            frame_indices=self._frames[obj][a:b].tolist(),
            rles=[{"size": size, "counts": c or empty} for c in entries.counts_of(at)],
            pred_iou=scores[:, 0].tolist(),
            stability=scores[:, 1].tolist(),
            object_score=scores[:, 2].tolist(),
            edit_count=self._edits.get(obj, 0),
        )
