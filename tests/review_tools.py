"""The reference tools masklet's review files are checked with, each in a venv of its own.

datumaro (the CVAT XML reader) and Label Studio (server and SDK) pin versions of numpy, Django, pydantic
and more that clash with ours, so each gets a venv under $MASKLET_TOOLS_DIR (default
~/.cache/masklet/tools), named by its pins and Python version, made from PyPI on first use and kept
(a lock keeps two test runs from building one venv at once). Label Studio's venv also gets a
migrated data folder with one user and an API token, so a test's server starts in seconds rather
than migrating for two minutes.

`python tests/review_tools.py [datumaro] [labelstudio]` makes them ahead of a test run.
Measured on the 2-core build machine: datumaro 40 s, Label Studio 2 min 25 s plus 2 min for its data
folder; afterwards a Label Studio server starts in 12 to 20 s.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

PINS = {
    "datumaro": ["datumaro==1.13.12"],
    "labelstudio": ["label-studio==1.23.2", "label-studio-sdk==2.1.2"],
}
LS_USER, LS_PASSWORD, LS_TOKEN = "reviewer@example.com", "masklet-review-1", "masklet0review0token"
INSTALL_TIMEOUT = 1200  # seconds
LS_ENV = {
    "LATEST_VERSION_CHECK": "false",  # no call to PyPI at start
    "COLLECT_ANALYTICS": "false",
    "LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED": "true",
}


class ToolUnavailable(RuntimeError):
    pass


def tools_dir() -> Path:
    return Path(os.environ.get("MASKLET_TOOLS_DIR") or Path.home() / ".cache" / "masklet" / "tools")


def venv_dir(name: str) -> Path:
    tag = hashlib.sha256(f"{sys.version_info[:2]} {PINS[name]}".encode()).hexdigest()[:10]
    return tools_dir() / f"{name}-{tag}"


def tool_python(name: str) -> Path:
    """The Python of tool `name`'s venv, made first when missing; ToolUnavailable saying why it cannot be."""
    venv = venv_dir(name)
    ready = venv / ".masklet-ready"
    if ready.exists():
        return venv / "bin" / "python"
    venv.parent.mkdir(parents=True, exist_ok=True)
    with _locked(venv.parent / f".{venv.name}.lock"):
        if ready.exists():
            return venv / "bin" / "python"
        shutil.rmtree(venv, ignore_errors=True)
        t0 = time.monotonic()
        _run([sys.executable, "-m", "venv", str(venv)], f"creating the {name} venv")
        _run([str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", *PINS[name]], f"installing {name}")
        if name == "labelstudio":
            _run(
                [str(venv / "bin" / "label-studio"), "init", "--data-dir", str(venv / "ls-template"), "--username",
                 LS_USER, "--password", LS_PASSWORD, "--user-token", LS_TOKEN, "--enable-legacy-api-token", "-q"],
                "migrating Label Studio's data folder",
                env={**os.environ, **LS_ENV},
            )  # fmt: skip
        ready.write_text(f"{time.monotonic() - t0:.0f} s\n")
    return venv / "bin" / "python"


def tool_or_skip(name: str) -> Path:
    """`tool_python(name)` in a test: skipped when the tool cannot be had, except in CI (CI=true), where it fails."""
    try:
        return tool_python(name)
    except ToolUnavailable as exc:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{exc}; in CI the {name} check must run")
        pytest.skip(str(exc))


def _run(cmd: list[str], what: str, env: dict | None = None) -> None:
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=INSTALL_TIMEOUT, env=env)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ToolUnavailable(f"{what} failed: {exc}") from exc
    if done.returncode != 0:
        raise ToolUnavailable(f"{what} failed (exit {done.returncode}): {(done.stderr or done.stdout)[-2000:]}")


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def label_studio_server(data_dir: Path, document_root: Path, log: Path) -> Iterator[str]:
    """A Label Studio server on 127.0.0.1 with a copy of the migrated data folder; yields its URL."""
    python = tool_or_skip("labelstudio")
    shutil.copytree(python.parents[1] / "ls-template", data_dir)
    port = free_port()
    env = {**os.environ, **LS_ENV, "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT": str(document_root)}
    cmd = [str(python.parent / "label-studio"), "start", "--no-browser", "--internal-host", "127.0.0.1", "-p",
           str(port), "--data-dir", str(data_dir)]  # fmt: skip
    with open(log, "wb") as out:
        process = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"label-studio exited with {process.returncode}: {log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"label-studio did not answer in 180 s: {log.read_text()[-3000:]}")
            time.sleep(0.5)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


if __name__ == "__main__":
    for tool in sys.argv[1:] or list(PINS):
        start = time.monotonic()
        print(f"{tool}: {tool_python(tool)} ({time.monotonic() - start:.0f} s)")
