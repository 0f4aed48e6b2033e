"""What a person watching a job sees: a bar on a terminal, log lines elsewhere, progress.json.

Counts come from committed shards plus what busy workers report about the shard in hand, so the
frames move with every video, not only every shard. How far along a run is goes by shards (what is
known up front): the shards done of those this run has to do; shards done by an earlier run are
shown apart, as skipped. Rates are measured over a recent window (`window`, 5 minutes), starting when
the first shard reaches a worker, so neither Ray's start-up nor model loading weighs on them, and a
run that slows down shows it within minutes. The ETA is the work left over the recent frame rate,
the work left being the shards left times the frames of a finished shard (shards of a few minutes
or a few hours alike); it is unknown until the first shard finishes.

On a terminal, a tqdm bar redrawn twice a second, messages printed above it. Elsewhere (log files,
Ray job logs): plain lines with no carriage returns or ANSI codes, one every `log_every` seconds and
one per finished shard. `progress.json` in the output root is rewritten (atomically) at most every
`SAVE_EVERY` seconds while shards finish or fail, at least every `run_lease.HEARTBEAT` seconds
(the run's claim on the root), and when the job ends, with its lists capped (a
job of 10^5 failing shards must not rewrite megabytes per shard); a failure to write it is logged and
never stops the job. Importing this module loads neither Ray nor torch.
"""

from __future__ import annotations

import collections
import datetime
import logging
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TextIO

from tqdm.std import tqdm

from masklet.io import layout, storage
from masklet.io.layout import PROGRESS_FILE
from masklet.jobs.run_lease import HEARTBEAT, holder
from masklet.jobs.shard import ShardResult

log = logging.getLogger(__name__)

MAX_LISTED_VIDEOS = 1000  # failed videos listed in progress.json; all of them are in videos/*.parquet
MAX_LISTED_SHARDS = 1000  # failed shards listed in progress.json; `shards.failed` counts them all
SAVE_EVERY = 10.0  # seconds between rewrites of progress.json while the job runs
COUNTS = ("videos", "videos_error", "frames", "masklets", "masklets_kept")
RATE_WINDOW = 300.0  # seconds the rates and the ETA look back
REDRAW = 0.5  # seconds between redraws of the bar on a terminal
SAMPLES = 100  # at most this many samples in a window (one every window / SAMPLES seconds)


@dataclass
class FailedShard:
    shard_id: str
    attempts: int
    error: str


@dataclass(frozen=True)
class Rates:
    """Rates over the last `window_seconds` (up to `Progress.window`) and the ETA; None: not known yet."""

    window_seconds: float
    frames_per_second: float | None
    shards_per_minute: float | None
    eta_seconds: float | None


class _Bar(tqdm):
    monitor_interval = 0  # no monitor thread: Progress.tick redraws the bar


@dataclass
class Progress:
    """Counts of one run of a job and how they are shown; `skipped` shards were done before it.

    `clock` (monotonic seconds) is there for tests."""

    output_uri: str
    run_id: str
    config_hash: str
    total: int
    skipped: int
    out: TextIO = field(default_factory=lambda: sys.stderr)
    log_every: float = 30.0
    window: float = RATE_WINDOW
    clock: Callable[[], float] = time.monotonic
    done: int = 0
    running: int = 0
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(COUNTS, 0))
    partial: dict[str, dict[str, int]] = field(default_factory=dict)  # worker -> its shard in hand
    failed: list[FailedShard] = field(default_factory=list)
    failed_videos: list[dict[str, str]] = field(default_factory=list)
    workers: dict[str, int] = field(default_factory=dict)  # requested, running, lost, restarts (the scheduler's)
    started: float = field(init=False)  # clock() at creation
    started_at: str = field(default_factory=lambda: _now())
    # (clock, frames, shards done or failed) since the first shard reached a worker, the oldest one at
    # or before the start of the window
    _samples: collections.deque[tuple[float, int, int]] = field(default_factory=collections.deque, repr=False)
    _last_shown: float | None = None  # None: show at the next tick
    _last_saved: float | None = None
    _dirty: bool = False  # shards finished or failed since progress.json was last written
    _bar: tqdm | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.started = self.clock()

    @property
    def tty(self) -> bool:
        isatty = getattr(self.out, "isatty", None)
        return bool(isatty and isatty())

    @property
    def to_run(self) -> int:
        """Shards this run has to do."""
        return max(self.total - self.skipped, 0)

    @property
    def settled(self) -> int:
        """Shards of this run done or failed for good."""
        return self.done + len(self.failed)

    def percent(self) -> float:
        """Shards done of the shards this run has to do."""
        return 100.0 * self.done / self.to_run if self.to_run else 100.0

    def totals(self) -> dict[str, int]:
        """Committed counts plus the in-flight ones."""
        return {k: self.counts[k] + sum(p.get(k, 0) for p in self.partial.values()) for k in COUNTS}

    def elapsed(self, now: float | None = None) -> float:
        return (self.clock() if now is None else now) - self.started

    def fps(self) -> float:
        """Frames per second since the run started (the summary's figure); `rates()` has the recent one."""
        return self.totals()["frames"] / max(self.elapsed(), 1e-9)

    def worker_update(self, worker: str, tally: dict[str, Any]) -> None:
        self.partial[worker] = {k: int(tally.get(k, 0)) for k in COUNTS}
        self._sample()

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
        self._sample()
        if not self.tty:
            self._write(self._shard_line(result))
        else:
            self._last_shown = None  # redraw the bar at the next tick
        self._dirty = True

    def units_added(self, count: int, why: str) -> None:
        """`count` more units of work to do (a long video's chunks and stitch), said on a line of its own."""
        self.total += count
        if self._bar is not None:
            self._bar.total = self.to_run
        self.message(why)

    def shard_lost(self, worker: str) -> None:
        """The worker's shard in hand is gone (it died or failed); its partial counts with it."""
        self.partial.pop(worker, None)

    def shard_failed(self, shard_id: str, attempts: int, error: str) -> None:
        self.failed.append(FailedShard(shard_id, attempts, error))
        self._sample()
        self.message(f"shard {shard_id} failed after {attempts} attempt(s): {error}")
        self._dirty = True

    def message(self, text: str) -> None:
        """A line of its own, above the bar on a terminal."""
        if self._bar is not None:
            self._bar.write(text, file=self.out)  # clears the bar, writes, redraws the bar below
        else:
            self._write(text)
        if self.tty:
            self._last_shown = None

    def tick(self) -> None:
        """Redraw the bar (terminal, twice a second) or log a line (every `log_every` s); rewrite
        progress.json when shards moved and `SAVE_EVERY` seconds have passed."""
        now = self.clock()
        self._sample(now)
        saved = self._last_saved
        heartbeat = now - (self.started if saved is None else saved) >= HEARTBEAT  # the run still holds the root
        if heartbeat or (self._dirty and (saved is None or now - saved >= SAVE_EVERY)):
            self.save("running")
        every = REDRAW if self.tty else self.log_every
        if self._last_shown is not None and now - self._last_shown < every:
            return
        self._last_shown = now
        if self.tty:
            self._draw(now)
        else:
            self._write(f"[{_clock(self.elapsed(now))}] {self.line(now)}")

    def close_line(self) -> None:
        """Leave the bar, as it stands, on its own line (the end of the run)."""
        if self._bar is not None:
            self._draw(self.clock())
            self._bar.close()
            self._bar = None

    def rates(self, now: float | None = None) -> Rates:
        """Frames/s and shards/min over the recent window, and the ETA of this run's shards."""
        now = self.clock() if now is None else now
        self._sample(now)
        left = self.to_run - self.settled
        if not self._samples or now <= self._samples[0][0]:
            return Rates(0.0, None, None, 0.0 if left <= 0 else None)
        since, frames, settled = self._samples[0]
        span = now - since
        fps = max(self.totals()["frames"] - frames, 0) / span
        per_second = max(self.settled - settled, 0) / span
        eta: float | None = None
        if left <= 0:
            eta = 0.0
        elif self.done and self.counts["frames"] and fps > 0:
            frames_left = left * self.counts["frames"] / self.done - sum(p["frames"] for p in self.partial.values())
            eta = max(frames_left, 0.0) / fps
        elif per_second > 0:
            eta = left / per_second
        return Rates(span, fps, per_second * 60, eta)

    def line(self, now: float | None = None) -> str:
        """Shards and %, ETA, recent rates, then the counts."""
        now = self.clock() if now is None else now
        return " | ".join([self._shards(), *self._status(now)])

    def snapshot(self, state: str) -> dict[str, Any]:
        t = self.totals()
        rates = self.rates()
        eta = None if state == "interrupted" else rates.eta_seconds
        return {
            "state": state,
            "run_id": self.run_id,
            **holder(),
            "config_hash": self.config_hash,
            "started_at": self.started_at,
            "updated_at": _now(),
            "elapsed_seconds": round(self.elapsed(), 3),
            "percent": round(self.percent(), 2),
            "shards": {
                "total": self.total,
                "skipped": self.skipped,
                "done": self.done,
                "failed": len(self.failed),
                "running": self.running,
                "pending": self.to_run - self.settled - self.running,
            },
            "videos": {"ok": t["videos"] - t["videos_error"], "failed": t["videos_error"]},
            "frames": t["frames"],
            "frames_per_second": round(self.fps(), 3),
            "recent": {
                "window_seconds": round(rates.window_seconds, 3),
                "frames_per_second": _round(rates.frames_per_second),
                "shards_per_minute": _round(rates.shards_per_minute),
            },
            "eta_seconds": _round(eta, 1),
            "eta_at": None if eta is None else _now(eta),
            "masklets": {"total": t["masklets"], "kept": t["masklets_kept"]},
            "workers": self.workers,
            "failed_shards": [f.__dict__ for f in self.failed[:MAX_LISTED_SHARDS]],
            "failed_videos": self.failed_videos,
        }

    def save(self, state: str) -> None:
        self._dirty, self._last_saved = False, self.clock()
        try:
            layout.write_json(self.output_uri, PROGRESS_FILE, self.snapshot(state))
        except OSError as exc:
            log.warning("could not update %s: %s", storage.join(self.output_uri, PROGRESS_FILE), exc)

    def _sample(self, now: float | None = None) -> None:
        """Note where the counts stand; the first note is when the first shard reaches a worker."""
        now = self.clock() if now is None else now
        samples = self._samples
        if not samples:
            if not (self.running or self.partial or self.settled):
                return  # no worker has a shard yet: loading models is not work done
            samples.append((now, 0, 0))
        elif now - samples[-1][0] >= self.window / SAMPLES:
            samples.append((now, self.totals()["frames"], self.settled))
        elif now == samples[-1][0] and len(samples) > 1:  # the same moment: where the counts stand after it
            samples[-1] = (now, self.totals()["frames"], self.settled)
        while len(samples) >= 2 and samples[1][0] <= now - self.window:
            samples.popleft()

    def _shards(self) -> str:
        return ", ".join([f"shards {self.done}/{self.to_run} ({self.percent():.0f}%)", *self._shards_apart()])

    def _shards_apart(self) -> list[str]:
        """The shards not in `done/to_run`: failed ones, and those an earlier run did."""
        return ([f"{len(self.failed)} failed"] if self.failed else []) + (
            [f"{self.skipped} skipped (done before)"] if self.skipped else []
        )

    def _status(self, now: float) -> list[str]:
        t = self.totals()
        rates = self.rates(now)
        videos = f"videos {t['videos'] - t['videos_error']} ok"
        if t["videos_error"]:
            videos += f", {t['videos_error']} failed"
        if rates.frames_per_second is None or rates.shards_per_minute is None:
            rate = "rates unknown"
        else:
            rate = (
                f"{rates.frames_per_second:.1f} frames/s, {_per_shard(rates.shards_per_minute)} "
                f"(last {_span(rates.window_seconds)})"
            )
        eta = "ETA unknown" if rates.eta_seconds is None else f"ETA {_clock(rates.eta_seconds)}"
        return [eta, rate, f"{t['frames']} frames", videos, f"masklets {t['masklets_kept']} kept of {t['masklets']}"]

    def _shard_line(self, result: ShardResult) -> str:
        c = result.counts
        videos = f"{c['videos']} videos" + (f" ({c['videos_error']} failed)" if c["videos_error"] else "")
        wall = result.seconds.get("wall")
        took = f" in {wall:.1f} s" if wall is not None else ""
        return (
            f"[{_clock(self.elapsed())}] shard {result.shard_id} done: {videos}, {c['frames_processed']} frames"
            f"{took} ({self.done}/{self.to_run}, {self.percent():.0f}%)"
        )

    def _draw(self, now: float) -> None:
        apart = ", ".join(self._shards_apart())
        # tqdm puts ", " between "3/8 shards" and this
        postfix = " | ".join([*([apart] if apart else []), *self._status(now), _clock(self.elapsed(now))])
        if self._bar is None:
            self._bar = _Bar(
                total=self.to_run,
                initial=self.done,
                file=self.out,
                position=0,
                leave=True,
                dynamic_ncols=True,
                unit="shard",
                bar_format="{percentage:3.0f}%|{bar:20}| {n_fmt}/{total_fmt} shards{postfix}",
                postfix=postfix,
            )
        else:
            self._bar.n = self.done
            self._bar.set_postfix_str(postfix, refresh=False)
            self._bar.refresh()

    def _write(self, text: str) -> None:
        self.out.write(text + "\n")
        self.out.flush()


def _clock(seconds: float) -> str:
    return str(datetime.timedelta(seconds=int(seconds)))


def _span(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} min"


def _per_shard(per_minute: float) -> str:
    digits = 0 if per_minute >= 10 or per_minute == 0 else 1 if per_minute >= 1 else 2
    return f"{per_minute:.{digits}f} shards/min"


def _round(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(value, digits)


def _now(after: float = 0.0) -> str:
    moment = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=after)
    return moment.isoformat(timespec="seconds")
