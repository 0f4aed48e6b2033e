"""The shard queue (masklet.jobs.scheduler) on simulated workers: faults, capacity, time limits.

`Cluster` plays the workers on a virtual clock: a shard takes `shard_seconds`; workers listed in
`sick` fail every shard they are given (a bad GPU), `broken` ones fail to start, `hung` ones never
finish. Nothing here needs Ray; tests/test_jobs_faults.py runs the same faults on a real one.
"""

from __future__ import annotations

import io
import itertools
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Any

import pytest

from masklet.io.sources import Shard
from masklet.jobs.progress import Progress
from masklet.jobs.scheduler import AttemptFailed, Limits, Scheduler, WorkerLost
from masklet.jobs.shard import ShardResult


@dataclass
class Worker:
    name: str
    alive: bool = True
    busy_until: float = 0.0
    done: list[str] = field(default_factory=list)


@dataclass
class Cluster:
    """A fake `Backend`: refs resolve on a virtual clock that `wait` advances."""

    shard_seconds: float = 10.0
    sick: set[str] = field(default_factory=set)  # worker names (generation included) that fail every shard
    broken: set[str] = field(default_factory=set)  # worker names that fail to start
    hung: set[str] = field(default_factory=set)  # worker names that never finish a shard
    now: float = 0.0
    capacity_now: int | None = None
    pending: dict[Hashable, tuple[float, Any]] = field(default_factory=dict)  # ref -> (when, outcome)
    started: list[str] = field(default_factory=list)
    _ids: itertools.count = field(default_factory=itertools.count)

    def clock(self) -> float:
        return self.now

    def _ref(self, when: float, outcome: Any) -> Hashable:
        ref = next(self._ids)
        self.pending[ref] = (when, outcome)
        return ref

    def start(self, name: str) -> Worker:
        self.started.append(name)
        return Worker(name)

    def ready(self, worker: Worker) -> Hashable:
        if worker.name in self.broken:
            return self._ref(self.now + 1, WorkerLost(f"{worker.name}: RuntimeError: this pipeline cannot be built"))
        return self._ref(self.now + 1, {"host": "node", "device": "gpu", "load_seconds": 1.0})

    def process(self, worker: Worker, shard: Shard, attempt: int) -> Hashable:
        start = max(self.now, worker.busy_until)
        worker.busy_until = start + self.shard_seconds
        if worker.name in self.hung:
            return self._ref(float("inf"), None)
        if worker.name in self.sick:
            return self._ref(worker.busy_until, AttemptFailed("RuntimeError: CUDA error: an illegal memory access"))
        worker.done.append(shard.id)
        counts = {"videos": 1, "videos_error": 0, "frames_processed": 10, "masklets": 1, "masklets_kept": 1}
        return self._ref(worker.busy_until, ShardResult(shard.id, counts, {"wall": self.shard_seconds}))

    def poll(self, worker: Worker) -> Hashable:
        return self._ref(float("inf") if worker.name in self.hung else self.now, {"shard_id": None})

    def wait(self, refs: list[Hashable], timeout: float) -> list[Hashable]:
        soonest = min((self.pending[r][0] for r in refs if r in self.pending), default=float("inf"))
        self.now = min(max(self.now, soonest), self.now + timeout)
        return [r for r in refs if r in self.pending and self.pending[r][0] <= self.now]

    def get(self, ref: Hashable) -> Any:
        _, outcome = self.pending.pop(ref)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    def kill(self, worker: Worker) -> None:
        worker.alive = False

    def capacity(self) -> int | None:
        return self.capacity_now


def run(cluster: Cluster, shards: int, workers: int, **limits: Any) -> tuple[Scheduler, Progress]:
    progress = Progress("memory://progress", "run", "hash", total=shards, skipped=0, out=io.StringIO())
    progress.clock = cluster.clock
    grow = limits.pop("grow", False)
    scheduler = Scheduler(cluster, progress, workers, Limits(**limits), grow=grow, clock=cluster.clock)
    scheduler.run([Shard(f"s{i:03d}", f"in/s{i:03d}.tar", "wds") for i in range(shards)])
    return scheduler, progress


def test_every_shard_once_and_each_worker_holds_two() -> None:
    cluster = Cluster()
    scheduler, progress = run(cluster, shards=40, workers=4)
    assert progress.done == 40 and not progress.failed
    assert cluster.now == pytest.approx(1 + 10 * 10, abs=1)  # 40 shards of 10 s on 4 workers, no idle gap
    assert scheduler.workers() == {"requested": 4, "running": 4, "lost": 0, "restarts": 0}


def test_a_sick_gpu_swallows_no_shard_and_is_retired() -> None:
    """One worker position fails every shard, in every generation: its shards go elsewhere, it retires."""
    cluster = Cluster(sick={"w1", "w1.1", "w1.2"})
    scheduler, progress = run(cluster, shards=30, workers=3)
    assert progress.done == 30 and not progress.failed
    assert scheduler.workers()["lost"] == 1 and scheduler.min_live == 2
    assert "worker w1.2 retired after 3 faults in a row" in progress.out.getvalue()


def test_a_shard_that_fails_everywhere_fails_after_max_attempts_with_no_marker() -> None:
    cluster = Cluster(sick={f"w{i}" + (f".{g}" if g else "") for i in range(2) for g in range(3)})
    scheduler, progress = run(cluster, shards=3, workers=2, max_attempts=2)
    assert progress.done == 0 and scheduler.workers()["lost"] == 2
    assert {f.shard_id for f in progress.failed} == {"s000", "s001", "s002"}
    assert any("CUDA error" in f.error for f in progress.failed)


def test_workers_that_fail_to_start_are_replaced_with_backoff_then_lost() -> None:
    cluster = Cluster(broken={"w0", "w0.1", "w0.2", "w1"})
    scheduler, progress = run(cluster, shards=10, workers=2)
    assert progress.done == 10
    assert cluster.started[:2] == ["w0", "w1"] and "w1.1" in cluster.started  # w1's replacement started
    assert scheduler.workers()["lost"] == 1 and scheduler.workers()["restarts"] == 3
    assert scheduler.min_live == 1


def test_no_worker_can_start() -> None:
    cluster = Cluster(broken={f"w{i}" + (f".{g}" if g else "") for i in range(2) for g in range(3)})
    scheduler, progress = run(cluster, shards=4, workers=2)
    assert progress.done == 0 and len(progress.failed) == 4
    error = progress.failed[0].error
    assert error.startswith("no worker to run it: ") and "cannot be built" in error


def test_a_hung_worker_is_killed_by_the_shard_time_limit_and_its_shards_go_elsewhere() -> None:
    cluster = Cluster(hung={"w0"})
    scheduler, progress = run(cluster, shards=6, workers=2, shard_timeout=30.0)
    assert progress.done == 6 and not progress.failed
    assert "shard s000 ran past workers.shard_timeout (30 s)" in progress.out.getvalue()
    assert scheduler.workers()["restarts"] == 1


def test_a_worker_that_stops_answering_is_killed_by_the_video_time_limit() -> None:
    cluster = Cluster(hung={"w0"})
    _, progress = run(cluster, shards=4, workers=2, video_timeout=20.0)
    assert progress.done == 4 and "stopped answering" in progress.out.getvalue()


def test_more_workers_start_when_the_cluster_grows() -> None:
    cluster = Cluster(capacity_now=5)
    scheduler, progress = run(cluster, shards=60, workers=2, grow=True, grow_every=5.0)
    assert progress.done == 60 and len(scheduler.slots) == 5
    assert "the cluster grew: worker w4 added" in progress.out.getvalue()


@dataclass
class Unit:
    """A unit a shard makes due (as a split video's chunks): its own id."""

    id: str


@dataclass
class Reversed(Cluster):
    """A worker's units in hand finish together, and refs ready at once come back in the reverse order
    (Ray does not promise one); `given` lists the units in the order they went to workers."""

    given: list[str] = field(default_factory=list)

    def wait(self, refs: list[Hashable], timeout: float) -> list[Hashable]:
        return super().wait(refs, timeout)[::-1]

    def process(self, worker: Worker, shard: Any, attempt: int) -> Hashable:
        self.given.append(shard.id)
        ref = super().process(worker, shard, attempt)
        worker.busy_until = self.pending[ref][0] - self.shard_seconds  # a worker's units finish together
        self.pending[ref] = (worker.busy_until + self.shard_seconds, self.pending[ref][1])
        return ref


def test_units_made_due_run_first_and_results_seen_out_of_order_are_each_counted_once() -> None:
    cluster = Reversed()
    progress = Progress("memory://progress", "run", "hash", total=8, skipped=0, out=io.StringIO())
    progress.clock = cluster.clock
    done: list[str] = []

    def follow(unit: Any, result: ShardResult) -> list[Any]:
        done.append(unit.id)
        return [Unit(f"{unit.id}:chunk-{k}") for k in range(3)] if unit.id == "s000" else []

    scheduler = Scheduler(cluster, progress, 2, Limits(), follow=follow, clock=cluster.clock)
    scheduler.run([Shard(f"s{i:03d}", f"in/s{i:03d}.tar", "wds") for i in range(8)])
    assert sorted(done) == sorted([f"s{i:03d}" for i in range(8)] + [f"s000:chunk-{k}" for k in range(3)])
    assert progress.done == progress.total == 11 and not progress.failed
    assert cluster.given[4:7] == [f"s000:chunk-{k}" for k in range(3)], "the chunks went ahead of the shards left"
