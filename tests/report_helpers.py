"""A tiny real output root for the report tests: synthetic videos, masklets from their ground truth.

Masklets are the ground-truth objects of `masklet.synth` videos at every 2nd frame, written with the
real ShardWriter; some are marked dropped with filter reasons, one kept masklet of the second video
scores low (the first a report should point at), and one video is an error row, so every section
of a report has something to show.
"""

from __future__ import annotations

import json
import tarfile

from masklet.io import sav, storage
from masklet.io.schema import MaskletRecord, VideoRecord
from masklet.io.sinks import ShardWriter
from masklet.synth.corpus import write_corpus

WIDTH, HEIGHT, FRAMES, FPS = 128, 96, 12, 12.0
STRIDE = 2  # annotated at 6 fps
ANNOTATED = list(range(0, FRAMES, STRIDE))
REASONS = {2: "low_stability", 3: "too_small"}  # masklet id -> why it is dropped (0 and 1 are kept)
MODEL, CONFIG_HASH = "sam2.1_hiera_t", "c0ffee"
BROKEN_KEY = "broken-video"
BROKEN_ERROR = "truncated mp4: moov atom not found; re-encode or drop the file"
DOUBTFUL = 0  # in the second video, this kept masklet scores lowest (stability 0.7, predicted IoU 0.6)
FILTERS = {"min_visible_frames": 1, "min_stability_mean": 0.6, "dedup_iou": 0.8}  # job.json config.filters


def masklets_of(key: str, gt_json: bytes, *, duplicate: bool) -> list[MaskletRecord]:
    """The ground truth's objects as masklet rows on the annotated frames; `duplicate` drops object 1 as one
    and makes masklet DOUBTFUL the lowest-scoring kept one."""
    gt = sav.parse(gt_json)
    reasons = {**REASONS, **({1: "duplicate_of:0"} if duplicate else {})}
    records = []
    for masklet_id in gt.masklet_ids:
        rles = gt.rles(masklet_id)
        reason = reasons.get(masklet_id)
        records.append(
            MaskletRecord.from_frames(
                key,
                masklet_id,
                source="auto",
                frame_indices=ANNOTATED,
                rles=[rles[f] for f in ANNOTATED],
                pred_iou=[0.6 if duplicate and masklet_id == DOUBTFUL else 0.9] * len(ANNOTATED),
                stability=[0.5 if reason == "low_stability" else 0.7 if duplicate and masklet_id == DOUBTFUL else 0.95]
                * len(ANNOTATED),
                object_score=[5.0] * len(ANNOTATED),
                edit_count=masklet_id,
                kept=reason is None,
                reject_reason=reason,
            )
        )
    return records


def build_output(root: str, corpus: str, *, write_video: bool, missing_source: bool = False) -> list[MaskletRecord]:
    """An output root of one shard: a 3-video corpus plus one error row; returns the masklets written.

    `missing_source`: the last ok video names a source tar that does not exist (its frames are gone).
    """
    (tar_uri,) = write_corpus(corpus, videos=3, per_shard=3, seed=0, width=WIDTH, height=HEIGHT, frames=FRAMES, fps=FPS)
    fs, path = storage.url_to_fs(tar_uri)
    with fs.open(path, "rb") as f, tarfile.open(fileobj=f) as tar:
        members = {m.name: tar.extractfile(m).read() for m in tar}
    keys = sorted({name.split(".")[0] for name in members})
    written: list[MaskletRecord] = []
    with ShardWriter(root, "shard-000000", model=MODEL, config_hash=CONFIG_HASH, write_video=write_video) as writer:
        for i, key in enumerate(keys):
            masklets = masklets_of(key, members[f"{key}.gt.json"], duplicate=i == 1)
            source = f"{tar_uri}#{key}.mp4"
            if missing_source and i == len(keys) - 1:
                source = f"{storage.join(corpus, 'gone.tar')}#{key}.mp4"
            video = VideoRecord(
                video_key=key,
                original_key=key,
                source_uri=source,
                fps=FPS,
                frame_count=FRAMES,
                height=HEIGHT,
                width=WIDTH,
                frame_indices=ANNOTATED,
                decoder="pyav",
                decode_seconds=0.1,
                model_seconds=1.0,
                total_seconds=1.2,
            )
            writer.add_video(video, masklets, video_bytes=members[f"{key}.mp4"] if write_video else None)
            written.extend(masklets)
        broken = VideoRecord(
            video_key=BROKEN_KEY,
            original_key="broken video.mp4",
            source_uri=f"{tar_uri}#broken video.mp4",
            status="error",
            error=BROKEN_ERROR,
            error_type="VideoDecodeError",
        )
        writer.add_video(broken)
        writer.commit(extra={"worker": "test"})
    job = {
        "config_hash": CONFIG_HASH,
        "model": MODEL,
        "checkpoint": None,
        "checkpoint_sha256": None,
        "masklet_version": "test",
        "created_at": "2026-01-01T00:00:00+00:00",
        "history": [],
        "config": {"source": {"uri": corpus, "format": "wds", "fps": 6.0}, "output": {"uri": root}, "filters": FILTERS},
    }
    storage.write_bytes(storage.join(root, "job.json"), json.dumps(job).encode())
    return written
