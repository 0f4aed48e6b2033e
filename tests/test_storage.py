import os
from pathlib import Path

import boto3
import fsspec
import pytest

from masklet.io.storage import ensure_writable_dir, staged_file, write_bytes


def test_local_write_is_atomic_and_leaves_no_staging(tmp_path: Path) -> None:
    target = tmp_path / "deep" / "dir" / "file.bin"
    with staged_file(str(target)) as stage:
        Path(stage).write_bytes(b"half")
        assert not target.exists()  # a reader sees nothing until the move
    assert target.read_bytes() == b"half"
    assert os.listdir(target.parent) == ["file.bin"]


def test_failed_write_publishes_nothing(tmp_path: Path) -> None:
    target = tmp_path / "file.bin"
    with pytest.raises(RuntimeError), staged_file(str(target)) as stage:
        Path(stage).write_bytes(b"partial")
        raise RuntimeError("crash mid-write")
    assert os.listdir(tmp_path) == []


def test_file_uri_and_replace(tmp_path: Path) -> None:
    target = tmp_path / "x.txt"
    write_bytes(f"file://{target}", b"one")
    write_bytes(str(target), b"two")
    assert target.read_bytes() == b"two"


def test_s3_upload_through_moto_server(s3_bucket: str) -> None:
    uri = f"s3://{s3_bucket}/out/shard-000000.tar"
    write_bytes(uri, b"payload")
    body = boto3.client("s3").get_object(Bucket=s3_bucket, Key="out/shard-000000.tar")["Body"].read()
    assert body == b"payload"
    with pytest.raises(ValueError), staged_file(f"s3://{s3_bucket}/out/never.tar") as stage:
        Path(stage).write_bytes(b"x")
        raise ValueError("boom")
    assert fsspec.filesystem("s3").ls(f"{s3_bucket}/out") == [f"{s3_bucket}/out/shard-000000.tar"]


def test_unwritable_directory_is_refused(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(OSError, match="cannot create output directory"):
        ensure_writable_dir(str(blocker / "sub"))
