"""What a person watching a job sees: a live line on a terminal, log lines elsewhere, progress.json.

Counts come from committed shards plus what busy workers report about the shard in hand, so the
line moves with every video, not only every shard. `progress.json` in the output root is
rewritten (atomically) whenever a shard finishes or fails and when the job ends; a failure to
write it is logged and never stops the job.
"""

from __future__ import annotations

import datetime
import logging
import sys
import time
from dataclasses import dataclass, field
from typing import Any, TextIO

from masklet.io import layout, storage
from masklet.io.layout import PROGRESS_FILE
from masklet.jobs.worker import ShardResult

log = logging.getLogger(__name__)

MAX_LISTED_VIDEOS = 1000  # failed videos listed in progress.json; all of them are in videos/*.parquet
COUNTS = ("videos", "videos_error", "frames", "masklets", "masklets_kept")


@dataclass
class FailedShard:
    shard_id: str
    attempts: int
    error: str


@dataclass
class Progress:
    """Counts of one run of a job and how they are shown; `skipped` shards were done before it."""

    output_uri: str
    run_id: str
    config_hash: str
    total: int
    skipped: int
    out: TextIO = field(default_factory=lambda: sys.stderr)
    log_every: float = 30.0
    done: int = 0
    running: int = 0
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(COUNTS, 0))
    partial: dict[str, dict[str, int]] = field(default_factory=dict)  # worker -> its shard in hand
    failed: list[FailedShard] = field(default_factory=list)
    failed_videos: list[dict[str, str]] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)
    started_at: str = field(default_factory=lambda: _now())
    _last_shown: float | None = None  # None: show at the next tick
    _line_open: bool = False

    @property
    def tty(self) -> bool:
        return self.out.isatty()

    def totals(self) -> dict[str, int]:
        """Committed counts plus the in-flight ones."""
        return {k: self.counts[k] + sum(p.get(k, 0) for p in self.partial.values()) for k in COUNTS}

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def worker_update(self, worker: str, tally: dict[str, Any]) -> None:
        self.partial[worker] = {k: int(tally.get(k, 0)) for k in COUNTS}

    def shard_done(self, result: ShardResult) -> None:
        self.partial.pop(result.worker, None)
        self.done += 1
        c = result.counts
        for key, value in (
            ("videos", c["videos"]),
            ("videos_error", c["videos_error"]),
            ("frames", c["frames_processed"]),
            ("masklets", c["masklets"]),
            ("masklets_kept", c["masklets_kept"]),
        ):
            self.counts[key] += value
        for key, error_type, error in result.failed_videos:
            if len(self.failed_videos) < MAX_LISTED_VIDEOS:
                self.failed_videos.append(
                    {"shard_id": result.shard_id, "video_key": key, "error": f"{error_type}: {error}"}
                )
        self.save("running")

    def shard_lost(self, worker: str) -> None:
        """The worker's shard in hand is gone (it died or failed); its partial counts with it."""
        self.partial.pop(worker, None)

    def shard_failed(self, shard_id: str, attempts: int, error: str) -> None:
        self.failed.append(FailedShard(shard_id, attempts, error))
        self.message(f"shard {shard_id} failed after {attempts} attempt(s): {error}")
        self.save("running")

    def message(self, text: str) -> None:
        """A line of its own, above the live line on a terminal."""
        if self._line_open:
            self.out.write("\r\x1b[K")
        self.out.write(text + "\n")
        self.out.flush()
        self._line_open = False
        if self.tty:
            self._last_shown = None  # redraw the live line below the message at once

    def tick(self) -> None:
        """Redraw the live line (terminal, twice a second) or log a line (every `log_every` s)."""
        now = time.monotonic()
        every = 0.5 if self.tty else self.log_every
        if self._last_shown is not None and now - self._last_shown < every:
            return
        self._last_shown = now
        if self.tty:
            self.out.write(f"\r\x1b[K{self.line()}")
            self._line_open = True
        else:
            self.out.write(f"[{_clock(self.elapsed())}] {self.line()}\n")
        self.out.flush()

    def close_line(self) -> None:
        if self._line_open:
            self.out.write("\n")
            self.out.flush()
            self._line_open = False

    def line(self) -> str:
        t = self.totals()
        shards = f"shards {self.done + self.skipped}/{self.total}"
        if self.failed:
            shards += f" ({len(self.failed)} failed)"
        videos = f"videos {t['videos'] - t['videos_error']} ok"
        if t["videos_error"]:
            videos += f", {t['videos_error']} failed"
        return (
            f"{shards} | {videos} | {t['frames']} frames, {self.fps():.1f} frames/s | "
            f"masklets {t['masklets_kept']} kept of {t['masklets']} | {_clock(self.elapsed())}"
        )

    def fps(self) -> float:
        return self.totals()["frames"] / max(self.elapsed(), 1e-9)

    def snapshot(self, state: str) -> dict[str, Any]:
        t = self.totals()
        return {
            "state": state,
            "run_id": self.run_id,
            "config_hash": self.config_hash,
            "started_at": self.started_at,
            "updated_at": _now(),
            "elapsed_seconds": round(self.elapsed(), 3),
            "shards": {
                "total": self.total,
                "skipped": self.skipped,
                "done": self.done,
                "failed": len(self.failed),
                "running": self.running,
                "pending": self.total - self.skipped - self.done - len(self.failed) - self.running,
            },
            "videos": {"ok": t["videos"] - t["videos_error"], "failed": t["videos_error"]},
            "frames": t["frames"],
            "frames_per_second": round(self.fps(), 3),
            "masklets": {"total": t["masklets"], "kept": t["masklets_kept"]},
            "failed_shards": [f.__dict__ for f in self.failed],
            "failed_videos": self.failed_videos,
        }

    def save(self, state: str) -> None:
        try:
            layout.write_json(self.output_uri, PROGRESS_FILE, self.snapshot(state))
        except OSError as exc:
            log.warning("could not update %s: %s", storage.join(self.output_uri, PROGRESS_FILE), exc)


def _clock(seconds: float) -> str:
    return str(datetime.timedelta(seconds=int(seconds)))


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
