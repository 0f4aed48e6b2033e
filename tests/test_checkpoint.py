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

from masklet.model.checkpoint import CheckpointError, load_checkpoint, save_checkpoint


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
    digest = save_checkpoint(src, str(tmp_path / "m.pt"))
    assert digest == hashlib.sha256((tmp_path / "m.pt").read_bytes()).hexdigest()
    for uri in (str(tmp_path / "m.pt"), f"file://{tmp_path / 'm.pt'}"):
        dst = make_model(1)
        info = load_checkpoint(dst, uri)
        assert_same_weights(src, dst)
        assert info["path"] == str(tmp_path / "m.pt") and info["sha256"] == digest and not info["cached"]
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
    digest = save_checkpoint(src, uri)
    assert [o["Key"] for o in boto3.client("s3").list_objects_v2(Bucket=s3_bucket)["Contents"]] == ["ckpt/model.pt"]
    dst = make_model(1)
    info = load_checkpoint(dst, uri, sha256=digest)
    assert_same_weights(src, dst)
    assert not info["cached"] and Path(info["path"]).parent == cache_dir
    assert os.listdir(cache_dir) == [os.path.basename(info["path"])]  # the temp file was renamed
    assert load_checkpoint(make_model(2), uri, sha256=digest)["cached"]


def test_http_download_then_cache(http_root: tuple[Path, Server], cache_dir: Path) -> None:
    root, server = http_root
    src = make_model(0)
    digest = save_checkpoint(src, str(root / "model.pt"))
    uri = f"{server.url}/model.pt"
    dst = make_model(1)
    info = load_checkpoint(dst, uri, sha256=digest.upper())
    assert_same_weights(src, dst)
    assert not info["cached"] and server.hits == 1
    server.stop()  # a second load must not need the server
    dst2 = make_model(2)
    info2 = load_checkpoint(dst2, uri, sha256=digest)
    assert info2["cached"] and info2["path"] == info["path"]
    assert_same_weights(src, dst2)
    assert load_checkpoint(make_model(3), uri)["cached"]  # also without a sha256
    # a corrupt cache entry is caught by the sha256 and, with the server gone, reported
    Path(info["path"]).write_bytes(b"garbage")
    with pytest.raises(OSError):
        load_checkpoint(make_model(4), uri, sha256=digest)


def test_corrupt_cache_entry_is_downloaded_again(http_root: tuple[Path, Server]) -> None:
    root, server = http_root
    digest = save_checkpoint(make_model(0), str(root / "model.pt"))
    uri = f"{server.url}/model.pt"
    info = load_checkpoint(make_model(1), uri, sha256=digest)
    Path(info["path"]).write_bytes(b"garbage")
    again = load_checkpoint(make_model(1), uri, sha256=digest)
    assert not again["cached"] and server.hits == 2 and again["path"] == info["path"]


def test_interrupted_download_leaves_no_cache_entry(tmp_path: Path, cache_dir: Path) -> None:
    class Truncating(QuietHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Length", "100000")
            self.end_headers()
            self.wfile.write(b"x" * 1000)  # then the connection drops

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Truncating)
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        with pytest.raises(Exception, match="content length"):  # aiohttp's ClientPayloadError
            load_checkpoint(make_model(), f"http://127.0.0.1:{httpd.server_address[1]}/m.pt")
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert os.listdir(cache_dir) == []


def test_sha256_ok_and_mismatch(tmp_path: Path) -> None:
    digest = save_checkpoint(make_model(0), str(tmp_path / "m.pt"))
    load_checkpoint(make_model(1), str(tmp_path / "m.pt"), sha256=digest)
    wrong = "0" * 64
    with pytest.raises(CheckpointError, match=f"sha256 mismatch: expected {wrong}, got {digest}") as err:
        load_checkpoint(make_model(1), str(tmp_path / "m.pt"), sha256=wrong)
    assert str(tmp_path / "m.pt") in str(err.value)


def test_sha256_mismatch_on_download_is_not_cached(http_root: tuple[Path, Server], cache_dir: Path) -> None:
    root, server = http_root
    save_checkpoint(make_model(0), str(root / "model.pt"))
    with pytest.raises(CheckpointError, match="sha256 mismatch"):
        load_checkpoint(make_model(1), f"{server.url}/model.pt", sha256="f" * 64)
    assert os.listdir(cache_dir) == []


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
    with pytest.raises(CheckpointError, match="refused: it holds pickled objects"):
        load_checkpoint(make_model(), uri)
    assert not marker.exists()
    torch.load(uri, weights_only=False)  # the payload is live: an unsafe load runs it
    assert marker.read_text() == "pwned"


def test_save_refuses_model_in_extra(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="reserved"):
        save_checkpoint(make_model(), str(tmp_path / "m.pt"), model=1)
