import copy
import json

import numpy as np
import pytest

from masklet.io import rle
from masklet.pipelines.prompts import PromptError, parse_prompts, schedule

H, W, FRAMES = 48, 64, 100
VIDEO = {"video_key": "vid-1", "height": H, "width": W, "frame_count": FRAMES}


def mask_rle(h: int = H, w: int = W) -> dict:
    m = np.zeros((h, w), bool)
    m[10:20, 5:30] = True
    return rle.encode(m)


def valid_doc() -> dict:
    return {
        "objects": [
            {
                "id": 3,
                "prompts": [
                    {"frame": 0, "points": [[10.5, 20], [64, 48]], "labels": [1, 0]},
                    {"frame": 24, "box": [1, 2, 30, 40]},
                    {"frame": 50, "points": [[5, 5]], "labels": [1], "box": [0, 0, 64, 48]},
                ],
            },
            {"id": 0, "prompts": [{"frame": 49, "mask": mask_rle()}]},
        ]
    }


def parse(doc) -> object:
    return parse_prompts(doc if isinstance(doc, (str, bytes)) else json.dumps(doc), **VIDEO)


def test_parse_valid():
    prompts = parse(valid_doc())
    assert prompts.obj_ids == [3, 0]
    first, box, both, mask = prompts.prompts
    assert (first.obj_id, first.frame, first.index) == (3, 0, 0)
    assert first.points.dtype == np.float32 and first.points.tolist() == [[10.5, 20.0], [64.0, 48.0]]
    assert first.labels.tolist() == [1, 0] and first.box is None
    assert box.tracker_kwargs().keys() == {"box"}
    assert both.tracker_kwargs().keys() == {"points", "labels", "box"}
    kwargs = mask.tracker_kwargs()
    assert kwargs.keys() == {"mask"} and kwargs["mask"].shape == (H, W) and kwargs["mask"].sum() == 250
    assert parse(json.dumps(valid_doc()).encode()).prompts[0].frame == 0
    assert parse({"objects": []}).prompts == ()


def broken(edit) -> dict:
    doc = copy.deepcopy(valid_doc())
    edit(doc)
    return doc


def _set(path, value):
    def edit(doc):
        node = doc
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value

    return edit


P1 = ("objects", 0, "prompts", 1)  # object 3, prompt 1 (frame 24)
WHERE = "video 'vid-1', object 3, prompt 1 (frame 24)"


def pts(points, labels) -> dict:
    return {"frame": 24, "points": points, "labels": labels}


# (case, edit, where the message must point, what it must say)
ERRORS = [
    ("point outside", _set(P1, pts([[10, 10], [64.5, 3]], [1, 0])), WHERE, "point 1 (64.5, 3) is outside the 64x48"),
    ("negative point", _set(P1, pts([[-1, 10]], [1])), WHERE, "point 0 (-1, 10) is outside"),
    ("frame past end", _set((*P1, "frame"), 100), "object 3, prompt 1:", "frame 100 is past the end of the video"),
    ("negative frame", _set((*P1, "frame"), -1), "object 3, prompt 1:", "frame -1 is outside"),
    ("no prompt", _set(("objects", 0, "prompts"), []), "video 'vid-1', object 3:", "the object has no prompt"),
    ("prompt empty", _set(P1, {"frame": 24}), WHERE, "no points, box or mask"),
    ("box x1 < x0", _set((*P1, "box"), [30, 2, 1, 40]), WHERE, "x1 < x0"),
    ("box outside", _set((*P1, "box"), [0, 0, 65, 40]), WHERE, "box corner (x1, y1) (65, 40) is outside"),
    ("label 2", _set(P1, pts([[1, 1], [2, 2]], [1, 2])), WHERE, "must be 1 (foreground) or 0 (background), got 2"),
    ("label true", _set(P1, pts([[1, 1]], [True])), WHERE, "got True"),
    ("label float", _set(P1, pts([[1, 1]], [1.0])), WHERE, "got 1.0"),
    ("labels short", _set(P1, pts([[1, 1], [2, 2]], [1])), WHERE, "2 points need 2 labels"),
    ("points alone", _set(P1, {"frame": 24, "points": [[1, 1]]}), WHERE, '"points" and "labels" go together'),
    ("rle size", _set(P1, {"frame": 24, "mask": mask_rle(H, W + 1)}), WHERE, "mask size [48, 65] is not the video's"),
    ("rle bad", _set(P1, {"frame": 24, "mask": {"size": [H, W], "counts": "abc"}}), WHERE, "not a valid RLE"),
    ("rle list", _set(P1, {"frame": 24, "mask": {"size": [H, W], "counts": [0, 5]}}), WHERE, "compressed RLE"),
    ("rle empty", _set(P1, {"frame": 24, "mask": rle.encode(np.zeros((H, W), bool))}), WHERE, "the mask is empty"),
    ("mask and box", _set((*P1, "mask"), mask_rle()), WHERE, "cannot also have points or a box"),
    ("unknown key", _set((*P1, "bbox"), [1, 2, 3, 4]), "object 3, prompt 1:", "unknown key 'bbox' in a prompt"),
    ("same frame", _set((*P1, "frame"), 0), "object 3, prompt 1 (frame 0)", "prompts 0 and 1 are both on frame 0"),
]


@pytest.mark.parametrize("name, edit, where, message", ERRORS, ids=[e[0] for e in ERRORS])
def test_prompt_errors_name_video_object_and_prompt(name, edit, where, message):
    with pytest.raises(PromptError) as info:
        parse(broken(edit))
    text = str(info.value)
    assert text.startswith("video 'vid-1', ") and where in text and message in text, text
    assert info.value.video_key == "vid-1" and info.value.obj_id == 3


def test_duplicate_object_ids():
    doc = broken(lambda d: d["objects"][1].update(id=3))
    with pytest.raises(PromptError, match=r"video 'vid-1', object 3: object id 3 appears twice \(objects\[0\] and"):
        parse(doc)


@pytest.mark.parametrize(
    "doc, message",
    [
        ("{not json", "video 'vid-1': prompts are not valid JSON"),
        (b"\xff\xfe", "video 'vid-1': prompts are not"),
        ("[]", "the prompt file must be a JSON object"),
        ('{"objects": {}}', 'needs "objects": a list'),
        ('{"objects": [], "extra": 1}', "unknown key 'extra'"),
        ('{"objects": [{"prompts": []}]}', "video 'vid-1', objects[0]: object id must be an integer, got None"),
        ('{"objects": [{"id": 1.5, "prompts": []}]}', "object id must be an integer"),
        ('{"objects": [{"id": 1}]}', "video 'vid-1', object 1: the object has no prompt"),
        ('{"objects": [{"id": 1, "prompts": [{"frame": 2, "box": [0, 0, NaN, 1]}]}]}', "must be a finite number"),
    ],
)
def test_file_level_errors(doc, message):
    with pytest.raises(PromptError, match=message.replace("[", r"\[").replace("(", r"\(")):
        parse(doc)


def one_object(*frames: int) -> object:
    prompts = [{"frame": f, "box": [1, 1, 5, 5]} for f in frames]
    return parse(
        {"objects": [{"id": 7, "prompts": prompts}, {"id": 8, "prompts": [{"frame": 8, "box": [2, 2, 4, 4]}]}]}
    )


ANNOTATED = range(0, 97, 4)  # 100 frames at stride 4


def test_schedule_exact_frames():
    plan = schedule(one_object(0, 8, 96), ANNOTATED, "exact")
    assert list(plan) == [0, 8, 96]
    assert [p.obj_id for p in plan[8]] == [7, 8]


def test_schedule_snaps_to_nearest_annotated_frame():
    plan = schedule(one_object(1, 6, 14, 99), ANNOTATED)
    # 1 -> 0, 6 -> 4 (tie: the earlier), 14 -> 12 (tie), 99 -> 96 (past the last, within a stride)
    assert {f: [(p.obj_id, p.frame) for p in ps] for f, ps in plan.items()} == {
        0: [(7, 1)],
        4: [(7, 6)],
        8: [(8, 8)],
        12: [(7, 14)],
        96: [(7, 99)],
    }


def test_schedule_refusals():
    with pytest.raises(PromptError, match=r"object 7, prompt 1 \(frame 5\): frame 5 is not annotated .*4 and 8"):
        schedule(one_object(0, 5), ANNOTATED, "exact")
    with pytest.raises(PromptError, match=r"prompt 1 \(frame 41\): frame 41 lies beyond the last annotated frame 20"):
        schedule(one_object(0, 41), range(0, 21, 4))  # cut by max_frames
    with pytest.raises(PromptError, match=r"prompt 1 \(frame 9\): it lands on annotated frame 8, as prompt 0"):
        schedule(one_object(7, 9), ANNOTATED)
    with pytest.raises(PromptError, match="no annotated frame"):
        schedule(one_object(0), [])
