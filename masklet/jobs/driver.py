"""`masklet run`: plan a job, hand its shards to worker actors one at a time, retry, summarise.

Everything that can be checked without Ray is checked first (config, inputs, output root,
job.json, checkpoint, pipeline factory), so a mistake costs seconds and exits 2. Shards whose
`_done` marker exists are skipped (one listing). The rest form a queue: a free worker gets the
next shard, so a slow shard never holds up the others. A shard whose attempt fails (the worker
raised, or died and was replaced) is retried up to `workers.max_attempts` times, then recorded as
failed while the job goes on.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, TextIO

import ray
from ray.exceptions import RayActorError, RayError, RayTaskError

from masklet.config import JobConfig
from masklet.io import storage
from masklet.io.layout import JOB_FILE, MANIFEST_DIR, PROGRESS_FILE, SHARD_DIRS
from masklet.io.sinks import list_done
from masklet.io.sources import Shard, list_shards
from masklet.jobs.cluster import Cluster, Layout, connect, describe_cluster, plan_layout, reachable
from masklet.jobs.job_record import JobRecord, claim_output
from masklet.jobs.progress import FailedShard, Progress
from masklet.jobs.run_lease import take_over
from masklet.jobs.scheduler import AttemptFailed, Limits, Scheduler, WorkerLost
from masklet.jobs.split import ChunkUnit, SplitQueue, StitchUnit, WorkUnit, pending_units
from masklet.jobs.worker import ShardWorker
from masklet.model.device import resolve_device
from masklet.pipelines.contract import factory_path, load_factory
from masklet.pipelines.model_loading import check_weights


class JobSetupError(ValueError):
    """The job cannot start as configured; nothing was processed."""


class Terminated(KeyboardInterrupt):
    """SIGTERM (what Kubernetes, Slurm and `ray job stop` send): stop as on Ctrl-C, progress saved."""


@contextlib.contextmanager
def _stop_on_sigterm() -> Iterator[None]:
    """SIGTERM raises `Terminated` in the driver while the job runs. Set after `ray.init`, which makes
    SIGTERM a bare `sys.exit(15)`; restored after."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []

    def stop(signum: int, frame: object) -> None:
        received.append(signum)
        raise Terminated("SIGTERM")

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    except KeyboardInterrupt as exc:
        if received and not isinstance(exc, Terminated):  # raised inside a Ray call, which re-raises it plain
            raise Terminated("SIGTERM") from exc
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)


@dataclass
class JobPlan:
    """What a run will do, known before Ray starts."""

    config: JobConfig
    shards: list[Shard]
    done: set[str]
    record: JobRecord
    claim: str  # "new", "resume", "replaced" or "forced" (see job_record.claim_output)
    factory: str
    resumed: list[ChunkUnit | StitchUnit] = field(default_factory=list)  # split videos an earlier run left
    waiting: dict[str, set[int]] = field(default_factory=dict)  # per split video, the chunks still to come

    @property
    def todo(self) -> list[WorkUnit]:
        """The units to run: split videos' first (the job's longest tail), then the shards not done."""
        return [*self.resumed, *(s for s in self.shards if s.id not in self.done)]


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
    if config.ray.address is None:
        resolve_device(config.model.device)  # the embedded workers run on this machine: it must have the GPU
    else:
        reachable(config.ray.address)
    storage.ensure_writable_dir(config.output.uri)
    shards = list_shards(config.source, spill=storage.join(config.output.uri, MANIFEST_DIR))
    committed = list_done(config.output.uri)
    done = committed & {s.id for s in shards}
    record = JobRecord.for_config(config, check_weights(config.model, config.model.sha256))
    claim = claim_output(config.output.uri, record, force=force, committed=bool(committed))
    resumed, waiting = pending_units(config.output.uri, committed)
    return JobPlan(config, shards, done, record, claim, factory, resumed, waiting)


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
    workers: dict[str, int] = field(default_factory=dict)  # requested, running, lost, restarts
    below_minimum: str | None = None  # why the job ran with fewer workers than workers.min_count

    @property
    def exit_code(self) -> int:
        if self.setup_error and not self.done:
            return 2
        if self.failed or self.counts.get("videos_error"):
            return 1
        return EXIT_BELOW_MINIMUM if self.below_minimum else 0


EXIT_BELOW_MINIMUM = 3
UNBOUNDED = 2**31  # units of work not known in advance


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
    take_over(config.output.uri, run_id, force=force)
    workers = config.workers
    with connect(config.ray) as cluster, _stop_on_sigterm():
        # a shard may hold a long video that becomes many units: with splitting on, shards do not cap workers
        pending = len(todo) if config.split.chunk_seconds is None else UNBOUNDED
        layout = plan_layout(workers, cluster, pending)
        _print_cluster(cluster, layout, out)
        total = len(plan.shards) + len(plan.resumed)
        progress = Progress(config.output.uri, run_id, plan.record.config_hash, total, len(plan.done), err, log_every)
        limits = Limits(
            max_attempts=workers.max_attempts, shard_timeout=workers.shard_timeout, video_timeout=workers.video_timeout
        )
        backend = RayBackend(plan, layout, run_id, pending)
        follow = SplitQueue(plan.waiting).follow
        scheduler = Scheduler(backend, progress, layout.count, limits, grow=workers.count is None, follow=follow)
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
    below, fewest = None, scheduler.min_live or 0
    if workers.min_count is not None and fewest < workers.min_count:
        below = f"at times only {fewest} worker(s) ran, fewer than workers.min_count={workers.min_count}"
    summary = JobSummary(
        config.output.uri,
        progress.total,
        len(plan.done),
        progress.done,
        progress.failed,
        progress.totals(),
        progress.failed_videos,
        progress.elapsed(),
        progress.fps(),
        scheduler.setup_error,
        scheduler.workers(),
        below,
    )
    print_summary(summary, out)
    return summary


class RayBackend:
    """The scheduler's workers as Ray actors: one `ShardWorker` each, `process` calls queued in the actor
    (concurrency 1) while `ready` and `poll` answer from a group of their own."""

    def __init__(self, plan: JobPlan, layout: Layout, run_id: str, pending: int) -> None:
        config = plan.config
        self.config, self.plan, self.run_id, self.pending = config, plan, run_id, pending
        self.actor_class = ray.remote(concurrency_groups={"control": 2})(ShardWorker).options(
            num_cpus=layout.num_cpus,
            num_gpus=layout.num_gpus,
            max_restarts=0,
            max_concurrency=1,
            runtime_env=config.ray.runtime_env or None,
        )

    def start(self, name: str) -> Any:
        record = self.plan.record
        return self.actor_class.remote(
            self.config,
            name=name,
            job_hash=record.config_hash,
            checkpoint_sha256=record.checkpoint_sha256,
            run_id=self.run_id,
        )

    def ready(self, worker: Any) -> Any:
        return worker.ready.remote()

    def process(self, worker: Any, shard: WorkUnit, attempt: int) -> Any:
        return worker.process.remote(shard, attempt)

    def poll(self, worker: Any) -> Any:
        return worker.poll.remote()

    def wait(self, refs: list[Any], timeout: float) -> list[Any]:
        """Every ref ready now, or within `timeout` the first one to be."""
        if not refs:
            time.sleep(timeout)
            return []
        ready, _ = ray.wait(refs, num_returns=1, timeout=timeout)
        if not ready:
            return []
        ready, _ = ray.wait(refs, num_returns=len(refs), timeout=0)
        return ready

    def get(self, ref: Any) -> Any:
        try:
            return ray.get(ref)
        except RayTaskError as exc:
            if isinstance(exc, RayActorError):
                raise WorkerLost(_reason(exc)) from exc
            raise AttemptFailed(_reason(exc)) from exc
        except RayError as exc:
            raise WorkerLost(_reason(exc)) from exc

    def kill(self, worker: Any) -> None:
        with contextlib.suppress(RayError, ValueError):
            ray.kill(worker)

    def capacity(self) -> int | None:
        """Workers the cluster can hold now (it may have grown)."""
        return plan_layout(self.config.workers, describe_cluster(), self.pending).count


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
        "replaced": "new job; the job.json of one that committed no shard here replaced",
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
    to_run = len(plan.shards) - len(plan.done)
    print(f"  output:   {output}: {len(plan.done)} shard(s) already done, {to_run} to run", file=out)
    if plan.resumed:
        videos = len({unit.split.split_id for unit in plan.resumed})
        print(f"  resuming: {videos} split video(s), {len(plan.resumed)} unit(s) left by an earlier run", file=out)
    if config.split.chunk_seconds is not None:
        s = config.split
        print(
            f"  split:    videos over {s.chunk_seconds + s.overlap_seconds:g} s in chunks of {s.chunk_seconds:g} s "
            f"(+{s.overlap_seconds:g} s overlap), stitched at IoU >= {s.min_iou:g}",
            file=out,
        )
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
    if summary.workers:
        w = summary.workers
        print(
            f"  workers:  {w['requested']} requested, {w['lost']} lost, {w['restarts']} restart(s)"
            + (f"; {summary.below_minimum}" if summary.below_minimum else ""),
            file=out,
        )
    print(
        f"  outputs:  {', '.join(storage.join(uri, SHARD_DIRS[k]) for k in ('masklets', 'videos', 'wds'))} "
        f"({PROGRESS_FILE}, {JOB_FILE})",
        file=out,
    )
    if summary.setup_error and not summary.done:
        print(f"  no worker could start: {summary.setup_error}", file=out)
    if summary.failed:
        print("  failed shards (nothing of them committed: rerun the same command to retry them):", file=out)
        for f in summary.failed[:max_listed]:
            print(f"    {f.shard_id} after {f.attempts} attempt(s): {f.error}", file=out)
        if len(summary.failed) > max_listed:
            print(f"    ... and {len(summary.failed) - max_listed} more (progress.json)", file=out)
    if summary.failed_videos:
        print(f"  failed videos ({c['videos_error']}; error rows in videos/*.parquet):", file=out)
        for v in summary.failed_videos[:max_listed]:
            print(f"    {v['shard_id']}/{v['video_key']}: {v['error']}", file=out)
        if c["videos_error"] > max_listed:
            print(f"    ... and {c['videos_error'] - max_listed} more", file=out)
