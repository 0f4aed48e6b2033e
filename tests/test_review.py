"""masklet review: the selection, the files written for CVAT and Label Studio, the import of a person's
corrections (played here by a script through the same files), and every refusal of bad corrections.

The reference tools' own checks are in test_review_datumaro.py (CVAT XML through datumaro) and
test_review_labelstudio.py (a Label Studio server driven through its SDK).
"""

from __future__ import annotations

import json
import re
import shutil
import tarfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image
from review_helpers import ANNOTATED, BORN_AT, HEIGHT, WIDTH, build_output, model_masks, tree_digest

from masklet.cli import main
from masklet.io import sav
from masklet.io.outputs import read_shard, read_table
from masklet.io.schema import ADDED_COLUMNS, MASKLETS_SCHEMA, SCHEMA_VERSION
from masklet.pipelines import doubt
from masklet.pipelines.sampling import CANDIDATE_COLUMNS, Candidate, select
from masklet.review import corrections
from masklet.review.corrections import CorrectionsRefused, import_review
from masklet.review.export import ExportSettings, read_candidates
from masklet.review.export import select as select_for_review
from masklet.review.formats import cvat, labelstudio
from masklet.review.manifest import MANIFEST, load


@pytest.fixture(scope="module")
def output(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict]:
    base = tmp_path_factory.mktemp("review")
    root = str(base / "out")
    build_output(root, str(base / "corpus"))
    return root, _rows(root)


def _rows(root: str) -> dict:
    """The masklet rows of an output as read back (float32 scores), by (video_key, masklet_id)."""
    return {
        (m.video_key, m.masklet_id): m for s in ("shard-000000", "shard-000001") for m in read_shard(root, s).masklets
    }


@pytest.fixture(scope="module")
def exported(output: tuple[str, dict], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Both formats, the 6 lowest-stability kept masklets, at most 3 per video."""
    root, _ = output
    review = tmp_path_factory.mktemp("export") / "review"
    assert main(["review", "export", root, str(review), "--top-k", "6", "--per-video", "3"]) == 0
    return review


# --- selection ---------------------------------------------------------------------------------------


def test_selection_ranks_the_kept_masklets_with_caps_and_sizes(output: tuple[str, dict]) -> None:
    root, records = output
    candidates = read_candidates(root, ["shard-000000", "shard-000001"])
    kept = sorted((r for r in records.values() if r.kept), key=lambda r: (r.stability_mean, r.video_key, r.masklet_id))
    chosen = select_for_review(candidates, ExportSettings(by="stability", top_k=4))
    assert [(m.video_key, m.masklet_id) for m in chosen] == [(r.video_key, r.masklet_id) for r in kept[:4]]
    capped = select_for_review(candidates, ExportSettings(by="stability", top_k=5, per_video=1))
    assert len(capped) == 3 and len({m.video_key for m in capped}) == 3  # 3 videos, one each: the caps bind
    assert len(select_for_review(candidates, ExportSettings(by="edits", fraction=0.5))) == round(0.5 * len(kept) + 1e-9)
    by_edits = select_for_review(candidates, ExportSettings(by="edits", top_k=len(kept)))
    assert [m.edit_count for m in by_edits] == sorted((m.edit_count for m in by_edits), reverse=True)
    one = select_for_review(candidates, ExportSettings(by="random", top_k=4, seed=3))
    assert one == select_for_review(list(reversed(candidates)), ExportSettings(by="random", top_k=4, seed=3))
    assert one != select_for_review(candidates, ExportSettings(by="random", top_k=4, seed=4))
    assert all(m.kept for m in one)
    with pytest.raises(ValueError, match="exactly one of top_k and fraction"):
        ExportSettings(top_k=3, fraction=0.5)
    with pytest.raises(ValueError, match="unknown order 'worst'"):
        ExportSettings(by="worst", top_k=1)


def test_export_writes_the_selection_with_its_scores(output: tuple[str, dict], exported: Path) -> None:
    root, records = output
    manifest = load(str(exported))
    assert manifest.selection == {
        "by": "stability", "top_k": 6, "fraction": None, "per_video": 3, "seed": 0, "candidates": 8, "selected": 6,
    }  # fmt: skip
    assert [m.rank for m in manifest.masklets] == list(range(1, 7))
    scores = [m.score for m in manifest.masklets]
    assert scores == sorted(scores)
    for m in manifest.masklets:
        r = records[(m.video_key, m.masklet_id)]
        assert r.kept and m.score == pytest.approx(r.stability_mean) and m.edit_count == r.edit_count
    rows = (exported / "selection.csv").read_text().splitlines()
    assert rows[0].startswith("rank,reference,by,") and len(rows) == 7
    assert rows[1].split(",")[1] == manifest.ref(manifest.masklets[0].video_key, manifest.masklets[0].masklet_id)
    for video in manifest.videos:
        assert video.frames == ANNOTATED and video.height == HEIGHT and video.width == WIDTH
        assert sorted(video.masklets) == sorted(
            m.masklet_id for m in manifest.masklets if m.video_key == video.video_key
        )


def test_export_is_reproducible(output: tuple[str, dict], exported: Path, tmp_path: Path) -> None:
    root, _ = output
    again = tmp_path / "again"
    assert main(["review", "export", root, str(again), "--top-k", "6", "--per-video", "3"]) == 0
    assert load(str(again)).export_id == load(str(exported)).export_id
    first, second = tree_digest(exported), tree_digest(again)
    assert first.keys() == second.keys()
    assert {k for k in first if first[k] != second[k]} <= {MANIFEST}  # at most its created_at differs


def test_exported_frames_are_the_videos_frames(output: tuple[str, dict], exported: Path) -> None:
    """Frames of both shards (one from the output's tar, one from the corpus) match the masks they carry."""
    root, records = output
    manifest = load(str(exported))
    assert {v.shard_id for v in manifest.videos} == {"shard-000000", "shard-000001"}
    for video in manifest.videos:
        names = sorted(p.name for p in (exported / video.images).iterdir())
        assert names == [cvat.frame_name(video.video_key, t) for t in range(len(video.frames))]
        for position in range(len(video.frames)):
            rgb = np.asarray(Image.open(exported / video.images / names[position]))
            assert rgb.shape == (HEIGHT, WIDTH, 3)
            # a synthetic object's pixels differ from the background: the frame is the one its masks belong to
            m = model_masks(records[(video.video_key, video.masklets[0])], video.frames)[position]
            if m.sum() > 50 and (~m).sum() > 50:
                assert np.abs(rgb[m].mean(axis=0) - rgb[~m].mean(axis=0)).max() > 10


def test_both_formats_carry_the_models_masks_pixel_for_pixel(output: tuple[str, dict], exported: Path) -> None:
    _, records = output
    manifest = load(str(exported))
    tasks = json.loads((exported / "labelstudio" / "tasks.json").read_text())
    assert len(tasks) == sum(len(v.frames) * len(v.masklets) for v in manifest.videos)
    rank = {(m.video_key, m.masklet_id): m.rank for m in manifest.masklets}
    order = [(rank[(t["data"]["video_key"], t["data"]["masklet_id"])], t["data"]["position"]) for t in tasks]
    assert order == sorted(order)  # the most doubtful masklet first, each through its frames
    assert (exported / "labelstudio" / "config.xml").read_text() == labelstudio.LABEL_CONFIG
    assert json.loads((exported / "cvat" / "labels.json").read_text()) == cvat.labels()
    for video in manifest.videos:
        doc = cvat.parse((exported / "videos" / video.video_key / "annotations.xml").read_bytes(), "x")
        assert [f.name for f in doc.frames] == [cvat.frame_name(video.video_key, t) for t in range(len(video.frames))]
        for masklet_id in video.masklets:
            expected = model_masks(records[(video.video_key, masklet_id)], video.frames)
            ref = manifest.ref(video.video_key, masklet_id)
            shapes = {s.frame: s for s in doc.shapes if s.attributes[cvat.ATTR_MASKLET] == ref}
            assert set(shapes) == {t for t in range(len(expected)) if expected[t].any()}  # no empty masks in CVAT
            assert all(shapes[t].attributes[cvat.ATTR_REVIEW] == "unreviewed" for t in shapes)
            ls = [t for t in tasks if t["data"]["masklet"] == ref]
            assert [t["data"]["frame"] for t in ls] == video.frames
            for position, mask in enumerate(expected):
                cvat_mask = shapes[position].mask() if position in shapes else np.zeros_like(mask)
                assert np.array_equal(cvat_mask, mask)
                (prediction,) = ls[position]["predictions"]
                ls_mask = labelstudio.annotation_mask(prediction, HEIGHT, WIDTH)
                assert np.array_equal(ls_mask, mask)
                assert ls[position]["data"]["image"] == f"/data/local-files/?d={video.images}/" + cvat.frame_name(
                    video.video_key, position
                )


def test_export_refusals(output: tuple[str, dict], exported: Path, tmp_path: Path) -> None:
    root, _ = output
    assert main(["review", "export", root, str(exported), "--top-k", "1"]) == 2  # already an export there
    assert main(["review", "export", root, f"{root}/review", "--top-k", "1"]) == 2  # inside the output
    assert main(["review", "export", root, str(tmp_path / "none"), "--top-k", "0"]) == 2  # nothing selected
    assert not (tmp_path / "none").exists()
    assert main(["review", "export", root, str(tmp_path / "one"), "--fraction", "0.2", "--format", "cvat"]) == 0
    assert not (tmp_path / "one" / "labelstudio").exists() and (tmp_path / "one" / "cvat" / "labels.json").exists()


# --- the encodings -----------------------------------------------------------------------------------


def test_cvat_mask_encoding_is_row_major_over_its_box_background_first() -> None:
    mask = np.zeros((4, 6), dtype=bool)
    mask[1, 2:4] = mask[2, 3:5] = True
    assert cvat.encode_mask(mask) == ("0, 2, 2, 2", 2, 1, 3, 2)  # box x 2..4, y 1..2: "##." then ".##"
    assert cvat.encode_mask(np.zeros((3, 3), dtype=bool)) is None
    rng = np.random.default_rng(0)
    for _ in range(20):
        m = rng.random((17, 23)) < rng.random()
        encoded = cvat.encode_mask(m)
        assert encoded is None if not m.any() else np.array_equal(cvat.decode_mask(*encoded, frame=m.shape), m)
    with pytest.raises(ValueError, match="does not fit a 6x4 frame"):
        cvat.decode_mask("0, 2, 2, 2", 5, 1, 3, 2, frame=(4, 6))
    with pytest.raises(ValueError, match="rle counts 7 pixels, the 3x2 box has 6"):
        cvat.decode_mask("0, 2, 2, 3", 2, 1, 3, 2, frame=(4, 6))


def test_label_studio_rle_round_trips_and_reads_literal_runs() -> None:
    rng = np.random.default_rng(1)
    for shape in ((1, 1), (5, 7), (64, 96), (300, 300)):  # 300x300x4 values: runs longer than 2**16
        for density in (0.0, 0.02, 0.5, 1.0):
            m = rng.random(shape) < density
            if shape == (300, 300) and density == 0.5:
                m = np.zeros(shape, dtype=bool)
                m[100:250, 20:280] = True
            assert np.array_equal(labelstudio.decode_rle(labelstudio.encode_rle(m), *shape), m)
    # literal runs, as Label Studio's brush writes at anti-aliased edges: alpha >= 128 is in the mask
    alpha = rng.integers(0, 256, size=(6, 5)).astype(np.uint8)
    values = np.repeat(alpha.ravel(), 4)  # RGBA with every channel = alpha
    bits = f"{values.size:032b}{7:05b}" + "".join(f"{s - 1:04b}" for s in (3, 4, 8, 16))
    for start in range(0, values.size, 8):
        chunk = values[start : start + 8]
        bits += f"0{0:02b}{chunk.size - 1:03b}" + "".join(f"{v:08b}" for v in chunk)
    bits += "0" * (-len(bits) % 8)
    stream = list(int(bits, 2).to_bytes(len(bits) // 8, "big"))
    assert np.array_equal(labelstudio.decode_rle(stream, 6, 5), alpha >= 128)
    with pytest.raises(ValueError, match="is not a 4x4 RGBA mask"):
        labelstudio.decode_rle(labelstudio.encode_rle(np.ones((3, 3), dtype=bool)), 4, 4)
    with pytest.raises(ValueError, match="damaged"):
        labelstudio.decode_rle(labelstudio.encode_rle(np.eye(8, dtype=bool))[:-3], 8, 8)


# --- a person's review, played by a script through the exported files --------------------------------


def _cvat_review(exported: Path, dest: Path, edit) -> Path:
    """Copy every video's annotations.xml to `dest`/{key}.xml after `edit(key, doc)`."""
    dest.mkdir(parents=True, exist_ok=True)
    for xml in sorted((exported / "videos").glob("*/annotations.xml")):
        doc = cvat.parse(xml.read_bytes(), str(xml))
        edit(xml.parent.name, doc)
        (dest / f"{xml.parent.name}.xml").write_bytes(cvat.render(doc))
    return dest


def _set_mask(shape: cvat.Shape, mask: np.ndarray) -> None:
    new = cvat.Shape.of_mask(shape.frame, mask, shape.attributes)
    shape.rle, shape.left, shape.top, shape.width, shape.height = new.rle, new.left, new.top, new.width, new.height


@pytest.fixture(scope="module")
def plan(output: tuple[str, dict], exported: Path) -> dict:
    """Who gets which verdict among the six exported masklets."""
    _, records = output
    manifest = load(str(exported))
    refs = [(m.video_key, m.masklet_id) for m in manifest.masklets]
    late = next(k for k in refs if records[k].frame_indices[0] == BORN_AT)
    corrected = next(k for k in refs if k != late and model_masks(records[k], ANNOTATED)[1].any())
    accepted, rejected, erased, untouched = (k for k in refs if k not in (late, corrected))
    return {
        "manifest": manifest,
        "corrected": corrected,  # a person adds a square on frame 2 (position 1)
        "late": late,  # born late: a person draws it on frame 0 too
        "accepted": accepted,
        "rejected": rejected,
        "erased": erased,  # every mask deleted: a rejection
        "untouched": untouched,
    }


def _square(size: int = 9) -> np.ndarray:
    mask = np.zeros((HEIGHT, WIDTH), dtype=bool)
    mask[2 : 2 + size, 3 : 3 + size] = True
    return mask


@pytest.fixture(scope="module")
def cvat_reviewed(output: tuple[str, dict], exported: Path, plan: dict, tmp_path_factory: pytest.TempPathFactory):
    root, _ = output
    manifest = plan["manifest"]
    base = tmp_path_factory.mktemp("cvat-review")

    rejected: list[cvat.Shape] = []

    def edit(key: str, doc: cvat.Document) -> None:
        doc.reviewer, doc.updated = "alice", "2026-12-01T10:00:00+00:00"
        keep = []
        for shape in doc.shapes:
            ref = (key, int(shape.attributes[cvat.ATTR_MASKLET].rsplit("/", 1)[1]))
            if ref == plan["corrected"] and shape.frame == 1:
                _set_mask(shape, shape.mask() | _square())
            if ref == plan["accepted"]:
                shape.attributes[cvat.ATTR_REVIEW] = "accepted"
            if ref == plan["rejected"] and not rejected:
                shape.attributes[cvat.ATTR_REVIEW] = "rejected"  # on one of its masks
                rejected.append(shape)
            if ref != plan["erased"]:
                keep.append(shape)
        if key == plan["late"][0]:
            attrs = {cvat.ATTR_MASKLET: manifest.ref(*plan["late"]), cvat.ATTR_REVIEW: "accepted"}
            keep.append(cvat.Shape.of_mask(0, _square(5), attrs))
        doc.shapes = keep

    before = tree_digest(Path(root))
    new = str(base / "new")
    files = _cvat_review(exported, base / "corrections", edit)
    assert main(["review", "import", root, str(files), new, "--format", "cvat", "--export", str(exported)]) == 0
    assert tree_digest(Path(root)) == before  # the reviewed output is never modified
    return new


def test_cvat_corrections_make_a_new_output(output: tuple[str, dict], cvat_reviewed: str, plan: dict) -> None:
    root, records = output
    manifest = plan["manifest"]
    rows = {
        (m.video_key, m.masklet_id): m
        for s in ("shard-000000", "shard-000001")
        for m in read_shard(cvat_reviewed, s).masklets
    }
    assert rows.keys() == records.keys()
    verdicts = {k: r.review_verdict for k, r in rows.items() if r.review_verdict}
    assert verdicts == {
        plan["corrected"]: "corrected",
        plan["late"]: "corrected",
        plan["accepted"]: "accepted",
        plan["rejected"]: "rejected",
        plan["erased"]: "rejected",
    }
    corrected, before = rows[plan["corrected"]], records[plan["corrected"]]
    assert corrected.human_edit_count == 1 and corrected.human_edit_frames == [ANNOTATED[1]]
    assert corrected.reviewer == "alice" and corrected.reviewed_at == "2026-12-01T10:00:00+00:00"
    expected = before.masks()
    expected[1] |= _square()
    assert np.array_equal(
        corrected.masks(), expected
    )  # the person's mask on the frame they changed, the model's elsewhere
    assert corrected.stability == before.stability and corrected.kept and corrected.edit_count == before.edit_count
    late, late_before = rows[plan["late"]], records[plan["late"]]
    assert late_before.frame_indices[0] == BORN_AT and late.frame_indices == [0, *late_before.frame_indices]
    assert late.human_edit_frames == [0] and np.array_equal(late.masks()[0], _square(5))
    assert late.pred_iou[0] == late.stability[0] == late.object_score[0] == 0.0  # no model scores where it had none
    assert late.stability[1:] == late_before.stability
    assert rows[plan["accepted"]].human_edit_count == 0 and rows[plan["accepted"]].kept
    for key in (plan["rejected"], plan["erased"]):
        assert (rows[key].kept, rows[key].reject_reason, rows[key].human_edit_count) == (False, "review", 0)
        assert rows[key].rle == records[key].rle  # what was rejected stays as it was
    untouched = rows[plan["untouched"]]
    assert untouched == records[plan["untouched"]] and untouched.review_verdict is None  # says nobody looked
    unexported = [k for k in records if k not in {(m.video_key, m.masklet_id) for m in manifest.masklets}]
    assert all(rows[k] == records[k] for k in unexported)
    job = json.loads(Path(cvat_reviewed, "job.json").read_text())
    assert job["derived"][-1]["command"] == "review import" and job["derived"][-1]["export_id"] == manifest.export_id
    assert job["derived"][-1]["review"] == {"accepted": 1, "corrected": 2, "rejected": 2, "frames_changed": 2}


def test_the_sav_json_says_what_a_person_did(output: tuple[str, dict], cvat_reviewed: str, plan: dict) -> None:
    _, records = output
    docs = {}
    for tar_path in sorted(Path(cvat_reviewed, "wds").glob("*.tar")):
        with tarfile.open(tar_path) as tar:
            for m in tar:
                if m.name.endswith(".json"):
                    docs[m.name[:-5]] = sav.parse(tar.extractfile(m).read())  # as train reads them
    for (key, masklet_id), r in records.items():
        doc = docs[key].doc
        if (key, masklet_id) in (plan["rejected"], plan["erased"]) or not r.kept:
            assert masklet_id not in doc["masklet_id"]
            continue
        i = doc["masklet_id"].index(masklet_id)
        if (key, masklet_id) in (plan["corrected"], plan["late"]):
            assert (doc["masklet_edited_frame_count"][i], doc["masklet_type"][i], doc["masklet_review"][i]) == (
                1,
                "manual",
                "corrected",
            )
        elif (key, masklet_id) == plan["accepted"]:
            assert (doc["masklet_edited_frame_count"][i], doc["masklet_type"][i], doc["masklet_review"][i]) == (
                0,
                "auto",
                "accepted",
            )
        else:  # nobody reviewed it: the automatic edits, and null where the video has reviewed ones
            assert doc["masklet_edited_frame_count"][i] == r.edit_count and doc["masklet_type"][i] == "auto"
            assert doc.get("masklet_review", [None] * len(doc["masklet_id"]))[i] is None
    corrected_key, corrected_id = plan["corrected"]
    doc = docs[corrected_key]
    assert np.array_equal(doc.masks(corrected_id)[1], read_masklet(cvat_reviewed, *plan["corrected"]).masks()[1])


def read_masklet(root: str, key: str, masklet_id: int):
    return next(
        m
        for s in ("shard-000000", "shard-000001")
        for m in read_shard(root, s).masklets
        if (m.video_key, m.masklet_id) == (key, masklet_id)
    )


def test_the_reviewed_output_is_a_normal_output(cvat_reviewed: str, plan: dict, tmp_path: Path) -> None:
    assert main(["filter", cvat_reviewed, str(tmp_path / "filtered")]) == 0
    assert main(["sample", cvat_reviewed, str(tmp_path / "sampled"), "--by", "edits", "--top-k", "2"]) == 0
    shards = ("shard-000000", "shard-000001")
    sampled = [m for s in shards for m in read_shard(str(tmp_path / "sampled"), s).masklets]
    rows = [
        Candidate(shard_id=s, **row)
        for s in shards
        for row in read_table(cvat_reviewed, s, "masklets", columns=CANDIDATE_COLUMNS).to_pylist()
    ]
    assert sum(c.human_edit_count is not None for c in rows) == 5  # the reviewed ones, read by sample
    assert {
        (s, m.video_key, m.masklet_id)
        for s in shards
        for m in read_shard(str(tmp_path / "sampled"), s).masklets
        if m.kept
    } == select(rows, by="edits", top_k=2)
    assert sum(m.kept for m in sampled) == 2
    assert main(["report", cvat_reviewed, "--out", str(tmp_path / "report.html"), "--videos", "1"]) == 0
    assert (tmp_path / "report.html").stat().st_size > 1000


def test_sample_by_edits_uses_human_edits_where_there_are_any() -> None:
    def c(mid: int, auto: int, human: int | None) -> Candidate:
        return Candidate("s", "v", mid, edit_count=auto, stability_mean=0.9, kept=True, human_edit_count=human)

    pool = [c(1, 5, 0), c(2, 0, 2), c(3, 3, None), c(4, 1, None)]  # 1: reviewed, nothing to fix despite 5 automatic
    assert [ref[2] for ref in sorted(select(pool, by="edits", top_k=2))] == [2, 3]
    assert "human_edit_count" in CANDIDATE_COLUMNS


def test_label_studio_corrections_through_the_same_rule(
    output: tuple[str, dict], exported: Path, plan: dict, tmp_path: Path
) -> None:
    """The JSON Label Studio exports, written by `labelstudio.annotate` as a script playing the reviewer."""
    root, records = output
    manifest = plan["manifest"]
    tasks = json.loads((exported / "labelstudio" / "tasks.json").read_text())
    done = []
    for i, task in enumerate(tasks):
        task = {**task, "id": 100 + i}
        ref = (task["data"]["video_key"], task["data"]["masklet_id"])
        position = task["data"]["position"]
        if ref == plan["accepted"]:
            task = labelstudio.annotate(task, user=7, at="2026-12-02T09:00:00Z")
        elif ref == plan["corrected"]:
            model = model_masks(records[ref], ANNOTATED)[position]
            task = labelstudio.annotate(
                task, mask=model | _square() if position == 1 else None, user={"id": 3, "email": "bob@example.com"}
            )
        elif ref == plan["rejected"] and position == 2:
            task = labelstudio.annotate(task, rejected=True, user=7)
        elif ref == plan["untouched"] and position == 0:
            task = labelstudio.annotate(task, skipped=True)  # skipped: not a review
        elif ref == plan["erased"] and position < 3:
            task = labelstudio.annotate(task, user=7)  # some frames looked at, nothing changed: not reviewed
        done.append(task)
    corrections_file = tmp_path / "export.json"
    corrections_file.write_text(json.dumps(done))
    new = str(tmp_path / "new")
    assert import_review(root, str(corrections_file), "labelstudio", new, export_uri=str(exported)).verdicts == {
        "accepted": 1, "corrected": 1, "rejected": 1,
    }  # fmt: skip
    rows = {k: read_masklet(new, *k) for k in (plan["accepted"], plan["corrected"], plan["rejected"], plan["erased"])}
    assert rows[plan["accepted"]].reviewer == "label-studio user 7"
    assert rows[plan["accepted"]].reviewed_at == "2026-12-02T09:00:00+00:00"
    assert rows[plan["corrected"]].reviewer == "bob@example.com" and rows[plan["corrected"]].human_edit_frames == [2]
    expected = records[plan["corrected"]].masks()
    expected[1] |= _square()
    assert np.array_equal(rows[plan["corrected"]].masks(), expected)
    assert rows[plan["rejected"]].reject_reason == "review"
    assert rows[plan["erased"]] == records[plan["erased"]]
    assert manifest.export_id in json.loads(Path(new, "job.json").read_text())["derived"][-1]["export_id"]


def test_the_manifest_is_found_beside_the_corrections(output: tuple[str, dict], exported: Path, tmp_path: Path) -> None:
    root, _ = output
    found = corrections.find_manifest(str(exported / "videos" / "x" / "annotations.xml"))
    assert found.export_id == load(str(exported)).export_id
    with pytest.raises(ValueError, match="--export REVIEW_URI"):
        corrections.find_manifest(str(tmp_path / "a" / "b" / "c" / "d" / "e.json"))


# --- refusals ----------------------------------------------------------------------------------------


def _first_shape(doc: cvat.Document) -> cvat.Shape:
    return doc.shapes[0]


CVAT_BAD = {
    "a mask of the wrong size": (
        lambda key, doc: (
            setattr(_first_shape(doc), "width", _first_shape(doc).width + 1) if key.endswith("0") else None
        ),
        r"does not fit|box has",
    ),
    "an unknown masklet": (
        lambda key, doc: _first_shape(doc).attributes.update(
            masklet=re.sub(r"/\d+$", "/77", _first_shape(doc).attributes["masklet"])
        ),
        r"unknown masklet 77",
    ),
    "an unknown video": (
        lambda key, doc: [setattr(f, "name", f.name.replace(key, "synth-000999")) for f in doc.frames],
        r"unknown video 'synth-000999'",
    ),
    "a frame that was not exported": (
        lambda key, doc: doc.frames.append(cvat.Frame(len(doc.frames), None, WIDTH, HEIGHT)),
        r"frame 6 \(None\): a frame that was not exported",
    ),
    "a file from another export": (
        lambda key, doc: _first_shape(doc).attributes.update(
            masklet="0123456789ab/" + _first_shape(doc).attributes["masklet"].split("/", 1)[1]
        ),
        r"from export 0123456789ab, not export",
    ),
    "a frame of another size": (
        lambda key, doc: setattr(doc.frames[0], "width", WIDTH * 2),
        r"frame 0 \(.*\): 192x64, the video is 96x64",
    ),
    "a new object": (
        lambda key, doc: doc.shapes.append(cvat.Shape.of_mask(0, _square(), {cvat.ATTR_REVIEW: "accepted"})),
        r"no masklet reference; a new object is not imported",
    ),
}


@pytest.mark.parametrize("case", list(CVAT_BAD))
def test_bad_cvat_corrections_are_refused_whole(
    output: tuple[str, dict], exported: Path, tmp_path: Path, case: str
) -> None:
    root, _ = output
    edit, message = CVAT_BAD[case]
    files = _cvat_review(exported, tmp_path / "corrections", edit)
    new = tmp_path / "new"
    with pytest.raises(CorrectionsRefused, match=message):
        import_review(root, str(files), "cvat", str(new), export_uri=str(exported))
    assert not new.exists()


def test_a_truncated_cvat_file_is_refused(output: tuple[str, dict], exported: Path, tmp_path: Path, capsys) -> None:
    root, _ = output
    files = _cvat_review(exported, tmp_path / "corrections", lambda key, doc: None)
    victim = sorted(files.iterdir())[1]
    victim.write_bytes(victim.read_bytes()[:-300])
    new = tmp_path / "new"
    assert main(["review", "import", root, str(files), str(new), "--format", "cvat", "--export", str(exported)]) == 2
    err = capsys.readouterr().err
    assert f"{victim}: not a whole CVAT XML file" in err and "nothing written" in err
    assert not new.exists()


def _ls_export(exported: Path, change) -> list[dict]:
    tasks = json.loads((exported / "labelstudio" / "tasks.json").read_text())
    out = [labelstudio.annotate({**t, "id": i + 1}, user=1) for i, t in enumerate(tasks)]
    change(out)
    return out


def _drawn(tasks: list[dict]) -> dict:
    return next(t for t in tasks if t["annotations"][0]["result"])


LS_BAD = {
    "a mask of the wrong size": (
        lambda tasks: _drawn(tasks)["annotations"][0]["result"][0].update(original_width=WIDTH + 2),
        r"task \d+: region .* is a 64x98 mask, the frame is 64x96",
    ),
    "an unknown masklet": (
        lambda tasks: tasks[1]["data"].update(masklet=re.sub(r"/\d+$", "/77", tasks[1]["data"]["masklet"])),
        r"task 2: unknown masklet 77",
    ),
    "an unknown video": (
        lambda tasks: tasks[2]["data"].update(masklet=tasks[2]["data"]["masklet"].replace("synth-", "other-")),
        r"task 3: unknown video 'other-",
    ),
    "a frame that was not exported": (
        lambda tasks: tasks[3]["data"].update(position=40),
        r"task 4: frame .* \(position 40\) .* was not exported",
    ),
    "a file from another export": (
        lambda tasks: tasks[4]["data"].update(masklet="0123456789ab/" + tasks[4]["data"]["masklet"].split("/", 1)[1]),
        r"task 5: from export 0123456789ab",
    ),
    "a damaged mask": (
        lambda tasks: _drawn(tasks)["annotations"][0]["result"][0]["value"].update(rle=[0, 0, 1]),
        r"task \d+: region .*RLE",
    ),
}


@pytest.mark.parametrize("case", list(LS_BAD))
def test_bad_label_studio_corrections_are_refused_whole(
    output: tuple[str, dict], exported: Path, tmp_path: Path, case: str
) -> None:
    root, _ = output
    change, message = LS_BAD[case]
    path = tmp_path / "export.json"
    path.write_text(json.dumps(_ls_export(exported, change)))
    new = tmp_path / "new"
    with pytest.raises(CorrectionsRefused, match=message):
        import_review(root, str(path), "labelstudio", str(new), export_uri=str(exported))
    assert not new.exists()
    path.write_text(json.dumps(_ls_export(exported, lambda tasks: None))[:-20])  # truncated
    with pytest.raises(CorrectionsRefused, match="not a whole JSON file"):
        import_review(root, str(path), "labelstudio", str(new), export_uri=str(exported))


def test_an_output_labelled_again_since_the_export_is_refused(
    output: tuple[str, dict], exported: Path, tmp_path: Path
) -> None:
    root, _ = output
    copy = tmp_path / "out"
    shutil.copytree(root, copy)
    marker = copy / "_done" / "shard-000000.json"
    marker.write_text(marker.read_text().replace('"committed_at": "', '"committed_at": "1999'))
    files = _cvat_review(exported, tmp_path / "corrections", lambda key, doc: None)
    with pytest.raises(ValueError, match="export it again"):
        import_review(str(copy), str(files), "cvat", str(tmp_path / "new"), export_uri=str(exported))
    with pytest.raises(ValueError, match="never modified"):
        import_review(root, str(files), "cvat", root, export_uri=str(exported))


def test_cvats_own_video_layout_is_read_too(
    output: tuple[str, dict], exported: Path, plan: dict, tmp_path: Path
) -> None:
    """CVAT's "CVAT for video 1.1" export writes each mask as a track: the mask, then `outside` a frame later."""
    root, records = output
    manifest = plan["manifest"]
    key = plan["corrected"][0]
    video = manifest.video(key)
    doc = cvat.parse((exported / "videos" / key / "annotations.xml").read_bytes(), "x")
    tracks = []
    for i, s in enumerate(doc.shapes):
        attrs = "".join(f'<attribute name="{k}">{v}</attribute>' for k, v in s.attributes.items())
        box = f'rle="{s.rle}" left="{s.left}" top="{s.top}" width="{s.width}" height="{s.height}" z_order="0"'
        closer = (f'<mask frame="{s.frame + 1}" keyframe="1" outside="1" occluded="0" {box}>{attrs}</mask>'
                  if s.frame + 1 < len(video.frames) else "")  # fmt: skip
        tracks.append(
            f'<track id="{i}" label="object" source="manual"><mask frame="{s.frame}" keyframe="1" outside="0" '
            f'occluded="0" {box}>{attrs}</mask>{closer}</track>'
        )
    xml = (
        '<?xml version="1.0" encoding="utf-8"?><annotations><version>1.1</version><meta><task><name>t</name>'
        f"<size>{len(video.frames)}</size><mode>interpolation</mode><start_frame>0</start_frame>"
        f"<stop_frame>{len(video.frames) - 1}</stop_frame><owner><username>carol</username></owner>"
        f"<updated>2026-12-03 08:00:00.000000+00:00</updated><original_size><width>{WIDTH}</width>"
        f"<height>{HEIGHT}</height></original_size></task></meta>{''.join(tracks)}</annotations>"
    )
    video_doc = cvat.parse(xml.encode(), "video.xml")
    assert video_doc.reviewer == "carol" and len(video_doc.frames) == len(video.frames)
    by_frame = sorted((s.frame, s.attributes[cvat.ATTR_MASKLET], s.rle) for s in video_doc.shapes)
    assert by_frame == sorted((s.frame, s.attributes[cvat.ATTR_MASKLET], s.rle) for s in doc.shapes)
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "video.xml").write_text(
        xml.replace('<attribute name="review">unreviewed', '<attribute name="review">accepted')
    )
    new = tmp_path / "new"
    summary = import_review(root, str(tmp_path / "c"), "cvat", str(new), export_uri=str(exported))
    assert summary.verdicts == {"accepted": len(video.masklets), "corrected": 0, "rejected": 0}
    assert read_masklet(str(new), *plan["corrected"]).reviewer == "carol"


# --- old outputs ---------------------------------------------------------------------------------------


def test_outputs_of_schema_version_1_still_read(output: tuple[str, dict], tmp_path: Path) -> None:
    root, records = output
    old = tmp_path / "old"
    shutil.copytree(root, old)
    for path in [*(old / "masklets").glob("*.parquet"), *(old / "videos").glob("*.parquet")]:
        table = pq.read_table(path)
        pq.write_table(table.drop_columns([c for c in ADDED_COLUMNS if c in table.column_names]), path)
    shard = read_shard(str(old), "shard-000000")
    assert all(m.review_verdict is None and m.human_edit_count is None for m in shard.masklets)
    assert all(v.frames_decoded is None for v in shard.videos)
    assert all(records[(m.video_key, m.masklet_id)] == m for m in shard.masklets)
    table = read_table(str(old), "shard-000000", "masklets", columns=["masklet_id", "human_edit_count"])
    assert table.column("human_edit_count").null_count == table.num_rows
    assert main(["sample", str(old), str(tmp_path / "sampled"), "--top-k", "2"]) == 0
    assert (
        main(["review", "export", str(old), str(tmp_path / "review"), "--top-k", "2", "--format", "labelstudio"]) == 0
    )
    written = pq.read_table(tmp_path / "sampled" / "masklets" / "shard-000000.parquet")
    assert written.schema.equals(MASKLETS_SCHEMA) and SCHEMA_VERSION == 3
    assert doubt.RANKED_COLUMN["stability"] == "stability_mean"


def test_refiltering_keeps_every_verdict(cvat_reviewed: str, plan: dict, tmp_path: Path) -> None:
    """Thresholds that would keep everything keep a rejected masklet dropped; thresholds that would
    drop everything keep what a person accepted or corrected; unreviewed masklets follow thresholds."""
    assert main(["filter", cvat_reviewed, str(tmp_path / "all"), "min_stability_mean=0", "min_pred_iou_mean=0"]) == 0
    assert read_masklet(str(tmp_path / "all"), *plan["rejected"]).reject_reason == "review"
    assert main(["filter", cvat_reviewed, str(tmp_path / "none"), "min_area_rel=0.99", "max_area_rel=1"]) == 0
    for name in ("accepted", "corrected", "late"):
        assert read_masklet(str(tmp_path / "none"), *plan[name]).kept, name
    untouched = read_masklet(str(tmp_path / "none"), *plan["untouched"])
    assert (untouched.kept, untouched.reject_reason) == (False, "too_small")


def test_records_refuse_inconsistent_review_fields(output: tuple[str, dict]) -> None:
    _, records = output
    r = next(iter(records.values()))
    with pytest.raises(ValueError, match="human edits without a review verdict"):
        replace(r, human_edit_count=1, human_edit_frames=[r.frame_indices[0]])
    with pytest.raises(ValueError, match="a corrected masklet has human edits"):
        replace(r, review_verdict="corrected", human_edit_count=0, human_edit_frames=[])
    with pytest.raises(ValueError, match="must count human_edit_frames"):
        replace(r, review_verdict="accepted", human_edit_count=0, human_edit_frames=[99])
    assert replace(r, review_verdict="accepted", human_edit_count=0, human_edit_frames=[]).edited_frames == 0
    assert r.edited_frames == r.edit_count
