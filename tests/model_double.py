"""A test double of the model for the video pipelines: answers from synthetic ground truth.

`Truth` renders a synthetic scene once (exact visible masks per object). `ProposerDouble` plays
automatic mask generation: the GT masks of a frame, minus hidden objects, plus optional junk.
`TrackerDouble` plays `VideoTracker`: each tracked object follows the GT object its prompt mask
overlaps most, with scripted failures (lost: absent on some frames; drift: shifted on some frames).
Both look the frame up by its pixels, so they see exactly what the pipeline feeds them.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from masklet.config import JobConfig, validate_config
from masklet.io.sources import VideoInput
from masklet.io.video import Frame, FrameFiles
from masklet.model.tracker import TrackOutput
from masklet.synth.scene import make_scene

DRIFT_PX = 6  # a drifted mask is the GT mask shifted right by this much (IoU well below 0.7)


class Truth:
    """Frames and visible GT masks [K, H, W] of a synthetic scene, as the `FrameStream` a pipeline gets;
    `decodes` counts how often they were decoded (iterated or reopened)."""

    def __init__(self, seed: int = 0, index: int = 0, *, width: int = 64, height: int = 48, frames: int = 8) -> None:
        scene = make_scene(seed, index, width=width, height=height, frames=frames)
        rendered = [scene.render(t) for t in range(frames)]
        self.rgb = [r.rgb for r in rendered]
        self.visible = [torch.from_numpy(r.visible) for r in rendered]
        self.height, self.width, self.frame_count, self.stride = height, width, frames, 1
        self.key, self.source_fps, self.max_frames = "truth", 24.0, None
        self.decodes = 0

    def __iter__(self) -> Iterator[Frame]:
        self.decodes += 1
        return (Frame(t, rgb) for t, rgb in enumerate(self.rgb))

    def reopen(self, start: int = 0, stop: int | None = None) -> Iterator[Frame]:
        """Annotated positions start..stop-1 again, as `FrameStream.reopen` gives them (one more decode)."""
        return itertools.islice(iter(self), start, stop)

    def position(self, rgb: np.ndarray) -> int:
        return next(t for t, x in enumerate(self.rgb) if x is rgb or np.array_equal(x, rgb))

    def gt_ids(self) -> list[int]:
        """Objects visible on at least one frame."""
        return [k for k in range(len(self.visible[0])) if any(v[k].any() for v in self.visible)]


@dataclass
class Proposals:
    masks: torch.Tensor
    predicted_iou: torch.Tensor


@dataclass
class ProposerDouble:
    """GT masks of the frame as candidates; `hide` {gt_id: positions} leaves some out."""

    truth: Truth
    hide: dict[int, set[int]] = field(default_factory=dict)
    calls: list[int] = field(default_factory=list)

    def __call__(self, rgb: np.ndarray, features: object = None) -> Proposals:
        t = self.truth.position(rgb)
        self.calls.append(t)
        keep = [k for k, m in enumerate(self.truth.visible[t]) if m.any() and t not in self.hide.get(k, set())]
        masks = (
            self.truth.visible[t][keep]
            if keep
            else torch.zeros(0, self.truth.height, self.truth.width, dtype=torch.bool)
        )
        return Proposals(masks, torch.linspace(0.99, 0.9, len(keep)))


@dataclass
class Script:
    """Scripted tracker failures, per GT object: positions where it is lost, or drifts."""

    lost: dict[int, set[int]] = field(default_factory=dict)
    drift: dict[int, set[int]] = field(default_factory=dict)


class TrackerDouble:
    """`VideoTracker`'s pipeline surface, answering GT masks (with `script` failures)."""

    def __init__(self, truth: Truth, script: Script, *, reverse: bool, start: int) -> None:
        self.truth, self.script, self.reverse = truth, script, reverse
        self.position = start
        self.follows: dict[int, int] = {}  # obj_id -> gt id
        self.pending: dict[int, np.ndarray] = {}
        self.steps: list[tuple[int, list[int]]] = []  # (position, objects) per step: one call per frame
        self.corrections: list[tuple[int, dict[int, int]]] = []
        self.removed: dict[int, int] = {}  # obj_id -> the gt id it followed
        self.encoded: list[int] = []  # positions encoded ahead of their step (seed frames)
        self._last = start

    def _gt(self, t: int, mask: np.ndarray) -> int:
        m = torch.as_tensor(np.asarray(mask, dtype=bool))
        gt = self.truth.visible[t]
        return int(((gt & m).flatten(1).sum(1)).argmax())

    def add_object(self, obj_id: int, *, mask: np.ndarray | None = None, **prompt: object) -> None:
        if mask is None:  # points / box: the GT object under the first point or box centre
            xy = np.asarray(prompt["points"] if "points" in prompt else prompt["box"], dtype=float).reshape(-1, 2)
            x, y = (xy[:2].mean(0) if "points" not in prompt else xy[0]).astype(int)
            mask = np.zeros((self.truth.height, self.truth.width), dtype=bool)
            mask[y, x] = True
        self.pending[obj_id] = mask

    def _output(self, t: int, obj_ids: list[int]) -> TrackOutput:
        h, w = self.truth.height, self.truth.width
        masks, scores = [], []
        for o in obj_ids:
            k = self.follows[o]
            m = self.truth.visible[t][k].clone()
            if t in self.script.lost.get(k, set()):
                m[:] = False
            elif t in self.script.drift.get(k, set()):
                m = torch.roll(m, DRIFT_PX, dims=1)
            masks.append(m)
            scores.append(5.0 if m.any() else -5.0)
        logits = torch.stack(masks)[:, None].float() * 20 - 10 if masks else torch.zeros(0, 1, h, w)
        n = len(obj_ids)
        return TrackOutput(
            t, list(obj_ids), logits, torch.full((n,), 0.9), torch.tensor(scores), torch.zeros(n, 1), (h, w)
        )

    def encode(self, rgb: np.ndarray) -> np.ndarray:
        """The double's "features" of a frame are the frame itself."""
        self.encoded.append(self.truth.position(rgb))
        return rgb

    def step(self, rgb: np.ndarray) -> TrackOutput:
        t = self.truth.position(rgb)
        assert t == self.position, f"tracker at position {self.position} got frame {t}"
        for o, mask in self.pending.items():
            self.follows[o] = self._gt(t, mask)
        self.pending.clear()
        out = self._output(t, list(self.follows))
        self.steps.append((t, list(self.follows)))
        self._last = t
        self.position += -1 if self.reverse else 1
        return out

    def remove_object(self, obj_id: int) -> None:
        self.removed[obj_id] = self.follows.pop(obj_id)
        self.pending.pop(obj_id, None)

    def correct(self, masks: Mapping[int, np.ndarray]) -> TrackOutput:
        t = self._last
        for o, mask in masks.items():
            self.follows[o] = self._gt(t, mask)
        self.corrections.append((t, {o: self.follows[o] for o in masks}))
        out = self._output(t, list(masks))
        # a correction is a conditioning frame: the given mask, whatever the script says for this frame
        out.low_res_logits = (
            torch.stack([torch.as_tensor(np.asarray(m, dtype=bool)) for m in masks.values()])[:, None].float() * 20 - 10
        )
        out.object_score_logits = torch.full((len(masks),), 5.0)
        return out


class TrackerFactoryDouble:
    """Makes `TrackerDouble`s and keeps them for inspection."""

    def __init__(self, truth: Truth, script: Script | None = None) -> None:
        self.truth, self.script = truth, script or Script()
        self.made: list[TrackerDouble] = []

    def __call__(self, *, reverse: bool, start: int) -> TrackerDouble:
        tracker = TrackerDouble(self.truth, self.script, reverse=reverse, start=start)
        self.made.append(tracker)
        return tracker


def frame_folder(truth: Truth, root: Path, prompts: str | None = None) -> VideoInput:
    """The truth's frames as a folder of JPEGs (the frames source), for end-to-end runs."""
    from videos import jpeg

    uris = []
    for t, rgb in enumerate(truth.rgb):
        path = root / f"{t:05d}.jpg"
        path.write_bytes(jpeg(rgb))
        uris.append(str(path))
    files = FrameFiles(tuple(range(len(uris))), tuple(uris))
    return VideoInput("vid", "vid", str(root), files, None, prompts=prompts)


def job_config(**sections: dict[str, Any]) -> JobConfig:
    """A job config for the tiny model on every frame (fps null); `sections` override."""
    data: dict[str, Any] = {"source": {"uri": "unused", "fps": None}, "output": {"uri": "unused-out"}}
    data["model"] = {"image_size": 128, "init": "random"}  # untrained weights, asked for by name
    for name, values in sections.items():
        data[name] = {**data.get(name, {}), **values}
    return validate_config(data)
