"""masklet.Labeler: one video from Python, automatic or prompted, from a path, bytes or s3://; no Ray."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import fsspec
import numpy as np
import pytest

import masklet
from masklet.io import rle, sav
from masklet.io.video import VideoDecodeError
from masklet.synth.corpus import render_sample

DEMO = {"model": {"name": "masklet_demo", "device": "cpu"}, "source": {"fps": None}}


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, sav.SavAnnotation]:
    members = render_sample(7, 0, width=96, height=64, frames=6, fps=24.0)
    path = tmp_path_factory.mktemp("api") / "clip.mp4"
    path.write_bytes(members["synth-000000.mp4"])
    return path, sav.parse(members["synth-000000.gt.json"])


@pytest.fixture(scope="module")
def labeler() -> masklet.Labeler:
    pipeline = {"points_per_side": 8, "pred_iou_thresh": 0.6, "stability_score_thresh": 0.75}
    return masklet.Labeler({**DEMO, "pipeline": pipeline})


def test_automatic_masklets_of_a_file_and_of_its_bytes(
    clip: tuple[Path, sav.SavAnnotation], labeler: masklet.Labeler
) -> None:
    path, _ = clip
    result = labeler.label(path)
    assert result.video.status == "ok" and result.video.video_key == "clip" and result.video.frame_indices == list(
        range(6)
    )
    assert result and result.kept and all(m.source == "auto" for m in result)
    for m in result:
        masks = m.masks()
        assert masks.shape == (6, 64, 96) and masks.dtype == bool
        assert [rle.encode(mask)["counts"] for mask in masks] == [r["counts"] for r in m.rles()]
    again = labeler.label(path.read_bytes(), key="clip.mp4")
    assert [m.rle for m in again] == [m.rle for m in result]  # same pixels, same masklets


def test_prompted_masklets_follow_their_objects(clip: tuple[Path, sav.SavAnnotation], s3_bucket: str) -> None:
    path, truth = clip
    uri = f"s3://{s3_bucket}/clips/clip.mp4"
    with fsspec.open(uri, "wb") as f:
        f.write(path.read_bytes())
    first = truth.masklet[0]
    objects = [
        {"id": int(i), "prompts": [{"frame": 0, "mask": first[k]}]}
        for k, i in enumerate(truth.masklet_ids)
        if rle.area(first[k]) > 0
    ]
    labeler = masklet.Labeler({**DEMO, "pipeline": {"mode": "prompted"}})
    result = labeler.label(uri, prompts={"objects": objects})
    assert [m.masklet_id for m in result] == [o["id"] for o in objects]
    ious = {}
    for m in result:
        column = truth.masklet_ids.index(m.masklet_id)
        expected = np.stack([rle.decode(row[column]) for row in truth.masklet])
        ious[m.masklet_id] = [(p & e).sum() / max(1, (p | e).sum()) for p, e in zip(m.masks(), expected, strict=True)]
    assert all(iou[0] > 0.9 for iou in ious.values()), ious  # each object segmented from its prompt
    largest = max(objects, key=lambda o: rle.area(o["prompts"][0]["mask"]))["id"]
    assert min(ious[largest]) > 0.8, ious  # and tracked (small, occluded ones the demo model may lose)


def test_a_bad_video_raises_its_input_error(labeler: masklet.Labeler) -> None:
    with pytest.raises(VideoDecodeError, match="video 'junk'"):
        labeler.label(b"not a video at all", key="junk.mp4")
    with pytest.raises(masklet.api.ConfigError, match="give the video's prompts"):
        masklet.Labeler({**DEMO, "pipeline": {"mode": "prompted"}}).label(b"...")


def test_the_api_needs_no_ray(clip: tuple[Path, sav.SavAnnotation]) -> None:
    path, _ = clip
    script = (
        "import sys, json, masklet\n"
        f"labeler = masklet.Labeler({DEMO!r})\n"
        f"print(len(labeler.label({str(path)!r})), 'ray' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    count, ray_loaded = done.stdout.split()
    assert int(count) > 0 and ray_loaded == "False"


def test_the_readme_example_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    code = readme.split("## Python\n", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README.md", "exec"), {})
    assert (tmp_path / "clip.mp4").stat().st_size > 0
