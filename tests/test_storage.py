import contextlib
import json
import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import boto3
import fsspec
import pytest
import s3fs
from botocore.exceptions import ClientError, EndpointConnectionError, ReadTimeoutError
from fsspec.implementations.http import HTTPFileSystem
from s3fs.errors import translate_boto_error

from masklet.io import storage
from masklet.io.storage import (
    RetryPolicy,
    StorageError,
    call,
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


@pytest.fixture
def black_hole() -> Iterator[str]:
    """A TCP server on 127.0.0.1 that accepts connections and never answers."""
    server = socket.create_server(("127.0.0.1", 0))
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def serve() -> None:
        server.settimeout(0.1)
        while not stop.is_set():
            with contextlib.suppress(OSError):
                accepted.append(server.accept()[0])

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield f"127.0.0.1:{server.getsockname()[1]}"
    stop.set()
    thread.join()
    for conn in accepted:
        conn.close()
    server.close()


def test_an_endpoint_that_never_answers_fails_naming_the_uri(black_hole: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every remote call has a read timeout (masklet's defaults, here shortened) and a bounded number of
    retries: a black-hole endpoint is an error naming the URI, not a hang."""
    monkeypatch.setattr(storage, "DEFAULT_RETRY", RetryPolicy(attempts=2, base_delay=0.0))
    http = {"client_kwargs": {"timeout": aiohttp.ClientTimeout(total=None, sock_connect=1, sock_read=0.5)}}
    for protocol in ("http", "https"):  # one filesystem class, configured under both names
        monkeypatch.setitem(fsspec.config.conf, protocol, http)
    HTTPFileSystem.clear_instance_cache()  # instances are cached with the settings they were made with
    uri = f"http://{black_hole}/video.mp4"
    start = time.monotonic()
    with pytest.raises(StorageError, match=f"read {uri} failed after 2 attempts, last error transient") as err:
        fs, path = url_to_fs(uri)
        call("read", uri, fs.cat_file, path)
    assert err.value.transient and time.monotonic() - start < 15
    for key, value in (("AWS_ACCESS_KEY_ID", "x"), ("AWS_SECRET_ACCESS_KEY", "x"), ("AWS_DEFAULT_REGION", "us-east-1")):
        monkeypatch.setenv(key, value)
    limits = {"read_timeout": 0.5, "retries": {"max_attempts": 1}}
    s3 = {"endpoint_url": f"http://{black_hole}", "config_kwargs": limits}
    monkeypatch.setitem(fsspec.config.conf, "s3", s3)
    s3fs.S3FileSystem.clear_instance_cache()
    with pytest.raises(StorageError, match="s3://bucket/shard.tar failed after 2 attempts") as err:
        fs, path = url_to_fs("s3://bucket/shard.tar")
        call("read", "s3://bucket/shard.tar", fs.cat_file, path)
    assert err.value.transient and time.monotonic() - start < 60
    s3fs.S3FileSystem.clear_instance_cache()
    HTTPFileSystem.clear_instance_cache()


def test_every_remote_call_has_time_limits_by_default() -> None:
    assert fsspec.config.conf["s3"]["config_kwargs"]["read_timeout"] > 0
    assert fsspec.config.conf["http"]["client_kwargs"]["timeout"].sock_read > 0


def test_the_retries_stop_at_the_deadline(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def slow_and_failing() -> None:
        calls.append(time.monotonic())
        raise TimeoutError("read timed out")

    with pytest.raises(StorageError, match="failed after 2 attempts"):
        call("read", "s3://b/k", slow_and_failing, retry=RetryPolicy(attempts=10, base_delay=0.3, deadline=0.4))
    assert len(calls) == 2


def test_the_s3_filesystem_is_reused_across_calls(s3_bucket: str) -> None:
    """botocore rewrites a client's `retries` settings in place; masklet's defaults are given in the
    rewritten form, so they stay the same and s3fs keeps serving one cached instance (one session,
    one connection pool) instead of building a new one for every call after the first."""
    uri = f"s3://{s3_bucket}/probe.bin"
    before = json.dumps(fsspec.config.conf["s3"]["config_kwargs"], sort_keys=True)
    first, path = url_to_fs(uri)
    write_bytes(uri, b"x")
    call("read", uri, first.cat_file, path)
    assert url_to_fs(uri)[0] is first
    assert json.dumps(fsspec.config.conf["s3"]["config_kwargs"], sort_keys=True) == before
