"""Label Studio: image tasks with brush predictions, and its JSON export read back.

Label Studio has no video-mask tag, so each exported frame of a masklet is one image task: the frame
as `$image`, the model's mask as a `BrushLabels` prediction in Label Studio's own RLE, and in `data`
which masklet and frame it is (`masklet` = "EXPORT_ID/VIDEO_KEY/MASKLET_ID", `position`, `frame`).
Tasks come in selection order, then frame order, so a reviewer walks one masklet through its video.

Label Studio's brush RLE (label_studio_sdk.converter.brush, after thi.ng's rle-pack) encodes the
flattened RGBA bytes of a height x width image: a 32-bit count of values, a 5-bit word size - 1, four
4-bit run-length sizes - 1, then runs: a bit (1: one value repeated, 0: literal values), 2 bits
choosing a size, size bits of run length - 1, then the value(s) in word-size bits; zero bits pad the
last byte. A pixel is in the mask when its alpha byte is >= 128 (brush strokes may be anti-aliased).
`encode_rle` writes the bytes the SDK's `mask2rle` writes for the same mask.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

FROM_MASK = "mask"  # the BrushLabels tag
FROM_REVIEW = "review"  # the Choices tag
TO_IMAGE = "image"
LABEL = "object"
REJECTED = "rejected"
_WORD = 8
_SIZES = (3, 4, 8, 16)  # bits of a run length, chosen by 2 bits
_ALPHA_ON = 128

LABEL_CONFIG = f"""<View>
  <Header value="$title"/>
  <Image name="{TO_IMAGE}" value="$image" zoom="true" zoomControl="true"/>
  <BrushLabels name="{FROM_MASK}" toName="{TO_IMAGE}">
    <Label value="{LABEL}" background="#ff6037"/>
  </BrushLabels>
  <Choices name="{FROM_REVIEW}" toName="{TO_IMAGE}" choice="single" showInline="true">
    <Choice value="{REJECTED}" hint="not one real object: drop the whole masklet"/>
  </Choices>
</View>
"""


def encode_rle(mask: np.ndarray) -> list[int]:
    """Label Studio's RLE of a bool mask [height, width] (RGBA 255 where set, 0 elsewhere)."""
    flat = np.asarray(mask, dtype=bool).ravel()
    n = flat.size * 4
    if n >= 2**32:
        raise ValueError(f"a {mask.shape} mask is too large for Label Studio's RLE")
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    starts = np.concatenate(([0], change))
    lengths = np.diff(np.concatenate((starts, [flat.size]))) * 4
    values = np.where(flat[starts], 255, 0) if flat.size else np.zeros(0, dtype=int)
    bits = [f"{n:032b}", f"{_WORD - 1:05b}", *(f"{s - 1:04b}" for s in _SIZES)]
    for length, value in zip(lengths.tolist(), values.tolist(), strict=True):
        while length > 2**16:  # the longest run one 16-bit length holds
            bits.append(f"111{2**16 - 1:016b}{value:08b}")
            length -= 2**16
        index = next(i for i, s in enumerate(_SIZES) if length <= 2**s)
        bits.append(f"1{index:02b}{length - 1:0{_SIZES[index]}b}{value:08b}")
    stream = "".join(bits)
    stream += "0" * (8 - len(stream) % 8)  # as the SDK pads: a whole zero byte when already aligned
    return list(int(stream, 2).to_bytes(len(stream) // 8, "big"))


def decode_rle(rle: Sequence[int], height: int, width: int) -> np.ndarray:
    """The bool mask [height, width] of a Label Studio RLE; ValueError if it is not one of that size."""
    try:
        data = np.asarray(rle, dtype=np.int64)
        if data.ndim != 1 or ((data < 0) | (data > 255)).any():
            raise ValueError("not a list of bytes")
        bits = "".join(np.unpackbits(data.astype(np.uint8)).astype("U1"))
        num, word = int(bits[:32], 2), int(bits[32:37], 2) + 1
        sizes = [int(bits[37 + 4 * i : 41 + 4 * i], 2) + 1 for i in range(4)]
    except (ValueError, TypeError) as exc:
        raise ValueError(f"not a Label Studio RLE ({exc})") from exc
    if num != height * width * 4:
        raise ValueError(f"an RLE of {num} values is not a {height}x{width} RGBA mask ({height * width * 4} values)")
    out = np.zeros(num, dtype=np.uint8)
    pos, i = 53, 0
    try:
        while i < num:
            repeat = bits[pos] == "1"
            size = sizes[int(bits[pos + 1 : pos + 3], 2)]
            j = i + 1 + int(bits[pos + 3 : pos + 3 + size], 2)
            pos += 3 + size
            if j > num:
                raise ValueError(f"a run ends at value {j} of {num}")
            if repeat:
                out[i:j] = int(bits[pos : pos + word], 2)
                pos += word
            else:
                for k in range(i, j):
                    out[k] = int(bits[pos : pos + word], 2)
                    pos += word
            i = j
    except (ValueError, IndexError) as exc:
        raise ValueError(f"a damaged Label Studio RLE ({exc or 'it ends early'})") from exc
    return out.reshape(height, width, 4)[:, :, 3] >= _ALPHA_ON


def brush_result(mask: np.ndarray, result_id: str) -> dict:
    """A `brushlabels` result of `mask` as Label Studio stores it in a prediction or an annotation."""
    height, width = mask.shape
    return {
        "id": result_id,
        "from_name": FROM_MASK,
        "to_name": TO_IMAGE,
        "type": "brushlabels",
        "original_width": int(width),
        "original_height": int(height),
        "image_rotation": 0,
        "value": {"format": "rle", "rle": encode_rle(mask), "brushlabels": [LABEL]},
    }


def task(
    data: Mapping[str, Any], mask: np.ndarray | None, *, shape: tuple[int, int], model_version: str, score: float
) -> dict:
    """One task to import: `data` (with `image`) and the model's mask as a prediction (none: no region)."""
    result = [] if mask is None or not mask.any() else [brush_result(mask, f"m{data['masklet_id']}")]
    height, width = shape
    if mask is not None and mask.shape != (height, width):
        raise ValueError(f"mask {mask.shape} for a {height}x{width} frame")
    return {"data": dict(data), "predictions": [{"model_version": model_version, "score": score, "result": result}]}


def annotate(
    exported_task: Mapping[str, Any],
    *,
    mask: np.ndarray | None = None,
    rejected: bool = False,
    skipped: bool = False,
    user: int | Mapping[str, Any] = 1,
    at: str | None = None,
    annotation_id: int | None = None,
) -> dict:
    """`exported_task` with one more annotation, as Label Studio's JSON export writes it: what a script
    playing the reviewer writes instead of a person in Label Studio. `mask`: the reviewed mask (None: the
    prediction accepted as it is); `rejected`: the reject choice; `skipped`: a cancelled annotation."""
    out = dict(exported_task)
    if mask is None:
        predictions = [p for p in out.get("predictions", []) if isinstance(p, Mapping)]
        result = [dict(r) for r in (predictions[-1]["result"] if predictions else [])]
    else:
        result = [brush_result(np.asarray(mask, dtype=bool), f"r{out.get('id', 0)}")] if np.any(mask) else []
    if rejected:
        result.append(
            {
                "id": "verdict",
                "from_name": FROM_REVIEW,
                "to_name": TO_IMAGE,
                "type": "choices",
                "value": {"choices": [REJECTED]},
            }
        )
    when = at or datetime.datetime.now(datetime.timezone.utc).isoformat().replace("+00:00", "Z")
    annotations = list(out.get("annotations", []))
    annotations.append(
        {
            "id": annotation_id if annotation_id is not None else len(annotations) + 1,
            "completed_by": user,
            "result": [] if skipped else result,
            "was_cancelled": skipped,
            "created_at": when,
            "updated_at": when,
        }
    )
    out["annotations"] = annotations
    return out


def latest_annotation(exported_task: Mapping[str, Any]) -> dict | None:
    """The task's newest annotation that was not skipped (by `updated_at`, then id), or None."""
    done = [a for a in exported_task.get("annotations") or [] if isinstance(a, Mapping) and not a.get("was_cancelled")]
    if not done:
        return None
    return dict(max(done, key=lambda a: (str(a.get("updated_at") or a.get("created_at") or ""), a.get("id") or 0)))


def annotation_mask(annotation: Mapping[str, Any], height: int, width: int) -> np.ndarray:
    """The union of an annotation's brush regions as a bool mask [height, width] (empty: no region).

    ValueError names the region when it is not a mask of that size.
    """
    mask = np.zeros((height, width), dtype=bool)
    for result in annotation.get("result") or []:
        if not isinstance(result, Mapping) or result.get("type", "").lower() != "brushlabels":
            continue
        region = result.get("id", "?")
        size = (result.get("original_height"), result.get("original_width"))
        if size != (height, width):
            raise ValueError(f"region {region} is a {size[0]}x{size[1]} mask, the frame is {height}x{width}")
        value = result.get("value") or {}
        if value.get("format", "rle") != "rle" or "rle" not in value:
            raise ValueError(f"region {region} has no RLE (format {value.get('format')!r})")
        try:
            mask |= decode_rle(value["rle"], height, width)
        except ValueError as exc:
            raise ValueError(f"region {region}: {exc}") from exc
    return mask


def annotation_rejects(annotation: Mapping[str, Any]) -> bool:
    """Whether the annotation chose `rejected` for the masklet."""
    choices = [
        (r.get("value") or {}).get("choices", [])
        for r in annotation.get("result") or []
        if isinstance(r, Mapping) and r.get("from_name") == FROM_REVIEW
    ]
    return any(REJECTED in c for c in choices)


def annotation_author(annotation: Mapping[str, Any]) -> str | None:
    """Who made an annotation: the email where the export names it, else Label Studio's user id."""
    who = annotation.get("completed_by")
    if isinstance(who, Mapping):
        return str(who.get("email") or f"label-studio user {who.get('id')}")
    return None if who is None else f"label-studio user {who}"


def annotation_time(annotation: Mapping[str, Any]) -> str | None:
    """When an annotation was last changed, as ISO 8601 UTC."""
    return _iso_utc(annotation.get("updated_at") or annotation.get("created_at"))


def _iso_utc(text: object) -> str | None:
    if not isinstance(text, str) or not text:
        return None
    try:
        when = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return text
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.timezone.utc)
    return when.astimezone(datetime.timezone.utc).isoformat(timespec="seconds")
