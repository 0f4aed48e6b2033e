"""The simulated annotator of benchmarks/review_loop.py, checked against known ground truth.

The benchmark's effort figures and round-1 data are only as good as its reviewer, so here it reviews a
tiny real output whose masklets are made from a synthetic video's exact ground truth, through the same
export files and the same `masklet review import` as in the benchmark, in both tools' formats: a
masklet equal to its object is accepted with no edit, one with a single wrong frame gets exactly that
frame redrawn, one slightly off everywhere (IoU above the threshold) is accepted as it is, and one on
no object is rejected.
"""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from masklet.cli import main
from masklet.eval.holdout import sampled_ground_truth
from masklet.io import rle, sav, storage
from masklet.io.annotated import read_members
from masklet.io.outputs import read_shard
from masklet.io.schema import MaskletRecord, VideoRecord
from masklet.io.sinks import ShardWriter
from masklet.synth.corpus import write_corpus

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
review_loop = importlib.import_module("review_loop")

WIDTH, HEIGHT, FRAMES, FPS = 96, 64, 12, 12.0
ANNOTATED = list(range(0, FRAMES, 2))
WRONG = 2  # the position (video frame 4) where masklet "wrong" is on the wrong place


@pytest.fixture(scope="module")
def output(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, int], dict[int, np.ndarray]]:
    """An output of one synthetic video with four kept masklets: exact, wrong on one frame, near, ghost."""
    base = tmp_path_factory.mktemp("review-loop")
    (tar,) = write_corpus(str(base / "corpus"), videos=1, per_shard=1, seed=7, width=WIDTH, height=HEIGHT,
                          frames=FRAMES, fps=FPS)  # fmt: skip
    key = "synth-000000"
    members = read_members(tar, "gt.json")
    gt = sampled_ground_truth(sav.parse(members.annotations[key]), ANNOTATED)
    wrong = max(gt, key=lambda o: int(gt[o][WRONG].sum()))  # the object most seen on frame 4
    near, exact = sorted((o for o in gt if o != wrong), key=lambda o: -int(gt[o].sum()))[:2]
    first = int(np.flatnonzero(gt[near].any(axis=(1, 2)))[0])  # where "near" is drawn 10% too small
    masks = {
        "exact": gt[exact].copy(),
        "wrong": gt[wrong].copy(),
        "near": gt[near].copy(),
        "ghost": _free_square(np.logical_or.reduce(list(gt.values()))),
    }
    masks["wrong"][WRONG] = np.roll(gt[wrong][WRONG], (HEIGHT // 2, WIDTH // 2), axis=(0, 1)) & ~gt[wrong][WRONG]
    on = np.argwhere(masks["near"][first])
    masks["near"][first][tuple(on[: len(on) // 10].T)] = False  # 10% of its pixels off: IoU 0.9
    ids = {name: i + 1 for i, name in enumerate(masks)}
    root = base / "out"
    with ShardWriter(str(root), "shard-000000", model="masklet_demo", config_hash="c0ffee", write_video=False) as w:
        video = VideoRecord(
            video_key=key, original_key=key, source_uri=f"{tar}#{key}.mp4", fps=FPS, frame_count=FRAMES,
            height=HEIGHT, width=WIDTH, frame_indices=ANNOTATED, decoder="pyav",
        )  # fmt: skip
        records = [
            MaskletRecord.from_frames(
                key,
                ids[name],
                source="auto",
                frame_indices=ANNOTATED,
                rles=rle.encode_batch(m),
                pred_iou=[0.9] * len(ANNOTATED),
                stability=[0.9 - 0.1 * ids[name]] * len(ANNOTATED),  # distinct: a fixed review order
                object_score=[4.0] * len(ANNOTATED),
                edit_count=0,
                kept=True,
            )
            for name, m in masks.items()
        ]
        w.add_video(video, records)
        w.commit()
    source = {"uri": str(base / "corpus"), "format": "wds", "fps": 6.0}
    job = {"config_hash": "c0ffee", "model": "masklet_demo", "history": [], "config": {"source": source}}
    storage.write_bytes(str(root / "job.json"), json.dumps(job).encode())
    return root, ids, {ids["exact"]: gt[exact], ids["wrong"]: gt[wrong], ids["near"]: gt[near]}


def _free_square(occupied: np.ndarray, size: int = 8) -> np.ndarray:
    """A square masklet on a place no object covers on any frame."""
    ever = occupied.any(axis=0)
    for y in range(0, HEIGHT - size, 2):
        for x in range(0, WIDTH - size, 2):
            if not ever[y : y + size, x : x + size].any():
                out = np.zeros_like(occupied)
                out[:, y : y + size, x : x + size] = True
                return out
    raise AssertionError("no free place for the ghost masklet")


@pytest.mark.parametrize("fmt", ["cvat", "labelstudio"])
def test_the_simulated_reviewer_edits_exactly_the_wrong_frames(
    output: tuple[Path, dict[str, int], dict[int, np.ndarray]], fmt: str, tmp_path: Path
) -> None:
    root, ids, truth_of = output
    export = tmp_path / "export"
    assert main(["review", "export", str(root), str(export), "--top-k", "4", "--format", fmt]) == 0
    reviewer = review_loop.Reviewer(edit_below=0.7, reject_below=0.3, at="2026-12-05T10:00:00+00:00")
    truth = review_loop.GroundTruth(root)
    if fmt == "cvat":
        corrections = tmp_path / "corrections"
        judged = reviewer.review_cvat(export, corrections, truth)
    else:
        corrections = tmp_path / "export.json"
        judged = reviewer.review_labelstudio(export, corrections, truth)
    key = "synth-000000"
    verdict = {name: judged[(key, i)] for name, i in ids.items()}
    assert {name: (j.verdict, sorted(j.corrections)) for name, j in verdict.items()} == {
        "exact": ("accepted", []),
        "wrong": ("corrected", [WRONG]),
        "near": ("accepted", []),
        "ghost": ("rejected", []),
    }
    assert verdict["exact"].tube_iou == 1.0 and verdict["ghost"].tube_iou == 0.0
    assert 0.9 < verdict["near"].tube_iou < 1.0
    assert np.array_equal(verdict["wrong"].corrections[WRONG], truth_of[ids["wrong"]][WRONG])

    new = tmp_path / "reviewed"
    imported = ["review", "import", str(root), str(corrections), str(new), "--format", fmt, "--export", str(export)]
    assert main(imported) == 0
    rows = {m.masklet_id: m for m in read_shard(str(new), "shard-000000").masklets}
    before = {m.masklet_id: m for m in read_shard(str(root), "shard-000000").masklets}
    assert {name: rows[i].review_verdict for name, i in ids.items()} == {
        "exact": "accepted", "wrong": "corrected", "near": "accepted", "ghost": "rejected",
    }  # fmt: skip
    assert rows[ids["wrong"]].human_edit_frames == [ANNOTATED[WRONG]] and rows[ids["wrong"]].human_edit_count == 1
    assert np.array_equal(rows[ids["wrong"]].masks(), truth_of[ids["wrong"]])  # the one bad frame now is the truth
    assert np.array_equal(rows[ids["near"]].masks(), before[ids["near"]].masks())  # good enough: left as it was
    assert rows[ids["ghost"]].kept is False and rows[ids["ghost"]].reject_reason == "review"
    assert rows[ids["wrong"]].reviewer in ("simulated-reviewer", "simulated-reviewer@example.com")
    assert review_loop.imported_counts(new) == {"accepted": 2, "corrected": 1, "rejected": 1, "frames_edited": 1}


def test_the_same_reviewer_over_the_whole_output_counts_every_error(
    output: tuple[Path, dict[str, int], dict[int, np.ndarray]],
) -> None:
    root, _, _ = output
    reviewer = review_loop.Reviewer()
    total, judged = review_loop.oracle(root, review_loop.GroundTruth(root), reviewer)
    assert total == {
        "reviewed": 4, "accepted": 2, "corrected": 1, "rejected": 1,
        "frames_shown": 4 * len(ANNOTATED), "frames_edited": 1,
    }  # fmt: skip


def test_judge_thresholds() -> None:
    """A frame just under the edit threshold is corrected, one at it is not; both-empty frames are right."""
    reviewer = review_loop.Reviewer(edit_below=0.7, reject_below=0.3)
    truth = np.zeros((3, 10, 10), dtype=bool)
    truth[:, :, :5] = True  # 50 pixels per frame
    pred = truth.copy()
    pred[0, :, :5] = False
    pred[0, :7, :5] = True  # 35 of 50: IoU 0.7, kept
    pred[1, :6, :5] = False  # 20 of 50 left: IoU 0.4, corrected
    judged = reviewer.judge(pred, {3: truth, 4: np.zeros_like(truth)})
    assert judged.gt_object == 3 and sorted(judged.corrections) == [1]
    assert reviewer.judge(np.zeros_like(truth), {3: truth}).rejected
    assert review_loop.frame_iou(np.zeros((2, 2), bool), np.zeros((2, 2), bool)) == 1.0
