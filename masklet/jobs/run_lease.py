"""One run at a time per output root: two identical runs would both label every pending shard.

A running driver rewrites `progress.json` at least every `HEARTBEAT` seconds (`Progress.tick`), with
its run id, host and pid. A new run reads it first: a run that is still `running` and was heard from
within `STALE_AFTER` seconds holds the root, unless it ran on this host and its process is gone (a
driver killed with SIGKILL is seen at once on its own machine; elsewhere after `STALE_AFTER`).
Two runs starting at the same moment both write their claim, wait `SETTLE` seconds and read it
back: the last writer holds the root, the other refuses. Importing this module loads neither Ray
nor torch.
"""

from __future__ import annotations

import datetime
import os
import socket
import time
from typing import Any

from masklet.io import layout
from masklet.io.layout import PROGRESS_FILE

HEARTBEAT = 60.0  # seconds between rewrites of progress.json, at the least, while a run is alive
STALE_AFTER = 3 * HEARTBEAT  # a run not heard from for this long is taken for dead
SETTLE = 1.0  # seconds between writing a claim and reading it back


class RunConflict(ValueError):
    """Another run is writing to the same output root."""


def holder() -> dict[str, Any]:
    """Who writes the root: what progress.json says about this process."""
    return {"host": socket.gethostname(), "pid": os.getpid()}


def take_over(output_uri: str, run_id: str, *, force: bool = False) -> None:
    """Claim `output_uri` for this run, or raise RunConflict naming the run that holds it.

    `force` takes the root over whatever holds it (a run known dead, on a machine out of reach)."""
    if not force:
        _refuse_if_held(output_uri, run_id)
    claim = {"state": "running", "run_id": run_id, "updated_at": _now(), **holder()}
    layout.write_json(output_uri, PROGRESS_FILE, claim)
    time.sleep(SETTLE)
    now = layout.read_json(output_uri, PROGRESS_FILE) or {}
    if now.get("run_id") != run_id:
        raise RunConflict(
            f"another run ({_who(now)}) started writing to {output_uri} at the same moment; it goes on, this "
            "one stops: nothing was processed"
        )


def _refuse_if_held(output_uri: str, run_id: str) -> None:
    other = layout.read_json(output_uri, PROGRESS_FILE)
    if not other or other.get("state") != "running" or other.get("run_id") == run_id:
        return
    age = _age(other.get("updated_at"))
    if age is None or age >= STALE_AFTER or _dead_here(other):
        return
    raise RunConflict(
        f"another run ({_who(other)}) is writing to {output_uri}: its progress.json was updated {age:.0f} s ago. "
        "Two runs would label every shard twice. Wait for it (or stop it); if it is dead, it is taken for dead "
        f"{STALE_AFTER - age:.0f} s from now, or pass --force to take the root over now"
    )


def _age(updated_at: Any) -> float | None:
    try:
        moment = datetime.datetime.fromisoformat(str(updated_at))
    except ValueError:
        return None
    return (datetime.datetime.now(datetime.timezone.utc) - moment).total_seconds()


def _dead_here(other: dict[str, Any]) -> bool:
    """Whether the run was on this host and its process no longer exists."""
    pid = other.get("pid")
    if other.get("host") != socket.gethostname() or not isinstance(pid, int):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False  # alive, another user's
    return False


def _who(doc: dict[str, Any]) -> str:
    return f"run {doc.get('run_id')} on {doc.get('host', 'an unknown host')}, pid {doc.get('pid', '?')}"


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
