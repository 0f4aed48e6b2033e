"""Which masklets a person should look at first: one ranking for the report's "where to look first"
and for what `masklet review` sends to annotators.

Each order ranks masklets by one signal of the summary columns (no RLE read), cheap to reason about:

- `stability`: lowest `stability_mean` first (masks that change most when their threshold moves);
- `pred_iou`: lowest `pred_iou_mean` first (the model's own doubt);
- `edits`: most automatic `edit_count` first (the tracker needed correcting most: each edit is a re-seed
  whose fresh mask disagreed with the tracked one, so this is also the re-seed disagreement order);
- `flicker`: most `visibility_changes` first (objects that blink in and out);
- `short`: fewest visible frames (`num_visible`) first;
- `random`: a seeded shuffle, the control a selection strategy is measured against.

A masklet never visible has no means: it ranks first on `stability` and `pred_iou`. Ties, and the
order `random` shuffles, are key order (video_key, masklet_id, shard_id), so a ranking is the same
for any input order.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, fields

import numpy as np

ORDERS = ("stability", "pred_iou", "edits", "flicker", "short", "random")
# the summary column each order ranks on (what a selection shows as its score); random has none
RANKED_COLUMN = {
    "stability": "stability_mean",
    "pred_iou": "pred_iou_mean",
    "edits": "edit_count",
    "flicker": "visibility_changes",
    "short": "num_visible",
    "random": None,
}


@dataclass(frozen=True)
class Masklet:
    """The summary of one masklet row that ranking needs."""

    shard_id: str
    video_key: str
    masklet_id: int
    kept: bool
    stability_mean: float | None
    pred_iou_mean: float | None
    edit_count: int
    visibility_changes: int
    num_visible: int
    first_frame: int

    def signal(self, by: str) -> float:
        """The value `by` ranks on (NaN for `random`); lower ranks first."""
        if by == "stability":
            return -math.inf if self.stability_mean is None else float(np.float32(self.stability_mean))
        if by == "pred_iou":
            return -math.inf if self.pred_iou_mean is None else float(np.float32(self.pred_iou_mean))
        if by == "edits":
            return -self.edit_count
        if by == "flicker":
            return -self.visibility_changes
        if by == "short":
            return self.num_visible
        if by == "random":
            return math.nan
        raise ValueError(f"unknown order {by!r}; expected one of {', '.join(ORDERS)}")


# the masklets/ columns a Masklet is read from (shard_id comes from the file)
COLUMNS = tuple(f.name for f in fields(Masklet) if f.name != "shard_id")


def _key(m: Masklet) -> tuple[str, int, str]:
    return (m.video_key, m.masklet_id, m.shard_id)


def rank(masklets: Sequence[Masklet], by: str, *, seed: int = 0) -> list[Masklet]:
    """`masklets` in the order a person should look at them by `by` (see the module doc)."""
    ordered = sorted(masklets, key=_key)
    if by == "random":
        return [ordered[i] for i in np.random.default_rng(seed).permutation(len(ordered))]
    return sorted(ordered, key=lambda m: m.signal(by))
