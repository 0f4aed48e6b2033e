"""Choose which kept masklets of a whole output go into training: the most edited, or at random.

The SAM 2 paper (Table 9) trains better on the masklets annotators had to edit most than on a
random subset of the same size; `edit_count` is the automatic analogue here (how often a fresh
automatic mask had to correct the tracker). Where a person reviewed a masklet (`masklet review
import`), the frames they changed (`human_edit_count`) stand for its edits instead, as in the SA-V
JSON's `masklet_edited_frame_count`. `--by random` is that table's baseline.

Selection works on light per-masklet summaries (`Candidate`, no RLEs), so a whole output fits in
memory; `mark_sampled` then applies it to each shard's records. Masklets already dropped by the
filters are never candidates; kept ones left out become kept=false, reason `not_sampled`.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Sequence
from dataclasses import dataclass, fields, replace
from typing import Literal

import numpy as np

from masklet.io.schema import NOT_SAMPLED, MaskletRecord

MaskletRef = tuple[str, str, int]  # (shard_id, video_key, masklet_id): unique across an output


@dataclass(frozen=True)
class Candidate:
    """What selection needs of one masklet row."""

    shard_id: str
    video_key: str
    masklet_id: int
    edit_count: int
    stability_mean: float | None
    kept: bool
    human_edit_count: int | None = None

    @property
    def ref(self) -> MaskletRef:
        return (self.shard_id, self.video_key, self.masklet_id)

    @property
    def edits(self) -> int:
        """A person's edited frames where the masklet was reviewed, else the automatic `edit_count`."""
        return self.edit_count if self.human_edit_count is None else self.human_edit_count


# the masklets/ columns a Candidate is read from (shard_id comes from the file)
CANDIDATE_COLUMNS = tuple(f.name for f in fields(Candidate) if f.name != "shard_id")


def sample_size(n: int, *, top_k: int | None = None, fraction: float | None = None) -> int:
    """How many of `n` candidates to keep: `top_k` (at most n), or `fraction` of n rounded half up."""
    if (top_k is None) == (fraction is None):
        raise ValueError("give exactly one of top_k and fraction")
    if top_k is not None:
        if top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {top_k}")
        return min(top_k, n)
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must be in [0, 1], got {fraction}")
    return math.floor(fraction * n + 0.5)


def edits_key(c: Candidate) -> tuple:
    """Most edited first (human edits where reviewed); ties: higher stability_mean (as float32; null
    last), then key order."""
    stability = -math.inf if c.stability_mean is None else float(np.float32(c.stability_mean))
    return (-c.edits, -stability, c.video_key, c.masklet_id, c.shard_id)


def select(
    candidates: Sequence[Candidate],
    *,
    by: Literal["edits", "random"],
    top_k: int | None = None,
    fraction: float | None = None,
    seed: int = 0,
) -> set[MaskletRef]:
    """The refs of the kept candidates to keep; the same for any input order.

    `random` shuffles the candidates in key order (video_key, masklet_id, shard_id) with numpy's
    PCG64 seeded by `seed`, so a seed names one subset.
    """
    kept = [c for c in candidates if c.kept]
    k = sample_size(len(kept), top_k=top_k, fraction=fraction)
    if by == "edits":
        chosen = sorted(kept, key=edits_key)[:k]
    elif by == "random":
        ordered = sorted(kept, key=lambda c: (c.video_key, c.masklet_id, c.shard_id))
        chosen = [ordered[i] for i in np.random.default_rng(seed).permutation(len(ordered))[:k]]
    else:
        raise ValueError(f"unknown sampling {by!r}; expected 'edits' or 'random'")
    return {c.ref for c in chosen}


def mark_sampled(
    shard_id: str, records: Sequence[MaskletRecord], selected: Collection[MaskletRef]
) -> list[MaskletRecord]:
    """A shard's records with every kept masklet outside `selected` dropped as `not_sampled`."""
    return [
        r
        if not r.kept or (shard_id, r.video_key, r.masklet_id) in selected
        else replace(r, kept=False, reject_reason=NOT_SAMPLED)
        for r in records
    ]
