"""A small real output root for the review tests: synthetic videos, masklets from their ground truth.

Two shards (the first with the video bytes in its tar, the second reading frames from the corpus), 11
masklets on frames 0, 2, ..., 10 with distinct stabilities and edit counts; the last object of each
video is born late (tracked from frame 4 on) and has the lowest stability of its video, and object 1
of each video is dropped by a filter.
"""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import numpy as np

from masklet.io import sav, storage
from masklet.io.schema import MaskletRecord, VideoRecord
from masklet.io.sinks import ShardWriter
from masklet.synth.corpus import write_corpus

WIDTH, HEIGHT, FRAMES, FPS = 96, 64, 12, 12.0
ANNOTATED = list(range(0, FRAMES, 2))
BORN_AT = 4
MODEL, CONFIG_HASH = "sam2.1_hiera_t", "c0ffee"


def stability_of(video: int, masklet_id: int, late: bool) -> float:
    return round((0.5 if late else 0.55 + 0.1 * masklet_id) + 0.02 * video, 4)


def build_output(root: str, corpus: str) -> dict[tuple[str, int], MaskletRecord]:
    """Write the output (module doc); return its masklet rows by (video_key, masklet_id)."""
    tars = write_corpus(corpus, videos=3, per_shard=2, seed=5, width=WIDTH, height=HEIGHT, frames=FRAMES, fps=FPS)
    written: dict[tuple[str, int], MaskletRecord] = {}
    index = 0
    for shard, tar_uri in enumerate(tars):
        fs, path = storage.url_to_fs(tar_uri)
        with fs.open(path, "rb") as f, tarfile.open(fileobj=f) as tar:
            members = {m.name: tar.extractfile(m).read() for m in tar}
        keys = sorted({name.split(".")[0] for name in members})
        write_video = shard == 0
        with ShardWriter(
            root, f"shard-{shard:06d}", model=MODEL, config_hash=CONFIG_HASH, write_video=write_video
        ) as w:
            for key in keys:
                records = _masklets(key, index, sav.parse(members[f"{key}.gt.json"]))
                video = VideoRecord(
                    video_key=key,
                    original_key=key,
                    source_uri=f"{tar_uri}#{key}.mp4",
                    fps=FPS,
                    frame_count=FRAMES,
                    height=HEIGHT,
                    width=WIDTH,
                    frame_indices=ANNOTATED,
                    decoder="pyav",
                )
                w.add_video(video, records, video_bytes=members[f"{key}.mp4"] if write_video else None)
                written.update({(key, r.masklet_id): r for r in records})
                index += 1
            w.commit()
    job = {
        "config_hash": CONFIG_HASH,
        "model": MODEL,
        "config": {"source": {"uri": corpus, "format": "wds", "fps": 6.0}, "output": {"uri": root}},
        "history": [],
    }
    storage.write_bytes(storage.join(root, "job.json"), json.dumps(job).encode())
    return written


def _masklets(key: str, index: int, gt: sav.SavAnnotation) -> list[MaskletRecord]:
    records = []
    last = max(gt.masklet_ids)
    for masklet_id in gt.masklet_ids:
        frames = [f for f in ANNOTATED if masklet_id != last or f >= BORN_AT]
        rles = gt.rles(masklet_id)
        stability = stability_of(index, masklet_id, masklet_id == last)
        dropped = masklet_id == 1
        records.append(
            MaskletRecord.from_frames(
                key,
                masklet_id,
                source="auto",
                frame_indices=frames,
                rles=[rles[f] for f in frames],
                pred_iou=[0.9 - 0.05 * masklet_id] * len(frames),
                stability=[stability] * len(frames),
                object_score=[4.0] * len(frames),
                edit_count=(masklet_id * 2 + index) % 4,
                kept=not dropped,
                reject_reason="low_stability" if dropped else None,
            )
        )
    return records


def model_masks(record: MaskletRecord, frames: list[int]) -> np.ndarray:
    """A masklet's masks on the exported frames (empty where it has no entry), bool [len(frames), H, W]."""
    masks = record.masks()
    entry = {f: t for t, f in enumerate(record.frame_indices)}
    out = np.zeros((len(frames), record.height, record.width), dtype=bool)
    for position, f in enumerate(frames):
        if f in entry:
            out[position] = masks[entry[f]]
    return out


def tree_digest(root: Path) -> dict[str, bytes]:
    """Every file under `root` with its bytes, to show a folder was not modified."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}
