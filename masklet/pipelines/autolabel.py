"""Automatic masklets of a whole video: seed with automatic masks, track, re-seed, correct, filter.

The automatic analogue of SA-V's annotation loop. On the first annotated frame, and every
`reseed_every` annotated frames after it (off by default, as SA-V's first-frame-only automatic
masklets), automatic mask generation proposes candidates, and each is matched (`match`) against what
the tracker holds on that frame, after the frame is tracked:

- a candidate matching no tracked object (IoU < `new_object_iou_thresh` with every visible tracked
  mask and with the last visible mask of every lost object) and not mostly inside the union of
  visible tracked masks (< `COVERED_FRACTION` of its area: a part of a tracked object is not a new
  object) starts a masklet, while fewer than `max_objects` objects are tracked at once;
- a visible tracked object that no candidate confirms (IoU >= `edit_iou_thresh`) but one overlaps
  (IoU >= `new_object_iou_thresh`, and this object is that candidate's best match) is corrected with
  that candidate's mask: one *edit* for the masklet;
- a lost object (object score <= 0) whose last visible mask a candidate overlaps (IoU >=
  `new_object_iou_thresh`), that candidate matching no visible object, is re-found: corrected with
  that mask, one edit too.

Edits count corrected frames per masklet (SA-V's `masklet_edited_frame_count`). Corrections and new
masklets land on the frame being judged (`VideoTracker.correct`), as conditioning frames. All objects
advance in one batched `step` per frame. With `propagate_backward`, masklets born after the first
frame are tracked back to it by a reverse tracker, over frames decoded again (`tracking`).

`max_objects` bounds the objects tracked at once, not the objects found: with `drop_lost_after`, an
object unseen (object score <= 0 or empty mask) on that many consecutive annotated frames is
released: the tracker forgets it (it costs nothing on later frames), its masklet's frames end there
(no entries after it), it is no longer matched, and its slot is free, so a later seed frame that
finds the object again starts a new masklet; before that, a seed frame whose candidate overlaps its
last visible mask re-finds it (a lost object, above). The backward pass releases the same way, going
back, and skips the frames where no late-born object is tracked back. Without `drop_lost_after`
(null, the default) nothing is released: every object is tracked to the end of the video, and after
`max_objects` objects no new masklet starts (docs/long-videos.md).

A seed frame is encoded once: the generator proposes from the tracker's features of the frame, so
both see the pixels the official video predictor would (its bicubic resize on uint8; the image
generator on its own resizes bilinear on floats, as the official image predictor does).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import torch
from torch import Tensor

from masklet.config import JobConfig, PipelineConfig
from masklet.io import rle
from masklet.io.sources import VideoInput
from masklet.io.video import Frame
from masklet.model import SAM2Model
from masklet.model.sam2 import ImageFeatures
from masklet.model.tracker import TrackOutput
from masklet.pipelines.automask import AutoMaskConfig, AutoMaskGenerator
from masklet.pipelines.contract import FrameStream
from masklet.pipelines.quality import MaskletSequences, PackedMasklets
from masklet.pipelines.streamed import JudgedMasklets, judge
from masklet.pipelines.tracking import Reopen, Tracker, TrackerFactory, record, replay_backward, tracker_factory

COVERED_FRACTION = 0.5  # a candidate this much inside tracked masks is part of them, not a new object
MAX_COND_FRAMES = 8  # with re-seeding, corrections keep coming: attend to the closest corrected frames


class Proposals(Protocol):
    """Candidate masks of one frame (`AutoMasks` is one): masks [N, H, W] bool, predicted_iou [N]."""

    masks: Tensor
    predicted_iou: Tensor


class Proposer(Protocol):
    """Automatic mask generation on a uint8 RGB frame (`AutoMaskGenerator.generate` is one), from the
    tracker's features of that frame."""

    def __call__(self, image: np.ndarray, features: ImageFeatures | None = None) -> Proposals: ...


@dataclass
class Match:
    """What the candidates of one frame do: `new` candidate indices start masklets (in order);
    `edits` obj_id -> candidate index corrects that object."""

    new: list[int] = field(default_factory=list)
    edits: dict[int, int] = field(default_factory=dict)


def mask_ious(a: Tensor, b: Tensor) -> Tensor:
    """IoU [N, M] of bool masks a [N, H, W] and b [M, H, W] (0 where both are empty)."""
    fa, fb = a.flatten(1).float(), b.flatten(1).float()
    inter = fa @ fb.T
    union = fa.sum(1)[:, None] + fb.sum(1)[None, :] - inter
    return torch.where(union > 0, inter / union.clamp(min=1), torch.zeros_like(inter))


def match(
    candidates: Tensor,
    scores: Tensor,
    obj_ids: list[int],
    current: Tensor,
    last_visible: Tensor,
    *,
    new_iou: float,
    edit_iou: float,
    room: int,
) -> Match:
    """Match candidates [N, H, W] against tracked objects (module doc for the rules).

    current [M, H, W]: each object's mask on this frame, empty when the tracker lost it;
    last_visible [M, H, W]: its last visible mask before (empty if none). Candidates are taken by
    decreasing `scores`; at most `room` new masklets start.
    """
    result = Match()
    n, m = len(candidates), len(obj_ids)
    if n == 0:
        return result
    visible = current.flatten(1).any(1) if m else torch.zeros(0, dtype=torch.bool)
    vis_iou = mask_ious(candidates, current) if m else torch.zeros(n, 0)
    lost_iou = mask_ious(candidates, last_visible) * ~visible[None, :] if m else torch.zeros(n, 0)
    best_vis = vis_iou.max(1).values if m else torch.zeros(n)
    for j in range(m):
        if visible[j] and not bool((vis_iou[:, j] >= edit_iou).any()):
            i = int(vis_iou[:, j].argmax())
            if vis_iou[i, j] >= new_iou and int(vis_iou[i].argmax()) == j:
                result.edits[obj_ids[j]] = i
        elif not visible[j]:
            i = int(lost_iou[:, j].argmax())
            if lost_iou[i, j] >= new_iou and best_vis[i] < new_iou and i not in result.edits.values():
                result.edits[obj_ids[j]] = i
    used = set(result.edits.values())
    covered = current.any(0) if m else torch.zeros(candidates.shape[1:], dtype=torch.bool)
    for i in torch.argsort(scores, descending=True, stable=True).tolist():
        if len(result.new) >= room:
            break
        area = int(candidates[i].sum())
        if i in used or area == 0 or best_vis[i] >= new_iou or (m and lost_iou[i].max() >= new_iou):
            continue
        if int((candidates[i] & covered).sum()) >= COVERED_FRACTION * area:
            continue
        result.new.append(i)
        covered = covered | candidates[i]
    return result


def _visible_masks(out: TrackOutput) -> Tensor:
    """Masks [N, H, W] on CPU, empty where the object score says absent."""
    return (out.masks() & (out.object_score_logits > 0)[:, None, None]).cpu()


def _release_lost(tracker: Tracker, seen: Mapping[int, bool], unseen: dict[int, int], after: int | None) -> list[int]:
    """Count, in `unseen`, the consecutive frames each object of `seen` (object -> visible on this
    frame) has not been visible; remove from `tracker` those unseen on `after` frames (never when
    None), and return them."""
    if after is None:
        return []
    released = []
    for o, visible in seen.items():
        unseen[o] = 0 if visible else unseen.get(o, 0) + 1
        if unseen[o] >= after:
            tracker.remove_object(o)
            del unseen[o]
            released.append(o)
    return released


class AutoLabeler:
    """The automatic pipeline for one video at a time, on any tracker and mask proposer."""

    def __init__(
        self,
        config: PipelineConfig,
        make_tracker: TrackerFactory,
        propose: Proposer,
    ) -> None:
        self.config = config
        self.make_tracker = make_tracker
        self.propose = propose

    def _is_seed(self, position: int) -> bool:
        every = self.config.reseed_every
        return position == 0 or (every is not None and position % every == 0)

    def __call__(self, key: str, frames: Iterable[Frame], reopen: Reopen | None = None) -> PackedMasklets:
        """Every masklet of the video, unfiltered, packed (`.records()` lists them). `reopen(start, stop)`
        decodes annotated positions start..stop-1 again (needed with `propagate_backward`)."""
        c = self.config
        tracker = self.make_tracker(reverse=False, start=0)
        sequences = MaskletSequences(key, source="auto", stability_offset=c.stability_score_offset)
        edits: dict[int, int] = {}
        last_visible: dict[int, Tensor] = {}
        births: dict[int, tuple[int, rle.RLE]] = {}  # late-born obj -> (position, mask), for the backward pass
        obj_ids: list[int] = []  # tracked, in the order they were added
        next_id = 1
        unseen: dict[int, int] = {}  # consecutive frames each tracked object has not been visible
        for position, frame in enumerate(frames):
            seed = self._is_seed(position)
            features = tracker.encode(frame.rgb) if seed else None
            outputs = [tracker.step(frame.rgb if features is None else features)]
            current = _visible_masks(outputs[0])
            if seed:
                found = self.propose(frame.rgb, features)
                masks = found.masks.cpu().bool()
                blank = torch.zeros(current.shape[1:], dtype=torch.bool)
                before = torch.stack([last_visible.get(o, blank) for o in obj_ids]) if obj_ids else current
                decided = match(
                    masks,
                    found.predicted_iou.cpu(),
                    obj_ids,
                    current,
                    before,
                    new_iou=c.new_object_iou_thresh,
                    edit_iou=c.edit_iou_thresh,
                    room=c.max_objects - len(obj_ids),
                )
                fixes = {o: masks[i].numpy() for o, i in decided.edits.items()}
                for k, i in enumerate(decided.new):
                    fixes[next_id + k] = masks[i].numpy()
                    if position > 0 and c.propagate_backward:
                        births[next_id + k] = (position, rle.encode(masks[i].numpy()))
                for o in decided.edits:
                    edits[o] = edits.get(o, 0) + 1
                if fixes:
                    outputs.append(tracker.correct(fixes))
                    obj_ids += [next_id + k for k in range(len(decided.new))]
                    next_id += len(decided.new)
            seen: dict[int, bool] = {}  # a correction's output overrides the step's
            for out in outputs:
                record(sequences, frame.index, out)
                for o, mask in zip(out.obj_ids, _visible_masks(out), strict=True):
                    seen[o] = bool(mask.any())
                    if seen[o]:
                        last_visible[o] = mask
            for o in _release_lost(tracker, seen, unseen, c.drop_lost_after):
                obj_ids.remove(o)
                last_visible.pop(o, None)
        del tracker  # its memory (a GPU's, for a model's tracker) is free before the backward pass takes its own
        if births:
            if reopen is None:
                raise ValueError("propagate_backward needs the video decoded again, and no reopen was given")
            self._backward(births, reopen, sequences)
        return sequences.finish(edits)

    def _backward(self, births: dict[int, tuple[int, rle.RLE]], reopen: Reopen, sequences: MaskletSequences) -> None:
        """Track late-born masklets from their birth frames back toward the first frame, each added to a
        reverse tracker at its birth; only frames before each birth are recorded (the forward pass has
        the rest). Released objects leave the tracker; when none is left, the pass resumes at the next
        birth back, in a new reverse tracker, without decoding the frames between. A tracker holds at
        most `max_objects` at once: a birth with no place waits for a pass of its own, which decodes
        its stretch of the video again."""

        def order(obj: int) -> tuple[int, int]:  # pop() gives the latest birth, lowest id first
            return births[obj][0], -obj

        waiting = sorted(births, key=order)
        while waiting:
            last = births[waiting[-1]][0]
            tracker = self.make_tracker(reverse=True, start=last)
            tracked: set[int] = set()
            unseen: dict[int, int] = {}
            deferred: list[int] = []
            for position, frame in replay_backward(reopen, last):
                while waiting and births[waiting[-1]][0] == position:
                    obj = waiting.pop()
                    if len(tracked) == self.config.max_objects:
                        deferred.append(obj)
                        continue
                    tracker.add_object(obj, mask=rle.decode(births[obj][1]))
                    tracked.add(obj)
                out = tracker.step(frame.rgb)
                record(sequences, frame.index, out, keep=lambda o, position=position: births[o][0] > position)
                if self.config.drop_lost_after is not None:
                    visible = (out.masks().flatten(1).any(1) & (out.object_score_logits > 0)).tolist()
                    seen = dict(zip(out.obj_ids, visible, strict=True))
                    tracked.difference_update(_release_lost(tracker, seen, unseen, self.config.drop_lost_after))
                    if not tracked:
                        break
            waiting = sorted(waiting + deferred, key=order)


def automask_config(config: PipelineConfig) -> AutoMaskConfig:
    """The generator's settings: the pipeline section's fields of the same (official) names."""
    return AutoMaskConfig(**{f.name: getattr(config, f.name) for f in dataclasses.fields(AutoMaskConfig)})


def build_pipeline(
    config: JobConfig, model: SAM2Model, device: torch.device
) -> Callable[[VideoInput, FrameStream], JudgedMasklets]:
    """The factory (masklet.pipelines.contract): every masklet of a video, filtered, never all held as
    records (masklet.pipelines.streamed)."""
    c = config.pipeline
    max_cond = MAX_COND_FRAMES if c.reseed_every is not None else None
    generator = AutoMaskGenerator(model, automask_config(c))
    labeler = AutoLabeler(c, tracker_factory(model, max_cond_frames=max_cond), generator.generate)

    def pipeline(video: VideoInput, frames: FrameStream) -> JudgedMasklets:
        store = labeler(video.key, frames, frames.reopen)
        return JudgedMasklets(store, judge(store, config.filters))

    return pipeline
