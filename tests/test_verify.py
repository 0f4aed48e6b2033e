"""`masklet verify`: committed shards checked against their markers, locally and on S3 (moto)."""

from __future__ import annotations

from pathlib import Path

import fsspec
import pytest

from masklet.cli import main
from masklet.io.schema import VideoRecord
from masklet.io.sinks import ShardWriter, list_done
from masklet.io.verify import verify_output


def _commit(root: str, shard_id: str) -> None:
    """A small real shard: one failed video row (its files are real parquet and tar all the same)."""
    with ShardWriter(root, shard_id, model="m", config_hash="h") as writer:
        writer.add_video(VideoRecord("v", "v.mp4", "in/v.mp4", status="error", error="bad", error_type="X"))
        writer.commit()


def test_damage_is_found_listed_and_repaired(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "out"
    shards = [f"shard-00000{i}" for i in range(5)]
    for shard in shards:
        _commit(str(root), shard)
    assert main(["verify", str(root), "--checksums"]) == 0
    assert "5 committed shard(s), 15 file(s) checked (sizes and sha256): 0 damaged" in capsys.readouterr().out

    (root / "masklets" / "shard-000000.parquet").unlink()  # deleted
    (root / "wds" / "shard-000001.tar").write_bytes(b"")  # emptied
    zeroed = root / "videos" / "shard-000002.parquet"
    zeroed.write_bytes(bytes(zeroed.stat().st_size))  # same size, every byte zero
    (root / "_done" / "shard-000003.json").write_text("{")  # a marker cut short

    assert main(["verify", str(root)]) == 1
    out = capsys.readouterr().out
    assert "shard-000000: masklets/shard-000000.parquet is missing" in out
    assert "shard-000001: wds/shard-000001.tar has 0 bytes; its marker says" in out
    assert "shard-000003: _done/shard-000003.json is not valid JSON" in out
    assert "shard-000002" not in out and "5 committed shard(s)" in out and ": 3 damaged" in out

    assert main(["verify", str(root), "--checksums", "--repair"]) == 1
    out = capsys.readouterr().out
    assert "shard-000002: videos/shard-000002.parquet has sha256" in out and ": 4 damaged" in out
    assert "removed the markers of 4 shard(s)" in out
    assert list_done(str(root)) == {"shard-000004"}  # the rerun labels the other four again
    assert main(["verify", str(root)]) == 0


def test_a_shard_on_s3_is_checked_from_one_listing_per_folder(s3_bucket: str) -> None:
    root = f"s3://{s3_bucket}/out"
    _commit(root, "shard-000000")
    _commit(root, "shard-000001")
    assert verify_output(root, checksums=True).damage == []
    fsspec.filesystem("s3").rm_file(f"{s3_bucket}/out/videos/shard-000001.parquet")
    result = verify_output(root)
    assert [str(d) for d in result.damage] == ["shard-000001: videos/shard-000001.parquet is missing"]
    assert (result.shards, result.files) == (2, 6)
