"""CVAT's XML, version 1.1, for the masks of one video's frames: written for a CVAT task, read back.

masklet writes the "CVAT for images 1.1" layout: one `<image id name width height>` per exported frame
and in it one `<mask>` per masklet visible there, the masklet named by the text attribute `masklet`
("EXPORT_ID/VIDEO_KEY/MASKLET_ID") and its review by the select attribute `review` (`unreviewed`,
`accepted`, `rejected`). CVAT has no mask tracks: its importer (cvat/apps/dataset_manager/formats/cvat.py,
`load_anno`) turns a `<track>` of masks into one mask on the track's first frame and drops the rest, and
its "CVAT for video 1.1" export writes each mask as a track of its own (the mask, then an `outside`
shape on the next frame). So masks per frame are what survives CVAT both ways; the `masklet` attribute
ties a masklet's frames together. Both layouts are read back: `<image>` masks, and `<track>` keyframes,
each mask holding from its keyframe until the track's next keyframe (CVAT's track semantics).

A `<mask>` is run-length encoded over its box (`left`, `top`, `width`, `height`, the box inclusive of
its last row and column): counts of alternating background and foreground pixels, row by row,
starting with background (0 when the box starts on a foreground pixel), written "n, n, n" as CVAT
writes them (datumaro reads them with the same meaning).
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field, replace

import numpy as np

LABEL = "object"
ATTR_MASKLET = "masklet"
ATTR_REVIEW = "review"
REVIEW_VALUES = ("unreviewed", "accepted", "rejected")
COLOR = "#ff6037"
_SHAPES = ("box", "polygon", "polyline", "points", "ellipse", "cuboid", "skeleton", "mask")


def labels() -> list[dict]:
    """The task's labels in CVAT's "Raw" label editor format (paste it when creating the task)."""
    return [
        {
            "name": LABEL,
            "color": COLOR,
            "type": "mask",
            "attributes": [
                {"name": ATTR_MASKLET, "mutable": False, "input_type": "text", "default_value": "", "values": [""]},
                {
                    "name": ATTR_REVIEW,
                    "mutable": False,
                    "input_type": "select",
                    "default_value": REVIEW_VALUES[0],
                    "values": list(REVIEW_VALUES),
                },
            ],
        }
    ]


def encode_mask(mask: np.ndarray) -> tuple[str, int, int, int, int] | None:
    """(rle, left, top, width, height) of a bool mask over its tight box; None for an empty mask."""
    mask = np.asarray(mask, dtype=bool)
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return None
    top, left = int(rows[0]), int(cols[0])
    box = mask[top : rows[-1] + 1, left : cols[-1] + 1].ravel()
    change = np.flatnonzero(box[1:] != box[:-1]) + 1
    bounds = np.concatenate(([0], change, [box.size]))
    counts = np.diff(bounds).tolist()
    if box[0]:
        counts.insert(0, 0)
    height, width = int(rows[-1] + 1 - top), int(cols[-1] + 1 - left)
    return ", ".join(map(str, counts)), left, top, width, height


def check_mask(rle: str, left: int, top: int, width: int, height: int, frame: tuple[int, int]) -> np.ndarray:
    """The counts of a CVAT mask; ValueError if they do not cover its box or the box does not fit the frame."""
    frame_h, frame_w = frame
    if width < 1 or height < 1 or left < 0 or top < 0 or left + width > frame_w or top + height > frame_h:
        raise ValueError(f"a {width}x{height} mask at ({left}, {top}) does not fit a {frame_w}x{frame_h} frame")
    try:
        counts = np.asarray([int(c) for c in rle.split(",")], dtype=np.int64)
    except ValueError as exc:
        raise ValueError(f"rle is not a list of counts ({exc})") from exc
    if (counts < 0).any() or counts.sum() != width * height:
        raise ValueError(f"rle counts {int(counts.sum())} pixels, the {width}x{height} box has {width * height}")
    return counts


def decode_mask(rle: str, left: int, top: int, width: int, height: int, frame: tuple[int, int]) -> np.ndarray:
    """The bool mask [frame height, frame width] of a CVAT mask; ValueError if it does not fit the frame."""
    frame_h, frame_w = frame
    counts = check_mask(rle, left, top, width, height, frame)
    values = np.arange(counts.size) % 2 == 1  # background first
    box = np.repeat(values, counts).reshape(height, width)
    out = np.zeros((frame_h, frame_w), dtype=bool)
    out[top : top + height, left : left + width] = box
    return out


@dataclass
class Shape:
    """A mask on one frame as CVAT encodes it, with its attributes (`masklet`, `review`); `mask()` decodes it."""

    frame: int
    rle: str
    left: int
    top: int
    width: int
    height: int
    frame_size: tuple[int, int]  # (height, width) of the frame
    attributes: dict[str, str] = field(default_factory=dict)
    label: str = LABEL
    source: str = "auto"

    @classmethod
    def of_mask(cls, frame: int, mask: np.ndarray, attributes: dict[str, str], source: str = "auto") -> Shape | None:
        """The shape of a bool mask [H, W] (None if it is empty: CVAT has no empty masks)."""
        encoded = encode_mask(mask)
        if encoded is None:
            return None
        return cls(frame, *encoded, frame_size=tuple(mask.shape), attributes=dict(attributes), source=source)

    def mask(self) -> np.ndarray:
        return decode_mask(self.rle, self.left, self.top, self.width, self.height, self.frame_size)


@dataclass
class Frame:
    id: int
    name: str | None
    width: int
    height: int


@dataclass
class Document:
    """One CVAT task's annotations: its frames, its mask shapes, and who/when where the file says."""

    name: str
    frames: list[Frame]
    shapes: list[Shape]
    reviewer: str | None = None
    updated: str | None = None


def render(doc: Document) -> bytes:
    """The document as "CVAT for images 1.1" XML."""
    root = ET.Element("annotations")
    ET.SubElement(root, "version").text = "1.1"
    task = ET.SubElement(ET.SubElement(root, "meta"), "task")
    fields = {
        "name": doc.name,
        "size": str(len(doc.frames)),
        "mode": "annotation",
        "overlap": "0",
        "start_frame": "0",
        "stop_frame": str(max(len(doc.frames) - 1, 0)),
        "frame_filter": "",
    }
    if doc.updated:
        fields["updated"] = doc.updated
    for key, value in fields.items():
        ET.SubElement(task, key).text = value
    if doc.reviewer:
        ET.SubElement(ET.SubElement(task, "assignee"), "username").text = doc.reviewer
    label_list = ET.SubElement(task, "labels")
    for spec in labels():
        label = ET.SubElement(label_list, "label")
        for key in ("name", "color", "type"):
            ET.SubElement(label, key).text = spec[key]
        attrs = ET.SubElement(label, "attributes")
        for a in spec["attributes"]:
            attr = ET.SubElement(attrs, "attribute")
            ET.SubElement(attr, "name").text = a["name"]
            ET.SubElement(attr, "mutable").text = str(a["mutable"])
            ET.SubElement(attr, "input_type").text = a["input_type"]
            ET.SubElement(attr, "default_value").text = a["default_value"]
            ET.SubElement(attr, "values").text = "\n".join(a["values"])
    by_frame: dict[int, list[Shape]] = {}
    for shape in doc.shapes:
        by_frame.setdefault(shape.frame, []).append(shape)
    for frame in doc.frames:
        attrib = {"id": str(frame.id), **({"name": frame.name} if frame.name else {})}
        attrib.update(width=str(frame.width), height=str(frame.height))
        image = ET.SubElement(root, "image", attrib)
        for shape in by_frame.get(frame.id, []):
            element = ET.SubElement(
                image,
                "mask",
                {
                    "label": shape.label,
                    "source": shape.source,
                    "occluded": "0",
                    "rle": shape.rle,
                    "left": str(shape.left),
                    "top": str(shape.top),
                    "width": str(shape.width),
                    "height": str(shape.height),
                    "z_order": "0",
                },
            )
            for name, value in shape.attributes.items():
                ET.SubElement(element, "attribute", {"name": name}).text = value
    ET.indent(root)
    return b'<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(root, encoding="utf-8") + b"\n"


def parse(data: bytes, source: str) -> Document:
    """A CVAT XML 1.1 file, either layout, as a Document; ValueError naming `source` and the item.

    Shapes other than masks are refused (the task's label takes masks only). A `<track>`'s keyframe
    mask holds on every frame up to the track's next keyframe or the task's last frame.
    """
    try:
        root = ET.fromstring(data)
    except ET.ParseError as exc:
        raise ValueError(f"{source}: not a whole CVAT XML file ({exc})") from exc
    if root.tag != "annotations":
        raise ValueError(f"{source}: not a CVAT XML file (root <{root.tag}>, expected <annotations>)")
    meta = root.find("meta")
    task = None if meta is None else (meta.find("task") if meta.find("task") is not None else meta.find("job"))
    name = _text(task, "name") or ""
    reviewer = _text(task, "assignee/username") or _text(task, "owner/username") if task is not None else None
    updated = (_text(task, "updated") if task is not None else None) or _text(meta, "dumped")
    frames = [_frame(el, source) for el in root.iter("image")]
    shapes: list[Shape] = []
    for image in root.iter("image"):
        frame_id = int(image.get("id", "-1"))
        size = (int(image.get("height", "0")), int(image.get("width", "0")))
        for element in image:
            if element.tag in _SHAPES:
                shapes.append(_shape(element, frame_id, size, {}, f"{source}: frame {frame_id}"))
    tracks = root.findall("track")
    if tracks:
        size = (_int(task, "original_size/height"), _int(task, "original_size/width"))
        stop = _int(task, "stop_frame") if _text(task, "stop_frame") else _int(task, "size") - 1
        if not frames:
            frames = [Frame(i, None, size[1], size[0]) for i in range(stop + 1)]
        for track in tracks:
            shapes.extend(_track_shapes(track, size, stop, f"{source}: track {track.get('id')}"))
    return Document(name=name, frames=frames, shapes=shapes, reviewer=reviewer or None, updated=updated)


def _track_shapes(track: ET.Element, size: tuple[int, int], stop: int, where: str) -> list[Shape]:
    common = {a.get("name", ""): a.text or "" for a in track.findall("attribute")}
    keys = sorted(
        (el for el in track if el.tag in _SHAPES and el.get("keyframe", "1") == "1"), key=lambda e: int(e.get("frame"))
    )
    out = []
    for i, element in enumerate(keys):
        if element.get("outside", "0") == "1":
            continue
        first = int(element.get("frame"))
        last = int(keys[i + 1].get("frame")) - 1 if i + 1 < len(keys) else stop
        shape = _shape(element, first, size, common, f"{where}, frame {first}", track.get("label", ""))
        out.extend(replace(shape, frame=f, attributes=dict(shape.attributes)) for f in range(first, last + 1))
    return out


def _shape(
    element: ET.Element, frame: int, size: tuple[int, int], common: dict[str, str], where: str, label: str = ""
) -> Shape:
    if element.tag != "mask":
        raise ValueError(f"{where}: a {element.tag}; only masks are read (label {LABEL!r} is a mask label)")
    attributes = {**common, **{a.get("name", ""): (a.text or "").strip() for a in element.findall("attribute")}}
    try:
        left, top, width, height = (int(element.get(k, "")) for k in ("left", "top", "width", "height"))
        rle = element.get("rle", "")
        check_mask(rle, left, top, width, height, size)
    except ValueError as exc:
        what = attributes.get(ATTR_MASKLET) or "a mask without masklet"
        raise ValueError(f"{where}, {what}: {exc}") from exc
    label, source = element.get("label", label), element.get("source", "manual")
    return Shape(frame, rle, left, top, width, height, size, attributes, label, source)


def _frame(element: ET.Element, source: str) -> Frame:
    try:
        return Frame(int(element.get("id")), element.get("name"), int(element.get("width")), int(element.get("height")))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{source}: an <image> without a numeric id, width and height ({element.attrib})") from exc


def _text(element: ET.Element | None, path: str) -> str | None:
    if element is None:
        return None
    found = element.find(path)
    return None if found is None or found.text is None else found.text.strip()


def _int(element: ET.Element | None, path: str) -> int:
    text = _text(element, path)
    if text is None or not re.fullmatch(r"-?\d+", text):
        raise ValueError(f"the file's <meta> has no number at {path} (needed to read its tracks)")
    return int(text)


def frame_name(video_key: str, position: int) -> str:
    """The image file of an exported frame: sorts in frame order and names its video."""
    return f"{video_key}.{position:06d}.jpg"


def parse_frame_name(name: str | None) -> tuple[str, int] | None:
    """(video_key, position) of an image `frame_name` made, or None for any other name."""
    match = re.fullmatch(r"(?:.*/)?([A-Za-z0-9_-]+)\.(\d{6})\.jpg", name or "")
    return None if match is None else (match.group(1), int(match.group(2)))
