"""One run per output root (masklet.jobs.run_lease), without Ray: who holds the root, and when not."""

from __future__ import annotations

import datetime
import io
import json
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from masklet.jobs import run_lease
from masklet.jobs.progress import Progress
from masklet.jobs.run_lease import HEARTBEAT, STALE_AFTER, RunConflict, holder, take_over


@pytest.fixture(autouse=True)
def _quick(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(run_lease, "SETTLE", 0.2)


def _held_by(root: Path, *, seconds_ago: float, **who: object) -> None:
    moment = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(seconds=seconds_ago)
    doc = {"state": "running", "run_id": "other", "updated_at": moment.isoformat(), **holder(), **who}
    root.mkdir(exist_ok=True)
    (root / "progress.json").write_text(json.dumps(doc))


def _dead_pid() -> int:
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(done.stdout)


def test_a_live_run_holds_the_root(tmp_path: Path) -> None:
    root = tmp_path / "out"
    _held_by(root, seconds_ago=5)  # this very process: alive
    with pytest.raises(RunConflict, match=r"another run \(run other on .*\) is writing to .*updated 5 s ago"):
        take_over(str(root), "mine")
    assert json.loads((root / "progress.json").read_text())["run_id"] == "other"  # untouched
    take_over(str(root), "mine", force=True)
    assert json.loads((root / "progress.json").read_text())["run_id"] == "mine"


@pytest.mark.parametrize(
    ("seconds_ago", "state", "dead"),
    [
        (STALE_AFTER + 5, "running", False),  # not heard from for too long: taken for dead
        (5, "finished", False),
        (5, "interrupted", False),
        (5, "running", True),  # on this host, and its process is gone: a driver killed with SIGKILL
    ],
)
def test_an_ended_stale_or_dead_run_does_not(tmp_path: Path, seconds_ago: float, state: str, dead: bool) -> None:
    root = tmp_path / "out"
    _held_by(root, seconds_ago=seconds_ago, state=state, **({"pid": _dead_pid()} if dead else {}))
    take_over(str(root), "mine")
    assert json.loads((root / "progress.json").read_text())["run_id"] == "mine"


def test_a_run_elsewhere_is_trusted_until_stale(tmp_path: Path) -> None:
    root = tmp_path / "out"
    _held_by(root, seconds_ago=STALE_AFTER - 30, host="another-machine", pid=_dead_pid())
    with pytest.raises(RunConflict, match="taken for dead 30 s from now, or pass --force"):
        take_over(str(root), "mine")


def test_two_runs_starting_together_leave_one(tmp_path: Path) -> None:
    root = tmp_path / "out"
    root.mkdir()
    outcomes: dict[str, str] = {}

    def start(run_id: str) -> None:
        try:
            take_over(str(root), run_id)
            outcomes[run_id] = "runs"
        except RunConflict as exc:
            outcomes[run_id] = str(exc)

    threads = [threading.Thread(target=start, args=(name,)) for name in ("a", "b")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    winner = json.loads((root / "progress.json").read_text())["run_id"]
    loser = "b" if winner == "a" else "a"
    assert outcomes[winner] == "runs" and "at the same moment" in outcomes[loser]


def test_a_running_job_rewrites_progress_json_as_a_heartbeat(tmp_path: Path) -> None:
    now = [0.0]
    progress = Progress(str(tmp_path), "run", "hash", total=3, skipped=0, out=io.StringIO(), clock=lambda: now[0])
    progress.tick()
    assert not (tmp_path / "progress.json").exists()  # nothing moved, the claim is recent
    now[0] = HEARTBEAT
    progress.tick()  # nothing moved, but a minute passed: the run says it is alive
    saved = json.loads((tmp_path / "progress.json").read_text())
    assert (saved["state"], saved["run_id"], saved["pid"]) == ("running", "run", holder()["pid"])
