"""The Label Studio export against a real Label Studio server on 127.0.0.1, driven through label-studio-sdk
as a reviewer would drive it: the project made from masklet's labelling config, the frames served from the
export folder (Label Studio's local files), the tasks imported with their predictions, annotations posted
(accepted as they are, corrected, rejected, skipped, half done), Label Studio's JSON export downloaded and
imported back with `masklet review import`. Also: masklet's brush RLE byte for byte against the SDK's.

The server and SDK live in a venv of their own (tests/review_tools.py); one server per module. Without
them the tests are skipped, except in CI (CI=true), where they fail.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from review_helpers import ANNOTATED, HEIGHT, WIDTH, build_output, model_masks
from review_tools import LS_TOKEN, label_studio_server, tool_or_skip

from masklet.io.outputs import read_shard
from masklet.review.corrections import import_review
from masklet.review.export import ExportSettings, export_review
from masklet.review.formats import labelstudio
from masklet.review.manifest import Manifest

REVIEWER = """
import json, sys, urllib.request
from pathlib import Path
from label_studio_sdk import LabelStudio

url, token, review, plan_file, out_file = sys.argv[1:]
review = Path(review)
ls = LabelStudio(base_url=url, api_key=token)
project = ls.projects.create(title="masklet review", label_config=(review / "labelstudio" / "config.xml").read_text())
ls.import_storage.local.create(project=project.id, path=str(review / "videos"), title="frames")
tasks = json.loads((review / "labelstudio" / "tasks.json").read_text())
imported = ls.projects.import_tasks(project.id, request=tasks, return_task_ids=True)
stored = {}
for task in ls.tasks.list(project=project.id, fields="all"):
    stored[(task.data["masklet"], task.data["position"])] = task
report = {"imported": imported.task_count, "predictions": imported.prediction_count, "stored": len(stored)}
first = tasks[0]["data"]["image"]
request = urllib.request.Request(url + first, headers={"Authorization": "Token " + token})
with urllib.request.urlopen(request) as response:
    report["image"] = [response.status, response.headers["Content-Type"], len(response.read())]
report["served_predictions"] = [stored[(t["data"]["masklet"], t["data"]["position"])].predictions[0].result
                                for t in tasks]
for item in json.loads(Path(plan_file).read_text()):
    task = stored[(item["masklet"], item["position"])]
    result = item["result"] if item["result"] is not None else task.predictions[0].result
    result = result + item.get("extra", [])
    ls.annotations.create(task.id, result=result, was_cancelled=item["skip"], lead_time=2.5)
exported = ls.projects.exports.as_json(project.id)
Path(out_file).write_text(json.dumps(exported))
print(json.dumps(report))
"""

SDK_RLE = """
import json, sys
import numpy as np
from label_studio_sdk.converter.brush import decode_rle, mask2rle

masks = np.load(sys.argv[1])
theirs = {k: mask2rle(masks[k].astype(np.uint8) * 255) for k in masks.files}
ours = json.loads(open(sys.argv[2]).read())
decoded = {k: (decode_rle(ours[k]).reshape(*masks[k].shape, 4)[:, :, 3] == 255).tolist() for k in masks.files}
print(json.dumps({"theirs": theirs, "decoded": decoded}))
"""


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    tool_or_skip("labelstudio")
    base = tmp_path_factory.mktemp("ls")
    root = str(base / "out")
    build_output(root, str(base / "corpus"))
    review = base / "review"
    manifest = export_review(root, str(review), ExportSettings(by="stability", top_k=5, formats=("labelstudio",)))
    with label_studio_server(base / "ls-data", review, base / "ls.log") as url:
        yield {"root": root, "review": review, "manifest": manifest, "url": url, "base": base}


def _records(root: str) -> dict:
    return {
        (m.video_key, m.masklet_id): m for s in ("shard-000000", "shard-000001") for m in read_shard(root, s).masklets
    }


def test_a_review_in_label_studio_comes_back(setup: dict) -> None:
    python = tool_or_skip("labelstudio")
    root, review, manifest, base = setup["root"], setup["review"], setup["manifest"], setup["base"]
    records = _records(root)
    refs = [(m.video_key, m.masklet_id) for m in manifest.masklets]
    frames = {k: manifest.video(k[0]).frames for k in refs}
    corrected = next(k for k in refs if model_masks(records[k], frames[k])[1].any())
    accepted, rejected, skipped, partial = (k for k in refs if k != corrected)
    square = np.zeros((HEIGHT, WIDTH), dtype=bool)
    square[40:50, 70:85] = True
    plan = []
    for k in (accepted, corrected):
        for position in range(len(frames[k])):
            result = None  # the prediction, submitted as it is
            if k == corrected and position == 1:
                result = [labelstudio.brush_result(model_masks(records[k], frames[k])[1] | square, "fixed")]
            plan.append({"masklet": manifest.ref(*k), "position": position, "result": result, "skip": False})
    reject = {
        "id": "v",
        "from_name": "review",
        "to_name": "image",
        "type": "choices",
        "value": {"choices": ["rejected"]},
    }
    plan.append({"masklet": manifest.ref(*rejected), "position": 2, "result": None, "extra": [reject], "skip": False})
    plan.append({"masklet": manifest.ref(*skipped), "position": 0, "result": [], "skip": True})
    plan += [{"masklet": manifest.ref(*partial), "position": p, "result": None, "skip": False} for p in (0, 1)]
    (base / "plan.json").write_text(json.dumps(plan))
    export_file = base / "label-studio-export.json"
    done = subprocess.run(
        [str(python), "-c", REVIEWER, setup["url"], LS_TOKEN, str(review), str(base / "plan.json"), str(export_file)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-4000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    tasks = json.loads((review / "labelstudio" / "tasks.json").read_text())
    assert report["imported"] == report["stored"] == len(tasks) == 5 * len(ANNOTATED)
    assert report["image"][:2] == [200, "image/jpeg"]
    assert report["image"][2] == (review / tasks[0]["data"]["image"].split("?d=", 1)[1]).stat().st_size
    assert report["served_predictions"] == [t["predictions"][0]["result"] for t in tasks]  # stored as sent

    exported = json.loads(export_file.read_text())
    assert len(exported) == len(tasks) and sum(len(t["annotations"]) for t in exported) == len(plan)
    new = str(base / "reviewed")
    summary = import_review(root, str(export_file), "labelstudio", new, export_uri=str(review))
    assert summary.verdicts == {"accepted": 1, "corrected": 1, "rejected": 1} and summary.not_reviewed == 2
    after = _records(new)
    fixed = after[corrected]
    expected = model_masks(records[corrected], frames[corrected])
    expected[1] |= square
    assert fixed.review_verdict == "corrected" and fixed.human_edit_frames == [frames[corrected][1]]
    assert np.array_equal(model_masks(fixed, frames[corrected]), expected)  # pixel for pixel, through the server
    assert fixed.reviewer == "label-studio user 1" and fixed.reviewed_at.endswith("+00:00")
    assert after[accepted].review_verdict == "accepted" and after[accepted].human_edit_count == 0
    assert (after[rejected].kept, after[rejected].reject_reason) == (False, "review")
    assert after[skipped] == records[skipped] and after[partial] == records[partial]  # nobody reviewed them


def test_the_brush_rle_is_the_sdks_byte_for_byte(tmp_path: Path) -> None:
    python = tool_or_skip("labelstudio")
    rng = np.random.default_rng(4)
    masks = {f"m{i}": rng.random(shape) < p for i, (shape, p) in enumerate(
        [((HEIGHT, WIDTH), 0.0), ((HEIGHT, WIDTH), 0.3), ((HEIGHT, WIDTH), 1.0), ((7, 5), 0.5), ((300, 300), 0.001)]
    )}  # fmt: skip
    masks["block"] = np.zeros((300, 300), dtype=bool)
    masks["block"][50:260, 10:290] = True  # runs longer than 2**16 values
    np.savez(tmp_path / "masks.npz", **masks)
    (tmp_path / "ours.json").write_text(json.dumps({k: labelstudio.encode_rle(m) for k, m in masks.items()}))
    done = subprocess.run(
        [str(python), "-c", SDK_RLE, str(tmp_path / "masks.npz"), str(tmp_path / "ours.json")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout)
    for key, mask in masks.items():
        assert labelstudio.encode_rle(mask) == result["theirs"][key], key
        assert np.array_equal(np.asarray(result["decoded"][key]), mask), key
        assert np.array_equal(labelstudio.decode_rle(result["theirs"][key], *mask.shape), mask), key


def test_the_manifest_is_what_was_exported(setup: dict) -> None:
    manifest: Manifest = setup["manifest"]
    assert manifest.formats == ["labelstudio"] and len(manifest.masklets) == 5
    assert not (setup["review"] / "cvat").exists()
