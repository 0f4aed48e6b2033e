"""Test-double pipelines for the job tests, loaded by the workers as plug-ins (`workers.pipeline`).

`ground_truth` decodes each video for real and answers with the synthetic corpus' ground truth
(`{key}.gt.json`, read from the sample's tar) on the decoded frames, so a job exercises decoding,
RLE, the sinks and the Ray machinery without a model. The others break on purpose.
MASKLET_TEST_VIDEO_DELAY (seconds per video) slows every video down, for tests that interrupt a job.
"""

from __future__ import annotations

import os
import tarfile
import time
from pathlib import Path
from typing import Any

import fsspec

from masklet.io import rle, sav
from masklet.io.schema import MaskletRecord
from masklet.io.sources import VideoInput

CRASH_KEY = "synth-000002"  # the first video of shard-000001 when shards hold two videos
DELAY_ENV = "MASKLET_TEST_VIDEO_DELAY"


def read_ground_truth(video: VideoInput) -> sav.SavAnnotation:
    """The `{key}.gt.json` beside the video in its tar (source_uri is `TAR#member`)."""
    tar_uri = video.source_uri.rsplit("#", 1)[0]
    with fsspec.open(tar_uri, "rb") as f, tarfile.open(fileobj=f, mode="r:") as tar:
        member = tar.extractfile(f"{video.original_key}.gt.json")
        assert member is not None
        return sav.parse(member.read())


class GroundTruthPipeline:
    """Every ground-truth object is a masklet; kept when visible on more than half of the frames."""

    def __call__(self, video: VideoInput, frames: Any) -> list[MaskletRecord]:
        delay = float(os.environ.get(DELAY_ENV, "0"))
        indices = [frame.index for frame in frames]
        time.sleep(delay)
        gt = read_ground_truth(video)
        position = {f: t for t, f in enumerate(gt.frame_indices)}
        records = []
        for column, masklet_id in enumerate(gt.masklet_ids):
            rles = [gt.masklet[position[i]][column] for i in indices]
            visible = int((rle.area_batch(rles) > 0).sum())
            kept = 2 * visible > len(indices)
            n = len(indices)
            records.append(
                MaskletRecord.from_frames(
                    video.key,
                    masklet_id,
                    source="auto",
                    frame_indices=indices,
                    rles=rles,
                    pred_iou=[0.9] * n,
                    stability=[0.95] * n,
                    object_score=[4.0] * n,
                    kept=kept,
                    reject_reason=None if kept else "min_visible_frames",
                )
            )
        return records


class CrashingPipeline(GroundTruthPipeline):
    """Kills its worker process on CRASH_KEY: always, or once per output root."""

    def __init__(self, marker: Path | None) -> None:
        self.marker = marker

    def __call__(self, video: VideoInput, frames: Any) -> list[MaskletRecord]:
        if video.key == CRASH_KEY and (self.marker is None or not self.marker.exists()):
            if self.marker is not None:
                self.marker.touch()
            os._exit(1)
        return super().__call__(video, frames)


def ground_truth(config: Any, model: Any, device: Any) -> GroundTruthPipeline:
    return GroundTruthPipeline()


def crash_once(config: Any, model: Any, device: Any) -> CrashingPipeline:
    return CrashingPipeline(Path(config.output.uri).parent / f"crashed-{CRASH_KEY}")


def crash_always(config: Any, model: Any, device: Any) -> CrashingPipeline:
    return CrashingPipeline(None)


def broken(config: Any, model: Any, device: Any) -> GroundTruthPipeline:
    raise RuntimeError("this pipeline cannot be built")


class FaultyPipeline(GroundTruthPipeline):
    """Faults of the machine, not of any video (tests/test_jobs_faults.py): `fault` is "sick" (this
    process fails every video, as on a bad GPU), "oom" (out of memory on CRASH_KEY) or "hang" (CRASH_KEY
    never finishes); each strikes the first process (or the first time) of an output root only."""

    def __init__(self, fault: str, marker: Path) -> None:
        self.fault, self.marker = fault, marker
        self.sick = fault == "sick" and _claim(marker)

    def __call__(self, video: VideoInput, frames: Any) -> list[MaskletRecord]:
        if self.sick:
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        if video.key == CRASH_KEY and self.fault in ("oom", "hang") and _claim(self.marker):
            if self.fault == "oom":
                import torch

                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
            time.sleep(3600)
        return super().__call__(video, frames)


def _claim(marker: Path) -> bool:
    """True for the first caller only, across processes."""
    try:
        marker.open("x").close()
    except FileExistsError:
        return False
    return True


def sick(config: Any, model: Any, device: Any) -> FaultyPipeline:
    return FaultyPipeline("sick", Path(config.output.uri).parent / "sick")


def oom(config: Any, model: Any, device: Any) -> FaultyPipeline:
    return FaultyPipeline("oom", Path(config.output.uri).parent / "oom")


def hang(config: Any, model: Any, device: Any) -> FaultyPipeline:
    return FaultyPipeline("hang", Path(config.output.uri).parent / "hang")
