"""Prompted masklets: forward from the earliest prompt, backward from each object's first prompt, and
refusals naming the video, object and prompt; on the model double, then end to end with a tiny model.

Scene as in test_autolabel: GT objects 1 and 2 on frame 0, object 0 from frame 1, object 2 away on 2-5.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from model_double import TrackerFactoryDouble, Truth, frame_folder, job_config
from tiny_sam2 import tiny_model

from masklet.io import rle
from masklet.io.schema import MaskletRecord
from masklet.pipelines.contract import make_pipeline
from masklet.pipelines.prompted import track_prompts
from masklet.pipelines.prompts import PromptError

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def inside(truth: Truth, t: int, gt: int) -> list[float]:
    """A pixel (x, y) of GT object `gt` on frame t."""
    ys, xs = np.nonzero(truth.visible[t][gt].numpy())
    k = len(ys) // 2
    return [float(xs[k]), float(ys[k])]


def prompts_json(truth: Truth) -> str:
    """Object 10 = GT 1 by mask on frame 0; 20 = GT 0 by a point on frame 3; 30 = GT 2 by a box on 1, again on 7."""
    ys, xs = np.nonzero(truth.visible[1][2].numpy())
    box = [float(xs.min()), float(ys.min()), float(xs.max()), float(ys.max())]
    mask = rle.encode(truth.visible[0][1].numpy())
    objects = [
        {"id": 10, "prompts": [{"frame": 0, "mask": {"size": mask["size"], "counts": mask["counts"]}}]},
        {"id": 20, "prompts": [{"frame": 3, "points": [inside(truth, 3, 0)], "labels": [1]}]},
        {"id": 30, "prompts": [{"frame": 1, "box": box}, {"frame": 7, "points": [inside(truth, 7, 2)], "labels": [1]}]},
    ]
    return json.dumps({"objects": objects})


def run(
    truth: Truth, text: str | None, max_frames: int | None = None
) -> tuple[list[MaskletRecord], TrackerFactoryDouble]:
    trackers = TrackerFactoryDouble(truth)
    truth.max_frames = max_frames
    records = track_prompts("vid", text, truth, make_tracker=trackers).records()
    return records, trackers


def test_forward_from_the_first_prompt_and_backward_from_each_objects_first() -> None:
    truth = Truth()
    records, trackers = run(truth, prompts_json(truth))
    forward, backward = trackers.made
    assert [t for t, _ in forward.steps] == list(range(8)) and not forward.reverse
    assert backward.reverse and [t for t, _ in backward.steps] == [3, 2, 1, 0]
    assert backward.steps[0][1] == [20] and backward.steps[2][1] == [20, 30]  # each joins at its first prompt
    assert truth.decodes == 2
    gt = {10: 1, 20: 0, 30: 2}
    assert [r.masklet_id for r in records] == [10, 20, 30]
    for r in records:
        assert r.source == "prompt" and r.frame_indices == list(range(8)) and r.edit_count == 0
        for t, x in enumerate(r.rles()):
            assert np.array_equal(rle.decode(x).astype(bool), truth.visible[t][gt[r.masklet_id]].numpy())


def test_prompts_on_the_first_frame_need_no_backward_pass() -> None:
    truth = Truth()
    mask = rle.encode(truth.visible[0][1].numpy())
    records, trackers = run(truth, json.dumps({"objects": [{"id": 1, "prompts": [{"frame": 0, "mask": mask}]}]}))
    assert len(trackers.made) == 1 and truth.decodes == 1 and records[0].frame_indices == list(range(8))


def test_forward_starts_at_the_earliest_prompted_frame() -> None:
    truth = Truth()
    text = json.dumps(
        {"objects": [{"id": 5, "prompts": [{"frame": 4, "points": [inside(truth, 4, 1)], "labels": [1]}]}]}
    )
    records, trackers = run(truth, text)
    assert [t for t, _ in trackers.made[0].steps] == [4, 5, 6, 7]
    assert [t for t, _ in trackers.made[1].steps] == [4, 3, 2, 1, 0]
    assert records[0].frame_indices == list(range(8))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (None, "no prompts"),
        ('{"objects": [{"id": 3, "prompts": [{"frame": 0, "points": [[500, 5]], "labels": [1]}]}]}', "object 3"),
        ('{"objects": [{"id": 4, "prompts": [{"frame": 6, "box": [1, 1, 9, 9]}]}]}', "object 4, prompt 0"),
    ],
)
def test_bad_prompts_name_the_video_object_and_prompt(text: str | None, message: str) -> None:
    with pytest.raises(PromptError, match=message) as info:
        run(Truth(), text, max_frames=4)  # frame 6 lies beyond the annotated frames
    assert "'vid'" in str(info.value)


def test_end_to_end_with_a_tiny_model(tmp_path: Path) -> None:
    """The worker's entry point on a 64x48, 6-frame synthetic video with prompts: structure, not quality."""
    truth = Truth(frames=6)
    text = json.dumps(
        {
            "objects": [
                {"id": 1, "prompts": [{"frame": 0, "points": [inside(truth, 0, 1)], "labels": [1]}]},
                {
                    "id": 2,
                    "prompts": [{"frame": 2, "box": [0, 0, 30, 20]}, {"frame": 4, "points": [[5, 5]], "labels": [1]}],
                },
            ]
        }
    )
    video = frame_folder(truth, tmp_path, prompts=text)
    config = job_config(pipeline={"mode": "prompted"}, filters={"min_visible_frames": 0, "dedup_iou": None})
    run_video = make_pipeline(config, tiny_model(), torch.device("cpu"))
    with video.open(fps=None) as stream:
        records = run_video(video, stream)
    assert [r.masklet_id for r in records] == [1, 2]
    for r in records:
        assert r.source == "prompt" and r.frame_indices == list(range(6)) and r.kept
        assert all(rle.decode(x).shape == (48, 64) for x in r.rles())
