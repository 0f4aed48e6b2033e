"""`review.json`: what an export holds, the key to reading its corrections back.

It names the export (`export_id`, in every masklet reference the tools carry: "EXPORT_ID/VIDEO_KEY/
MASKLET_ID"), the output it came from (each shard's commit time, so an output labelled again since is
noticed), the selection and its scores, and per video the frames exported: position t is the t-th
image and CVAT frame t, and stands for video frame `frames[t]`.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from typing import Any

from masklet.io import storage

MANIFEST = "review.json"
SELECTION_CSV = "selection.csv"
FORMAT = "masklet-review-export"
VERSION = 1
REF = re.compile(r"([0-9a-f]{1,64})/([A-Za-z0-9_-]{1,90})/(-?\d+)")


@dataclass(frozen=True)
class ExportedMasklet:
    """One selected masklet, its rank (1: look first) and the summary values it was ranked on."""

    rank: int
    shard_id: str
    video_key: str
    masklet_id: int
    score: float | None
    stability_mean: float | None
    pred_iou_mean: float | None
    edit_count: int
    visibility_changes: int
    num_visible: int


@dataclass(frozen=True)
class ExportedVideo:
    """A video with selected masklets: its exported frames (video frame index by position)."""

    video_key: str
    shard_id: str
    original_key: str
    height: int
    width: int
    frames: list[int]
    masklets: list[int]
    images: str  # the folder of its frame images, relative to the export root


@dataclass
class Manifest:
    export_id: str
    created_at: str
    output: dict[str, Any]
    selection: dict[str, Any]
    formats: list[str]
    image_url_prefix: str
    videos: list[ExportedVideo] = field(default_factory=list)
    masklets: list[ExportedMasklet] = field(default_factory=list)
    masklet_version: str = ""

    def ref(self, video_key: str, masklet_id: int) -> str:
        return f"{self.export_id}/{video_key}/{masklet_id}"

    def video(self, video_key: str) -> ExportedVideo | None:
        return next((v for v in self.videos if v.video_key == video_key), None)

    def to_json(self) -> bytes:
        doc = {"format": FORMAT, "version": VERSION, **asdict(self)}
        return json.dumps(doc, indent=1).encode() + b"\n"

    @classmethod
    def from_json(cls, data: bytes, source: str) -> Manifest:
        try:
            doc = json.loads(data)
            if doc.get("format") != FORMAT:
                raise ValueError(f"format {doc.get('format')!r}, expected {FORMAT!r}")
            if doc.get("version") != VERSION:
                raise ValueError(f"version {doc.get('version')!r}; this masklet reads version {VERSION}")
            return cls(
                export_id=doc["export_id"],
                created_at=doc["created_at"],
                output=doc["output"],
                selection=doc["selection"],
                formats=list(doc["formats"]),
                image_url_prefix=doc["image_url_prefix"],
                videos=[ExportedVideo(**v) for v in doc["videos"]],
                masklets=[ExportedMasklet(**m) for m in doc["masklets"]],
                masklet_version=doc.get("masklet_version", ""),
            )
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"{source} is not a masklet review export manifest ({exc})") from exc


def parse_ref(text: str) -> tuple[str, str, int] | None:
    """(export_id, video_key, masklet_id) of a masklet reference, or None if `text` is not one."""
    match = REF.fullmatch(text.strip())
    return None if match is None else (match.group(1), match.group(2), int(match.group(3)))


def load(review_uri: str) -> Manifest:
    uri = storage.join(review_uri, MANIFEST)
    data = storage.read_bytes_if_present(uri)
    if data is None:
        raise ValueError(f"{review_uri} holds no {MANIFEST}: not a `masklet review export` folder")
    return Manifest.from_json(data, uri)
