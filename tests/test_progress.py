"""What a person watching a job sees (masklet.jobs.progress), on a fake clock: no Ray, no model."""

from __future__ import annotations

import datetime
import io
import json
from pathlib import Path

import pytest

from masklet.jobs.progress import MAX_LISTED_SHARDS, SAVE_EVERY, Progress, Rates
from masklet.jobs.shard import ShardResult


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _result(shard: str, frames: int, worker: str = "w0", failed: int = 0) -> ShardResult:
    counts = {"videos": 2, "videos_error": failed, "frames_processed": frames, "masklets": 3, "masklets_kept": 2}
    errors = [("bad", "VideoDecodeError", "truncated")] * failed
    return ShardResult(shard, counts, {"wall": 12.5}, errors, worker=worker)


def _progress(tmp_path: Path, clock: _Clock, out: io.StringIO | None = None, **kwargs: object) -> Progress:
    kwargs = {"total": 5, "skipped": 1, **kwargs}
    return Progress(str(tmp_path), "run", "hash", out=out or io.StringIO(), clock=clock, **kwargs)  # type: ignore[arg-type]


def _work(progress: Progress, clock: _Clock, until: float, fps: float, start_frames: int = 0) -> None:
    """The worker w0 reports every 10 s, at `fps`, until `until`."""
    t0 = clock.now
    while clock.now < until:
        clock.now += 10
        progress.worker_update("w0", {"frames": start_frames + round(fps * (clock.now - t0))})
        progress.tick()


def test_rates_are_over_the_recent_window_and_start_when_a_worker_has_a_shard(tmp_path: Path) -> None:
    clock = _Clock()
    progress = _progress(tmp_path, clock, window=300.0)
    clock.now = 100.0  # Ray starting, workers loading the model: no work done, nothing measured
    progress.tick()
    assert progress.rates() == Rates(0.0, None, None, None)
    assert "ETA unknown | rates unknown" in progress.line()

    progress.running = 1  # the first shard reaches a worker: the rates' clock starts
    progress.tick()
    _work(progress, clock, until=400.0, fps=10.0)
    rates = progress.rates()
    assert (rates.window_seconds, rates.frames_per_second, rates.shards_per_minute) == (300.0, 10.0, 0.0)
    assert rates.eta_seconds is None  # no shard finished: the work left is not known yet
    assert "ETA unknown | 10.0 frames/s, 0 shards/min (last 5 min) | 3000 frames" in progress.line()

    progress.shard_done(_result("s0", frames=3000))
    # 3 shards left of 3000 frames each, at 10 frames/s
    assert progress.rates() == Rates(300.0, 10.0, 0.2, 900.0)
    assert progress.line().startswith("shards 1/4 (25%), 1 skipped (done before) | ETA 0:15:00 | 10.0 frames/s")

    _work(progress, clock, until=700.0, fps=5.0)  # slower: the window forgets the first 5 minutes
    rates = progress.rates()
    assert (rates.window_seconds, rates.frames_per_second, rates.shards_per_minute) == (300.0, 5.0, 0.0)
    assert rates.eta_seconds == (3 * 3000 - 1500) / 5.0  # the shard in hand is half done
    assert progress.fps() == pytest.approx(4500 / 700)  # since start-up, as the summary has it
    assert "ETA 0:25:00 | 5.0 frames/s, 0 shards/min (last 5 min) | 4500 frames" in progress.line()


def test_eta_falls_back_on_shards_and_is_zero_when_every_shard_is_settled(tmp_path: Path) -> None:
    clock = _Clock()
    progress = _progress(tmp_path, clock, total=3, skipped=0)
    progress.running = 2
    progress.tick()
    clock.now = 60.0
    progress.shard_done(_result("s0", frames=0))  # a pipeline that counts no frames: shards only
    assert progress.rates() == Rates(60.0, 0.0, 1.0, 120.0)
    clock.now = 120.0
    progress.shard_failed("s1", 3, "worker w1 died")  # settled too: the ETA counts shards left to try
    assert progress.rates().eta_seconds == 60.0  # 2 shards settled in 2 minutes, 1 left
    progress.shard_done(_result("s2", frames=0))
    assert progress.rates().eta_seconds == 0.0 and progress.percent() == pytest.approx(200 / 3)
    assert progress.line().startswith("shards 2/3 (67%), 1 failed | ETA 0:00:00 | 0.0 frames/s, 1.5 shards/min")


def test_log_lines_off_a_terminal_one_per_shard_no_control_codes(tmp_path: Path) -> None:
    clock, log = _Clock(), io.StringIO()
    progress = _progress(tmp_path, clock, out=log, log_every=60.0)
    progress.tick()
    progress.tick()  # within log_every: no second line
    assert log.getvalue().splitlines() == [
        "[0:00:00] shards 0/4 (0%), 1 skipped (done before) | ETA unknown | rates unknown | 0 frames"
        " | videos 0 ok | masklets 0 kept of 0"
    ]
    progress.running = 2
    progress.tick()
    for shard in range(4):
        _work(progress, clock, until=clock.now + 100, fps=4.0)
        progress.shard_done(_result(f"s{shard}", frames=400, failed=shard % 2))
    progress.message("worker w0 ready")
    lines = log.getvalue().splitlines()
    assert "\r" not in log.getvalue() and "\x1b" not in log.getvalue()
    done = [line for line in lines if " done: " in line]
    assert done == [
        "[0:01:40] shard s0 done: 2 videos, 400 frames in 12.5 s (1/4, 25%)",
        "[0:03:20] shard s1 done: 2 videos (1 failed), 400 frames in 12.5 s (2/4, 50%)",
        "[0:05:00] shard s2 done: 2 videos, 400 frames in 12.5 s (3/4, 75%)",
        "[0:06:40] shard s3 done: 2 videos (1 failed), 400 frames in 12.5 s (4/4, 100%)",
    ]
    periodic = [line for line in lines if " | " in line]
    assert [line[:9] for line in periodic] == [f"[0:0{m}:00]" for m in range(7)]  # every log_every
    assert periodic[3] == (
        "[0:03:00] shards 1/4 (25%), 1 skipped (done before) | ETA 0:03:40 | 4.0 frames/s, 0.33 shards/min"
        " (last 3 min) | 720 frames | videos 2 ok | masklets 2 kept of 3"
    )
    assert lines[-1] == "worker w0 ready"


def test_a_terminal_gets_a_tqdm_bar_with_messages_above_it(tmp_path: Path) -> None:
    clock, terminal = _Clock(), _Terminal()
    progress = _progress(tmp_path, clock, out=terminal)
    progress.running = 1
    progress.tick()
    first = terminal.getvalue()
    assert first.startswith("\r  0%|") and "| 0/4 shards, 1 skipped (done before) | ETA unknown" in first
    assert "\n" not in first
    clock.now = 0.2
    progress.tick()  # redrawn twice a second, not more
    assert terminal.getvalue() == first
    _work(progress, clock, until=100.0, fps=6.0)
    progress.shard_done(_result("s0", frames=600))
    assert " done: " not in terminal.getvalue()  # no line per shard on a terminal: the bar moves
    progress.tick()
    assert terminal.getvalue().endswith(
        "| 1/4 shards, 1 skipped (done before) | ETA 0:05:00 | 6.0 frames/s, "
        "0.60 shards/min (last 100 s) | 600 frames | videos 2 ok "
        "| masklets 2 kept of 3 | 0:01:40"
    )
    assert "\r 25%|#####" in terminal.getvalue()

    progress.message("shard s1 attempt 1 failed: worker w1 died; retrying")
    message = terminal.getvalue().rsplit("\n", 1)
    assert message[0].endswith("\rshard s1 attempt 1 failed: worker w1 died; retrying")  # the bar cleared first
    assert message[1].startswith("\r 25%|")  # and redrawn below
    progress.close_line()
    assert terminal.getvalue().endswith("| masklets 2 kept of 3 | 0:01:40\n")


def test_progress_json_has_percent_recent_rates_and_eta(tmp_path: Path) -> None:
    clock = _Clock()
    progress = _progress(tmp_path, clock, total=4, skipped=0, window=60.0)
    progress.save("running")
    saved = json.loads((tmp_path / "progress.json").read_text())
    assert (saved["percent"], saved["eta_seconds"], saved["eta_at"]) == (0.0, None, None)
    assert saved["recent"] == {"window_seconds": 0.0, "frames_per_second": None, "shards_per_minute": None}

    progress.running = 1
    progress.tick()
    _work(progress, clock, until=120.0, fps=2.0)
    progress.shard_done(_result("s0", frames=240, failed=1))
    progress.save("running")
    saved = json.loads((tmp_path / "progress.json").read_text())
    keys = ["state", "run_id", "host", "pid", "config_hash", "started_at", "updated_at", "elapsed_seconds", "percent"]
    keys += ["shards"]
    keys += ["videos", "frames", "frames_per_second", "recent", "eta_seconds", "eta_at", "masklets", "workers"]
    assert list(saved) == [*keys, "failed_shards", "failed_videos"]
    assert (saved["state"], saved["elapsed_seconds"], saved["percent"]) == ("running", 120.0, 25.0)
    assert saved["shards"] == {"total": 4, "skipped": 0, "done": 1, "failed": 0, "running": 1, "pending": 2}
    assert saved["recent"] == {"window_seconds": 60.0, "frames_per_second": 2.0, "shards_per_minute": 1.0}
    assert saved["eta_seconds"] == 360.0 and saved["frames_per_second"] == 2.0
    eta_at = datetime.datetime.fromisoformat(saved["eta_at"]) - datetime.datetime.fromisoformat(saved["updated_at"])
    assert abs(eta_at.total_seconds() - 360) <= 1
    assert saved["failed_videos"] == [{"shard_id": "s0", "video_key": "bad", "error": "VideoDecodeError: truncated"}]

    progress.save("interrupted")  # no longer running: no ETA
    assert json.loads((tmp_path / "progress.json").read_text())["eta_seconds"] is None
    for shard in ("s1", "s2", "s3"):
        progress.shard_done(_result(shard, frames=240))
    progress.save("finished")
    saved = json.loads((tmp_path / "progress.json").read_text())
    assert (saved["state"], saved["percent"], saved["eta_seconds"]) == ("finished", 100.0, 0.0)


def test_progress_json_is_rewritten_on_a_timer_with_its_lists_capped(tmp_path: Path) -> None:
    """A job of many failing shards must not rewrite a growing file per shard (O(N^2) bytes)."""
    clock = _Clock()
    progress = _progress(tmp_path, clock, total=3000, skipped=0, window=60.0)
    path = tmp_path / "progress.json"
    for k in range(MAX_LISTED_SHARDS + 500):
        progress.shard_failed(f"s{k}", 3, "worker died")
        progress.tick()
        if k == 0:
            first = path.stat().st_mtime_ns
    assert json.loads(path.read_text())["shards"]["failed"] == 1  # one save: the clock has not moved
    assert path.stat().st_mtime_ns == first
    clock.now += SAVE_EVERY
    progress.tick()
    saved = json.loads(path.read_text())
    assert saved["shards"]["failed"] == MAX_LISTED_SHARDS + 500
    assert len(saved["failed_shards"]) == MAX_LISTED_SHARDS
