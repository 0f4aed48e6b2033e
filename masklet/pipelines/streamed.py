"""A video's masklets judged and handed to the writer without holding them all as records.

As records (`MaskletRecord`: Python lists per frame) a video's masklets cost about 250 bytes per
masklet-frame besides their RLEs, all at once, for a whole video: what grew a worker's memory with a
video's length. A `MaskletStore` keeps them elsewhere (packed, or in files) and gives one masklet whole,
or every masklet's entries on one window of frames, at a time. Two stores do: an unsplit video's packed
sequences (`masklet.pipelines.quality.PackedMasklets`) and a split video's stitched chunks
(`masklet.pipelines.stitching.Stitched`).

`judge` decides what `apply_filters` would on the whole list (the review verdicts aside: a pipeline's
masklets have none): reasons 1-8 per masklet, then the duplicate filter on tube IoUs summed window by
window (sums over disjoint frames add up). `JudgedMasklets` is the result, a sequence the writer takes
row by row (`ShardWriter.add_streamed_video`), with the SA-V document's rows made window by window.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol, overload

import numpy as np

from masklet.config import FiltersConfig
from masklet.io.schema import MaskletRecord
from masklet.pipelines.filters import greedy_duplicates, ious_from_sums, quality_key, reject_reason, tube_sums


class MaskletStore(Protocol):
    """A video's masklets, read one masklet or one window of frames at a time."""

    video_key: str
    # disjoint frame ranges [lo, hi), in order, from -inf to inf: every entry is in one of them
    windows: Sequence[tuple[float, float]]

    def ids(self) -> list[int]:
        """Every masklet's id, increasing."""
        ...

    def masklet(self, masklet_id: int) -> MaskletRecord | None:
        """One masklet whole (kept, the filters not run yet); None where it has no entry."""
        ...

    def window(self, k: int, ids: set[int] | None = None) -> list[MaskletRecord]:
        """The masklets (`ids` only, when given) with entries on frames of `windows[k]`, those entries only
        (their summary columns say nothing of the masklet)."""
        ...

    def frames(self) -> set[int]:
        """Every frame some masklet has an entry on."""
        ...


@dataclass(frozen=True)
class Verdict:
    """A masklet judged: why the filters drop it (None: kept), and what its SA-V entry says."""

    reason: str | None
    source: str
    edit_count: int


def judge(store: MaskletStore, filters: FiltersConfig) -> dict[int, Verdict]:
    """Per masklet of `store`, `filters`' verdict, as `apply_filters` decides on them all."""
    reasons: dict[int, str | None] = {}
    keys, about = {}, {}
    for masklet_id in store.ids():
        m = store.masklet(masklet_id)
        if m is not None:
            reasons[masklet_id], keys[masklet_id] = reject_reason(m, filters), quality_key(m)
            about[masklet_id] = (m.source, m.edit_count)
    passed = [i for i, why in reasons.items() if why is None]
    if filters.dedup_iou is not None and len(passed) > 1:
        index = {i: n for n, i in enumerate(passed)}
        inter, total = np.zeros((len(passed), len(passed))), np.zeros(len(passed))
        for k in range(len(store.windows)):
            ms = store.window(k, set(passed))
            if ms:
                at = [index[m.masklet_id] for m in ms]
                window_inter, window_total = tube_sums(ms)
                inter[np.ix_(at, at)] += window_inter
                total[at] += window_total
        dups = greedy_duplicates([keys[i] for i in passed], passed, ious_from_sums(inter, total), filters.dedup_iou)
        reasons.update({i: f"duplicate_of:{d}" for i, d in zip(passed, dups, strict=True) if d is not None})
    return {i: Verdict(why, *about[i]) for i, why in reasons.items()}


class JudgedMasklets(Sequence[MaskletRecord]):
    """A store's masklets by id, each built when asked for, kept or dropped as `verdicts` say."""

    def __init__(self, store: MaskletStore, verdicts: dict[int, Verdict]) -> None:
        self.store, self.verdicts = store, verdicts
        self._ids = sorted(verdicts)

    def __len__(self) -> int:
        return len(self._ids)

    @overload
    def __getitem__(self, i: int) -> MaskletRecord: ...

    @overload
    def __getitem__(self, i: slice) -> list[MaskletRecord]: ...

    def __getitem__(self, i: int | slice) -> MaskletRecord | list[MaskletRecord]:
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        masklet_id = self._ids[i]
        m = self.store.masklet(masklet_id)
        assert m is not None, f"masklet {masklet_id} was judged, so it has entries"
        why = self.verdicts[masklet_id].reason
        return dataclasses.replace(m, kept=why is None, reject_reason=why)

    @property
    def kept_ids(self) -> list[int]:
        return [i for i in self._ids if self.verdicts[i].reason is None]

    def sav_axis(self, annotated: Sequence[int]) -> list[int]:
        """The SA-V document's frames: the video's `annotated` frames and any a masklet has an entry on."""
        return sorted(set(annotated) | self.store.frames())

    def sav_rows(self, axis: Sequence[int], empty: str) -> Iterator[tuple[list[str], list[float]]]:
        """Per frame of `axis` (increasing), the counts and stability of each kept masklet (empty and 0 where
        it has no entry), a window at a time."""
        kept = self.kept_ids
        at = 0
        for k, (lo, hi) in enumerate(self.store.windows):
            stop = at
            while stop < len(axis) and axis[stop] < hi:
                stop += 1
            if stop == at:
                continue
            assert axis[at] >= lo, f"frame {axis[at]} is before window {k}"
            entries = {
                m.masklet_id: dict(zip(m.frame_indices, zip(m.rle, m.stability, strict=True), strict=True))
                for m in self.store.window(k, set(kept))
            }
            for f in axis[at:stop]:
                values = [entries.get(i, {}).get(f, ("", 0.0)) for i in kept]
                yield [c or empty for c, _ in values], [x for _, x in values]
            at = stop
