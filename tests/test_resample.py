import json
import random
import tarfile
from pathlib import Path

import numpy as np
import pyarrow.dataset as ds
import pytest

from masklet.cli import main
from masklet.config import FiltersConfig
from masklet.io import rle
from masklet.io.outputs import read_shard, rewrite_output
from masklet.io.schema import NOT_SAMPLED, MaskletRecord, VideoRecord
from masklet.io.sinks import ShardWriter
from masklet.pipelines.filters import apply_filters
from masklet.pipelines.sampling import Candidate, mark_sampled, sample_size, select

H, W = 16, 24
FRAMES = [0, 4, 8]


def box(y: int, x: int, size: int = 5, visible: tuple[bool, ...] = (True, True, True)) -> np.ndarray:
    masks = np.zeros((len(FRAMES), H, W), bool)
    for t, v in enumerate(visible):
        masks[t, y : y + size, x + t : x + t + size] = v
    return masks


def masklet(key: str, mid: int, masks: np.ndarray, stability: list[float], edits: int = 0) -> MaskletRecord:
    return MaskletRecord.from_frames(
        key,
        mid,
        source="auto",
        frame_indices=FRAMES,
        rles=rle.encode_batch(masks),
        pred_iou=[0.8, 0.85, 0.9],
        stability=stability,
        object_score=[3.0, 2.0, 1.0],
        edit_count=edits,
    )


def video(key: str, ok: bool = True) -> VideoRecord:
    if not ok:
        return VideoRecord(key, key, f"s3://in/{key}.mp4", status="error", error="truncated mp4", error_type="X")
    return VideoRecord(
        key, key, f"s3://in/{key}.mp4", fps=24.0, frame_count=10, height=H, width=W, frame_indices=FRAMES
    )


def shards() -> dict[str, list[tuple[VideoRecord, list[MaskletRecord]]]]:
    """Two shards: duplicates, a never-visible masklet, stabilities around 0.9, edits with ties."""
    return {
        "s-000": [
            (
                video("v0"),
                [
                    masklet("v0", 1, box(2, 2), [0.9, 0.9, 0.9], edits=3),
                    masklet("v0", 2, box(2, 2), [0.95, 0.92, 0.97], edits=1),  # duplicate of 1, better
                    masklet("v0", 3, box(9, 12), [0.89, 0.9, 0.91], edits=3),
                ],
            ),
            (video("v1", ok=False), []),
            (
                video("v2"),
                [
                    masklet("v2", 0, box(1, 1, visible=(False,) * 3), [0.0, 0.0, 0.0]),
                    masklet("v2", 5, box(3, 10, visible=(True, False, True)), [0.99, 0.5, 0.98], edits=2),
                ],
            ),
        ],
        "s-001": [
            (
                video("v3"),
                [masklet("v3", i, box(1 + 3 * i, 1 + 4 * i, 3), [0.9 + 0.02 * i] * 3, i % 3) for i in range(4)],
            )
        ],
    }


def write_root(root: str) -> dict[str, list[MaskletRecord]]:
    """Write an output root as a worker does (filters applied, video bytes in the tar)."""
    written = {}
    for shard_id, videos in shards().items():
        with ShardWriter(root, shard_id, model="sam2.1_hiera_t", config_hash="h0", write_video=True) as writer:
            for v, records in videos:
                records = apply_filters(records, FiltersConfig())
                data = f"bytes of {v.video_key}".encode() if v.status == "ok" else None
                writer.add_video(v, records, video_bytes=data)
                written.setdefault(shard_id, []).extend(records)
            writer.commit(extra={"worker": 0})
    return written


def decisions(root: str) -> dict[tuple[str, int], tuple[bool, str | None]]:
    rows = ds.dataset(f"{root}/masklets").to_table(columns=["video_key", "masklet_id", "kept", "reject_reason"])
    return {(r["video_key"], r["masklet_id"]): (r["kept"], r["reject_reason"]) for r in rows.to_pylist()}


def sav_ids(root: str, shard_id: str) -> dict[str, list[int]]:
    with tarfile.open(f"{root}/wds/{shard_id}.tar") as tar:
        return {
            m.name.split(".")[0]: json.loads(tar.extractfile(m).read())["masklet_id"]
            for m in tar
            if m.name.endswith(".json")
        }


@pytest.fixture
def root(tmp_path: Path) -> tuple[str, dict[str, list[MaskletRecord]]]:
    path = str(tmp_path / "in")
    return path, write_root(path)


def test_read_shard_round_trip(root):
    path, written = root
    shard = read_shard(path, "s-000")
    assert [v.video_key for v in shard.videos] == ["v0", "v1", "v2"]
    assert shard.videos[1].status == "error" and shard.marker["extra"] == {"worker": 0}
    back = {(m.video_key, m.masklet_id): m for m in shard.masklets}
    for m in written["s-000"]:
        b = back[m.video_key, m.masklet_id]
        for name in ("rle", "area", "frame_indices", "edit_count", "kept", "reject_reason"):
            assert getattr(b, name) == getattr(m, name)
        assert b.stability == pytest.approx(m.stability, abs=1e-7)


@pytest.mark.parametrize(
    "overrides",
    [
        ["min_stability_mean=0.9"],  # boundary: means of exactly 0.9 (float64) read back as float32
        ["filters.min_stability_mean=0.93", "dedup_iou=null"],
        ["max_visibility_changes=0", "min_visible_frames=0", "min_area_rel=0.05"],
    ],
)
def test_refilter_equals_direct_filtering(root, tmp_path, overrides):
    path, written = root
    out = str(tmp_path / "out")
    assert main(["filter", path, out, *overrides]) == 0
    config = FiltersConfig.from_overrides(overrides)
    direct = {
        (m.video_key, m.masklet_id): (m.kept, m.reject_reason)
        for records in written.values()
        for m in apply_filters(records, config)
    }
    assert decisions(out) == direct
    for shard_id in written:
        kept = {}
        for (key, mid), (is_kept, _) in sorted(direct.items()):
            if is_kept:
                kept.setdefault(key, []).append(mid)
        assert {k: sorted(v) for k, v in sav_ids(out, shard_id).items()} == {
            k: kept.get(k, []) for k in sav_ids(path, shard_id)
        }
        marker = json.loads(Path(out, "_done", f"{shard_id}.json").read_text())
        assert marker["config_hash"] == "h0" and marker["extra"]["command"] == "filter"
        assert marker["extra"]["derived_from"] == path
        with tarfile.open(f"{out}/wds/{shard_id}.tar") as tar:
            videos = {m.name: tar.extractfile(m).read() for m in tar if m.name.endswith(".mp4")}
        assert videos == {f"{k}.mp4": f"bytes of {k}".encode() for k in sav_ids(path, shard_id)}
    videos = ds.dataset(f"{out}/videos").to_table(columns=["video_key", "num_kept"]).to_pylist()
    assert {v["video_key"]: v["num_kept"] for v in videos} == {
        key: sum(is_kept for (k, _), (is_kept, _) in direct.items() if k == key) for key in ("v0", "v1", "v2", "v3")
    }


def test_filter_starts_from_the_job_thresholds(root, tmp_path, capsys):
    path, _ = root
    Path(path, "job.json").write_text(json.dumps({"config": {"filters": {"min_area_rel": 0.5}}}))
    out = str(tmp_path / "out")
    assert main(["filter", path, out]) == 0
    assert {reason for _, reason in decisions(out).values()} == {"never_visible", "too_small"}
    assert "job.json + overrides" in capsys.readouterr().out
    assert main(["filter", path, str(tmp_path / "out2"), "min_area_rel=0"]) == 0
    assert any(kept for kept, _ in decisions(str(tmp_path / "out2")).values())


def test_filter_refusals(root, tmp_path, capsys):
    path, _ = root
    assert main(["filter", path, path + "/"]) == 2
    assert "must differ from the input root" in capsys.readouterr().err
    assert main(["filter", str(tmp_path / "nothing"), str(tmp_path / "out")]) == 2
    assert "holds no committed shard" in capsys.readouterr().err
    assert main(["filter", path, str(tmp_path / "out"), "min_stability=0.9"]) == 2
    assert "min_stability: unknown key" in capsys.readouterr().err


def test_filter_fails_on_a_damaged_video_tar_naming_it(root, tmp_path, capsys):
    # stream-mode tarfile would take the zeroed header for the end: v2's bytes would just be missing
    path, _ = root
    tar_path = Path(path) / "wds" / "s-000.tar"
    with tarfile.open(tar_path) as tar:
        second = [m for m in tar.getmembers() if not m.name.endswith(".json")][1]
    data = tar_path.read_bytes()
    tar_path.write_bytes(data[: second.offset] + bytes(512) + data[second.offset + 512 :])
    assert main(["filter", path, str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert f"the tar {tar_path} is truncated or corrupt at or after member" in err
    assert f"at byte {second.offset}" in err


def test_rewrite_refuses_a_transform_that_changes_rows(root, tmp_path):
    path, _ = root
    with pytest.raises(ValueError, match="same masklets in the same order"):
        rewrite_output(path, str(tmp_path / "out"), lambda shard_id, records: records[::-1], {"command": "test"})


def candidate(
    key: str, mid: int, edits: int, stability: float | None, kept: bool = True, shard: str = "s"
) -> Candidate:
    return Candidate(shard, key, mid, edits, stability, kept)


def test_top_k_by_edits_with_deterministic_ties():
    cands = [
        candidate("b", 1, 5, 0.90),
        candidate("a", 2, 5, 0.90),  # ties with b/1 on edits and stability: key order decides
        candidate("a", 1, 5, 0.95),
        candidate("c", 1, 9, None),
        candidate("c", 2, 7, 0.5, kept=False),  # not a candidate
        candidate("d", 1, 0, 0.99),
    ]
    expected = [("s", "c", 1), ("s", "a", 1), ("s", "a", 2), ("s", "b", 1), ("s", "d", 1)]
    for k in range(6):
        for seed in range(5):
            shuffled = cands[:]
            random.Random(seed).shuffle(shuffled)
            assert select(shuffled, by="edits", top_k=k) == set(expected[:k])
    assert select(cands, by="edits", fraction=0.5) == set(expected[:3])  # 2.5 rounds up
    assert select(cands, by="edits", fraction=0.0) == set()


def test_sample_size():
    assert [sample_size(10, fraction=f) for f in (0.0, 0.04, 0.05, 0.25, 1.0)] == [0, 0, 1, 3, 10]
    assert sample_size(3, top_k=10) == 3
    with pytest.raises(ValueError, match="exactly one"):
        sample_size(3, top_k=1, fraction=0.5)


def test_random_sampling_is_reproducible_by_seed():
    cands = [candidate(f"v{i // 3}", i % 3, i % 4, 0.9) for i in range(30)]
    first = select(cands, by="random", top_k=8, seed=7)
    assert len(first) == 8
    assert select(cands[::-1], by="random", top_k=8, seed=7) == first
    assert select(cands, by="random", top_k=8, seed=8) != first
    assert select(cands, by="random", fraction=1.0, seed=3) == {c.ref for c in cands}


def test_mark_sampled():
    same = box(2, 2)
    records = [masklet("v", 1, same, [0.9] * 3), masklet("v", 2, same, [0.9] * 3)]
    records[1] = apply_filters(records[1:], FiltersConfig(min_stability_mean=0.95))[0]
    out = mark_sampled("s", records, set())
    assert [(r.kept, r.reject_reason) for r in out] == [(False, NOT_SAMPLED), (False, "low_stability")]
    assert mark_sampled("s", records, {("s", "v", 1)})[0].kept


def test_sample_command(root, tmp_path, capsys):
    path, written = root
    before = decisions(path)
    out = str(tmp_path / "out")
    assert main(["sample", path, out, "--by", "edits", "--top-k", "3"]) == 0
    after = decisions(out)
    # kept before (edits): v0/2 (1; v0/1 is its duplicate), v0/3 (3), v2/5 (2), v3/0..3 (0, 1, 2, 0)
    chosen = {k for k, (kept, _) in after.items() if kept}
    assert chosen == {("v0", 3), ("v2", 5), ("v3", 2)}  # 3 edits, then 2 and 2 (v2/5 is more stable)
    for k, (kept, reason) in after.items():
        if not kept:
            assert reason == (NOT_SAMPLED if before[k][0] else before[k][1])
    assert "kept 3 of" in capsys.readouterr().out
    assert main(["sample", path, str(tmp_path / "r1"), "--by", "random", "--fraction", "0.5", "--seed", "4"]) == 0
    assert main(["sample", path, str(tmp_path / "r2"), "--by", "random", "--fraction", "0.5", "--seed", "4"]) == 0
    assert decisions(str(tmp_path / "r1")) == decisions(str(tmp_path / "r2"))
    with pytest.raises(SystemExit) as exit_info:
        main(["sample", path, out, "--top-k", "1", "--fraction", "0.5"])
    assert exit_info.value.code == 2


def test_filter_between_s3_prefixes(s3_bucket):
    path = f"s3://{s3_bucket}/run1"
    written = write_root(path)
    out = f"s3://{s3_bucket}/run1-strict"
    assert main(["filter", path, out, "min_stability_mean=0.93"]) == 0
    shard = read_shard(out, "s-001")
    expected = apply_filters(written["s-001"], FiltersConfig(min_stability_mean=0.93))
    assert [(m.kept, m.reject_reason) for m in shard.masklets] == [(m.kept, m.reject_reason) for m in expected]
    assert shard.marker["extra"]["derived_from"] == path


def test_a_derived_output_says_where_it_came_from(root, tmp_path, capsys):
    """A filter output keeps the source job's identity and timings; a report of it says what it shows."""
    path, _ = root
    source_job = {"config_hash": "h0", "model": "sam2.1_hiera_t", "checkpoint_sha256": "ab" * 32,
                  "masklet_version": "0.1.0", "config": {"filters": {}}}
    Path(path, "job.json").write_text(json.dumps(source_job))
    out, again = str(tmp_path / "out"), str(tmp_path / "again")
    assert main(["filter", path, out, "min_stability_mean=0.5"]) == 0
    printed = capsys.readouterr().out
    assert "dropped as duplicate_of: 1 masklet\n" in printed and "dropped as never_visible: 1 masklet\n" in printed
    assert main(["sample", out, again, "--top-k", "1"]) == 0
    capsys.readouterr()
    job = json.loads(Path(again, "job.json").read_text())
    assert {k: job[k] for k in source_job if k != "config"} == {k: v for k, v in source_job.items() if k != "config"}
    assert [(s["command"], s["from"]) for s in job["derived"]] == [("filter", path), ("sample", out)]
    assert job["config"]["filters"]["min_stability_mean"] == 0.5  # a later filter starts from these
    for shard_id in ("s-000", "s-001"):
        before = json.loads(Path(path, "_done", f"{shard_id}.json").read_text())
        after = json.loads(Path(again, "_done", f"{shard_id}.json").read_text())
        assert after["seconds"] == before["seconds"]  # the labelling run's throughput, not the rewrite's
    assert main(["report", again, "--videos", "0"]) == 0
    page = Path(capsys.readouterr().out.strip()).read_text()
    assert "A derived output" in page and "<code>masklet sample</code>" in page and "sam2.1_hiera_t" in page
    assert "Timings of the job that labelled these shards" in page
