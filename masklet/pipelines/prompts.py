"""User prompts of one video: parse, validate, and place them on the annotated frames.

The format (docs/prompts.md) is a JSON object, from `{key}.prompts.json` in a WebDataset shard or
the `prompts` column of a manifest (sources hand the raw text over in `VideoInput.prompts`):

    {"objects": [{"id": 1, "prompts": [{"frame": 0, "points": [[x, y], ...], "labels": [1, 0]},
                                       {"frame": 24, "box": [x0, y0, x1, y1]},
                                       {"frame": 48, "mask": {"size": [h, w], "counts": "..."}}]}]}

Everything is checked against the video before any frame is tracked, and a refusal is a
`PromptError` naming the video, the object and the prompt, so a bad prompt costs one error row,
not a GPU-minute. Frames are original video frame indices; `schedule` maps them onto the frames the
fps stride keeps ("snap" to the nearest one, or "exact": refuse a skipped frame).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from masklet.io import rle
from masklet.io.errors import InputError
from masklet.io.rle import RLE

MAX_OBJECT_ID = MAX_FRAME = 2**31 - 1  # int32 columns
_OBJECT_KEYS = {"id", "prompts"}
_PROMPT_KEYS = {"frame", "points", "labels", "box", "mask"}


class PromptError(InputError):
    """A prompt that cannot apply to its video; the message says which video, object and prompt."""

    def __init__(self, message: str, video_key: str, obj_id: int | None = None, prompt: int | None = None) -> None:
        super().__init__(message)
        self.video_key = video_key
        self.obj_id = obj_id
        self.prompt = prompt

    def __reduce__(self) -> tuple:  # crosses process boundaries whole
        return (type(self), (str(self), self.video_key, self.obj_id, self.prompt))


@dataclass(frozen=True, eq=False)  # holds arrays: compared by identity
class ObjectPrompt:
    """One prompt of one object on one frame, in pixels of the original video.

    `frame` is the frame the user named; `index` the prompt's position in the object's list (for
    messages). Points [n, 2] (x, y) come with labels [n] (1 foreground, 0 background); a box is
    (x0, y0, x1, y1); a mask excludes points and box.
    """

    obj_id: int
    frame: int
    index: int
    points: np.ndarray | None = None
    labels: np.ndarray | None = None
    box: np.ndarray | None = None
    mask: RLE | None = None

    def tracker_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of `VideoTracker.add_object(obj_id, **kwargs)`; the mask decoded here."""
        if self.mask is not None:
            return {"mask": rle.decode(self.mask)}
        kwargs: dict[str, Any] = {}
        if self.points is not None:
            kwargs.update(points=self.points, labels=self.labels)
        if self.box is not None:
            kwargs["box"] = self.box
        return kwargs


@dataclass(frozen=True)
class VideoPrompts:
    """The validated prompts of a video, in file order."""

    video_key: str
    prompts: tuple[ObjectPrompt, ...]

    @property
    def obj_ids(self) -> list[int]:
        return list(dict.fromkeys(p.obj_id for p in self.prompts))


class _Checker:
    """Validation context: knows the video and which object / prompt is being read, for messages."""

    def __init__(self, video_key: str, height: int, width: int, frame_count: int) -> None:
        self.video_key, self.height, self.width, self.frame_count = video_key, height, width, frame_count
        self.obj_id: int | None = None
        self.where = f"video {video_key!r}"
        self.prompt: int | None = None

    def fail(self, message: str) -> PromptError:
        return PromptError(f"{self.where}: {message}", self.video_key, self.obj_id, self.prompt)

    def number(self, value: Any, what: str) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise self.fail(f"{what} must be a finite number, got {value!r}")
        return float(value)

    def integer(self, value: Any, what: str, low: int, high: int) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(f"{what} must be an integer, got {value!r}")
        if not low <= value <= high:
            raise self.fail(f"{what} {value} is outside {low}..{high}")
        return value

    def keys(self, item: Any, allowed: set[str], what: str) -> dict:
        if not isinstance(item, dict):
            raise self.fail(f"{what} must be a JSON object, got {type(item).__name__}")
        unknown = sorted(set(item) - allowed)
        if unknown:
            raise self.fail(f"unknown key {unknown[0]!r} in {what} (allowed: {', '.join(sorted(allowed))})")
        return item

    def point(self, xy: Any, what: str) -> tuple[float, float]:
        if not isinstance(xy, list) or len(xy) != 2:
            raise self.fail(f"{what} must be [x, y], got {xy!r}")
        x, y = self.number(xy[0], what), self.number(xy[1], what)
        if not (0 <= x <= self.width and 0 <= y <= self.height):
            raise self.fail(f"{what} ({x:g}, {y:g}) is outside the {self.width}x{self.height} frame")
        return x, y


def parse_prompts(text: str | bytes, *, video_key: str, height: int, width: int, frame_count: int) -> VideoPrompts:
    """Parse and validate a video's prompt JSON against its size and frame count."""
    check = _Checker(video_key, height, width, frame_count)
    try:
        doc = json.loads(text)
    except UnicodeDecodeError as exc:
        raise check.fail(f"prompts are not UTF-8 text ({exc})") from None
    except json.JSONDecodeError as exc:
        raise check.fail(f"prompts are not valid JSON ({exc})") from None
    doc = check.keys(doc, {"objects"}, "the prompt file")
    objects = doc.get("objects")
    if not isinstance(objects, list):
        raise check.fail(f'the prompt file needs "objects": a list, got {objects!r}')
    out: list[ObjectPrompt] = []
    seen: dict[int, int] = {}
    for i, obj in enumerate(objects):
        check.where, check.obj_id, check.prompt = f"video {video_key!r}, objects[{i}]", None, None
        obj = check.keys(obj, _OBJECT_KEYS, "an object")
        obj_id = check.integer(obj.get("id"), "object id", 0, MAX_OBJECT_ID)
        check.where, check.obj_id = f"video {video_key!r}, object {obj_id}", obj_id
        if obj_id in seen:
            raise check.fail(f"object id {obj_id} appears twice (objects[{seen[obj_id]}] and objects[{i}])")
        seen[obj_id] = i
        prompts = obj.get("prompts")
        if not isinstance(prompts, list) or not prompts:
            raise check.fail(f'the object has no prompt: "prompts" must be a non-empty list, got {prompts!r}')
        frames: dict[int, int] = {}
        for j, item in enumerate(prompts):
            check.where, check.prompt = f"video {video_key!r}, object {obj_id}, prompt {j}", j
            prompt = _prompt(check, obj_id, j, item)
            if prompt.frame in frames:
                raise check.fail(f"prompts {frames[prompt.frame]} and {j} are both on frame {prompt.frame}; merge them")
            frames[prompt.frame] = j
            out.append(prompt)
    return VideoPrompts(video_key, tuple(out))


def _prompt(check: _Checker, obj_id: int, index: int, item: Any) -> ObjectPrompt:
    item = check.keys(item, _PROMPT_KEYS, "a prompt")
    if "frame" not in item:
        raise check.fail('the prompt has no "frame"')
    frame = check.integer(item["frame"], "frame", 0, MAX_FRAME)
    if frame >= check.frame_count:
        raise check.fail(f"frame {frame} is past the end of the video (frames 0..{check.frame_count - 1})")
    check.where += f" (frame {frame})"
    if not {"points", "labels", "box", "mask"} & set(item):
        raise check.fail("the prompt has no points, box or mask")
    if ("points" in item) != ("labels" in item):
        raise check.fail('"points" and "labels" go together')
    if "mask" in item:
        if "points" in item or "box" in item:
            raise check.fail("a mask prompt cannot also have points or a box")
        return ObjectPrompt(obj_id, frame, index, mask=_mask(check, item["mask"]))
    points = labels = box = None
    if "points" in item:
        raw_points, raw_labels = item["points"], item["labels"]
        if not isinstance(raw_points, list) or not raw_points:
            raise check.fail(f'"points" must be a non-empty list of [x, y], got {raw_points!r}')
        if not isinstance(raw_labels, list) or len(raw_labels) != len(raw_points):
            raise check.fail(f"{len(raw_points)} points need {len(raw_points)} labels, got {raw_labels!r}")
        points = np.array([check.point(p, f"point {k}") for k, p in enumerate(raw_points)], dtype=np.float32)
        bad = [v for v in raw_labels if type(v) is not int or v not in (0, 1)]
        if bad:
            raise check.fail(f"labels must be 1 (foreground) or 0 (background), got {bad[0]!r}")
        labels = np.array(raw_labels, dtype=np.int32)
    if "box" in item:
        raw = item["box"]
        if not isinstance(raw, list) or len(raw) != 4:
            raise check.fail(f"box must be [x0, y0, x1, y1], got {raw!r}")
        (x0, y0), (x1, y1) = check.point(raw[:2], "box corner (x0, y0)"), check.point(raw[2:], "box corner (x1, y1)")
        if x1 < x0 or y1 < y0:
            raise check.fail(f"box {raw} has x1 < x0 or y1 < y0: it must be [x0, y0, x1, y1] with x0 <= x1, y0 <= y1")
        box = np.array([x0, y0, x1, y1], dtype=np.float32)
    return ObjectPrompt(obj_id, frame, index, points=points, labels=labels, box=box)


def _mask(check: _Checker, raw: Any) -> RLE:
    raw = check.keys(raw, {"size", "counts"}, "a mask")
    size, counts = raw.get("size"), raw.get("counts")
    if size != [check.height, check.width]:
        raise check.fail(f"mask size {size!r} is not the video's [height, width] [{check.height}, {check.width}]")
    if not isinstance(counts, str):
        raise check.fail(f"mask counts must be a COCO compressed RLE string, got {type(counts).__name__}")
    mask: RLE = {"size": [check.height, check.width], "counts": counts}
    try:
        area = rle.area(mask)
    except ValueError as exc:
        raise check.fail(f"mask counts are not a valid RLE of a {check.height}x{check.width} mask ({exc})") from None
    if area == 0:
        raise check.fail("the mask is empty")
    return mask


def schedule(
    prompts: VideoPrompts, frame_indices: Sequence[int], policy: Literal["snap", "exact"] = "snap"
) -> dict[int, list[ObjectPrompt]]:
    """The prompts grouped by the annotated frame they are given to the tracker on.

    `frame_indices`: the video frames the pipeline processes, increasing (e.g. `range(0,
    stream.frame_count, stream.stride)` cut at `max_frames`). A prompt on one of them applies there.
    Otherwise, "exact" refuses it; "snap" moves it to the nearest annotated frame (the earlier one
    on a tie) when that is closer than the stride (the smallest gap between annotated frames), and
    refuses it when not (a frame beyond `source.max_frames`). Two prompts of one object that land
    on the same frame are refused. The prompt keeps the frame it was written for in `frame`.
    """
    frames = np.asarray(frame_indices, dtype=np.int64)
    stride = int(np.diff(frames).min()) if len(frames) > 1 else 1
    out: dict[int, list[ObjectPrompt]] = {}
    placed: dict[tuple[int, int], int] = {}
    for p in prompts.prompts:
        where = f"video {prompts.video_key!r}, object {p.obj_id}, prompt {p.index} (frame {p.frame})"

        def fail(message: str, p: ObjectPrompt = p, where: str = where) -> PromptError:
            return PromptError(f"{where}: {message}", prompts.video_key, p.obj_id, p.index)

        if not len(frames):
            raise fail("the video has no annotated frame")
        pos = int(np.searchsorted(frames, p.frame))
        near = [int(frames[k]) for k in (pos - 1, pos) if 0 <= k < len(frames)]
        target = min(near, key=lambda f: (abs(f - p.frame), f))
        if target != p.frame and policy == "exact":
            raise fail(
                f"frame {p.frame} is not annotated (nearest annotated: {' and '.join(map(str, near))}); "
                "set pipeline.prompt_frames=snap, or pick a source.fps whose stride keeps it"
            )
        if abs(target - p.frame) >= stride:
            raise fail(f"frame {p.frame} lies beyond the last annotated frame {int(frames[-1])} (source.max_frames?)")
        if (p.obj_id, target) in placed:
            other = placed[p.obj_id, target]
            raise fail(f"it lands on annotated frame {target}, as prompt {other} of this object does")
        placed[p.obj_id, target] = p.index
        out.setdefault(target, []).append(p)
    return dict(sorted(out.items()))
