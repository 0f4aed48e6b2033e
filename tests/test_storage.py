import os
import time
from pathlib import Path

import boto3
import fsspec
import pytest
from botocore.exceptions import ClientError, EndpointConnectionError, ReadTimeoutError
from s3fs.errors import translate_boto_error

from masklet.io.storage import (
    RetryPolicy,
    StorageError,
    configure,
    ensure_writable_dir,
    is_transient,
    put_file,
    staged_file,
    url_to_fs,
    write_bytes,
)


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


def test_multipart_upload_through_moto(s3_bucket: str, tmp_path: Path) -> None:
    # s3fs uploads files of at least 2 x chunksize in parts; S3's minimum part is 5 MiB.
    data = os.urandom(12 * 2**20)
    local = tmp_path / "big.bin"
    local.write_bytes(data)
    put_file(str(local), f"s3://{s3_bucket}/big.bin", chunksize=5 * 2**20)
    s3 = boto3.client("s3")
    assert s3.head_object(Bucket=s3_bucket, Key="big.bin")["ETag"].strip('"').endswith("-3")  # 3 parts
    assert s3.get_object(Bucket=s3_bucket, Key="big.bin")["Body"].read() == data


def _flaky_put(monkeypatch: pytest.MonkeyPatch, uri: str, failures: list[BaseException]) -> list[str]:
    """Make the cached filesystem's put_file raise `failures` in turn, then work; return the calls."""
    fs, _ = url_to_fs(uri)
    real_put, calls = fs.put_file, []

    def put_file(lpath: str, rpath: str, **kwargs) -> None:
        calls.append(rpath)
        if failures:
            raise failures.pop(0)
        real_put(lpath, rpath, **kwargs)

    monkeypatch.setattr(fs, "put_file", put_file)
    return calls


def test_transient_errors_are_retried(s3_bucket: str, monkeypatch: pytest.MonkeyPatch) -> None:
    uri = f"s3://{s3_bucket}/flaky.bin"
    slow_down = ClientError({"Error": {"Code": "SlowDown"}, "ResponseMetadata": {"HTTPStatusCode": 503}}, "PutObject")
    calls = _flaky_put(monkeypatch, uri, [ConnectionResetError("reset by peer"), translate_boto_error(slow_down)])
    write_bytes(uri, b"eventually", retry=RetryPolicy(attempts=3, base_delay=0.01))
    assert len(calls) == 3
    assert boto3.client("s3").get_object(Bucket=s3_bucket, Key="flaky.bin")["Body"].read() == b"eventually"


def test_retries_are_bounded(s3_bucket: str, monkeypatch: pytest.MonkeyPatch) -> None:
    uri = f"s3://{s3_bucket}/never.bin"
    calls = _flaky_put(monkeypatch, uri, [TimeoutError("read timed out")] * 5)
    with pytest.raises(StorageError, match=f"upload to {uri} failed after 3 attempts") as info:
        write_bytes(uri, b"x", retry=RetryPolicy(attempts=3, base_delay=0.01))
    assert info.value.transient and len(calls) == 3
    assert "never.bin" not in str(fsspec.filesystem("s3").ls(s3_bucket, refresh=True))


def test_missing_bucket_fails_fast_naming_the_uri(s3_bucket: str, monkeypatch: pytest.MonkeyPatch) -> None:
    uri = "s3://no-such-bucket-masklet/out/file.bin"
    calls = _flaky_put(monkeypatch, uri, [])
    start = time.perf_counter()
    with pytest.raises(StorageError, match=f"upload to {uri} failed: FileNotFoundError.*bucket") as info:
        write_bytes(uri, b"x")
    assert not info.value.transient and len(calls) == 1 and time.perf_counter() - start < 5
    with pytest.raises(StorageError, match="s3://no-such-bucket-masklet/out"):
        ensure_writable_dir("s3://no-such-bucket-masklet/out")
    ensure_writable_dir(f"s3://{s3_bucket}/out")  # the probe object is written and removed
    assert fsspec.filesystem("s3").ls(s3_bucket, refresh=True) == []


def test_configured_endpoint_reaches_every_filesystem(
    s3_bucket: str, s3_endpoint: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The config's `storage` section, with no AWS_ENDPOINT_URL: our writes and any fsspec reader use it."""
    monkeypatch.delenv("AWS_ENDPOINT_URL")
    monkeypatch.setattr(fsspec.config, "conf", {})
    configure({"s3": {"endpoint_url": s3_endpoint}})
    write_bytes(f"s3://{s3_bucket}/opt.bin", b"via config")
    body = boto3.client("s3", endpoint_url=s3_endpoint).get_object(Bucket=s3_bucket, Key="opt.bin")["Body"].read()
    assert body == b"via config"
    with fsspec.open(f"s3://{s3_bucket}/opt.bin", "rb") as f:
        assert f.read() == b"via config"


def _client_error(code: str, status: int) -> ClientError:
    return ClientError({"Error": {"Code": code}, "ResponseMetadata": {"HTTPStatusCode": status}}, "PutObject")


@pytest.mark.parametrize(
    ("exc", "transient"),
    [
        (_client_error("SlowDown", 503), True),
        (_client_error("InternalError", 500), True),
        (_client_error("Throttling", 400), True),
        (_client_error("RequestTimeout", 400), True),
        (_client_error("AccessDenied", 403), False),
        (_client_error("NoSuchBucket", 404), False),
        (_client_error("InvalidArgument", 400), False),
        (translate_boto_error(_client_error("SlowDown", 503)), True),
        (translate_boto_error(_client_error("AccessDenied", 403)), False),
        (translate_boto_error(_client_error("NoSuchBucket", 404)), False),
        (EndpointConnectionError(endpoint_url="http://127.0.0.1:1"), True),
        (ReadTimeoutError(endpoint_url="http://127.0.0.1:1"), True),
        (ConnectionResetError(), True),
        (TimeoutError(), True),
        (FileNotFoundError("gone"), False),
        (ValueError("bug"), False),
    ],
)
def test_error_classification(exc: BaseException, transient: bool) -> None:
    assert is_transient(exc) is transient


def test_retry_policy_backs_off_exponentially_within_bounds() -> None:
    policy = RetryPolicy(attempts=6, base_delay=1.0, max_delay=5.0)
    for attempt, ceiling in [(1, 1.0), (2, 2.0), (3, 4.0), (4, 5.0), (5, 5.0)]:
        assert ceiling / 2 <= policy.delay(attempt) <= ceiling
    with pytest.raises(ValueError):
        RetryPolicy(attempts=0)
