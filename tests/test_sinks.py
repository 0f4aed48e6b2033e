import dataclasses
import gc
import json
import os
import tarfile
import weakref
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pycocotools.mask as mask_util
import pytest
import webdataset

from masklet.io import rle, storage
from masklet.io.schema import MASKLETS_SCHEMA, VIDEOS_SCHEMA, MaskletRecord, VideoRecord, masklets_table
from masklet.io.sinks import ShardWriter, is_done, list_done, write_sav_annotation
from masklet.io.tars import MAX_KEY_LENGTH, is_safe_key, sanitize_key

H, W = 17, 33  # odd sizes catch row/column-major slips
# original key -> tar-safe key (as masklet.io.tars.sanitize_key makes them)
KEYS = {"vid-0": "vid-0", "clips/a.b..c d": "clips_a_b__c_d-8c1d6b0e"}
FRAMES = [0, 4, 8, 12, 16]


def _masks(seed: int, objects: int) -> np.ndarray:
    """[objects, frames, H, W] random boxes; object 0 is absent on frame 1 and back on frame 3."""
    rng = np.random.default_rng(seed)
    masks = np.zeros((objects, len(FRAMES), H, W), dtype=bool)
    for o in range(objects):
        for t in range(len(FRAMES)):
            y, x = rng.integers(0, H - 4), rng.integers(0, W - 4)
            masks[o, t, y : y + rng.integers(2, 5), x : x + rng.integers(2, 5)] = True
    masks[0, 1] = False
    return masks


def _video(key: str, seed: int) -> tuple[VideoRecord, list[MaskletRecord], np.ndarray]:
    """An ok video with three masklets, the last one rejected."""
    video = VideoRecord(
        video_key=KEYS.get(key, key),
        original_key=key,
        source_uri=f"s3://in/{key}.mp4",
        fps=24.0,
        frame_count=20,
        height=H,
        width=W,
        frame_indices=FRAMES,
        video_bytes=1000 + seed,
        decoder="decord",
        decode_seconds=0.5,
        model_seconds=2.0,
        total_seconds=3.0,
    )
    masks = _masks(seed, 3)
    records = []
    for o in range(3):
        rejected = o == 2
        records.append(
            MaskletRecord.from_frames(
                video.video_key,
                masklet_id=10 + o,
                source="auto",
                frame_indices=FRAMES,
                rles=rle.encode_batch(masks[o]),
                pred_iou=[0.9] * len(FRAMES),
                stability=[0.95 + 0.01 * t for t in range(len(FRAMES))],
                object_score=[5.0] * len(FRAMES),
                edit_count=o,
                kept=not rejected,
                reject_reason="stability" if rejected else None,
            )
        )
    return video, records, masks


def _write(root: str, shard: str = "shard-000000", write_video: bool = True, **kwargs) -> dict:
    """A shard with two ok videos (one with a key that needs sanitising) and one failure."""
    with ShardWriter(root, shard, model="sam2.1_hiera_t", config_hash="abc123", write_video=write_video) as writer:
        for i, key in enumerate(KEYS):
            video, records, _ = _video(key, seed=i)
            writer.add_video(video, records, video_bytes=f"MP4 {key}".encode())
        failed = VideoRecord(
            video_key="broken", original_key="broken.mp4", source_uri="s3://in/broken.mp4", status="error",
            error="truncated mp4: moov atom not found; re-encode or drop the file", error_type="DecodeError",
        )  # fmt: skip
        writer.add_video(failed)
        return writer.commit(**kwargs)


def _decode_pycoco(counts: str) -> np.ndarray:
    return mask_util.decode({"size": [H, W], "counts": counts}).astype(bool)


def test_local_shard_reads_back_with_pyarrow_webdataset_and_pycocotools(tmp_path: Path) -> None:
    root = str(tmp_path / "out")
    marker = _write(root, extra={"worker": "w0"})

    masklets = ds.dataset(f"{root}/masklets").to_table()
    assert masklets.schema.equals(MASKLETS_SCHEMA)
    assert masklets.num_rows == 6
    rows = masklets.to_pylist()
    expected = {key: _masks(i, 3) for i, key in enumerate(KEYS.values())}
    for row in rows:
        masks = expected[row["video_key"]][row["masklet_id"] - 10]
        decoded = [_decode_pycoco(c) if c else np.zeros((H, W), bool) for c in row["rle"]]
        np.testing.assert_array_equal(np.stack(decoded), masks)
        assert row["area"] == [int(m.sum()) for m in masks]
        assert row["kept"] == (row["reject_reason"] is None) == (row["masklet_id"] != 12)
        assert (row["model"], row["config_hash"]) == ("sam2.1_hiera_t", "abc123")
    zero = next(r for r in rows if r["video_key"] == "vid-0" and r["masklet_id"] == 10)
    assert zero["rle"][1] == "" and zero["num_visible"] == 4 and zero["visibility_changes"] == 2

    videos = ds.dataset(f"{root}/videos").to_table()
    assert videos.schema.equals(VIDEOS_SCHEMA)
    by_key = {v["original_key"]: v for v in videos.to_pylist()}
    assert by_key["broken.mp4"]["status"] == "error" and "moov atom" in by_key["broken.mp4"]["error"]
    assert by_key["broken.mp4"]["num_masklets"] == 0 and by_key["broken.mp4"]["fps"] is None
    assert by_key["vid-0"]["error"] is None and by_key["vid-0"]["shard_id"] == "shard-000000"
    assert (by_key["vid-0"]["num_masklets"], by_key["vid-0"]["num_kept"], by_key["vid-0"]["frames_processed"]) == (
        3,
        2,
        5,
    )

    samples = list(webdataset.WebDataset(f"{root}/wds/shard-000000.tar", shardshuffle=False))
    assert [s["__key__"] for s in samples] == list(KEYS.values())
    for sample in samples:
        doc = json.loads(sample["json"])
        assert doc["video_id"] == sample["__key__"] and sample["mp4"] == f"MP4 {doc['original_key']}".encode()
        assert doc["masklet_id"] == [10, 11]  # the rejected masklet 12 is not in the SA-V JSON
        assert doc["masklet_frame_indices"] == FRAMES and doc["masklet_edited_frame_count"] == [0, 1]
        assert (doc["fps"], doc["video_fps"]) == (6, 24.0)  # 24 fps annotated every 4th frame
        assert doc["masklet_stability_score"] == [[0.95 + 0.01 * t] * 2 for t in range(len(FRAMES))]
        masks = expected[doc["video_id"]]
        for t, frame in enumerate(doc["masklet"]):
            for j, r in enumerate(frame):
                np.testing.assert_array_equal(mask_util.decode(r).astype(bool), masks[j, t])
    assert json.loads(samples[1]["json"])["original_key"] == "clips/a.b..c d"

    done = json.loads(Path(root, "_done", "shard-000000.json").read_text())
    assert done == marker and done["extra"] == {"worker": "w0"}
    assert done["counts"] == {
        "videos": 3,
        "videos_ok": 2,
        "videos_error": 1,
        "masklets": 6,
        "masklets_kept": 4,
        "frames_processed": 10,
    }
    assert {f["path"]: f["bytes"] for f in done["files"]} == {
        p: os.path.getsize(os.path.join(root, p))
        for p in ("masklets/shard-000000.parquet", "videos/shard-000000.parquet", "wds/shard-000000.tar")
    }
    assert not [p for p in Path(root).rglob("*") if ".partial" in p.name]


def test_marker_is_last_and_a_rerun_completes_the_shard(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = str(tmp_path)
    _write(root)
    assert is_done(root, "shard-000000")
    real_write = storage.write_bytes

    def crash_on_marker(uri: str, data: bytes, **kwargs) -> None:
        if "/_done/" in uri:
            raise KeyboardInterrupt("killed before the marker")
        real_write(uri, data, **kwargs)

    monkeypatch.setattr(storage, "write_bytes", crash_on_marker)
    with pytest.raises(KeyboardInterrupt):
        _write(root)
    # The data files of the rerun are in place, but without the marker the shard is not done.
    assert not is_done(root, "shard-000000") and list_done(root) == set()
    assert not [p for p in Path(root).rglob("*") if ".partial" in p.name]

    monkeypatch.setattr(storage, "write_bytes", real_write)
    _write(root)
    assert list_done(root) == {"shard-000000"}
    assert ds.dataset(f"{root}/masklets").count_rows() == 6


def test_masklet_rows_leave_memory_as_row_groups_and_read_back_the_same(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rows wait, as Arrow, only until ROW_GROUP_BYTES of them, then go to the staged file: with tiny bounds
    each masklet is a batch and a row group of its own, and the shard reads back as one written whole."""
    from masklet.io import sinks

    whole = str(tmp_path / "whole")
    _write(whole)
    monkeypatch.setattr(sinks, "ROW_GROUP_BYTES", 1)
    monkeypatch.setattr(sinks, "BATCH_ENTRIES", 1)
    streamed = str(tmp_path / "streamed")
    with ShardWriter(streamed, "shard-000000", model="sam2.1_hiera_t", config_hash="abc123") as writer:
        for i, key in enumerate(KEYS):
            video, records, _ = _video(key, seed=i)
            writer.add_video(video, records)
            assert writer._pending == []  # written out, nothing held
        writer.commit()
    files = [pq.ParquetFile(f"{root}/masklets/shard-000000.parquet") for root in (whole, streamed)]
    assert [f.num_row_groups for f in files] == [1, 3 * 2]  # KEYS' two videos with masklets, 3 each
    assert files[0].read().equals(files[1].read())
    videos = [pq.read_table(f"{root}/videos/shard-000000.parquet").to_pylist() for root in (whole, streamed)]
    assert [(v["num_masklets"], v["num_kept"]) for v in videos[1]] == [(3, 2), (3, 2)]
    assert [(v["num_masklets"], v["num_kept"]) for v in videos[0]] == [(3, 2), (3, 2), (0, 0)]


def test_a_masklet_whose_frames_go_backwards_is_refused_before_the_tar(tmp_path: Path) -> None:
    """The SA-V document is written frame by frame, walking each masklet's frames in order."""
    video, records, _ = _video("v", 0)
    bad = dataclasses.replace(records[0], frame_indices=list(reversed(FRAMES)))
    with ShardWriter(str(tmp_path), "s1", model="m", config_hash="h") as writer:
        with pytest.raises(ValueError, match="masklet 10 of 'v': its frame_indices are not increasing"):
            writer.add_video(video, [bad, *records[1:]])
        writer.add_video(video, records)  # the refused video left nothing behind
        writer.commit()
    with tarfile.open(tmp_path / "wds" / "s1.tar") as tar:
        assert tar.getnames() == ["v.json"]


def test_exception_before_commit_publishes_nothing(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError), ShardWriter(str(tmp_path), "s1", model="m", config_hash="h") as writer:
        video, records, _ = _video("v", 0)
        writer.add_video(video, records)
        raise RuntimeError("worker died mid-shard")
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []
    with pytest.raises(RuntimeError, match="closed"):
        writer.add_video(video, records)


def test_a_rerun_removes_the_stages_a_killed_writer_left(tmp_path: Path) -> None:
    """SIGKILL mid-write leaves `.partial` stages (nothing runs to discard them): the shard's next writer
    removes its own, and only its own (another shard's, another root's stay)."""
    root, other_root = tmp_path / "out", tmp_path / "other"
    killed = ShardWriter(str(root), "shard-000000", model="m", config_hash="h")  # never closed: killed
    with storage.staged_file(f"{root}/masklets/shard-000000.parquet") as stage:
        Path(stage).write_bytes(b"half a parquet")
        left = {p.name for p in root.rglob("*.partial")}
        os.link(stage, f"{stage}.kept")  # as SIGKILL leaves it: the with-block never ran to its end
    os.replace(f"{stage}.kept", stage)
    neighbour = ShardWriter(str(root), "shard-000001", model="m", config_hash="h")
    elsewhere = ShardWriter(str(other_root), "shard-000000", model="m", config_hash="h")
    assert len(left) == 3 and {p.name for p in root.rglob("*.partial")} >= left  # its tar, its Parquet, this one
    with ShardWriter(str(root), "shard-000000", model="m", config_hash="h") as rerun:
        assert not {p.name for p in root.rglob("*.partial")} & left
        assert {killed._tar_stage.path, killed._parquet_stage.path}.isdisjoint(str(p) for p in root.rglob("*.partial"))
        assert Path(neighbour._tar_stage.path).exists() and Path(elsewhere._tar_stage.path).exists()
        rerun.commit()
    neighbour.abort()
    elsewhere.abort()
    assert not list((root / "masklets").glob(".*.partial"))


def test_a_full_disk_names_the_folder_and_the_file(tmp_path: Path) -> None:
    target = tmp_path / "out" / "masklets" / "shard-000000.parquet"
    message = f"no space left in {tmp_path / 'out' / 'masklets'} .* while writing {target}"
    with pytest.raises(OSError, match=message), storage.staged_file(str(target)) as stage:
        os.remove(stage)
        os.symlink("/dev/full", stage)  # the kernel's own ENOSPC on every write (pyarrow removes the link)
        pq.write_table(pa.table({"a": list(range(100_000))}), stage)
    assert not target.exists() and Path("/dev/full").is_char_device()


def test_list_done_lists_only_committed_shards(tmp_path: Path) -> None:
    root = str(tmp_path / "out")
    assert list_done(root) == set()
    for shard in ("shard-000001", "shard-000002"):
        _write(root, shard, write_video=False)
    open_writer = ShardWriter(root, "shard-000003", model="m", config_hash="h")
    assert list_done(root) == {"shard-000001", "shard-000002"}
    assert not is_done(root, "shard-000003")
    open_writer.abort()


def test_s3_shard_round_trip_and_listing(s3_bucket: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    root = f"s3://{s3_bucket}/run"
    fs, _ = storage.url_to_fs(root)  # the cached instance the writer uses
    uploads: list[str] = []
    real_put = fs.put_file
    monkeypatch.setattr(
        fs, "put_file", lambda lpath, rpath, **kw: (uploads.append(rpath), real_put(lpath, rpath, **kw))
    )
    _write(root, "shard-000000")
    assert [u.split("/run/")[1] for u in uploads] == [
        "masklets/shard-000000.parquet",
        "videos/shard-000000.parquet",
        "wds/shard-000000.tar",
        "_done/shard-000000.json",
    ]
    _write(root, "shard-000001", write_video=False)
    assert list_done(root) == {"shard-000000", "shard-000001"} and is_done(root, "shard-000001")

    masklets = ds.dataset(f"{s3_bucket}/run/masklets", filesystem=fs, format="parquet").to_table()
    assert masklets.num_rows == 12 and masklets.schema.equals(MASKLETS_SCHEMA)
    local_tar = tmp_path / "shard.tar"
    fs.get_file(f"{s3_bucket}/run/wds/shard-000001.tar", str(local_tar))
    samples = list(webdataset.WebDataset(str(local_tar), shardshuffle=False))
    assert len(samples) == 2 and all("mp4" not in s for s in samples)

    # A rerun that dies before its marker leaves the shard not done on S3 too.
    monkeypatch.setattr(storage, "write_bytes", lambda uri, data, **kw: (_ for _ in ()).throw(OSError("killed")))
    with pytest.raises(OSError, match="killed"):
        _write(root, "shard-000000")
    assert list_done(root) == {"shard-000001"} and not is_done(root, "shard-000000")
    assert fs.ls(f"{s3_bucket}/run/_done", detail=False, refresh=True) == [f"{s3_bucket}/run/_done/shard-000001.json"]


def test_list_done_on_a_missing_bucket_names_it(s3_bucket: str) -> None:
    with pytest.raises(storage.StorageError, match="s3://no-such-bucket-here/out/_done"):
        list_done("s3://no-such-bucket-here/out")
    assert list_done(f"s3://{s3_bucket}/empty") == set()


def test_keys_from_sources_are_tar_safe_and_others_refused() -> None:
    originals = ["a.b", "a_b", "x" * 500, "", "...", "日本語.mp4", "../../etc/passwd", "dir/sub/clip"]
    keys = [sanitize_key(k) for k in originals]
    assert all(is_safe_key(k) for k in keys) and len(set(keys)) == len(keys)
    for bad in ("a.b", "a/b", "", "x" * (MAX_KEY_LENGTH + 1)):
        with pytest.raises(ValueError, match="tar-safe"):
            VideoRecord(video_key=bad, original_key="a.b", source_uri="u", status="error", error="e")


def test_writer_refuses_inconsistent_input(tmp_path: Path) -> None:
    video, records, _ = _video("v", 0)
    with ShardWriter(str(tmp_path), "s1", model="m", config_hash="h", write_video=True) as writer:
        with pytest.raises(ValueError, match="no bytes"):
            writer.add_video(video, records)
        writer.add_video(video, records, video_bytes=b"x")
        with pytest.raises(ValueError, match="appears twice"):
            writer.add_video(video, records, video_bytes=b"x")
        other, _, _ = _video("w", 1)
        with pytest.raises(ValueError, match="does not belong"):
            writer.add_video(other, records, video_bytes=b"x")
    with pytest.raises(ValueError, match="shard id"):
        ShardWriter(str(tmp_path), "_hidden", model="m", config_hash="h")
    with pytest.raises(ValueError, match="error message"):
        VideoRecord(video_key="v", original_key="v", source_uri="u", status="error")
    with pytest.raises(ValueError, match="reject_reason"):
        MaskletRecord.from_frames(
            "v", 1, source="auto", frame_indices=[0], rles=[rle.encode(np.ones((2, 2)))],
            pred_iou=[1.0], stability=[1.0], object_score=[1.0], kept=False,
        )  # fmt: skip


def test_masklet_summary_columns_follow_the_frames() -> None:
    masks = np.zeros((4, 4, 6), dtype=bool)
    masks[1, :2, :3] = True  # visible on frames 1 and 3 only
    masks[3, :, :] = True
    record = MaskletRecord.from_frames(
        "v", 7, source="prompt", frame_indices=[2, 5, 8, 11], rles=rle.encode_batch(masks),
        pred_iou=[0.1, 0.8, 0.2, 0.6], stability=[0.0, 0.9, 0.0, 0.7], object_score=[-3.0, 4.0, -2.0, 5.0],
    )  # fmt: skip
    assert record.rle[0] == "" and record.area == [0, 6, 0, 24]
    assert (record.first_frame, record.num_visible, record.visibility_changes) == (5, 2, 2)
    assert record.pred_iou_mean == pytest.approx(0.7) and record.stability_mean == pytest.approx(0.8)
    assert record.area_rel_mean == pytest.approx(15 / 24)
    np.testing.assert_array_equal(np.stack([rle.decode(r) for r in record.rles()]), masks)


def test_sav_frames_cover_the_video_and_late_masklets_are_padded(tmp_path: Path) -> None:
    video, records, masks = _video("v", 0)
    late = MaskletRecord.from_frames(
        "v", 99, source="prompt", frame_indices=FRAMES[2:], rles=rle.encode_batch(masks[1, 2:]),
        pred_iou=[0.9] * 3, stability=[0.5] * 3, object_score=[1.0] * 3,
    )  # fmt: skip
    empty = VideoRecord(video_key="still", original_key="still", source_uri="u", fps=6.0, frame_count=3, height=H,
                        width=W, frame_indices=[0, 1, 2])  # fmt: skip
    with ShardWriter(str(tmp_path), "s1", model="m", config_hash="h") as writer:
        writer.add_video(video, [late])
        writer.add_video(empty)
        writer.commit()
    docs = {
        s["__key__"]: json.loads(s["json"]) for s in webdataset.WebDataset(f"{tmp_path}/wds/s1.tar", shardshuffle=False)
    }
    doc = docs["v"]
    assert doc["masklet_frame_indices"] == FRAMES
    assert doc["masklet_type"] == ["auto"] and doc["masklet_source"] == ["prompt"]  # model-made: SA-V's "auto"
    decoded = np.stack([mask_util.decode(frame[0]).astype(bool) for frame in doc["masklet"]])
    np.testing.assert_array_equal(decoded[:2], False)
    np.testing.assert_array_equal(decoded[2:], masks[1, 2:])
    assert doc["masklet_stability_score"] == [[0.0], [0.0], [0.5], [0.5], [0.5]]  # [frame][object]
    assert doc["masklet_first_appeared_frame"] == [2]  # the third annotated frame (video frame 8)
    assert docs["still"]["masklet"] == [[], [], []] and docs["still"]["masklet_id"] == []


def test_a_streamed_video_is_written_as_add_video_writes_it(tmp_path: Path) -> None:
    """A stitched video's masklets come one at a time with a document written elsewhere: same files."""
    video, records, _ = _video("vid-0", seed=0)
    roots = {how: str(tmp_path / how) for how in ("listed", "streamed")}
    for how, root in roots.items():
        with ShardWriter(root, "shard-000000", model="sam2.1_hiera_t", config_hash="abc123") as writer:
            if how == "listed":
                writer.add_video(video, records)
            else:
                writer.add_streamed_video(video, iter(records), lambda out: write_sav_annotation(out, video, records))
            writer.commit()
    for name in ("masklets/shard-000000.parquet", "wds/shard-000000.tar"):
        listed, streamed = (Path(root, name).read_bytes() for root in roots.values())
        assert listed == streamed, name
    videos = [pq.read_table(f"{root}/videos/shard-000000.parquet").drop(["total_seconds"]) for root in roots.values()]
    assert videos[0].equals(videos[1])
    stranger = dataclasses.replace(records[0], video_key="other")
    with ShardWriter(str(tmp_path / "refused"), "shard-000000", model="m", config_hash="h") as writer:
        with pytest.raises(ValueError, match="does not belong to video"):
            writer.add_streamed_video(video, iter([stranger]), lambda out: None)
        with pytest.raises(ValueError, match="repeated masklet id"):
            writer.add_streamed_video(
                dataclasses.replace(video, video_key="vid-1"),
                iter([dataclasses.replace(r, video_key="vid-1") for r in records[:1] * 2]),
                lambda out: None,
            )


def test_masklet_records_are_not_held_once_added(tmp_path: Path) -> None:
    """A video's records become Arrow rows as they are added (a record as Python objects costs ten times
    its Arrow row): the writer keeps none of them, and the rows read back the same."""
    video, records, _ = _video("vid-0", seed=0)
    alive = [weakref.ref(r) for r in records]
    with ShardWriter(str(tmp_path), "shard-000000", model="m", config_hash="h") as writer:
        writer.add_video(video, records)
        expected = masklets_table(records, model="m", config_hash="h")
        del records
        gc.collect()
        assert [r() for r in alive] == [None] * len(alive)
        assert writer._pending and all(isinstance(t, pa.Table) for t in writer._pending)
        writer.commit()
    assert pq.read_table(f"{tmp_path}/masklets/shard-000000.parquet").equals(expected)
