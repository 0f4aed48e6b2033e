"""`masklet review export OUT REVIEW_URI`: choose the masklets a person should look at, and write them
with their frames in the formats CVAT and Label Studio read.

Selection ranks the kept masklets of the whole output by one order of masklet.pipelines.doubt (the one
ranking of what to look at first), takes `top_k` or `fraction` of them in that order, at most
`per_video` per video, and writes the ranking's scores beside the export (review.json, selection.csv),
so a review can be reproduced and read: the same output and settings give the same export id.

REVIEW_URI (docs/review.md):

    review.json                           the manifest (masklet.review.manifest), written last
    selection.csv                         one row per selected masklet: rank, reference, scores
    videos/{key}/images/{key}.{t:06d}.jpg the exported frames of a video, t = 0, 1, ...
    videos/{key}/annotations.xml          CVAT XML 1.1 of the video's selected masklets (cvat)
    cvat/labels.json                      the CVAT task's labels, for its "Raw" label editor (cvat)
    labelstudio/config.xml                the Label Studio labelling config (labelstudio)
    labelstudio/tasks.json                Label Studio tasks with the masks as predictions (labelstudio)
"""

from __future__ import annotations

import csv
import datetime
import hashlib
import io
import json
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image

from masklet import __version__
from masklet.io import layout, rle, storage
from masklet.io.layout import JOB_FILE
from masklet.io.outputs import read_marker, read_shard, read_table
from masklet.io.schema import MaskletRecord, VideoRecord
from masklet.io.sinks import list_done
from masklet.pipelines import doubt
from masklet.pipelines.sampling import sample_size
from masklet.review.formats import cvat, labelstudio
from masklet.review.frames import video_frames
from masklet.review.manifest import MANIFEST, SELECTION_CSV, ExportedMasklet, ExportedVideo, Manifest

FORMATS = ("cvat", "labelstudio")
LOCAL_FILES_PREFIX = "/data/local-files/?d="  # Label Studio's local files, relative to its document root


@dataclass(frozen=True)
class ExportSettings:
    by: str = "stability"
    top_k: int | None = None
    fraction: float | None = None
    per_video: int | None = None
    seed: int = 0
    formats: tuple[str, ...] = FORMATS
    image_url_prefix: str = LOCAL_FILES_PREFIX
    jpeg_quality: int = 95

    def __post_init__(self) -> None:
        if self.by not in doubt.ORDERS:
            raise ValueError(f"unknown order {self.by!r}; expected one of {', '.join(doubt.ORDERS)}")
        unknown = sorted(set(self.formats) - set(FORMATS))
        if unknown or not self.formats:
            raise ValueError(f"unknown format(s) {unknown or 'none'}; expected some of {', '.join(FORMATS)}")
        if self.per_video is not None and self.per_video < 1:
            raise ValueError(f"per_video must be >= 1, got {self.per_video}")
        sample_size(0, top_k=self.top_k, fraction=self.fraction)  # exactly one of them, in range


def read_candidates(root: str, shard_ids: Sequence[str]) -> list[doubt.Masklet]:
    """The summary of every masklet row of the shards, as masklet.pipelines.doubt ranks them."""
    return [
        doubt.Masklet(shard_id=s, **row)
        for s in shard_ids
        for row in read_table(root, s, "masklets", columns=doubt.COLUMNS).to_pylist()
    ]


def select(candidates: Sequence[doubt.Masklet], settings: ExportSettings) -> list[doubt.Masklet]:
    """The kept candidates to review, in the order to review them: `settings.by`'s ranking, the first
    `top_k` (or `fraction` of the kept ones), skipping a masklet whose video already has `per_video`."""
    kept = [c for c in candidates if c.kept]
    k = sample_size(len(kept), top_k=settings.top_k, fraction=settings.fraction)
    per_video: Counter[tuple[str, str]] = Counter()
    chosen = []
    for m in doubt.rank(kept, settings.by, seed=settings.seed):
        if len(chosen) == k:
            break
        if settings.per_video is not None and per_video[(m.shard_id, m.video_key)] >= settings.per_video:
            continue
        per_video[(m.shard_id, m.video_key)] += 1
        chosen.append(m)
    return chosen


def export_review(out_root: str, review_root: str, settings: ExportSettings) -> Manifest:
    """Select, then write REVIEW_URI (module doc); returns the manifest. OUT is only read."""
    _check_roots(out_root, review_root)
    shard_ids = sorted(list_done(out_root))
    if not shard_ids:
        raise ValueError(f"{out_root!r} holds no committed shard")
    candidates = read_candidates(out_root, shard_ids)
    chosen = select(candidates, settings)
    if not chosen:
        kept = sum(c.kept for c in candidates)
        raise ValueError(f"nothing to review: the selection is empty ({kept} kept masklets in {out_root})")
    committed = {s: read_marker(out_root, s).get("committed_at") for s in shard_ids}
    selection = {
        "by": settings.by,
        "top_k": settings.top_k,
        "fraction": settings.fraction,
        "per_video": settings.per_video,
        "seed": settings.seed,
        "candidates": sum(c.kept for c in candidates),
        "selected": len(chosen),
    }
    refs = [(m.shard_id, m.video_key, m.masklet_id) for m in chosen]
    identity = json.dumps({"shards": committed, "selection": selection, "refs": refs}, sort_keys=True)
    job = layout.read_json(out_root, JOB_FILE) or {}
    manifest = Manifest(
        export_id=hashlib.sha256(identity.encode()).hexdigest()[:12],
        created_at=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        output={
            "root": out_root,
            "shards": committed,
            "model": job.get("model"),
            "config_hash": job.get("config_hash"),
        },
        selection=selection,
        formats=list(settings.formats),
        image_url_prefix=settings.image_url_prefix,
        masklets=[_exported(rank, m, settings.by) for rank, m in enumerate(chosen, start=1)],
        masklet_version=__version__,
    )
    source_format = ((job.get("config") or {}).get("source") or {}).get("format")
    rank = {(m.shard_id, m.video_key, m.masklet_id): i for i, m in enumerate(chosen)}
    tasks: list[tuple[int, int, dict]] = []  # (rank, position, task)
    for shard_id in sorted({m.shard_id for m in chosen}):
        shard = read_shard(out_root, shard_id)
        write_video = bool(shard.marker.get("write_video"))
        for video in shard.videos:
            masklets = sorted(
                (r for r in shard.masklets if r.video_key == video.video_key and (shard_id, *_key(r)) in rank),
                key=lambda r: rank[(shard_id, *_key(r))],
            )
            if not masklets:
                continue
            entry, video_tasks = _export_video(
                out_root, review_root, shard_id, video, masklets, manifest, settings, write_video, source_format
            )
            manifest.videos.append(entry)
            for t in video_tasks:
                tasks.append((rank[(shard_id, video.video_key, t["data"]["masklet_id"])], t["data"]["position"], t))
    if "labelstudio" in settings.formats:
        ordered = [t for _, _, t in sorted(tasks, key=lambda x: x[:2])]
        storage.write_bytes(storage.join(review_root, "labelstudio", "tasks.json"), json.dumps(ordered).encode())
        storage.write_bytes(storage.join(review_root, "labelstudio", "config.xml"), labelstudio.LABEL_CONFIG.encode())
    if "cvat" in settings.formats:
        storage.write_bytes(
            storage.join(review_root, "cvat", "labels.json"), json.dumps(cvat.labels(), indent=1).encode()
        )
    storage.write_bytes(storage.join(review_root, SELECTION_CSV), _selection_csv(manifest))
    storage.write_bytes(storage.join(review_root, MANIFEST), manifest.to_json())
    return manifest


def _key(r: MaskletRecord) -> tuple[str, int]:
    return (r.video_key, r.masklet_id)


def _check_roots(out_root: str, review_root: str) -> None:
    out, review = (os.path.realpath(u) if "://" not in u else u.rstrip("/") for u in (out_root, review_root))
    out, review = out + "/", review + "/"
    if review.startswith(out):
        raise ValueError(f"the review folder {review_root!r} must be outside the output {out_root!r} (never modified)")
    fs, path = storage.url_to_fs(storage.join(review_root, MANIFEST))
    if storage.call("check", review_root, fs.exists, path):
        raise ValueError(f"{review_root!r} already holds an export ({MANIFEST}); choose another folder")


def _exported(rank: int, m: doubt.Masklet, by: str) -> ExportedMasklet:
    column = doubt.RANKED_COLUMN[by]
    score = None if column is None else getattr(m, column)
    return ExportedMasklet(
        rank=rank,
        shard_id=m.shard_id,
        video_key=m.video_key,
        masklet_id=m.masklet_id,
        score=None if score is None else float(score),
        stability_mean=m.stability_mean,
        pred_iou_mean=m.pred_iou_mean,
        edit_count=m.edit_count,
        visibility_changes=m.visibility_changes,
        num_visible=m.num_visible,
    )


def _export_video(
    out_root: str,
    review_root: str,
    shard_id: str,
    video: VideoRecord,
    masklets: Sequence[MaskletRecord],
    manifest: Manifest,
    settings: ExportSettings,
    write_video: bool,
    source_format: str | None,
) -> tuple[ExportedVideo, list[dict]]:
    """Write one video's frames and CVAT file; return its manifest entry and its Label Studio tasks."""
    axis = sorted(set(video.frame_indices).union(*(m.frame_indices for m in masklets)))
    key, size = video.video_key, (int(video.height), int(video.width))
    images = f"videos/{key}/images"
    entries = [dict(zip(m.frame_indices, range(len(m.frame_indices)), strict=True)) for m in masklets]
    shapes: list[cvat.Shape] = []
    tasks: list[dict] = []
    frames = video_frames(out_root, shard_id, video, axis, write_video=write_video, source_format=source_format)
    for position, (frame_index, rgb) in enumerate(frames):
        name = cvat.frame_name(key, position)
        storage.write_bytes(storage.join(review_root, images, name), _jpeg(rgb, settings.jpeg_quality))
        for m, entry in zip(masklets, entries, strict=True):
            t = entry.get(frame_index)
            counts = m.rle[t] if t is not None else ""
            mask = rle.decode({"size": list(size), "counts": counts}) if counts else None
            ref = manifest.ref(key, m.masklet_id)
            if mask is not None:
                shape = cvat.Shape.of_mask(position, mask, {cvat.ATTR_MASKLET: ref, cvat.ATTR_REVIEW: "unreviewed"})
                shapes.append(shape)
            data = {
                "image": settings.image_url_prefix + f"{images}/{name}",
                "title": f"{key} · masklet {m.masklet_id} · frame {frame_index} ({position + 1}/{len(axis)})",
                "masklet": ref,
                "export": manifest.export_id,
                "video_key": key,
                "masklet_id": m.masklet_id,
                "frame": frame_index,
                "position": position,
            }
            if "labelstudio" in settings.formats:
                score = float(m.stability[t]) if t is not None else 0.0
                version = f"masklet {manifest.export_id}"
                tasks.append(labelstudio.task(data, mask, shape=size, model_version=version, score=score))
    if "cvat" in settings.formats:
        doc = cvat.Document(
            name=key,
            frames=[cvat.Frame(t, cvat.frame_name(key, t), size[1], size[0]) for t in range(len(axis))],
            shapes=shapes,
        )
        storage.write_bytes(storage.join(review_root, f"videos/{key}/annotations.xml"), cvat.render(doc))
    exported = ExportedVideo(
        video_key=key,
        shard_id=shard_id,
        original_key=video.original_key,
        height=size[0],
        width=size[1],
        frames=axis,
        masklets=[m.masklet_id for m in masklets],
        images=images,
    )
    return exported, tasks


def _jpeg(rgb: np.ndarray, quality: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb)).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def _selection_csv(manifest: Manifest) -> bytes:
    text = io.StringIO()
    columns = ["rank", "reference", "by", *(k for k in asdict(manifest.masklets[0]) if k != "rank")]
    writer = csv.DictWriter(text, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for m in manifest.masklets:
        writer.writerow(
            {"reference": manifest.ref(m.video_key, m.masklet_id), "by": manifest.selection["by"], **asdict(m)}
        )
    return text.getvalue().encode()
