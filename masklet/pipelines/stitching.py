"""The masklets of one video labelled in time chunks, stitched into one set with ids through the video.

A split video (masklet.jobs.split) is labelled chunk by chunk on different workers, each chunk running
`overlap` annotated frames into the next one, and each chunk numbering its masklets from 1. On the
frames two consecutive chunks share, every masklet of the earlier chunk is matched one to one with a
masklet of the later one: Hungarian assignment on their IoU over the shared frames (summed
intersections over summed unions, the tube IoU of the duplicate filter, so a masklet empty on those
frames matches nothing), a pair at or above `min_iou` being one object.

- **Matched**: one masklet, with one id: the earlier chunk's entries before the middle of the
  overlap, the later chunk's from it on. Each chunk's tracker has then had half the overlap to
  settle (the later chunk's started cold, on its first frame).
- **Unmatched**: a masklet of the earlier chunk ends at the boundary, one of the later chunk starts
  there; each keeps all its entries, overlap included, so no frame's label is lost (where both
  label one object without matching, the duplicate filter sees the two).

Ids: chunk 0's masklets in order get 1, 2, ...; a continued masklet keeps its id through every later
chunk; a new one gets the next free id. Matching is between consecutive chunks only: an object unseen
for a whole chunk comes back as a new masklet, as a released one does in an unsplit video. Summary
columns are recomputed from the joined per-frame lists; `edit_count` is the sum of the parts' counts.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment

from masklet.io.schema import MaskletRecord
from masklet.pipelines.filters import tube_ious


@dataclass(frozen=True)
class Boundary:
    """What happened where chunk `index` - 1 meets chunk `index`: pairs joined, masklets ended and started."""

    index: int
    shared_frames: int
    matched: int
    ended: int
    started: int


@dataclass
class _Part:
    """The entries of `record` on frames lo <= f < hi that a stitched masklet takes."""

    record: MaskletRecord
    lo: float = -math.inf
    hi: float = math.inf


def overlap_ious(earlier: Sequence[MaskletRecord], later: Sequence[MaskletRecord], frames: set[int]) -> np.ndarray:
    """[len(earlier), len(later)] IoU of the masklets over `frames`: summed intersections / summed unions."""
    if not earlier or not later:
        return np.zeros((len(earlier), len(later)))
    both = [_restricted(m, frames) for m in (*earlier, *later)]
    return tube_ious(both)[: len(earlier), len(earlier) :]


def stitch(
    video_key: str,
    chunks: Sequence[Sequence[MaskletRecord]],
    frames: Sequence[Sequence[int]],
    min_iou: float,
) -> tuple[list[MaskletRecord], list[Boundary]]:
    """One video's masklets from its chunks' (chunk k's masklets and annotated frames, in order), with
    what happened at each boundary."""
    if len(chunks) != len(frames):
        raise ValueError(f"{len(chunks)} chunks of masklets but {len(frames)} lists of frames")
    parts: list[list[_Part]] = []  # per stitched masklet, in id order
    owner: dict[int, int] = {}  # masklet_id in the previous chunk -> index into parts
    boundaries: list[Boundary] = []
    for k, masklets in enumerate(chunks):
        matched: dict[int, int] = {}
        if k:
            shared = sorted(set(frames[k - 1]) & set(frames[k]))
            previous = list(chunks[k - 1])
            if shared:
                cut = shared[len(shared) // 2]
                ious = overlap_ious(previous, masklets, set(shared))
                for i, j in zip(*linear_sum_assignment(ious, maximize=True), strict=True):
                    if ious[i, j] >= min_iou:
                        joined = owner[previous[i].masklet_id]
                        parts[joined][-1].hi = cut
                        parts[joined].append(_Part(masklets[j], lo=cut))
                        matched[int(j)] = joined
            boundaries.append(
                Boundary(k, len(shared), len(matched), len(previous) - len(matched), len(masklets) - len(matched))
            )
        owner = {}
        for j, m in enumerate(masklets):
            if j not in matched:
                parts.append([_Part(m)])
            owner[m.masklet_id] = matched.get(j, len(parts) - 1)
    records = [_joined(video_key, i + 1, p) for i, p in enumerate(parts)]
    return [r for r in records if r is not None], boundaries


def _restricted(record: MaskletRecord, frames: set[int]) -> MaskletRecord:
    """`record` with only its entries on `frames` (its summary columns left as they were)."""
    keep = [t for t, f in enumerate(record.frame_indices) if f in frames]
    per_frame = ("frame_indices", "rle", "area", "pred_iou", "stability", "object_score")
    return dataclasses.replace(record, **{name: [getattr(record, name)[t] for t in keep] for name in per_frame})


def _joined(video_key: str, masklet_id: int, parts: list[_Part]) -> MaskletRecord | None:
    """One masklet from its parts' entries, or None where they leave it no frame."""
    picked = [(p.record, t) for p in parts for t, f in enumerate(p.record.frame_indices) if p.lo <= f < p.hi]
    if not picked:
        return None
    rles = {id(p.record): p.record.rles() for p in parts}
    return MaskletRecord.from_frames(
        video_key,
        masklet_id,
        source=parts[0].record.source,
        frame_indices=[m.frame_indices[t] for m, t in picked],
        rles=[rles[id(m)][t] for m, t in picked],
        pred_iou=[m.pred_iou[t] for m, t in picked],
        stability=[m.stability[t] for m, t in picked],
        object_score=[m.object_score[t] for m, t in picked],
        edit_count=sum(p.record.edit_count for p in parts),
    )
