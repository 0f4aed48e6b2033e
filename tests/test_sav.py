"""masklet.io.sav: SA-V annotation JSON built from masks, read back, statistics as SA-V defines them."""

from __future__ import annotations

import json

import numpy as np
import pytest

from masklet.io import rle, sav

mask_util = pytest.importorskip("pycocotools.mask")

H, W = 12, 10


def box(t0: int, t1: int, y0: int, y1: int, x0: int, x1: int, frames: int = 5) -> np.ndarray:
    """Masks [frames, H, W] with a box on frames t0..t1-1."""
    masks = np.zeros((frames, H, W), dtype=bool)
    masks[t0:t1, y0:y1, x0:x1] = True
    return masks


@pytest.fixture
def masks() -> np.ndarray:
    """Object 0 always visible but hidden on frame 2; object 1 appears on frame 3; object 2 never."""
    leaves = box(0, 5, 0, 4, 0, 5)
    leaves[2] = False
    return np.stack([leaves, box(3, 5, 6, 12, 2, 10), box(0, 0, 0, 0, 0, 0)])


def test_fields_and_statistics(masks: np.ndarray) -> None:
    doc = sav.build_from_masks("vid", masks, fps=24, frame_indices=[0, 4, 8, 12, 16], video_frame_count=20)
    assert doc["video_id"] == "vid"
    assert doc["video_frame_count"] == 20.0 and doc["video_duration"] == pytest.approx(20 / 24)
    assert (doc["video_height"], doc["video_width"], doc["video_resolution"]) == (12.0, 10.0, 120.0)
    assert doc["masklet_id"] == [0, 1, 2] and doc["masklet_num"] == 3
    assert len(doc["masklet"]) == 5 and all(len(row) == 3 for row in doc["masklet"])
    assert doc["masklet_size_abs"] == [20.0, 48.0, 0.0]
    assert doc["masklet_size_rel"] == pytest.approx([20 / 120, 48 / 120, 0.0])
    assert doc["masklet_size_bucket"] == ["small", "small", "small"]
    assert doc["masklet_visibility_changes"] == [2, 0, 0]
    assert doc["masklet_first_appeared_frame"] == [0, 12, -1]  # video frame indices
    assert doc["masklet_frame_count"] == [5, 5, 5]
    assert doc["masklet_edited_frame_count"] == [0, 0, 0]
    assert doc["masklet_type"] == ["manual"] * 3
    assert doc["masklet_stability_score"] == [None] * 3
    assert doc["masklet_frame_indices"] == [0, 4, 8, 12, 16]
    json.dumps(doc)  # plain JSON types only


def test_rles_are_coco(masks: np.ndarray) -> None:
    doc = sav.build_from_masks("vid", masks, fps=24)
    for t, row in enumerate(doc["masklet"]):
        for obj, r in enumerate(row):
            coco = {"size": r["size"], "counts": r["counts"].encode()}
            assert (mask_util.decode(coco).astype(bool) == masks[obj, t]).all()


def test_parse_round_trip(masks: np.ndarray) -> None:
    doc = sav.build_from_masks("vid", masks, fps=6, frame_indices=[1, 2, 3, 5, 8], masklet_ids=[7, 8, 9])
    ann = sav.parse(json.dumps(doc))
    assert (ann.video_id, ann.height, ann.width, ann.frame_count) == ("vid", H, W, 9)
    assert ann.frame_indices == [1, 2, 3, 5, 8]
    assert ann.masklet_ids == [7, 8, 9]
    for position, masklet_id in enumerate(ann.masklet_ids):
        assert (ann.masks(masklet_id) == masks[position]).all()
        assert [rle.decode(r).sum() for r in ann.rles(masklet_id)] == masks[position].sum(axis=(1, 2)).tolist()
    with pytest.raises(KeyError, match="no masklet 3"):
        ann.masks(3)


def test_files_without_frame_indices_use_the_sav_stride(masks: np.ndarray) -> None:
    doc = sav.build_from_masks("vid", masks, fps=24)
    del doc["masklet_frame_indices"]
    assert sav.parse(doc).frame_indices == [0, 4, 8, 12, 16]


def test_build_from_rles_with_options() -> None:
    masklet = [[rle.encode(np.ones((H, W), bool))], [rle.encode(np.zeros((H, W), bool))]]
    doc = sav.build(
        "vid",
        masklet,
        height=H,
        width=W,
        fps=24,
        masklet_type="auto",
        edited_frame_counts=[1],
        stability_scores=[[0.9, 0.8]],
    )
    assert doc["masklet_type"] == ["auto"]
    assert doc["masklet_edited_frame_count"] == [1]
    assert doc["masklet_stability_score"] == [[0.9, 0.8]]
    assert doc["masklet_visibility_changes"] == [1]
    assert doc["video_frame_count"] == 2.0


@pytest.mark.parametrize(
    ("area", "bucket"),
    [(0, "small"), (1, "small"), (1023.9, "small"), (1024, "medium"), (9215.5, "medium"), (9216, "large")],
)
def test_size_bucket_thresholds(area: float, bucket: str) -> None:
    assert sav.size_bucket(area) == bucket


def test_bad_input_is_refused(masks: np.ndarray) -> None:
    with pytest.raises(ValueError, match="increasing"):
        sav.build_from_masks("vid", masks, fps=24, frame_indices=[0, 2, 2, 3, 4])
    with pytest.raises(ValueError, match="frame_indices has 2"):
        sav.build_from_masks("vid", masks, fps=24, frame_indices=[0, 1])
    with pytest.raises(ValueError, match="outside a video"):
        sav.build_from_masks("vid", masks, fps=24, video_frame_count=3)
    with pytest.raises(ValueError, match="size"):
        sav.build("vid", [[rle.encode(np.ones((3, 3), bool))]], height=H, width=W, fps=24)
    with pytest.raises(ValueError, match="masklet"):
        sav.parse({"video_id": "vid"})
    doc = sav.build_from_masks("vid", masks, fps=24)
    doc["masklet_id"] = [0, 1]
    with pytest.raises(ValueError, match="objects"):
        sav.parse(doc)
