"""`masklet submit / status / logs / stop` against a real Ray head on 127.0.0.1, started here."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from jobs_helpers import TESTS, alive, command_name, descendants, free_port, write_config
from jobs_plugins import DELAY_ENV

from masklet.cli import main
from masklet.config import REDACTED, STORAGE_ENV
from masklet.io.sinks import list_done
from masklet.synth.corpus import write_corpus

BIN = Path(sys.executable).parent
pytestmark = pytest.mark.filterwarnings("ignore:ssl=None is deprecated:DeprecationWarning")  # Ray's log tailing


@pytest.fixture(scope="module")
def ray_head() -> Iterator[str]:
    """`ray start --head --block` on loopback ports of its own; stopped, and nothing of it left, after.

    Token authentication is off: Ray caches the token of the first cluster a process meets (this
    suite's local Ray), so a second cluster with its own token would refuse this process.
    """
    temp = tempfile.mkdtemp(prefix="rayh-", dir="/tmp")  # Ray's socket paths must stay short
    auth = {"RAY_AUTH_MODE": "disabled"}
    dashboard = free_port()
    command = [
        str(BIN / "ray"), "start", "--head", "--block", "--disable-usage-stats",
        "--node-ip-address", "127.0.0.1", "--dashboard-host", "127.0.0.1",
        "--port", str(free_port()), "--dashboard-port", str(dashboard),
        "--ray-client-server-port", str(free_port()), "--dashboard-agent-listen-port", str(free_port()),
        "--num-cpus", "2", "--temp-dir", temp,
    ]  # fmt: skip
    # the job's driver runs `masklet` from this venv; RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 comes from conftest
    env = {**os.environ, **auth, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    head = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    address = f"http://127.0.0.1:{dashboard}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert head.poll() is None, "ray start exited"
            try:
                urllib.request.urlopen(f"{address}/api/version", timeout=2)
                break
            except OSError:
                assert time.monotonic() < deadline, "the Ray head did not come up"
                time.sleep(0.5)
        with pytest.MonkeyPatch.context() as patch:
            for name, value in auth.items():
                patch.setenv(name, value)
            yield address
    finally:
        # `ray start --block` stops what it started on SIGTERM; what is left after a grace period
        # (it would go on its own, slowly) is killed by pid, so the suite leaks no Ray process
        tree = {pid: command_name(pid) for pid in descendants(head.pid)}
        head.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 5
        while alive(set(tree)) and time.monotonic() < deadline:
            time.sleep(0.2)
        for pid in alive(set(tree)):
            if command_name(pid) == tree[pid]:
                os.kill(pid, signal.SIGKILL)
        head.wait()
        shutil.rmtree(temp, ignore_errors=True)


@pytest.fixture
def job(tmp_path: Path) -> tuple[Path, Path, Path]:
    """A corpus, a config for it and a working dir holding the plug-in, as a user would ship it."""
    corpus = tmp_path / "corpus"
    write_corpus(str(corpus), videos=4, per_shard=2, seed=1, width=64, height=48, frames=6, fps=24.0)
    workdir = tmp_path / "project"
    workdir.mkdir()
    shutil.copy(TESTS / "jobs_plugins.py", workdir)
    config = write_config(tmp_path / "job.yaml", f"{corpus}/shard-*.tar", tmp_path / "out", workers={"count": 1})
    return config, workdir, tmp_path / "out"


def _job_id(out: str) -> str:
    return out.strip().splitlines()[-1]


def test_submit_dry_run_prints_what_it_would_send(
    job: tuple[Path, Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    config, workdir, out = job
    args = ["submit", str(config), "workers.count=3", "storage.s3.secret=hunter2", "--working-dir", str(workdir)]
    assert main([*args, "--pip", "extra==1", "--env", "HF_TOKEN=hf_x", "--env", "A=1", "--dry-run"]) == 0
    text = capsys.readouterr().out
    assert "hunter2" not in text and "hf_x" not in text  # what is printed is redacted
    printed = text.splitlines()
    entrypoint = shlex.split(printed[0].removeprefix("entrypoint: "))
    assert entrypoint[:3] == ["masklet", "run", "--config-json"]
    sent = json.loads(entrypoint[3])
    assert sent["ray"]["address"] == "auto" and sent["workers"]["count"] == 3 and sent["output"]["uri"] == str(out)
    assert sent["storage"] == {}  # in the job's environment instead
    runtime_env = json.loads(printed[1].removeprefix("runtime_env: "))
    env_vars = {"A": "1", "HF_TOKEN": REDACTED, STORAGE_ENV: json.dumps({"s3": {"secret": REDACTED}})}
    assert runtime_env == {"env_vars": env_vars, "pip": ["extra==1"], "working_dir": str(workdir)}
    assert main(["submit", str(config), "--dry-run", "--env", "oops"]) == 2


def test_submit_runs_the_job_on_the_cluster(
    ray_head: str, job: tuple[Path, Path, Path], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    config, workdir, out = job
    secret = ["storage.file.token=hunter2"]  # a storage option every local filesystem takes (and ignores)
    assert main(["submit", str(config), *secret, "--address", ray_head, "--working-dir", str(workdir), "--wait"]) == 0
    printed = capsys.readouterr().out
    assert json.loads((out / "job.json").read_text())["config"]["storage"] == {"file": {"token": REDACTED}}
    assert "hunter2" not in (out / "job.json").read_text()  # the job's driver had it, and wrote it nowhere
    job_id = printed.splitlines()[0]
    assert "masklet run: job" in printed and "shards:   2 done, 0 failed" in printed  # the job's own log
    assert list_done(str(out)) == {"shard-000000", "shard-000001"}

    monkeypatch.setenv("RAY_ADDRESS", ray_head)
    assert main(["status", job_id]) == 0
    status = capsys.readouterr().out
    assert status.startswith("SUCCEEDED") and "masklet run --config-json" in status and "hunter2" not in status
    assert main(["logs", job_id]) == 0
    assert "videos:   4 ok, 0 failed" in capsys.readouterr().out
    assert main(["status", "no-such-job"]) == 2

    # a second, slow job: stop it while it runs
    args = ["submit", str(config), f"output.uri={out}-slow", "--working-dir", str(workdir), "--env", f"{DELAY_ENV}=30"]
    assert main(args) == 0
    slow = _job_id(capsys.readouterr().out)
    deadline = time.monotonic() + 60
    while main(["status", slow]) == 0 and not capsys.readouterr().out.startswith("RUNNING"):
        assert time.monotonic() < deadline
        time.sleep(0.5)
    assert main(["stop", slow]) == 0
    assert "stop requested" in capsys.readouterr().out
    deadline = time.monotonic() + 60
    while main(["status", slow]) == 0 and not capsys.readouterr().out.startswith("STOPPED"):
        assert time.monotonic() < deadline
        time.sleep(0.5)


def test_submit_refuses_relative_local_paths_and_warns_of_local_ones(
    job: tuple[Path, Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    config, workdir, _ = job
    monkeypatch.chdir(tmp_path)
    assert main(["submit", str(config), "output.uri=rel/out", "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "output.uri 'rel/out' is a relative local path: the cluster would read it from the job's working" in err
    assert main(["submit", str(config), "output.uri=rel/out", "--working-dir", str(workdir), "--dry-run"]) == 0
    err = capsys.readouterr().err
    assert "warning: output.uri 'rel/out' is a local path: it must exist inside the --working-dir" in err
    assert main(["submit", str(config), "output.uri=s3://bucket/out", "--dry-run"]) == 0
    err = capsys.readouterr().err
    assert "output.uri" not in err and "warning: source.uri" in err and "must exist on every node" in err
