"""masklet.pipelines.doubt: the one ranking of masklets to look at first."""

from __future__ import annotations

import random

import pytest

from masklet.pipelines.doubt import COLUMNS, ORDERS, Masklet, rank


def masklet(mid: int, **values: object) -> Masklet:
    base = {"kept": True, "stability_mean": 0.9, "pred_iou_mean": 0.9, "edit_count": 0, "visibility_changes": 0}
    base |= {"num_visible": 10, "first_frame": 0}
    return Masklet("s-0", "v", mid, **{**base, **values})


ROWS = [
    masklet(1, stability_mean=0.5, edit_count=3),
    masklet(2, pred_iou_mean=0.4, visibility_changes=5),
    masklet(3, num_visible=1, stability_mean=0.95),
    masklet(4, stability_mean=None, pred_iou_mean=None, num_visible=0),  # never visible
    masklet(5, edit_count=1, visibility_changes=1),
]


@pytest.mark.parametrize(
    ("by", "first"),
    [("stability", [4, 1, 2]), ("pred_iou", [4, 2, 1]), ("edits", [1, 5]), ("flicker", [2, 5]), ("short", [4, 3])],
)
def test_each_order_puts_its_most_doubtful_first(by: str, first: list[int]) -> None:
    assert [m.masklet_id for m in rank(ROWS, by)][: len(first)] == first


@pytest.mark.parametrize("by", ORDERS)
def test_a_ranking_does_not_depend_on_input_order(by: str) -> None:
    shuffled = ROWS[:]
    random.Random(3).shuffle(shuffled)
    assert rank(shuffled, by, seed=7) == rank(ROWS, by, seed=7)


def test_random_is_a_seeded_permutation_and_unknown_orders_are_refused() -> None:
    assert sorted(m.masklet_id for m in rank(ROWS, "random", seed=1)) == [1, 2, 3, 4, 5]
    assert rank(ROWS, "random", seed=1) != rank(ROWS, "random", seed=2)
    with pytest.raises(ValueError, match="unknown order 'worst'"):
        rank(ROWS, "worst")
    assert "shard_id" not in COLUMNS and "stability_mean" in COLUMNS
