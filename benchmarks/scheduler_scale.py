"""How many workers one driver keeps busy: the real scheduler (masklet.jobs.scheduler) on simulated workers.

Each simulated worker takes `--shard-seconds` of wall time per shard and answers polls at once; the
scheduler, its progress (bar, log lines, progress.json in a temp folder) and its loop are the real
ones, in this one process. The backend keeps pending results in a heap, so what limits throughput is
the driver's own work per event, as on a cluster where Ray's calls cost the driver little.

For each worker count W it runs `--seconds` of wall time and reports achieved / ideal throughput: the
seconds of shard work the workers did (shards done, and the part of those still running) over W x
the seconds since they were ready (every worker busy all the time), and the driver's CPU (process
time / wall time). Goal: >= 95% of ideal at 2,000 workers with 20 s shards.

    python benchmarks/scheduler_scale.py --workers 100 1000 2000 5000 --shard-seconds 20 --seconds 60
"""

from __future__ import annotations

import argparse
import contextlib
import heapq
import io
import itertools
import tempfile
import time
from collections.abc import Hashable
from typing import Any

from masklet.io.sources import Shard
from masklet.jobs.progress import Progress
from masklet.jobs.scheduler import Limits, Scheduler
from masklet.jobs.shard import ShardResult

COUNTS = {"videos": 8, "videos_error": 0, "frames_processed": 384, "masklets": 40, "masklets_kept": 30}


class SimulatedCluster:
    """A `Backend` whose workers finish a shard `shard_seconds` after starting it, one at a time each."""

    def __init__(self, shard_seconds: float, load_seconds: float) -> None:
        self.shard_seconds, self.load_seconds = shard_seconds, load_seconds
        self.heap: list[tuple[float, int]] = []
        self.values: dict[int, Any] = {}
        self.busy_until: dict[str, float] = {}
        self.ids = itertools.count()
        self.work: list[tuple[float, float]] = []  # (start, end) of every shard given to a worker

    def _ref(self, when: float, value: Any) -> int:
        ref = next(self.ids)
        self.values[ref] = value
        heapq.heappush(self.heap, (when, ref))
        return ref

    def start(self, name: str) -> str:
        return name

    def ready(self, worker: str) -> Hashable:
        return self._ref(time.monotonic() + self.load_seconds, {"host": "sim", "device": "sim", "load_seconds": 0})

    def process(self, worker: str, shard: Shard, attempt: int) -> Hashable:
        start = max(time.monotonic(), self.busy_until.get(worker, 0.0))
        self.busy_until[worker] = done = start + self.shard_seconds
        self.work.append((start, done))
        return self._ref(done, ShardResult(shard.id, COUNTS, {"wall": self.shard_seconds}))

    def poll(self, worker: str) -> Hashable:
        return self._ref(time.monotonic(), {"shard_id": None})

    def wait(self, refs: list[Hashable], timeout: float) -> list[Hashable]:
        deadline = time.monotonic() + timeout
        if self.heap and self.heap[0][0] > time.monotonic():
            time.sleep(max(0.0, min(deadline, self.heap[0][0]) - time.monotonic()))
        now, ready = time.monotonic(), []
        while self.heap and self.heap[0][0] <= now:
            ready.append(heapq.heappop(self.heap)[1])
        return ready

    def get(self, ref: Hashable) -> Any:
        return self.values.pop(ref)

    def kill(self, worker: str) -> None:
        pass

    def capacity(self) -> int | None:
        return None


class _Stop(Exception):
    pass


def measure(workers: int, shard_seconds: float, seconds: float) -> dict[str, float]:
    shards = int(workers * (seconds / shard_seconds + 4))  # more than the run can finish
    cluster = SimulatedCluster(shard_seconds, load_seconds=1.0)
    with tempfile.TemporaryDirectory() as out:
        progress = Progress(out, "bench", "hash", total=shards, skipped=0, out=io.StringIO())
        scheduler = Scheduler(cluster, progress, workers, Limits())
        start_wall, start_cpu = time.monotonic(), time.process_time()
        tick = progress.tick

        def tick_until_deadline() -> None:  # ends the run at `seconds` of wall time
            tick()
            if time.monotonic() - start_wall >= seconds:
                raise _Stop

        progress.tick = tick_until_deadline  # type: ignore[method-assign]
        with contextlib.suppress(_Stop):
            scheduler.run([Shard(f"s{i:07d}", "sim", "wds") for i in range(shards)])
        end = time.monotonic()
        wall, cpu = end - start_wall, time.process_time() - start_cpu
    ready = start_wall + cluster.load_seconds  # workers are ready after loading
    worked = sum(max(0.0, min(stop, end) - max(begin, ready)) for begin, stop in cluster.work)
    ratio = worked / (workers * (end - ready))
    return {"done": progress.done, "ratio": ratio, "cpu": cpu / wall, "wall": wall}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[100, 1000, 2000, 5000])
    parser.add_argument("--shard-seconds", type=float, default=20.0)
    parser.add_argument("--seconds", type=float, default=60.0, help="wall time per worker count")
    args = parser.parse_args()
    print(f"{'workers':>8} {'shards done':>12} {'achieved/ideal':>15} {'driver CPU':>11}")
    for w in args.workers:
        r = measure(w, args.shard_seconds, args.seconds)
        print(f"{w:>8} {r['done']:>12} {r['ratio']:>14.1%} {r['cpu']:>10.1%}", flush=True)


if __name__ == "__main__":
    main()
