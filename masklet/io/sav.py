"""SA-V annotation JSON (the format of SA-V's `sav_XXXXXX_manual.json`): build it and read it back.

Field meanings follow the SA-V dataset README (sam2 repo, `sav_dataset/README.md`):
`masklet` is a list over annotated frames, each a list over objects of COCO RLEs; the `masklet_*`
statistics are lists over objects; `masklet_size_abs` / `_rel` are the mean mask area (pixels /
fraction of the frame) over the annotated frames where the object is visible; the size bucket uses
the COCO thresholds on that absolute area (small < 32^2 <= medium < 96^2 <= large);
`masklet_visibility_changes` counts visible<->invisible switches after the first appearance;
`masklet_frame_count` is the number of annotated frames. `video_*` numbers are floats, as in SA-V.

SA-V annotates every 4th frame of a 24 fps video, and its files do not say so. This module adds one
field, `masklet_frame_indices`: the video frame index of each entry of `masklet`, so readers never
guess the stride. `masklet_first_appeared_frame` is a video frame index too (-1: never visible).
Files without the extension are read with SA-V's stride.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from masklet.io import rle
from masklet.io.rle import RLE

SAV_STRIDE = 4  # SA-V: 24 fps videos annotated at 6 fps
SMALL_AREA = 32**2
LARGE_AREA = 96**2
REQUIRED = ("video_id", "video_frame_count", "video_height", "video_width", "masklet", "masklet_id")


def size_bucket(area_abs: float) -> str:
    """SA-V's size bucket of a masklet from its mean visible area in pixels."""
    if area_abs < SMALL_AREA:
        return "small"
    return "medium" if area_abs < LARGE_AREA else "large"


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
    masklet_type: str = "manual",
    edited_frame_counts: Sequence[int] | None = None,
    stability_scores: Sequence[Sequence[float] | None] | None = None,
) -> dict:
    """An SA-V annotation from RLEs indexed [annotated frame][object].

    `frame_indices` defaults to every frame (0, 1, 2, ...) and `video_frame_count` to one past the
    last annotated frame. Statistics are computed from the RLE areas, never from dense masks.
    """
    num_entries = len(masklet)
    frame_indices = list(range(num_entries)) if frame_indices is None else [int(i) for i in frame_indices]
    if len(frame_indices) != num_entries:
        raise ValueError(f"frame_indices has {len(frame_indices)} entries, masklet has {num_entries} frames")
    if (np.diff(frame_indices) <= 0).any() or min(frame_indices, default=0) < 0:
        raise ValueError("frame_indices must be non-negative and strictly increasing")
    if video_frame_count is None:
        video_frame_count = frame_indices[-1] + 1 if frame_indices else 0
    if frame_indices and frame_indices[-1] >= video_frame_count:
        raise ValueError(f"frame index {frame_indices[-1]} outside a video of {video_frame_count} frames")
    if fps <= 0:
        raise ValueError(f"fps must be positive, got {fps}")
    num_objects = len(masklet[0]) if num_entries else len(masklet_ids or ())
    for t, row in enumerate(masklet):
        if len(row) != num_objects:
            raise ValueError(f"annotated frame {t} has {len(row)} objects, expected {num_objects}")
        for r in row:
            if list(r["size"]) != [height, width]:
                raise ValueError(f"RLE of size {r['size']} in annotated frame {t}, video is {height}x{width}")
    ids = list(range(num_objects)) if masklet_ids is None else [int(i) for i in masklet_ids]
    if len(ids) != num_objects:
        raise ValueError(f"{len(ids)} masklet ids for {num_objects} objects")
    areas = rle.area_batch([r for row in masklet for r in row]).reshape(num_entries, num_objects)
    resolution = height * width
    size_abs, changes, first = [], [], []
    for obj in range(num_objects):
        visible = areas[:, obj] > 0
        size_abs.append(float(areas[visible, obj].mean()) if visible.any() else 0.0)
        start = int(np.argmax(visible)) if visible.any() else num_entries
        changes.append(int(np.count_nonzero(visible[start + 1 :] != visible[start:-1])))
        first.append(frame_indices[start] if start < num_entries else -1)
    edited = [0] * num_objects if edited_frame_counts is None else [int(c) for c in edited_frame_counts]
    stability = [None] * num_objects if stability_scores is None else stability_scores
    stability = [None if s is None else [float(x) for x in s] for s in stability]
    if len(edited) != num_objects or len(stability) != num_objects:
        raise ValueError(f"edited_frame_counts and stability_scores need one entry per object ({num_objects})")
    return {
        "video_id": video_id,
        "video_duration": float(video_frame_count / fps),
        "video_frame_count": float(video_frame_count),
        "video_height": float(height),
        "video_width": float(width),
        "video_resolution": float(resolution),
        "masklet": [[{"size": [height, width], "counts": r["counts"]} for r in row] for row in masklet],
        "masklet_id": ids,
        "masklet_size_rel": [a / resolution for a in size_abs],
        "masklet_size_abs": size_abs,
        "masklet_size_bucket": [size_bucket(a) for a in size_abs],
        "masklet_visibility_changes": changes,
        "masklet_first_appeared_frame": first,
        "masklet_frame_count": [num_entries] * num_objects,
        "masklet_edited_frame_count": edited,
        "masklet_type": [masklet_type] * num_objects,
        "masklet_stability_score": stability,
        "masklet_num": num_objects,
        "masklet_frame_indices": frame_indices,
    }


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
    indices = [SAV_STRIDE * t for t in range(len(masklet))] if indices is None else [int(i) for i in indices]
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
