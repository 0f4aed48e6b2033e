"""The masklets of one video labelled in time chunks, stitched into one set with ids through the video.

A split video (masklet.jobs.split) is labelled chunk by chunk on different workers, each chunk running
`overlap` annotated frames into the next one, and each chunk numbering its masklets from 1. On the
frames two consecutive chunks share, every masklet of the earlier chunk is matched one to one with a
masklet of the later one: Hungarian assignment on their IoU over the shared frames (summed
intersections over summed unions, the tube IoU of the duplicate filter, so a masklet empty on those
frames matches nothing), a pair at or above `min_iou` being one object.

Each boundary is cut in the middle of the shared frames: every masklet takes its earlier chunk's
entries before the cut and its later chunk's from it on (each chunk's tracker has then had half the
overlap to settle; the later one started cold, on its first frame), so every frame's labels come from
one chunk. A matched pair is one masklet with one id; an unmatched masklet of the earlier chunk ends
at the cut, one of the later chunk starts there. Ids: chunk 0's masklets in order get 1, 2, ...; a
continued masklet keeps its id through every later chunk; a new one gets the next free id (a masklet
with no entry in its chunk's window gets none). Matching is between consecutive chunks only: an object
unseen through a whole overlap comes back as a new masklet, as a released one does in an unsplit video.

Nothing here holds more than two chunks or one stitched masklet: `plan_stitch` reads the chunks one
after another; `Stitched` is a store (masklet.pipelines.streamed) that joins each masklet from its
pieces (`joined`), one at a time, and gives a chunk's masklets in its window: the job's filters judge
them (the tube IoUs of the duplicate filter summed chunk by chunk, each frame's labels being one
chunk's), the writer takes them one at a time, and the SA-V document's rows come chunk by chunk.
Summary columns are recomputed from the joined per-frame lists; `edit_count` is the sum of the
pieces' counts.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment

from masklet.io.schema import MaskletRecord
from masklet.pipelines.filters import tube_ious

PER_FRAME = ("frame_indices", "rle", "area", "pred_iou", "stability", "object_score")


@dataclass(frozen=True)
class Boundary:
    """Where chunk `index` - 1 meets chunk `index`: the cut frame (a video frame index; the later chunk's
    entries from it on), the frames shared, and the masklets matched, ended and started there."""

    index: int
    cut: int
    shared_frames: int
    matched: int
    ended: int
    started: int


@dataclass(frozen=True)
class StitchPlan:
    """Which entries of which chunk make each stitched masklet: chunk k gives its entries on frames
    windows[k][0] <= f < windows[k][1], its masklet `local` becoming stitched masklet ids[k][local]."""

    windows: list[tuple[float, float]]
    ids: list[dict[int, int]]
    boundaries: list[Boundary]

    def own_frames(self, frames: Sequence[Sequence[int]]) -> list[list[int]]:
        """Per chunk, those of its annotated `frames[k]` in its window: the stitched video's, each once."""
        return [[f for f in fs if lo <= f < hi] for (lo, hi), fs in zip(self.windows, frames, strict=True)]

    def pieces(self) -> dict[int, list[tuple[int, int]]]:
        """Per stitched masklet id, its (chunk, local id) pieces in chunk order."""
        out: dict[int, list[tuple[int, int]]] = {}
        for k, chunk in enumerate(self.ids):
            for local, stitched in sorted(chunk.items()):
                out.setdefault(stitched, []).append((k, local))
        return out


def overlap_ious(earlier: Sequence[MaskletRecord], later: Sequence[MaskletRecord], frames: set[int]) -> np.ndarray:
    """[len(earlier), len(later)] IoU of the masklets over `frames`: summed intersections / summed unions."""
    if not earlier or not later:
        return np.zeros((len(earlier), len(later)))
    both = [window(m, lambda f: f in frames) for m in (*earlier, *later)]
    return tube_ious(both)[: len(earlier), len(earlier) :]


def plan_stitch(
    chunk: Callable[[int], Sequence[MaskletRecord]], frames: Sequence[Sequence[int]], min_iou: float
) -> StitchPlan:
    """The plan for chunks 0..len(frames)-1: `chunk(k)` gives chunk k's masklets, `frames[k]` its
    annotated frames (each chunk is read once, two are held at a time)."""
    count = len(frames)
    shares = [set()] + [set(frames[k - 1]) & set(frames[k]) for k in range(1, count)]  # frames at boundary k
    cuts: list[float] = [-math.inf]
    for k in range(1, count):
        shared = sorted(shares[k])
        cuts.append(shared[len(shared) // 2] if shared else frames[k][0])
    cuts.append(math.inf)
    windows = [(cuts[k], cuts[k + 1]) for k in range(count)]
    ids: list[dict[int, int]] = []
    boundaries: list[Boundary] = []
    previous: Sequence[MaskletRecord] = ()
    next_id = 1
    for k in range(count):
        current = chunk(k)
        continued: dict[int, int] = {}
        if k:
            ious = overlap_ious(previous, current, shares[k])
            for i, j in zip(*linear_sum_assignment(ious, maximize=True), strict=True):
                stitched = ids[k - 1].get(previous[i].masklet_id)
                if ious[i, j] >= min_iou and stitched is not None:
                    continued[current[j].masklet_id] = stitched
        lo, hi = windows[k]
        mapping = dict(continued)
        for m in current:
            if m.masklet_id not in mapping and any(lo <= f < hi for f in m.frame_indices):
                mapping[m.masklet_id], next_id = next_id, next_id + 1
        if k:
            ended = len(ids[k - 1]) - len(continued)
            boundaries.append(
                Boundary(k, int(lo), len(shares[k]), len(continued), ended, len(mapping) - len(continued))
            )
        ids.append(mapping)
        previous = current
    return StitchPlan(windows, ids, boundaries)


def window(record: MaskletRecord, keep: Callable[[int], bool]) -> MaskletRecord:
    """`record` with only its entries on frames `keep` accepts (its summary columns left as they were)."""
    at = [t for t, f in enumerate(record.frame_indices) if keep(f)]
    return dataclasses.replace(record, **{name: [getattr(record, name)[t] for t in at] for name in PER_FRAME})


def in_window(plan: StitchPlan, k: int, masklets: Sequence[MaskletRecord]) -> Iterator[MaskletRecord]:
    """Chunk k's masklets as their stitched selves see them: entries in the chunk's window, stitched ids."""
    lo, hi = plan.windows[k]
    for m in masklets:
        stitched = plan.ids[k].get(m.masklet_id)
        if stitched is not None:
            yield dataclasses.replace(window(m, lambda f: lo <= f < hi), masklet_id=stitched)


def joined(video_key: str, masklet_id: int, pieces: Sequence[MaskletRecord]) -> MaskletRecord | None:
    """One stitched masklet from its pieces (`in_window`'s, in chunk order), or None where they hold no frame."""
    parts = [p for p in pieces if p.frame_indices]
    if not parts:
        return None
    return MaskletRecord.from_frames(
        video_key,
        masklet_id,
        source=parts[0].source,
        frame_indices=[f for p in parts for f in p.frame_indices],
        rles=[r for p in parts for r in p.rles()],
        pred_iou=[x for p in parts for x in p.pred_iou],
        stability=[x for p in parts for x in p.stability],
        object_score=[x for p in parts for x in p.object_score],
        edit_count=sum(p.edit_count for p in pieces),
    )


# chunk k's masklets; one masklet of chunk k by its (chunk's own) id
ChunkReader = Callable[[int], Sequence[MaskletRecord]]
PieceReader = Callable[[int, int], MaskletRecord]


class Stitched:
    """A split video's stitched masklets, a `masklet.pipelines.streamed.MaskletStore`: one masklet joined
    from its pieces, or one chunk's masklets in its window, at a time. `frames`: the stitched video's
    annotated frames (`StitchPlan.own_frames`, joined)."""

    def __init__(
        self, video_key: str, plan: StitchPlan, chunk: ChunkReader, piece: PieceReader, frames: Sequence[int]
    ) -> None:
        self.video_key, self.plan, self.chunk, self.piece = video_key, plan, chunk, piece
        self.windows = plan.windows
        self._pieces = plan.pieces()
        self._frames = set(frames)

    def ids(self) -> list[int]:
        return sorted(self._pieces)

    def masklet(self, masklet_id: int) -> MaskletRecord | None:
        pieces = self._pieces[masklet_id]
        parts = [p for k, local in pieces for p in in_window(self.plan, k, [self.piece(k, local)])]
        return joined(self.video_key, masklet_id, parts)

    def window(self, k: int, ids: set[int] | None = None) -> list[MaskletRecord]:
        return [m for m in in_window(self.plan, k, self.chunk(k)) if ids is None or m.masklet_id in ids]

    def frames(self) -> set[int]:
        return self._frames
