"""Per-worker Ray metrics, so the Ray dashboard and Prometheus show throughput while a job runs.

Ray exports them as `ray_masklet_*` from every node's metrics agent, tagged with the worker.
"""

from __future__ import annotations

from ray.util.metrics import Counter, Gauge


class WorkerMetrics:
    """Counters of annotated frames, videos and masklets, and a frames-per-second gauge."""

    def __init__(self, worker: str) -> None:
        tags = {"worker": worker}
        self.frames = Counter("masklet_frames", "Annotated frames processed", tag_keys=("worker",)).set_default_tags(
            tags
        )
        self.videos = Counter(
            "masklet_videos", "Videos processed, by status (ok, error)", tag_keys=("worker", "status")
        ).set_default_tags(tags)
        self.masklets = Counter(
            "masklet_masklets", "Masklets produced, by whether the filters kept them", tag_keys=("worker", "kept")
        ).set_default_tags(tags)
        self.shards = Counter("masklet_shards", "Shards committed", tag_keys=("worker",)).set_default_tags(tags)
        self.fps = Gauge(
            "masklet_frames_per_second", "Annotated frames per second over the current shard", tag_keys=("worker",)
        ).set_default_tags(tags)

    def video(self, *, ok: bool, frames: int, masklets: int, kept: int) -> None:
        self.videos.inc(1, {"status": "ok" if ok else "error"})
        for counter, value, tags in (
            (self.frames, frames, None),
            (self.masklets, kept, {"kept": "true"}),
            (self.masklets, masklets - kept, {"kept": "false"}),
        ):
            if value > 0:  # Ray counters refuse zero increments
                counter.inc(value, tags)
