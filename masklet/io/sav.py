"""SA-V annotation JSON (the format of SA-V's `sav_XXXXXX_{manual,auto}.json`): build it and read it back.

Field meanings follow the SA-V dataset README (sam2 repo, `sav_dataset/README.md`) and its example
files: `masklet` is a list over annotated frames, each a list over objects of COCO RLEs;
`masklet_stability_score` has the same [annotated frame][object] layout (an `*_auto.json` file) or
is one null per object (a `*_manual.json` file); the other `masklet_*` statistics are lists over
objects. `masklet_size_abs` / `_rel` are the mean mask area (pixels / fraction of the frame) over the
annotated frames where the object is visible; the size bucket uses the COCO thresholds on that
absolute area (small < 32^2 <= medium < 96^2 <= large); `masklet_visibility_changes` counts
visible<->invisible switches after the first appearance; `masklet_first_appeared_frame` and
`masklet_frame_count` count annotated frames, not video frames (-1: never visible); `masklet_type`
is "auto" or "manual". `video_*` numbers are floats, as in SA-V.

SA-V annotates every 4th frame of a 24 fps video and its files do not say so; SAM 2's training
loader (`JSONSegmentLoader`, training/dataset/vos_segment_loader.py) takes the stride from its
configuration or, when the file has one, from an `fps` field: annotated frames per second, with
entry i read as video frame i * (frames_fps // int(fps)), `frames_fps` being the loader's setting
(the video's frame rate). Besides that field, masklet adds fields of its own: `video_fps`,
`masklet_frame_indices` (the video frame of each `masklet` entry: the authority for masklet's
readers, so they never guess the stride), `masklet_source` (masklet's kind of each masklet) and,
for a video with reviewed masklets, `masklet_review` (each one's review verdict, null where nobody
reviewed it). A masklet a person corrected is SA-V's "manual" type, its `masklet_edited_frame_count` the
frames they changed. Files without `masklet_frame_indices` are read as the official loader reads them for SA-V.
"""

from __future__ import annotations

import io
import json
import math
import shutil
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np

from masklet.io import rle
from masklet.io.rle import RLE

SAV_FPS = 24  # SA-V videos; the loader's default frames_fps
SAV_STRIDE = 4  # SA-V annotates them at 6 fps
SMALL_AREA = 32**2
LARGE_AREA = 96**2
REQUIRED = ("video_id", "video_frame_count", "video_height", "video_width", "masklet", "masklet_id")
# masklet's source of a masklet -> SA-V's masklet_type: model-made masks are "auto", ground truth "manual"
SAV_TYPES = {"auto": "auto", "prompt": "auto", "synthetic": "manual"}


def size_bucket(area_abs: float) -> str:
    """SA-V's size bucket of a masklet from its mean visible area in pixels."""
    if area_abs < SMALL_AREA:
        return "small"
    return "medium" if area_abs < LARGE_AREA else "large"


def loader_fps(frame_indices: Sequence[int], fps: float) -> int | None:
    """The `fps` field that makes SAM 2's loader read entry i as frame frame_indices[i], or None if none does.

    The loader needs frames 0, s, 2s, ... and a whole number of annotated frames per second: it reads
    `int(fps)` and divides its `frames_fps`, set to the video's rate rounded (30 for 29.97), by it.
    25 fps at stride 4 (6.25 per second) has no such number, and fewer than two entries have no stride.
    """
    if len(frame_indices) < 2:
        return None
    stride = frame_indices[1]
    rate = max(1, math.floor(fps + 0.5))
    if list(frame_indices) != list(range(0, stride * len(frame_indices), stride)) or rate % stride:
        return None
    return rate // stride


class _Statistics:
    """SA-V's per-object statistics, gathered one annotated frame at a time from the mask areas."""

    def __init__(self, num_objects: int) -> None:
        self.entries = 0
        self.area_sum = np.zeros(num_objects, dtype=np.float64)  # integer pixel counts: exact below 2**53
        self.visible_entries = np.zeros(num_objects, dtype=np.int64)
        self.first = np.full(num_objects, -1, dtype=np.int64)
        self.last = np.zeros(num_objects, dtype=bool)
        self.changes = np.zeros(num_objects, dtype=np.int64)

    def add(self, areas: np.ndarray) -> None:
        visible = areas > 0
        seen = self.first >= 0
        self.changes += seen & (visible != self.last)  # switches after the first appearance
        self.first[~seen & visible] = self.entries
        self.area_sum += np.where(visible, areas, 0)
        self.visible_entries += visible
        self.last = visible
        self.entries += 1

    def fields(self, resolution: int) -> dict:
        size_abs = [float(a / n) if n else 0.0 for a, n in zip(self.area_sum, self.visible_entries, strict=True)]
        return {
            "masklet_size_rel": [a / resolution for a in size_abs],
            "masklet_size_abs": size_abs,
            "masklet_size_bucket": [size_bucket(a) for a in size_abs],
            "masklet_visibility_changes": [int(c) for c in self.changes],
            "masklet_first_appeared_frame": [int(f) for f in self.first],
        }


def _dumps(value: object) -> str:
    return json.dumps(value, separators=(",", ":"))


def write(
    out: BinaryIO,
    video_id: str,
    rows: Iterable[tuple[Sequence[str], Sequence[float] | None]],
    *,
    height: int,
    width: int,
    fps: float,
    frame_indices: Sequence[int],
    masklet_ids: Sequence[int],
    video_frame_count: int | None = None,
    sources: Sequence[str] | None = None,
    edited_frame_counts: Sequence[int] | None = None,
    review_verdicts: Sequence[str | None] | None = None,
    extra: Mapping[str, object] | None = None,
) -> None:
    """Write an SA-V annotation as compact JSON to `out`, one annotated frame at a time.

    `rows`: per annotated frame (`frame_indices`), the COCO counts of each object (`masklet_ids`) at
    `height` x `width` and their stability scores, or None for a file without them (manual); read
    once, so a long video's masks never need to be in memory together (the stability scores wait
    in a temporary file: the document lists them after the masks). `extra` fields go last. See
    `build` for the other arguments; `build(...)` is this document, parsed.
    """
    frame_indices = [int(i) for i in frame_indices]
    if (np.diff(frame_indices) <= 0).any() or min(frame_indices, default=0) < 0:
        raise ValueError("frame_indices must be non-negative and strictly increasing")
    if video_frame_count is None:
        video_frame_count = frame_indices[-1] + 1 if frame_indices else 0
    if frame_indices and frame_indices[-1] >= video_frame_count:
        raise ValueError(f"frame index {frame_indices[-1]} outside a video of {video_frame_count} frames")
    if fps <= 0:
        raise ValueError(f"fps must be positive, got {fps}")
    ids = [int(i) for i in masklet_ids]
    num_objects = len(ids)
    sources = ["synthetic"] * num_objects if sources is None else list(sources)
    edited = [0] * num_objects if edited_frame_counts is None else [int(c) for c in edited_frame_counts]
    reviews = None if review_verdicts is None else list(review_verdicts)
    if not len(sources) == len(edited) == len(reviews or edited) == num_objects:
        raise ValueError(
            f"masklet_ids, sources, edited_frame_counts and review_verdicts need one entry per object ({num_objects})"
        )
    unknown = sorted(set(sources) - set(SAV_TYPES))
    if unknown:
        raise ValueError(f"unknown masklet source(s) {unknown}; known: {sorted(SAV_TYPES)}")
    resolution = height * width
    head = {
        "video_id": video_id,
        "video_duration": float(video_frame_count / fps),
        "video_frame_count": float(video_frame_count),
        "video_height": float(height),
        "video_width": float(width),
        "video_resolution": float(resolution),
        "video_environment": None,  # SA-V: "Indoor" / "Outdoor"; masklet does not classify scenes
        "video_split": "train",  # every SA-V JSON file is a training file (val/test ship as PNGs)
    }
    out.write(f'{_dumps(head)[:-1]},"masklet":['.encode())
    stats = _Statistics(num_objects)
    has_stability: bool | None = None
    with tempfile.TemporaryFile() as scores:
        for t, (counts, stability) in enumerate(rows):
            if len(counts) != num_objects:
                raise ValueError(f"annotated frame {t} has {len(counts)} objects, expected {num_objects}")
            if has_stability is None:
                has_stability = stability is not None
            if (stability is not None) != has_stability or (stability is not None and len(stability) != num_objects):
                raise ValueError(f"stability_scores must be [annotated frame][object] (frame {t})")
            entry = [{"size": [height, width], "counts": c} for c in counts]
            out.write(f"{',' if t else ''}{_dumps(entry)}".encode())
            stats.add(rle.area_batch(entry) if entry else np.zeros(0, dtype=np.int64))
            if stability is not None:
                scores.write(f"{',' if t else ''}{_dumps([float(x) for x in stability])}".encode())
        if stats.entries != len(frame_indices):
            raise ValueError(f"frame_indices has {len(frame_indices)} entries, masklet has {stats.entries} frames")
        tail = {
            "masklet_id": ids,
            **stats.fields(resolution),
            "masklet_frame_count": [stats.entries] * num_objects,
            "masklet_edited_frame_count": edited,
            "masklet_type": [
                "manual" if reviews and reviews[i] == "corrected" else SAV_TYPES[s] for i, s in enumerate(sources)
            ],
        }
        out.write(f"],{_dumps(tail)[1:-1]},".encode())
        if has_stability:
            out.write(b'"masklet_stability_score":[')
            scores.seek(0)
            shutil.copyfileobj(scores, out)
            out.write(b"],")
        else:
            out.write(f'"masklet_stability_score":{_dumps([None] * num_objects)},'.encode())
    rest: dict[str, object] = {"masklet_num": num_objects}
    annotation_fps = loader_fps(frame_indices, fps)
    if annotation_fps is not None:  # absent, not null: the loader would int() a null; absent, its ann_every stands
        rest["fps"] = annotation_fps
    rest |= {"video_fps": float(fps), "masklet_frame_indices": frame_indices, "masklet_source": sources}
    if reviews is not None:
        rest["masklet_review"] = reviews
    rest |= dict(extra or {})
    out.write(f"{_dumps(rest)[1:]}".encode())


def build(
    video_id: str,
    masklet: Sequence[Sequence[RLE]],
    *,
    height: int,
    width: int,
    fps: float,
    frame_indices: Sequence[int] | None = None,
    video_frame_count: int | None = None,
    masklet_ids: Sequence[int] | None = None,
    sources: Sequence[str] | None = None,
    edited_frame_counts: Sequence[int] | None = None,
    stability_scores: Sequence[Sequence[float]] | None = None,
    review_verdicts: Sequence[str | None] | None = None,
) -> dict:
    """An SA-V annotation from RLEs indexed [annotated frame][object] of a video at `fps`.

    `frame_indices` defaults to every frame (0, 1, 2, ...) and `video_frame_count` to one past the
    last annotated frame. `sources` (keys of SAV_TYPES) default to "synthetic" (ground truth);
    `stability_scores` are [annotated frame][object] like `masklet`, or None (a manual file).
    `review_verdicts`: per object what a person said of it (`accepted`, `corrected`, or None where
    nobody reviewed it); a corrected masklet is "manual" and the file gets `masklet_review`.
    Statistics are computed from the RLE areas, never from dense masks.
    """
    num_entries = len(masklet)
    frame_indices = list(range(num_entries)) if frame_indices is None else frame_indices
    num_objects = len(masklet[0]) if num_entries else len(masklet_ids or ())
    for t, row in enumerate(masklet):
        for r in row:
            if list(r["size"]) != [height, width]:
                raise ValueError(f"RLE of size {r['size']} in annotated frame {t}, video is {height}x{width}")
    if stability_scores is not None and len(stability_scores) != num_entries:
        raise ValueError(f"stability_scores must be [annotated frame][object] ({num_entries} x {num_objects})")
    scores: Sequence[Sequence[float] | None] = [None] * num_entries if stability_scores is None else stability_scores
    out = io.BytesIO()
    write(
        out,
        video_id,
        (([r["counts"] for r in row], s) for row, s in zip(masklet, scores, strict=True)),
        height=height,
        width=width,
        fps=fps,
        frame_indices=frame_indices,
        masklet_ids=list(range(num_objects)) if masklet_ids is None else masklet_ids,
        video_frame_count=video_frame_count,
        sources=sources,
        edited_frame_counts=edited_frame_counts,
        review_verdicts=review_verdicts,
    )
    return json.loads(out.getvalue())


def build_from_masks(video_id: str, masks: np.ndarray, *, fps: float, **kwargs) -> dict:
    """An SA-V annotation from dense bool masks [objects, annotated frames, H, W]; see `build`."""
    masks = np.asarray(masks, dtype=bool)
    if masks.ndim != 4:
        raise ValueError(f"masks must be [objects, frames, H, W], got shape {masks.shape}")
    _, num_entries, height, width = masks.shape
    masklet = [rle.encode_batch(masks[:, t]) for t in range(num_entries)]
    return build(video_id, masklet, height=height, width=width, fps=fps, **kwargs)


@dataclass(frozen=True)
class SavAnnotation:
    """A parsed SA-V annotation; `doc` keeps every field, SA-V statistics included."""

    video_id: str
    height: int
    width: int
    frame_count: int
    frame_indices: list[int]
    masklet_ids: list[int]
    masklet: list[list[RLE]]  # [annotated frame][object]
    doc: dict

    def rles(self, masklet_id: int) -> list[RLE]:
        """The RLEs of one masklet over the annotated frames."""
        if masklet_id not in self.masklet_ids:
            raise KeyError(f"no masklet {masklet_id} in {self.video_id}; ids are {self.masklet_ids}")
        position = self.masklet_ids.index(masklet_id)
        return [row[position] for row in self.masklet]

    def masks(self, masklet_id: int) -> np.ndarray:
        """Dense bool masks [annotated frames, H, W] of one masklet."""
        out = np.zeros((len(self.masklet), self.height, self.width), dtype=bool)
        for t, r in enumerate(self.rles(masklet_id)):
            out[t] = rle.decode(r)
        return out


def loader_stride(doc: dict) -> int:
    """The stride SAM 2's loader reads a file with when configured for SA-V (frames_fps 24, ann_every 4)."""
    if "fps" not in doc:
        return SAV_STRIDE
    rate = int(doc["fps"][0] if isinstance(doc["fps"], list) else doc["fps"])
    if rate <= 0 or SAV_FPS % rate:
        raise ValueError(f"fps {doc['fps']!r} does not divide SA-V's {SAV_FPS} fps; add masklet_frame_indices")
    return SAV_FPS // rate


def parse(doc: dict | str | bytes) -> SavAnnotation:
    """Read an SA-V annotation (a dict or its JSON text), checking that its shapes agree."""
    if not isinstance(doc, dict):
        doc = json.loads(doc)
    missing = [k for k in REQUIRED if k not in doc]
    if missing:
        raise ValueError(f"SA-V annotation lacks field(s) {', '.join(missing)}")
    masklet = doc["masklet"]
    ids = [int(i) for i in doc["masklet_id"]]
    indices = doc.get("masklet_frame_indices")
    if indices is None:
        indices = [loader_stride(doc) * t for t in range(len(masklet))]
    indices = [int(i) for i in indices]
    if len(indices) != len(masklet):
        raise ValueError(f"masklet_frame_indices has {len(indices)} entries, masklet has {len(masklet)}")
    height, width = int(doc["video_height"]), int(doc["video_width"])
    for t, row in enumerate(masklet):
        if len(row) != len(ids):
            raise ValueError(f"annotated frame {t} has {len(row)} objects, masklet_id lists {len(ids)}")
    return SavAnnotation(
        video_id=str(doc["video_id"]),
        height=height,
        width=width,
        frame_count=int(doc["video_frame_count"]),
        frame_indices=indices,
        masklet_ids=ids,
        masklet=masklet,
        doc=doc,
    )
