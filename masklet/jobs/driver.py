"""`masklet run`: plan a job, hand its shards to worker actors one at a time, retry, summarise.

Everything that can be checked without Ray is checked first (config, inputs, output root,
job.json, checkpoint, pipeline factory), so a mistake costs seconds and exits 2. Shards whose
`_done` marker exists are skipped (one listing). The rest form a queue: a free worker gets the
next shard, so a slow shard never holds up the others. A shard whose attempt fails (the worker
raised, or died and was replaced) is retried up to `workers.max_attempts` times, then recorded as
failed while the job goes on.
"""

from __future__ import annotations

import os
import sys
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import Any, TextIO

import ray
from ray.exceptions import RayActorError, RayError, RayTaskError

from masklet.config import JobConfig
from masklet.io import storage
from masklet.io.checkpoint_files import fetch
from masklet.io.layout import JOB_FILE, PROGRESS_FILE, SHARD_DIRS
from masklet.io.sinks import list_done
from masklet.io.sources import Shard, list_shards
from masklet.jobs.cluster import Cluster, Layout, connect, plan_layout
from masklet.jobs.job_record import JobRecord, claim_output
from masklet.jobs.progress import FailedShard, Progress
from masklet.jobs.worker import ShardWorker
from masklet.pipelines.contract import factory_path, load_factory

POLL_SECONDS = 1.0


class JobSetupError(ValueError):
    """The job cannot start as configured; nothing was processed."""


@dataclass
class JobPlan:
    """What a run will do, known before Ray starts."""

    config: JobConfig
    shards: list[Shard]
    done: set[str]
    record: JobRecord
    claim: str  # "new", "resume" or "forced" (see job_record.claim_output)
    factory: str

    @property
    def todo(self) -> list[Shard]:
        return [s for s in self.shards if s.id not in self.done]


def plan_job(config: JobConfig, *, force: bool = False) -> JobPlan:
    """Check the job end to end without running it, then record it in job.json.

    Raises ConfigError / JobSetupError / JobConflict (ValueErrors) or OSError for a problem a
    person must fix first.
    """
    if config.output.write_video and config.source.format == "frames":
        raise JobSetupError("output.write_video needs encoded videos; frame folders (source.format=frames) have none")
    factory = factory_path(config)
    load_factory(factory)
    storage.configure(config.storage)
    shards = list_shards(config.source)
    storage.ensure_writable_dir(config.output.uri)
    done = list_done(config.output.uri) & {s.id for s in shards}
    sha256 = config.model.sha256
    if config.model.weights and sha256 is None:
        sha256 = fetch(config.model.weights).sha256
    record = JobRecord.for_config(config, sha256)
    claim = claim_output(config.output.uri, record, force=force)
    return JobPlan(config, shards, done, record, claim, factory)


@dataclass
class JobSummary:
    """The outcome of one run; `exit_code` is what `masklet run` exits with."""

    output_uri: str
    total: int
    skipped: int
    done: int
    failed: list[FailedShard] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    failed_videos: list[dict[str, str]] = field(default_factory=list)
    seconds: float = 0.0
    frames_per_second: float = 0.0
    setup_error: str | None = None

    @property
    def exit_code(self) -> int:
        if self.setup_error and not self.done:
            return 2
        return 1 if self.failed or self.counts.get("videos_error") else 0


def run_job(
    config: JobConfig,
    *,
    force: bool = False,
    out: TextIO | None = None,
    err: TextIO | None = None,
    log_every: float = 30.0,
) -> JobSummary:
    """Plan, print the plan (to `out`, default stdout), run the pending shards on Ray with progress
    on `err` (default stderr), print and return the summary."""
    out, err = out or sys.stdout, err or sys.stderr
    plan = plan_job(config, force=force)
    _print_plan(plan, out)
    todo = plan.todo
    if not todo:
        print(f"nothing to do: all {len(plan.shards)} shards are done in {config.output.uri}", file=out)
        return JobSummary(config.output.uri, len(plan.shards), len(plan.done), 0)
    run_id = uuid.uuid4().hex[:12]
    with connect(config.ray) as cluster:
        layout = plan_layout(config.workers, cluster, len(todo))
        _print_cluster(cluster, layout, out)
        progress = Progress(
            config.output.uri, run_id, plan.record.config_hash, len(plan.shards), len(plan.done), err, log_every
        )
        scheduler = _Scheduler(plan, layout, progress, run_id)
        try:
            scheduler.run(todo)
        except BaseException:
            progress.close_line()
            progress.save("interrupted")
            raise
        finally:
            scheduler.stop()
        progress.close_line()
        progress.save("failed" if progress.failed else "finished")
    summary = JobSummary(
        config.output.uri,
        len(plan.shards),
        len(plan.done),
        progress.done,
        progress.failed,
        progress.totals(),
        progress.failed_videos,
        progress.elapsed(),
        progress.fps(),
        scheduler.setup_error,
    )
    print_summary(summary, out)
    return summary


@dataclass
class _Slot:
    """One worker position; its actor is replaced when it dies."""

    index: int
    generation: int = 0
    actor: Any = None
    ready: bool = False
    task: tuple[Shard, int] | None = None  # (shard, attempt) in hand

    @property
    def name(self) -> str:
        return f"w{self.index}" + (f".{self.generation}" if self.generation else "")


class _Scheduler:
    """The dynamic queue: ray.wait on readiness, shard and progress calls, one event at a time."""

    def __init__(self, plan: JobPlan, layout: Layout, progress: Progress, run_id: str) -> None:
        self.plan, self.layout, self.progress, self.run_id = plan, layout, progress, run_id
        self.max_attempts = plan.config.workers.max_attempts
        self.actor_class = ray.remote(ShardWorker).options(
            num_cpus=layout.num_cpus,
            num_gpus=layout.num_gpus,
            max_restarts=0,
            max_concurrency=2,
            runtime_env=plan.config.ray.runtime_env or None,
        )
        self.slots = [_Slot(i) for i in range(layout.count)]
        self.queue: deque[tuple[Shard, int]] = deque()
        self.calls: dict[Any, tuple[str, _Slot]] = {}  # ref -> ("ready" | "shard", slot)
        self.polls: dict[Any, _Slot] = {}
        self.setup_error: str | None = None

    def run(self, shards: list[Shard]) -> None:
        self.queue.extend((shard, 1) for shard in shards)
        for slot in self.slots:
            self._start(slot)
        last_poll = time.monotonic()
        while self.queue or self.calls:
            self._dispatch()
            if not self.calls:
                break
            refs = [*self.calls, *self.polls]
            ready, _ = ray.wait(refs, num_returns=1, timeout=POLL_SECONDS)
            for ref in ready:
                if ref in self.polls:
                    self._polled(ref)
                else:
                    self._handle(ref)
            if time.monotonic() - last_poll >= POLL_SECONDS:
                last_poll = time.monotonic()
                self._poll()
            self.progress.tick()
        for shard, attempt in self.queue:
            self.progress.shard_failed(shard.id, attempt - 1, f"no worker could start: {self.setup_error}")
        self.queue.clear()

    def stop(self) -> None:
        for slot in self.slots:
            if slot.actor is not None:
                ray.kill(slot.actor)
                slot.actor = None

    def _start(self, slot: _Slot) -> None:
        config = self.plan.config
        slot.actor = self.actor_class.remote(
            config,
            name=slot.name,
            job_hash=self.plan.record.config_hash,
            checkpoint_sha256=self.plan.record.checkpoint_sha256,
            run_id=self.run_id,
        )
        slot.ready = False
        self.calls[slot.actor.ready.remote()] = ("ready", slot)

    def _dispatch(self) -> None:
        for slot in self.slots:
            if slot.actor is not None and slot.ready and slot.task is None and self.queue:
                slot.task = self.queue.popleft()
                shard, attempt = slot.task
                self.calls[slot.actor.process.remote(shard, attempt)] = ("shard", slot)
        self._count_running()

    def _count_running(self) -> None:
        self.progress.running = sum(slot.task is not None for slot in self.slots)

    def _handle(self, ref: Any) -> None:
        kind, slot = self.calls.pop(ref)
        try:
            value = ray.get(ref)
        except RayError as exc:
            self._failed(kind, slot, exc)
            return
        if kind == "ready":
            slot.ready = True
            self.progress.message(
                f"worker {slot.name} ready on {value['host']} ({value['device']}, loaded in {value['load_seconds']}s)"
            )
        else:
            slot.task = None
            self._count_running()
            self.progress.shard_done(value)

    def _failed(self, kind: str, slot: _Slot, exc: RayError) -> None:
        reason = _reason(exc)
        if kind == "ready":
            self.setup_error = reason
            self.progress.message(f"worker {slot.name} could not start: {reason}")
            slot.actor = None
            return
        assert slot.task is not None
        shard, attempt = slot.task
        slot.task = None
        self._count_running()
        self.progress.shard_lost(slot.name)
        if isinstance(exc, RayActorError) or not isinstance(exc, RayTaskError):  # not an exception of ours
            reason = f"worker {slot.name} died ({reason})"
            ray.kill(slot.actor)  # in case it lingers: its replacement takes its resources
            slot.generation += 1
            self._start(slot)
        if attempt < self.max_attempts:
            self.progress.message(f"shard {shard.id} attempt {attempt} failed: {reason}; retrying")
            self.queue.appendleft((shard, attempt + 1))
        else:
            self.progress.shard_failed(shard.id, attempt, reason)

    def _poll(self) -> None:
        for slot in self.slots:
            if slot.task is not None and slot.actor is not None and slot not in self.polls.values():
                self.polls[slot.actor.poll.remote()] = slot

    def _polled(self, ref: Any) -> None:
        slot = self.polls.pop(ref)
        try:
            tally = ray.get(ref)
        except RayError:
            return  # the shard call reports what happened to the worker
        if slot.task is not None and tally.get("shard_id") == slot.task[0].id:
            self.progress.worker_update(slot.name, tally)


def _reason(exc: RayError) -> str:
    """One line on why a call failed: the worker's own exception, or how the actor died."""
    if isinstance(exc, RayTaskError) and not isinstance(exc, RayActorError):
        cause = exc.cause if isinstance(exc.cause, BaseException) else exc
        return f"{type(cause).__name__}: {str(cause).strip().splitlines()[-1] if str(cause).strip() else ''}"
    lines = str(getattr(exc, "error_msg", "") or exc).strip().splitlines()
    if not lines:
        return type(exc).__name__
    if "creation task" in lines[0]:  # __init__ raised: the traceback's last line is the exception
        return lines[-1].strip()
    return lines[0]


def _print_plan(plan: JobPlan, out: TextIO) -> None:
    config = plan.config
    claim = {
        "new": "new job",
        "resume": "resuming",
        "forced": "--force: another job's outputs kept, job.json now records this one",
    }
    model = config.model
    if model.init == "random":
        weights = "UNTRAINED seeded random weights (model.init=random): the labels are noise, for tests only"
    else:
        weights = f"checkpoint {model.weights} (sha256 {str(plan.record.checkpoint_sha256)[:12]})"
    print(f"masklet run: job {plan.record.config_hash[:12]} ({claim[plan.claim]})", file=out)
    source, output = _shown(config.source.uri), _shown(config.output.uri)
    print(f"  input:    {len(plan.shards)} shard(s) ({config.source.format}) at {source}", file=out)
    print(f"  output:   {output}: {len(plan.done)} shard(s) already done, {len(plan.todo)} to run", file=out)
    print(f"  model:    {model.name}, {weights}", file=out)
    print(f"  pipeline: {config.pipeline.mode} ({plan.factory})", file=out)


def _shown(uri: str) -> str:
    """A URI as the plan shows it: a relative path with the directory it is relative to."""
    return f"{uri} (in {os.getcwd()})" if storage.is_relative_path(uri) else uri


def _print_cluster(cluster: Cluster, layout: Layout, out: TextIO) -> None:
    resources = ", ".join(f"{v:g} {k}" for k, v in sorted(cluster.resources.items())) or "no resources yet"
    dashboard = f", dashboard {cluster.dashboard_url}" if cluster.dashboard_url else ""
    print(f"  ray:      {cluster.description} ({resources}){dashboard}", file=out)
    print(f"  workers:  {layout.describe()}", file=out)
    out.flush()


def print_summary(summary: JobSummary, out: TextIO, max_listed: int = 20) -> None:
    c = summary.counts
    uri = summary.output_uri
    print(
        f"masklet run: {'finished' if summary.exit_code == 0 else 'finished with failures'} in {summary.seconds:.1f}s",
        file=out,
    )
    print(
        f"  shards:   {summary.done} done, {len(summary.failed)} failed, {summary.skipped} skipped (done before), "
        f"{summary.total} in all",
        file=out,
    )
    print(f"  videos:   {c['videos'] - c['videos_error']} ok, {c['videos_error']} failed", file=out)
    print(f"  frames:   {c['frames']} annotated frames, {summary.frames_per_second:.1f} frames/s", file=out)
    print(f"  masklets: {c['masklets_kept']} kept of {c['masklets']}", file=out)
    print(
        f"  outputs:  {', '.join(storage.join(uri, SHARD_DIRS[k]) for k in ('masklets', 'videos', 'wds'))} "
        f"({PROGRESS_FILE}, {JOB_FILE})",
        file=out,
    )
    if summary.setup_error and not summary.done:
        print(f"  no worker could start: {summary.setup_error}", file=out)
    if summary.failed:
        print("  failed shards (rerun the same command to retry them):", file=out)
        for f in summary.failed:
            print(f"    {f.shard_id} after {f.attempts} attempt(s): {f.error}", file=out)
    if summary.failed_videos:
        print(f"  failed videos ({c['videos_error']}; error rows in videos/*.parquet):", file=out)
        for v in summary.failed_videos[:max_listed]:
            print(f"    {v['shard_id']}/{v['video_key']}: {v['error']}", file=out)
        if c["videos_error"] > max_listed:
            print(f"    ... and {c['videos_error'] - max_listed} more", file=out)
