"""Official weights by name: the release URLs, a mirror (local HTTP, moto S3), hf:// through a local hub.

Nothing here reaches the internet: a mirror or a stand-in hub on 127.0.0.1 serves the files.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import threading
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import fsspec
import pytest
import torch

from masklet.config import ModelConfig, validate_config
from masklet.io.checkpoint_files import fetch, save_checkpoint
from masklet.jobs.driver import plan_job
from masklet.model import build_model
from masklet.pipelines.model_loading import load_model
from masklet.weights import MIRROR_ENV, OFFICIAL

KEYS = Path(__file__).parent / "fixtures" / "sam2-checkpoint-keys"


class Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass


@pytest.fixture
def mirror(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A folder served on 127.0.0.1 and set as the mirror of the official files."""
    root = tmp_path / "mirror"
    root.mkdir()
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(Quiet, directory=str(root)))
    threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True).start()
    monkeypatch.setenv(MIRROR_ENV, f"http://127.0.0.1:{httpd.server_address[1]}/")
    monkeypatch.setenv("MASKLET_CACHE_DIR", str(tmp_path / "cache"))
    yield root
    httpd.shutdown()
    httpd.server_close()


def test_the_eight_official_files_by_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(MIRROR_ENV, raising=False)
    assert len(OFFICIAL) == 8
    for name, official in OFFICIAL.items():
        release = "092824" if name.startswith("sam2.1") else "072824"
        url = f"https://dl.fbaipublicfiles.com/segment_anything_2/{release}/{official.file}"
        assert ModelConfig(name=name, checkpoint="official").weights == url
        assert ModelConfig(name=name, checkpoint=name).weights == url  # the preset's own name says the same
        assert official.hf_uri == f"hf://facebook/{official.file.removesuffix('.pt').replace('_', '-')}/{official.file}"
        shapes = json.loads((KEYS / f"{name}.json").read_text())["shapes"]
        assert official.params == sum(int(torch.Size(s).numel()) for s in shapes.values())


def test_official_weights_from_a_mirror_load_strictly(mirror: Path) -> None:
    """The preset named, the file fetched once from the mirror, its sha256 pinned in job.json."""
    torch.manual_seed(3)
    official = build_model("sam2.1_hiera_t")
    digest = save_checkpoint(official.state_dict(), str(mirror / "sam2.1_hiera_tiny.pt"))
    config = ModelConfig(name="sam2.1_hiera_t", checkpoint="official", device="cpu")
    assert config.weights.endswith("/sam2.1_hiera_tiny.pt") and config.weights.startswith("http://127.0.0.1:")
    model = load_model(config, checkpoint_sha256=digest)
    for key, value in official.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key


def test_job_json_pins_the_sha256_of_the_first_download(mirror: Path, tmp_path: Path) -> None:
    # every key and shape of the model (planning checks them), each a zero-stride view of one number: 170 kB
    shapes = build_model("sam2_hiera_s", device="meta").state_dict()
    torch.save(
        {"model": {k: torch.zeros((), dtype=v.dtype).expand(v.shape) for k, v in shapes.items()}},
        mirror / "sam2_hiera_small.pt",
    )
    (tmp_path / "in").mkdir()
    with fsspec.open(str(tmp_path / "in" / "shard-000000.tar"), "wb") as f:
        f.write(b"\0" * 1024)
    config = validate_config(
        {
            "source": {"uri": str(tmp_path / "in" / "shard-*.tar")},
            "output": {"uri": str(tmp_path / "out")},
            "model": {"name": "sam2_hiera_s", "checkpoint": "official"},
        }
    )
    plan = plan_job(config)
    job = json.loads((tmp_path / "out" / "job.json").read_text())
    assert job["checkpoint"] == config.model.weights and job["config"]["model"]["checkpoint"] == "official"
    assert job["checkpoint_sha256"] == hashlib.sha256((mirror / "sam2_hiera_small.pt").read_bytes()).hexdigest()
    assert plan.claim == "new" and plan_job(config).claim == "resume"


def test_mirror_in_a_bucket(s3_bucket: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MASKLET_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv(MIRROR_ENV, f"s3://{s3_bucket}/sam2")
    with fsspec.open(f"s3://{s3_bucket}/sam2/sam2.1_hiera_large.pt", "wb") as f:
        f.write(b"large")
    uri = ModelConfig(name="sam2.1_hiera_l", checkpoint="official").weights
    assert uri == f"s3://{s3_bucket}/sam2/sam2.1_hiera_large.pt"
    assert fetch(uri).sha256 == hashlib.sha256(b"large").hexdigest()


class FakeHub(http.server.BaseHTTPRequestHandler):
    """The few Hugging Face Hub routes `huggingface_hub.HfFileSystem` uses to stat and download a file:
    repo info, the tree listing and `resolve`."""

    files: dict[tuple[str, str], bytes] = {}
    downloads: list[str] = []

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass

    def _send(self, code: int, body: bytes, head: bool = False, **headers: str) -> None:
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        for key, value in headers.items():
            self.send_header(key.replace("_", "-"), value)
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def _route(self, head: bool) -> None:
        parts = self.path.split("?")[0].strip("/").split("/")
        if parts[:2] == ["api", "models"]:
            repo, rest = "/".join(parts[2:4]), parts[4:]
            if rest[:1] == ["tree"]:
                entries = [
                    {"type": "file", "path": name, "size": len(data), "oid": hashlib.sha1(data).hexdigest()}
                    for (r, name), data in self.files.items()
                    if r == repo
                ]
                return self._send(200, json.dumps(entries).encode(), head)
            return self._send(200, json.dumps({"id": repo, "sha": "0" * 40}).encode(), head)
        repo, name = "/".join(parts[:2]), "/".join(parts[4:])
        if parts[2:3] == ["resolve"] and (repo, name) in self.files:
            if not head:
                self.downloads.append(name)
            return self._send(200, self.files[(repo, name)], head, ETag=f'"{len(self.files[(repo, name)])}"')
        return self._send(404, b"{}", head, X_Error_Code="EntryNotFound")

    def do_GET(self) -> None:
        self._route(head=False)

    def do_HEAD(self) -> None:
        self._route(head=True)


def test_hf_uri_through_the_hubs_own_filesystem(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("huggingface_hub")
    torch.manual_seed(5)
    small = build_model("masklet_demo")
    path = tmp_path / "m.pt"
    save_checkpoint(small.state_dict(), str(path))
    FakeHub.files = {("facebook/masklet-demo", "masklet_demo.pt"): path.read_bytes()}
    FakeHub.downloads = []
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), FakeHub)
    threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True).start()
    # the config's storage section (fsspec defaults per protocol) points hf:// at the stand-in hub
    monkeypatch.setitem(fsspec.config.conf, "hf", {"endpoint": f"http://127.0.0.1:{httpd.server_address[1]}"})
    monkeypatch.setenv("MASKLET_CACHE_DIR", str(tmp_path / "cache"))
    try:
        config = ModelConfig(name="masklet_demo", checkpoint="hf://facebook/masklet-demo/masklet_demo.pt")
        model = load_model(config)
        assert all(torch.equal(model.state_dict()[k], v) for k, v in small.state_dict().items())
        assert fetch(config.weights).cached and FakeHub.downloads == ["masklet_demo.pt"]
        with pytest.raises(OSError, match="hf://facebook/masklet-demo/absent.pt.*FileNotFoundError"):
            fetch("hf://facebook/masklet-demo/absent.pt")
    finally:
        httpd.shutdown()
        httpd.server_close()
