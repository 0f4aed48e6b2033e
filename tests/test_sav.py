"""masklet.io.sav: SA-V annotation JSON built from masks, read back, statistics as SA-V defines them."""

from __future__ import annotations

import json

import numpy as np
import pytest

from masklet.io import rle, sav

mask_util = pytest.importorskip("pycocotools.mask")

H, W = 12, 10
# the keys of SA-V's sav_000001_manual.json and _auto.json (sam2 repo, sav_dataset/example/), in order
SAV_FIELDS = [
    "video_id", "video_duration", "video_frame_count", "video_height", "video_width", "video_resolution",
    "video_environment", "video_split", "masklet", "masklet_id", "masklet_size_rel", "masklet_size_abs",
    "masklet_size_bucket", "masklet_visibility_changes", "masklet_first_appeared_frame", "masklet_frame_count",
    "masklet_edited_frame_count", "masklet_type", "masklet_stability_score", "masklet_num",
]  # fmt: skip


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
    assert list(doc) == [*SAV_FIELDS, "fps", "video_fps", "masklet_frame_indices", "masklet_source"]
    assert doc["video_id"] == "vid"
    assert doc["video_environment"] is None and doc["video_split"] == "train"
    assert doc["video_frame_count"] == 20.0 and doc["video_duration"] == pytest.approx(20 / 24)
    assert (doc["video_height"], doc["video_width"], doc["video_resolution"]) == (12.0, 10.0, 120.0)
    assert doc["masklet_id"] == [0, 1, 2] and doc["masklet_num"] == 3
    assert len(doc["masklet"]) == 5 and all(len(row) == 3 for row in doc["masklet"])
    assert doc["masklet_size_abs"] == [20.0, 48.0, 0.0]
    assert doc["masklet_size_rel"] == pytest.approx([20 / 120, 48 / 120, 0.0])
    assert doc["masklet_size_bucket"] == ["small", "small", "small"]
    assert doc["masklet_visibility_changes"] == [2, 0, 0]
    assert doc["masklet_first_appeared_frame"] == [0, 3, -1]  # annotated frames, as SA-V counts
    assert doc["masklet_frame_count"] == [5, 5, 5]
    assert doc["masklet_edited_frame_count"] == [0, 0, 0]
    assert doc["masklet_type"] == ["manual"] * 3 and doc["masklet_source"] == ["synthetic"] * 3
    assert doc["masklet_stability_score"] == [None] * 3  # a manual file: one null per object
    assert doc["masklet_frame_indices"] == [0, 4, 8, 12, 16]
    assert (doc["fps"], doc["video_fps"]) == (6, 24.0)
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


@pytest.mark.parametrize(
    ("fields", "indices"),
    [({}, [0, 4, 8, 12, 16]), ({"fps": 24}, [0, 1, 2, 3, 4]), ({"fps": [12]}, [0, 2, 4, 6, 8])],
)
def test_files_without_frame_indices_are_read_as_the_official_loader_reads_sav(
    masks: np.ndarray, fields: dict, indices: list[int]
) -> None:
    """SA-V's own files (no fields) at stride 4; an `fps` field as frames_fps 24 divided by it."""
    doc = sav.build_from_masks("vid", masks, fps=24)
    del doc["masklet_frame_indices"], doc["fps"]
    assert sav.parse({**doc, **fields}).frame_indices == indices


def test_files_of_older_masklet_versions_parse_by_their_frame_indices(masks: np.ndarray) -> None:
    """Before `fps`, `video_fps`, `masklet_source` and SA-V's video_environment/split, masklet_type was ours."""
    doc = sav.build_from_masks("vid", masks, fps=24, frame_indices=[0, 1, 2, 3, 4])
    for name in ("fps", "video_fps", "masklet_source", "video_environment", "video_split"):
        del doc[name]
    doc["masklet_type"] = ["synthetic"] * 3
    assert sav.parse(doc).frame_indices == [0, 1, 2, 3, 4]


def test_files_without_frame_indices_and_an_fps_sav_cannot_have_are_refused(masks: np.ndarray) -> None:
    doc = sav.build_from_masks("vid", masks, fps=30, frame_indices=[0, 5, 10, 15, 20])
    del doc["masklet_frame_indices"]
    with pytest.raises(ValueError, match="does not divide"):
        sav.parse({**doc, "fps": 5})


@pytest.mark.parametrize(
    ("indices", "fps", "expected"),
    [
        ([0, 4, 8], 24, 6),
        ([0, 5, 10], 30, 6),
        ([0, 5, 10], 29.97, 6),  # the loader is given frames_fps 30
        ([0, 1, 2], 24, 24),
        ([0, 4, 8], 25, None),  # 6.25 annotated frames a second
        ([0, 4, 9], 24, None),  # no stride
        ([2, 6, 10], 24, None),  # the loader's entry 0 is frame 0
        ([0], 24, None),
        ([], 24, None),
    ],
)
def test_loader_fps(indices: list[int], fps: float, expected: int | None) -> None:
    assert sav.loader_fps(indices, fps) == expected


def test_build_from_rles_with_options() -> None:
    masklet = [[rle.encode(np.ones((H, W), bool))], [rle.encode(np.zeros((H, W), bool))]]
    doc = sav.build(
        "vid",
        masklet,
        height=H,
        width=W,
        fps=24,
        sources=["prompt"],
        edited_frame_counts=[1],
        stability_scores=[[0.9], [0.8]],
    )
    assert doc["masklet_type"] == ["auto"] and doc["masklet_source"] == ["prompt"]
    assert doc["masklet_edited_frame_count"] == [1]
    assert doc["masklet_stability_score"] == [[0.9], [0.8]]  # [frame][object], as in SA-V's *_auto.json
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
    with pytest.raises(ValueError, match="unknown masklet source"):
        sav.build_from_masks("vid", masks, fps=24, sources=["auto", "manual", "prompt"])
    with pytest.raises(ValueError, match=r"\[annotated frame\]\[object\]"):
        sav.build_from_masks("vid", masks, fps=24, sources=["auto"] * 3, stability_scores=[[0.9] * 5] * 3)
    with pytest.raises(ValueError, match="masklet"):
        sav.parse({"video_id": "vid"})
    doc = sav.build_from_masks("vid", masks, fps=24)
    doc["masklet_id"] = [0, 1]
    with pytest.raises(ValueError, match="objects"):
        sav.parse(doc)
