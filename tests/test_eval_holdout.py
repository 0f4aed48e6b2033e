"""Held-out evaluation (masklet.eval.holdout) on a tiny synthetic corpus: the job's frame sampling,
ground truth at those frames, oracle checks of both scoring paths (ground truth in, 1.0 out), the
tiny random model end to end, error rows and the `masklet eval` command."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from tiny_sam2 import tiny_model

from masklet.cli import main
from masklet.config import JobConfig, validate_config
from masklet.eval import holdout
from masklet.io import sav
from masklet.io.sources import Shard
from masklet.model.tracker import TrackOutput
from masklet.synth.corpus import write_corpus

FRAMES = [0, 2, 4, 6]  # 8 frames at 24 fps sampled at source.fps 12


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("holdout") / "corpus"
    write_corpus(str(root), videos=2, per_shard=1, seed=3, width=64, height=48, frames=8, fps=24.0)
    return root


def ground_truth(corpus: Path) -> dict[str, sav.SavAnnotation]:
    out = {}
    for tar in sorted(corpus.glob("*.tar")):
        _, gts = holdout.read_ground_truth(Shard(tar.stem, str(tar), "wds"))
        out.update({key: sav.parse(data) for key, data in gts.items()})
    return out


def config(uri: str | Path, **sections: dict[str, Any]) -> JobConfig:
    data: dict[str, Any] = {
        "source": {"uri": str(uri), "fps": 12},
        "output": {"uri": "unused-out"},
        "model": {"image_size": 128, "device": "cpu", "init": "random"},  # tests pass their own model or want noise
        "pipeline": {"points_per_side": 4, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0, "max_objects": 4},
    }
    for name, values in sections.items():
        data[name] = {**data.get(name, {}), **values}
    return validate_config(data)


def visible_on(masks: np.ndarray) -> np.ndarray:
    return masks.reshape(len(masks), -1).any(1)


# ---------------------------------------------------------------- scoring on its own


def test_prompted_scoring_of_ground_truth_is_perfect_and_skips_the_prompt_frame(corpus: Path) -> None:
    for annotation in ground_truth(corpus).values():
        gt = holdout.sampled_ground_truth(annotation, FRAMES)
        rows = holdout.score_prompted(gt, gt, FRAMES)
        assert [r["id"] for r in rows] == annotation.masklet_ids
        for row in rows:
            seen = visible_on(gt[row["id"]])
            assert row["scored"] == bool(seen[:-1].any())  # first visible before the last sampled frame
            if row["scored"]:
                start = int(np.argmax(seen))
                assert row["prompt_frame"] == FRAMES[start] and row["frames_scored"] == len(FRAMES) - start - 1
                assert row["j"] == row["f"] == row["jf"] == 1.0
        # a prediction wrong only on each object's prompt frame still scores 1.0: that frame is not counted
        spoiled = {o: m.copy() for o, m in gt.items()}
        for m in spoiled.values():
            if m.any():
                first = int(np.argmax(visible_on(m)))
                m[first] = ~m[first]
        assert all(r["jf"] == 1.0 for r in holdout.score_prompted(spoiled, gt, FRAMES) if r["scored"])
        # no prediction at all: an object visible after its prompt frame scores below 1
        empty = holdout.score_prompted({}, gt, FRAMES)
        for row in empty:
            if row["scored"] and visible_on(gt[row["id"]])[FRAMES.index(row["prompt_frame"]) + 1 :].any():
                assert row["jf"] < 1.0


def test_auto_scoring_of_ground_truth_recalls_everything(corpus: Path) -> None:
    for annotation in ground_truth(corpus).values():
        gt = holdout.sampled_ground_truth(annotation, FRAMES)
        shown = [m for m in gt.values() if m.any()]
        scores = holdout.score_auto(list(reversed(shown)), gt)
        assert scores["gt_masklets"] == len(shown) and scores["gt_never_visible"] == len(gt) - len(shown)
        assert scores["recall"] == scores["precision"] == scores["matched_jf"] == 1.0
        assert scores["matched"] == len(shown)
        fewer = holdout.score_auto(shown[1:] + [np.zeros_like(shown[0])], gt)
        assert fewer["recall"] == (len(shown) - 1) / len(shown) and fewer["precision"] == fewer["recall"]


def test_ground_truth_must_cover_the_sampled_frames(corpus: Path) -> None:
    annotation = next(iter(ground_truth(corpus).values()))
    with pytest.raises(holdout.GroundTruthError, match="does not annotate frame"):
        holdout.sampled_ground_truth(annotation, [0, 8])


# ---------------------------------------------------------------- the prompted path with an oracle tracker


class OracleTracker:
    """Answers every added object's ground-truth mask (logits +-10, object score +-10) on each step."""

    def __init__(self, annotation: sav.SavAnnotation) -> None:
        self.annotation = annotation
        self.position = 0
        self.objects: list[int] = []
        self.prompted: dict[int, int] = {}

    def add_object(self, obj_id: int, **prompt: Any) -> None:
        assert obj_id not in self.objects and set(prompt) == {"mask"}
        self.objects.append(obj_id)
        self.prompted[obj_id] = self.position

    def step(self, frame: np.ndarray) -> TrackOutput:
        index = self.annotation.frame_indices.index(FRAMES[self.position])
        self.position += 1
        masks = torch.stack([torch.from_numpy(self.annotation.masks(o)[index]) for o in self.objects])
        logits = (masks.float() * 20 - 10)[:, None]
        score = torch.where(masks.flatten(1).any(1), 10.0, -10.0)
        n = len(self.objects)
        out = TrackOutput(self.position, list(self.objects), logits, torch.ones(n), score, torch.zeros(n, 4), (48, 64))
        out.__dict__["video_res_logits"] = logits  # already at video size
        return out


def test_tracking_path_scores_ground_truth_as_perfect(corpus: Path) -> None:
    """Decode, prompt on first visible frames, record as a job does, decode the RLEs, score: all 1.0."""
    from masklet.io.sources import iter_videos, list_shards

    cfg = config(corpus)
    for shard in list_shards(cfg.source):
        _, gts = holdout.read_ground_truth(shard)
        for item in iter_videos(shard):
            annotation = sav.parse(gts[item.original_key])
            trackers: list[OracleTracker] = []

            def make(
                *, reverse: bool, start: int, annotation: sav.SavAnnotation = annotation, made: list = trackers
            ) -> OracleTracker:
                assert not reverse and start == 0
                made.append(OracleTracker(annotation))
                return made[-1]

            with item.open(fps=12) as stream:
                indices, records = holdout.track_ground_truth(item.key, stream, annotation, make)
            assert indices == FRAMES
            gt = holdout.sampled_ground_truth(annotation, indices)
            firsts = {o: int(np.argmax(visible_on(m))) for o, m in gt.items() if m.any()}
            assert trackers[0].prompted == firsts  # each object prompted on its first visible sampled frame
            pred = {r.masklet_id: holdout.record_masks(r, indices) for r in records}
            rows = holdout.score_prompted(pred, gt, indices)
            assert rows and all(r["jf"] == 1.0 for r in rows if r["scored"])


# ---------------------------------------------------------------- whole evaluations


def test_both_modes_with_the_tiny_model(corpus: Path, one_torch_thread: None) -> None:
    result = holdout.evaluate(config(corpus), model=tiny_model(), device=torch.device("cpu"))
    json.dumps(result)  # plain JSON
    truth = ground_truth(corpus)
    assert result["summary"]["videos"] == 2
    for mode in ("prompted", "auto"):
        assert [r["key"] for r in result[mode]] == sorted(truth)
        assert [r["shard"] for r in result[mode]] == ["shard-000000", "shard-000001"]
        assert all(r["status"] == "ok" and r["frame_indices"] == FRAMES for r in result[mode])
    for row in result["prompted"]:
        gt = holdout.sampled_ground_truth(truth[row["key"]], FRAMES)
        assert row["gt_objects"] == len(gt) and [o["id"] for o in row["objects"]] == list(gt)
        scored = [o for o in row["objects"] if o["scored"]]
        assert row["scored"] == len(scored) == sum(bool(visible_on(m)[:-1].any()) for m in gt.values())
        assert all(0.0 <= o[k] <= 1.0 for o in scored for k in ("j", "f", "jf"))
    for row in result["auto"]:
        gt = holdout.sampled_ground_truth(truth[row["key"]], FRAMES)
        assert row["gt_objects"] == len(gt) and row["gt_masklets"] == sum(bool(m.any()) for m in gt.values())
        assert 0 <= row["matched"] <= min(row["gt_masklets"], row["pred_masklets"])
        assert 0.0 <= row["recall"] <= 1.0 and 0.0 <= row["precision"] <= 1.0
    p, a = result["summary"]["prompted"], result["summary"]["auto"]
    assert p["gt_objects"] == sum(len(t.masklet_ids) for t in truth.values())
    assert 0.0 <= p["jf"] <= 1.0 and p["meets_target"] == (p["jf"] >= 0.85)
    assert a["gt_masklets"] == sum(r["gt_masklets"] for r in result["auto"])
    assert a["recall"] == a["matched"] / a["gt_masklets"]


def test_auto_mode_runs_the_configured_pipeline_and_gt_answers_score_perfectly(corpus: Path) -> None:
    """The ground-truth plug-in (tests/jobs_plugins.py) as the job's pipeline: kept masklets are exactly
    the GT objects visible on more than half the frames, so recall is their share, precision 1."""
    cfg = config(corpus, workers={"pipeline": "jobs_plugins:ground_truth"}, source={"max_frames": 3})
    result = holdout.evaluate(cfg, modes=["auto"], max_videos=1, model=tiny_model(), device=torch.device("cpu"))
    assert "prompted" not in result and result["settings"]["auto_pipeline"] == "jobs_plugins:ground_truth"
    (row,) = result["auto"]
    assert row["frame_indices"] == FRAMES[:3]
    gt = holdout.sampled_ground_truth(ground_truth(corpus)[row["key"]], FRAMES[:3])
    kept = sum(2 * int(visible_on(m).sum()) > 3 for m in gt.values())
    assert row["pred_masklets"] == row["matched"] == kept and row["precision"] == 1.0 and row["matched_jf"] == 1.0
    assert row["recall"] == kept / row["gt_masklets"]


def rewrite_shard(src: Path, dst: Path, change: dict[str, bytes | None]) -> None:
    """Copy a tar, replacing members named in `change` (None: dropped)."""
    with tarfile.open(src) as tin, tarfile.open(dst, "w") as tout:
        for member in tin:
            data = tin.extractfile(member).read()  # type: ignore[union-attr]
            if member.name in change:
                if change[member.name] is None:
                    continue
                data = change[member.name]  # type: ignore[assignment]
            member.size = len(data)
            tout.addfile(member, io.BytesIO(data))


def test_missing_ground_truth_is_an_input_error(corpus: Path, tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    rewrite_shard(corpus / "shard-000000.tar", tmp_path / "in" / "shard-000000.tar", {"synth-000000.gt.json": None})
    with pytest.raises(holdout.GroundTruthError, match=r"video 'synth-000000' has no ground truth member"):
        holdout.evaluate(config(tmp_path / "in"), model=tiny_model())


def test_an_undecodable_video_is_an_error_row(corpus: Path, tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    rewrite_shard(corpus / "shard-000000.tar", tmp_path / "in" / "shard-000000.tar", {"synth-000000.mp4": b"junk"})
    (tmp_path / "in" / "shard-000001.tar").write_bytes((corpus / "shard-000001.tar").read_bytes())
    cfg = config(tmp_path / "in", workers={"pipeline": "jobs_plugins:ground_truth"})
    result = holdout.evaluate(cfg, modes=["auto"], model=tiny_model(), device=torch.device("cpu"))
    bad, good = result["auto"]
    assert bad["status"] == "error" and bad["error_type"] == "VideoDecodeError" and good["status"] == "ok"
    assert result["summary"]["auto"]["videos_error"] == 1 and holdout.failed_videos(result) == 1


# ---------------------------------------------------------------- the command


def test_eval_command_end_to_end(
    corpus: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], one_torch_thread: None
) -> None:
    """`masklet eval` with a preset model (random seeded weights) at 128 px: table, summary line, JSON."""
    job = tmp_path / "job.yaml"
    cfg = config(corpus, model={"name": "sam2.1_hiera_t"}).model_dump(mode="json")
    job.write_text(yaml.safe_dump(cfg))
    out = tmp_path / "result.json"
    assert main(["eval", str(job), "source.fps=6", "--max-videos", "1", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "prompted: GT mask on each object's first visible frame" in printed and "synth-000000" in printed
    assert "summary: 1 video; prompted J&F " in printed and "auto recall " in printed
    result = json.loads(out.read_text())
    assert result["summary"]["videos"] == 1 and result["settings"]["model"] == "sam2.1_hiera_t"
    assert result["prompted"][0]["frame_indices"] == result["auto"][0]["frame_indices"] == [0, 4]


def test_eval_command_input_errors_exit_2(corpus: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump(config(corpus).model_dump(mode="json")))
    assert main(["eval", str(job), "source.format=frames", "--mode", "prompted"]) == 2
    assert "held-out evaluation reads {key}.gt.json from wds shards" in capsys.readouterr().err
    assert main(["eval", str(job), "source.uri=" + str(tmp_path / "nothing"), "--mode", "auto"]) == 2
    assert "masklet eval: error:" in capsys.readouterr().err


def test_objects_with_nothing_to_score_are_listed_with_the_reason() -> None:
    gt = {1: np.zeros((3, 4, 4), dtype=bool), 2: np.zeros((3, 4, 4), dtype=bool), 3: np.ones((3, 4, 4), dtype=bool)}
    gt[2][2, 1, 1] = True
    rows = holdout.score_prompted({3: np.ones((3, 4, 4), dtype=bool)}, gt, [0, 5, 10])
    assert [(r["id"], r["scored"]) for r in rows] == [(1, False), (2, False), (3, True)]
    assert rows[0]["reason"] == "never visible on the sampled frames"
    assert rows[1]["prompt_frame"] == 10 and "last sampled frame" in rows[1]["reason"]
    assert rows[2]["prompt_frame"] == 0 and rows[2]["frames_scored"] == 2 and rows[2]["jf"] == 1.0
    assert holdout.summarize_prompted([{"status": "ok", "gt_objects": 3, "objects": rows}])["objects_scored"] == 1
