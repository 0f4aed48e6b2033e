"""Checkpoints: fetched from any URI into the node cache (revalidated, retried, locked), loaded strictly and safely."""

import hashlib
import http.server
import os
import threading
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import boto3
import pytest
import torch

from masklet.io import storage
from masklet.io.checkpoint_files import ChecksumError, LocalCopy, fetch, save_checkpoint
from masklet.model.checkpoint import CheckpointError
from masklet.pipelines.model_loading import load_weights


def save(model: torch.nn.Module, uri: str, **extra: object) -> str:
    return save_checkpoint(model.state_dict(), uri, **extra)


def load_checkpoint(model: torch.nn.Module, uri: str, sha256: str | None = None) -> LocalCopy:
    return load_weights(model, uri, sha256=sha256)


def cache_entries(cache_dir: Path) -> list[str]:
    """The cached checkpoints (not their metadata and lock files)."""
    return sorted(n for n in os.listdir(cache_dir) if not n.endswith((".json", ".lock")))


def make_model(seed: int = 0, width: int = 8) -> torch.nn.Sequential:
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Linear(4, width), torch.nn.BatchNorm1d(width), torch.nn.ReLU(), torch.nn.Linear(width, 3)
    )


def assert_same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass


class Server:
    """A static file server on 127.0.0.1 in a thread; `hits` counts GET requests."""

    def __init__(self, root: Path) -> None:
        self.hits = 0
        outer = self

        class Counting(QuietHandler):
            def do_GET(self) -> None:
                outer.hits += 1
                super().do_GET()

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(Counting, directory=str(root)))
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join()


@pytest.fixture
def http_root(tmp_path: Path) -> Iterator[tuple[Path, Server]]:
    root = tmp_path / "www"
    root.mkdir()
    server = Server(root)
    yield root, server
    server.stop()


@pytest.fixture(autouse=True)
def cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "cache"
    monkeypatch.setenv("MASKLET_CACHE_DIR", str(path))
    return path


def test_local_file_roundtrip_and_file_uri(tmp_path: Path) -> None:
    src = make_model(0)
    digest = save(src, str(tmp_path / "m.pt"))
    assert digest == hashlib.sha256((tmp_path / "m.pt").read_bytes()).hexdigest()
    for uri in (str(tmp_path / "m.pt"), f"file://{tmp_path / 'm.pt'}"):
        dst = make_model(1)
        info = load_checkpoint(dst, uri)
        assert_same_weights(src, dst)
        assert info.path == str(tmp_path / "m.pt") and info.sha256 == digest and not info.cached
    assert os.listdir(tmp_path) == ["m.pt"]  # no staging left, no cache for local files


def test_official_layout_with_extra_keys(tmp_path: Path) -> None:
    src = make_model(0)
    torch.save({"model": src.state_dict(), "optimizer": {"lr": 1e-4}, "epoch": 7}, tmp_path / "m.pt")
    dst = make_model(1)
    load_checkpoint(dst, str(tmp_path / "m.pt"))
    assert_same_weights(src, dst)
    save_checkpoint(src.state_dict(), str(tmp_path / "n.pt"), epoch=3, note="x")
    saved = torch.load(tmp_path / "n.pt", weights_only=True)
    assert saved["epoch"] == 3 and saved["note"] == "x" and saved["model"].keys() == src.state_dict().keys()


def test_bare_state_dict(tmp_path: Path) -> None:
    src = make_model(0)
    torch.save(src.state_dict(), tmp_path / "bare.pt")
    dst = make_model(1)
    load_checkpoint(dst, str(tmp_path / "bare.pt"))
    assert_same_weights(src, dst)


def test_s3_through_moto(s3_bucket: str, cache_dir: Path) -> None:
    src = make_model(0)
    uri = f"s3://{s3_bucket}/ckpt/model.pt"
    digest = save(src, uri)
    assert [o["Key"] for o in boto3.client("s3").list_objects_v2(Bucket=s3_bucket)["Contents"]] == ["ckpt/model.pt"]
    dst = make_model(1)
    info = load_checkpoint(dst, uri, sha256=digest)
    assert_same_weights(src, dst)
    assert not info.cached and Path(info.path).parent == cache_dir
    assert cache_entries(cache_dir) == [os.path.basename(info.path)]  # the temp file was renamed
    assert load_checkpoint(make_model(2), uri, sha256=digest).cached


def test_http_download_then_cache(http_root: tuple[Path, Server], cache_dir: Path) -> None:
    root, server = http_root
    src = make_model(0)
    digest = save(src, str(root / "model.pt"))
    uri = f"{server.url}/model.pt"
    dst = make_model(1)
    info = load_checkpoint(dst, uri, sha256=digest.upper())
    assert_same_weights(src, dst)
    assert not info.cached and server.hits == 1
    assert load_checkpoint(make_model(3), uri).cached  # without a sha256: revalidated by a HEAD, not a GET
    assert server.hits == 1
    server.stop()  # a load pinned to a sha256 the cache holds must not need the server
    dst2 = make_model(2)
    info2 = load_checkpoint(dst2, uri, sha256=digest)
    assert info2.cached and info2.path == info.path
    assert_same_weights(src, dst2)
    # a corrupt cache entry is caught by the sha256 and, with the server gone, reported naming the URI
    Path(info.path).write_bytes(b"garbage")
    with pytest.raises(storage.StorageError, match=uri):
        load_checkpoint(make_model(4), uri, sha256=digest)


def test_corrupt_cache_entry_is_downloaded_again(http_root: tuple[Path, Server]) -> None:
    root, server = http_root
    digest = save(make_model(0), str(root / "model.pt"))
    uri = f"{server.url}/model.pt"
    info = load_checkpoint(make_model(1), uri, sha256=digest)
    Path(info.path).write_bytes(b"garbage")
    again = load_checkpoint(make_model(1), uri, sha256=digest)
    assert not again.cached and server.hits == 2 and again.path == info.path


@pytest.fixture
def quick_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(storage, "DEFAULT_RETRY", storage.RetryPolicy(attempts=3, base_delay=0.0))


def serve(handler: type[http.server.BaseHTTPRequestHandler]) -> tuple[http.server.ThreadingHTTPServer, str]:
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True).start()
    return httpd, f"http://127.0.0.1:{httpd.server_address[1]}"


def test_interrupted_download_is_retried_and_leaves_no_cache_entry(cache_dir: Path, quick_retries: None) -> None:
    gets = []

    class Truncating(QuietHandler):
        def do_HEAD(self) -> None:
            self.send_response(200)
            self.send_header("Content-Length", "100000")
            self.end_headers()

        def do_GET(self) -> None:
            gets.append(self.path)
            self.do_HEAD()
            self.wfile.write(b"x" * 1000)  # then the connection drops

    httpd, url = serve(Truncating)
    try:
        with pytest.raises(storage.StorageError, match=f"{url}/m.pt failed after 3 attempts.*content length"):
            load_checkpoint(make_model(), f"{url}/m.pt")
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert len(gets) == 3  # a transient fault is retried through the storage layer
    assert cache_entries(cache_dir) == []


def test_transient_server_error_then_success(http_root: tuple[Path, Server], quick_retries: None) -> None:
    root, server = http_root
    src = make_model(0)
    save(src, str(root / "model.pt"))
    failures = [503]

    class Flaky(QuietHandler):
        def do_GET(self) -> None:
            if failures:
                self.send_error(failures.pop())
            else:
                super().do_GET()

    httpd, url = serve(partial(Flaky, directory=str(root)))
    try:
        dst = make_model(1)
        load_checkpoint(dst, f"{url}/model.pt")
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert_same_weights(src, dst)


def test_sha256_ok_and_mismatch(tmp_path: Path) -> None:
    digest = save(make_model(0), str(tmp_path / "m.pt"))
    load_checkpoint(make_model(1), str(tmp_path / "m.pt"), sha256=digest)
    wrong = "0" * 64
    with pytest.raises(ChecksumError, match=f"sha256 mismatch: expected {wrong}, got {digest}") as err:
        load_checkpoint(make_model(1), str(tmp_path / "m.pt"), sha256=wrong)
    assert str(tmp_path / "m.pt") in str(err.value)


def test_sha256_mismatch_on_download_is_not_cached(http_root: tuple[Path, Server], cache_dir: Path) -> None:
    root, server = http_root
    save(make_model(0), str(root / "model.pt"))
    with pytest.raises(ChecksumError, match="sha256 mismatch"):
        load_checkpoint(make_model(1), f"{server.url}/model.pt", sha256="f" * 64)
    assert cache_entries(cache_dir) == []


def test_key_mismatch_message(tmp_path: Path) -> None:
    model = make_model(0, width=8)
    state = dict(model.state_dict())
    del state["0.bias"]  # missing
    for i in range(7):  # unexpected, more than are listed
        state[f"extra.{i}.weight"] = torch.zeros(2, i + 1)
    state["3.weight"] = torch.zeros(3, 5)  # mis-shaped (model: [3, 8])
    uri = str(tmp_path / "bad.pt")
    torch.save({"model": state}, uri)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(model, uri)
    msg = str(err.value)
    assert uri in msg and "Sequential" in msg
    assert "1 missing, 7 unexpected, 1 mis-shaped" in msg
    assert "missing (1):\n    0.bias [8]" in msg
    assert "unexpected (7):" in msg and "extra.0.weight [2, 1]" in msg and "extra.4.weight [2, 5]" in msg
    assert "extra.5.weight" not in msg and "... and 2 more" in msg
    assert "3.weight: checkpoint [3, 5] vs model [3, 8]" in msg
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # model untouched


def test_not_a_state_dict(tmp_path: Path) -> None:
    torch.save({"weights": {"a": 1}, "step": 3}, tmp_path / "odd.pt")
    with pytest.raises(CheckpointError, match="expected a state dict or .*'weights', 'step'"):
        load_checkpoint(make_model(), str(tmp_path / "odd.pt"))
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="not a readable torch checkpoint"):
        load_checkpoint(make_model(), str(tmp_path / "junk.pt"))


class Payload:
    """Unpickling this runs code: it writes the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",)


def test_pickle_payload_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "pwned.txt"
    state = dict(make_model(0).state_dict())
    state["evil"] = Payload(marker)
    uri = str(tmp_path / "evil.pt")
    torch.save({"model": state}, uri)
    with pytest.raises(CheckpointError, match="refused: it holds pickled objects") as err:
        load_checkpoint(make_model(), uri)
    assert "\x1b" not in str(err.value)  # torch's message carries ANSI colour codes; ours does not
    assert not marker.exists()
    torch.load(uri, weights_only=False)  # the payload is live: an unsafe load runs it
    assert marker.read_text() == "pwned"


def test_refused_download_leaves_the_cache(http_root: tuple[Path, Server], cache_dir: Path) -> None:
    root, server = http_root
    state = dict(make_model(0).state_dict())
    state["evil"] = Payload(root / "pwned.txt")
    torch.save({"model": state}, root / "evil.pt")
    for _ in range(2):  # refused each time from a fresh download, never served from the cache
        with pytest.raises(CheckpointError, match="refused"):
            load_checkpoint(make_model(), f"{server.url}/evil.pt")
        assert cache_entries(cache_dir) == []
    assert server.hits == 2 and not (root / "pwned.txt").exists()


def test_overwritten_s3_object_is_downloaded_again(s3_bucket: str) -> None:
    """Keyed by URI alone, the cache served v1 after v1 was overwritten; one metadata request now revalidates."""
    uri = f"s3://{s3_bucket}/w/latest.pt"
    v1, v2 = make_model(1), make_model(2)
    sha1 = save(v1, uri)
    first = load_checkpoint(make_model(0), uri)
    sha2 = save(v2, uri)
    dst = make_model(0)
    second = load_checkpoint(dst, uri)
    assert_same_weights(v2, dst)
    assert (first.sha256, second.sha256) == (sha1, sha2) and not second.cached
    assert fetch(uri).cached and fetch(uri).sha256 == sha2  # unchanged since: served from the cache
    with pytest.raises(ChecksumError, match=sha1):  # a job pinned to v1 does not get v2's bytes
        fetch(uri, sha256=sha1)


def test_missing_s3_object_or_bucket_names_the_uri(s3_bucket: str) -> None:
    for uri in (f"s3://{s3_bucket}/nothing/here.pt", "s3://no-such-bucket-masklet/model.pt"):
        with pytest.raises(storage.StorageError, match=f"{uri}.*FileNotFoundError") as err:
            fetch(uri)
        assert not err.value.transient


def test_missing_local_file_names_it(tmp_path: Path) -> None:
    with pytest.raises(storage.StorageError, match=f"checkpoint {tmp_path / 'absent.pt'}: no such file"):
        fetch(str(tmp_path / "absent.pt"))


def test_workers_starting_together_make_one_download(http_root: tuple[Path, Server]) -> None:
    root, server = http_root
    digest = save(make_model(0), str(root / "model.pt"))
    copies: list[LocalCopy] = []
    threads = [
        threading.Thread(target=lambda: copies.append(fetch(f"{server.url}/model.pt", sha256=digest)))
        for _ in range(4)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert server.hits == 1 and sorted(c.cached for c in copies) == [False, True, True, True]
    assert {c.sha256 for c in copies} == {digest}


def test_save_refuses_model_in_extra(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="reserved"):
        save_checkpoint(make_model().state_dict(), str(tmp_path / "m.pt"), model=1)
