"""The shard queue of a job: workers kept at capacity, faults told apart, one driver for thousands.

The scheduler knows workers only through a `Backend` (the Ray one in `ray_backend`, a simulated one
in benchmarks/scheduler_scale.py), so its logic is measured without a cluster.

- **Faults.** A bad video is the input's fault and never reaches here: the worker makes it an error
  row. Anything a shard attempt raises (a CUDA error, out of memory, a storage outage) or a worker
  that dies or hangs is the machine's: nothing of the shard is committed, the worker is replaced
  (after a backoff), and the shard is retried up to `max_attempts`, then reported failed without a
  marker, so a rerun retries it.
- **Capacity.** A worker that fails to start or faults is replaced with exponential backoff; one that
  faults `max_faults` times in a row without finishing a shard (a sick GPU) is retired, and the
  summary and progress.json say how many workers were requested, are running and were lost. When the
  cluster grows (`capacity()` rises) more workers start.
- **Time limits.** A shard past `shard_timeout`, a video past `video_timeout` (as the worker's polls
  tell), or a worker whose poll goes unanswered that long, is a hang: the worker is killed.
- **Scale.** Each worker holds `depth` shards (one running, the next queued in the actor) so it never
  waits for the driver; every ready event of a wait is handled; polls go out every `poll_every`
  seconds (more workers, rarer polls); nothing is O(workers^2).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any, Protocol

from masklet.jobs.progress import Progress
from masklet.jobs.split import WorkUnit

# What a unit done makes due (the chunks of the long videos a shard left out, a video's stitch).
FollowUp = Callable[[WorkUnit, Any], list[WorkUnit]]


class WorkerLost(Exception):
    """The worker died or was killed: its shards in hand failed with it."""


class AttemptFailed(Exception):
    """The worker raised while doing a shard: the attempt failed, the worker is suspect."""


class Backend(Protocol):
    """How the scheduler reaches workers. Calls return refs; `get` raises WorkerLost / AttemptFailed."""

    def start(self, name: str) -> Any: ...

    def ready(self, worker: Any) -> Hashable: ...

    def process(self, worker: Any, shard: WorkUnit, attempt: int) -> Hashable: ...

    def poll(self, worker: Any) -> Hashable: ...

    def wait(self, refs: list[Hashable], timeout: float) -> list[Hashable]: ...

    def get(self, ref: Hashable) -> Any: ...

    def kill(self, worker: Any) -> None: ...

    def capacity(self) -> int | None: ...


@dataclass(frozen=True)
class Limits:
    max_attempts: int = 3  # tries per shard
    max_faults: int = 3  # faults in a row after which a worker position is retired
    depth: int = 2  # shards in hand per worker: one running, the next queued in the actor
    shard_timeout: float | None = None
    video_timeout: float | None = None
    backoff: float = 1.0  # first wait before a replacement; doubles per fault in a row
    max_backoff: float = 60.0
    grow_every: float = 10.0  # seconds between looks at the cluster's capacity


LOOK_EVERY = 0.5  # seconds between looks at restarts due, time limits and the counts


@dataclass
class _Task:
    shard: WorkUnit
    attempt: int
    ref: Hashable
    running_since: float | None = None  # set when it is the worker's current shard


@dataclass
class _Slot:
    """One worker position; its worker is replaced when it fails, the position retired when it keeps failing."""

    index: int
    generation: int = 0
    worker: Any = None
    ready: bool = False
    tasks: deque[_Task] = field(default_factory=deque)
    faults: int = 0  # in a row, reset by a finished shard
    ever_ready: bool = False  # in service: a worker of this position has loaded (a replacement may be due)
    restart_at: float | None = None
    retired: bool = False
    poll_ref: Hashable | None = None
    poll_sent: float = 0.0

    @property
    def name(self) -> str:
        return f"w{self.index}" + (f".{self.generation}" if self.generation else "")

    @property
    def live(self) -> bool:
        return self.worker is not None and not self.retired


class Scheduler:
    def __init__(
        self,
        backend: Backend,
        progress: Progress,
        workers: int,
        limits: Limits,
        *,
        grow: bool = False,
        follow: FollowUp | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """`workers`: positions to start with; `grow`: start more when `backend.capacity()` rises; `follow`:
        the units a unit done makes due, queued first (a long video's chunks are the job's longest tail)."""
        self.backend, self.progress, self.limits, self.grow, self.clock = backend, progress, limits, grow, clock
        self.follow = follow
        self.slots = [_Slot(i) for i in range(workers)]
        self.queue: deque[tuple[WorkUnit, int]] = deque()
        self.refs: dict[Hashable, tuple[str, _Slot]] = {}  # ref -> (kind, slot)
        self.hungry: deque[_Slot] = deque()  # ready workers that may take another shard
        self.in_hand = 0  # shards given to workers and not back yet
        self.setup_error: str | None = None
        self.restarts = 0
        self.min_live: int | None = None  # fewest positions in service at once, once each was ready or lost
        self._last_grow = self._last_poll = self._last_look = clock()

    @property
    def poll_every(self) -> float:
        return max(1.0, len(self.slots) / 200)

    def run(self, shards: list[WorkUnit]) -> None:
        self.queue.extend((shard, 1) for shard in shards)
        for slot in self.slots:
            self._start(slot)
        while self.queue or self.in_hand:
            now = self.clock()
            if now - self._last_look >= LOOK_EVERY:
                self._last_look = now
                if not self._look(now):
                    break
            self._dispatch(now)
            ready = self.backend.wait(list(self.refs), timeout=min(LOOK_EVERY, self.poll_every))
            for ref in ready:
                self._handle(ref)
            if self.clock() - self._last_poll >= self.poll_every:
                self._poll()
            self.progress.tick()
        reason = self.setup_error or "every worker was lost"
        for shard, attempt in self.queue:
            self.progress.shard_failed(shard.id, attempt - 1, f"no worker to run it: {reason}")
        self.queue.clear()
        self._count()
        if self.min_live is None:  # some position never had a worker ready
            self.min_live = sum(slot.ever_ready and not slot.retired for slot in self.slots)

    def stop(self) -> None:
        for slot in self.slots:
            if slot.worker is not None:
                self.backend.kill(slot.worker)
                slot.worker = None

    def workers(self) -> dict[str, int]:
        return {
            "requested": len(self.slots),
            "running": sum(slot.live and slot.ready for slot in self.slots),
            "lost": sum(slot.retired for slot in self.slots),
            "restarts": self.restarts,
        }

    # ---- slots

    def _start(self, slot: _Slot) -> None:
        slot.worker = self.backend.start(slot.name)
        slot.ready = False
        slot.restart_at = None
        self.refs[self.backend.ready(slot.worker)] = ("ready", slot)

    def _replace(self, slot: _Slot, reason: str) -> None:
        """Take the slot's worker out; start another after a backoff, or retire the slot."""
        if slot.worker is not None:
            self.backend.kill(slot.worker)
        slot.worker, slot.ready, slot.poll_ref = None, False, None
        self.refs = {ref: v for ref, v in self.refs.items() if v[1] is not slot}
        slot.faults += 1
        if slot.faults >= self.limits.max_faults:
            slot.retired = True
            self.progress.message(f"worker {slot.name} retired after {slot.faults} faults in a row: {reason}")
            return
        wait = min(self.limits.max_backoff, self.limits.backoff * 2 ** (slot.faults - 1))
        slot.restart_at = self.clock() + wait
        slot.generation += 1
        self.restarts += 1

    def _look(self, now: float) -> bool:
        """Twice a second: restarts due, time limits, a grown cluster, the counts. False: no worker is left."""
        for slot in self.slots:
            if slot.restart_at is not None and now >= slot.restart_at and not slot.retired:
                self._start(slot)
            elif slot.tasks and slot.live:
                self._check_time(slot, now)
        if self.grow and now - self._last_grow >= self.limits.grow_every:
            self._last_grow = now
            wanted = min(self.backend.capacity() or 0, len(self.slots) + len(self.queue))
            for index in range(len(self.slots), wanted):
                self.slots.append(_Slot(index))
                self._start(self.slots[-1])
                self.progress.message(f"the cluster grew: worker w{index} added")
        self._count()
        return any(slot.live or slot.restart_at is not None for slot in self.slots)

    def _check_time(self, slot: _Slot, now: float) -> None:
        head, shard_limit, video_limit = slot.tasks[0], self.limits.shard_timeout, self.limits.video_timeout
        started = head.running_since
        if shard_limit is not None and started is not None and now - started > shard_limit:
            self._fail_tasks(slot, f"shard {head.shard.id} ran past workers.shard_timeout ({shard_limit:g} s)")
        elif video_limit is not None and slot.poll_ref is not None and now - slot.poll_sent > video_limit:
            self._fail_tasks(slot, f"worker {slot.name} stopped answering for {now - slot.poll_sent:.0f} s (a hang)")

    def _count(self) -> None:
        workers = self.workers()
        if all(slot.ever_ready or slot.retired for slot in self.slots):
            serving = sum(slot.ever_ready and not slot.retired for slot in self.slots)
            self.min_live = serving if self.min_live is None else min(self.min_live, serving)
        self.progress.running = sum(bool(slot.tasks) for slot in self.slots)
        self.progress.workers = workers

    # ---- work

    def _dispatch(self, now: float) -> None:
        while self.hungry and self.queue:
            slot = self.hungry.popleft()
            if not (slot.live and slot.ready) or len(slot.tasks) >= self.limits.depth:
                continue
            shard, attempt = self.queue.popleft()
            task = _Task(shard, attempt, self.backend.process(slot.worker, shard, attempt))
            if not slot.tasks:
                task.running_since = now
            slot.tasks.append(task)
            self.refs[task.ref] = ("shard", slot)
            self.in_hand += 1
            if len(slot.tasks) < self.limits.depth:
                self.hungry.append(slot)

    def _handle(self, ref: Hashable) -> None:
        kind, slot = self.refs.pop(ref, (None, None))
        if slot is None:
            return  # from a worker taken out meanwhile
        try:
            value = self.backend.get(ref)
        except (WorkerLost, AttemptFailed) as exc:
            if kind == "ready":
                self.setup_error = str(exc)
                self.progress.message(f"worker {slot.name} could not start: {exc}")
                self._replace(slot, str(exc))
            elif kind == "poll":
                slot.poll_ref = None  # the shard call reports what happened to the worker
            else:
                self._fail_tasks(slot, f"worker {slot.name} died ({exc})" if isinstance(exc, WorkerLost) else str(exc))
            return
        if kind == "ready":
            slot.ready = slot.ever_ready = True
            self.hungry.append(slot)
            self.progress.message(
                f"worker {slot.name} ready on {value['host']} ({value['device']}, loaded in {value['load_seconds']}s)"
            )
        elif kind == "poll":
            self._polled(slot, value)
        else:
            # a worker runs its shards in the order given, but two done at once may be seen in either order
            task = next(t for t in slot.tasks if t.ref == ref)
            head = task is slot.tasks[0]
            slot.tasks.remove(task)
            self.in_hand -= 1
            slot.faults = 0
            if slot.tasks and head:
                slot.tasks[0].running_since = self.clock()
            self.hungry.append(slot)
            self.progress.shard_done(value)
            due = self.follow(task.shard, value) if self.follow is not None else []
            if due:
                self.queue.extendleft((unit, 1) for unit in reversed(due))
                self.progress.units_added(len(due), f"after {task.shard.id}: {_describe(due)}")

    def _fail_tasks(self, slot: _Slot, reason: str) -> None:
        """The slot's worker is taken out with its shards in hand: the running one counts an attempt, the
        ones queued behind it never started."""
        self.progress.shard_lost(slot.name)
        tasks, slot.tasks = list(slot.tasks), deque()
        self.in_hand -= len(tasks)
        self._replace(slot, reason)
        for task in reversed(tasks[1:]):
            self.queue.appendleft((task.shard, task.attempt))
        if not tasks:
            return
        head = tasks[0]
        if head.attempt < self.limits.max_attempts:
            self.progress.message(f"shard {head.shard.id} attempt {head.attempt} failed: {reason}; retrying")
            self.queue.appendleft((head.shard, head.attempt + 1))
        else:
            self.progress.shard_failed(head.shard.id, head.attempt, reason)

    # ---- progress

    def _poll(self) -> None:
        self._last_poll = now = self.clock()
        for slot in self.slots:
            if slot.tasks and slot.live and slot.poll_ref is None:
                slot.poll_ref, slot.poll_sent = self.backend.poll(slot.worker), now
                self.refs[slot.poll_ref] = ("poll", slot)

    def _polled(self, slot: _Slot, tally: dict[str, Any]) -> None:
        slot.poll_ref = None
        if not slot.tasks or tally.get("shard_id") != slot.tasks[0].shard.id:
            return
        self.progress.worker_update(slot.name, tally)
        limit = self.limits.video_timeout
        if limit is not None and tally.get("video_seconds", 0.0) > limit:
            video, shard = tally.get("video_key"), tally["shard_id"]
            self._fail_tasks(slot, f"video {video} of shard {shard} ran past workers.video_timeout ({limit:g} s)")


def _describe(units: list[WorkUnit]) -> str:
    """The ids of units queued, the first few of them."""
    shown = ", ".join(unit.id for unit in units[:3])
    return f"{len(units)} unit(s) queued ({shown}{', ...' if len(units) > 3 else ''})"
