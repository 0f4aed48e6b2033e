"""Prompted masklets: user prompts (docs/prompts.md) tracked forward and backward through a video.

Prompts are parsed and placed on annotated frames before any frame is tracked, so a bad one costs
an error row, not model time. One forward tracker starts at the earliest prompted frame and applies
every prompt when the stream reaches its frame (all objects in one batched step). Objects first
prompted after the first annotated frame are then tracked back to it by one reverse tracker that
starts at the latest such first prompt, over frames decoded again (`tracking`); it records only
frames before each object's first prompt, the forward pass has the rest.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch

from masklet.config import JobConfig
from masklet.io.sources import VideoInput
from masklet.model import SAM2Model
from masklet.pipelines.contract import FrameStream
from masklet.pipelines.prompts import ObjectPrompt, PromptError, parse_prompts, schedule
from masklet.pipelines.quality import MaskletSequences, PackedMasklets
from masklet.pipelines.streamed import JudgedMasklets, judge
from masklet.pipelines.tracking import Reopen, Tracker, TrackerFactory, record, replay_backward, tracker_factory


def annotated_frames(frame_count: int, stride: int, max_frames: int | None) -> list[int]:
    """The video frames the stream yields, as known before decoding (frame_count may be an estimate)."""
    frames = list(range(0, frame_count, stride))
    return frames if max_frames is None else frames[:max_frames]


def track_prompts(
    key: str,
    text: str | bytes | None,
    frames: FrameStream,
    *,
    make_tracker: TrackerFactory,
    policy: Literal["snap", "exact"] = "snap",
) -> PackedMasklets:
    """Every prompted masklet of one video, unfiltered, packed (`.records()` lists them); raises
    PromptError for a bad prompt."""
    if not text:
        raise PromptError(f"video {key!r}: pipeline.mode is prompted but the video has no prompts", key)
    prompts = parse_prompts(
        text, video_key=key, height=frames.height, width=frames.width, frame_count=frames.frame_count
    )
    frame_indices = annotated_frames(frames.frame_count, frames.stride, frames.max_frames)
    plan = schedule(prompts, frame_indices, policy)
    if not plan:
        raise PromptError(f"video {key!r}: the prompt file has no object to track", key)
    position = {f: p for p, f in enumerate(frame_indices)}
    by_position = {position[f]: items for f, items in plan.items()}
    first: dict[int, int] = {}
    for pos, items in sorted(by_position.items()):
        for p in items:
            first.setdefault(p.obj_id, pos)
    sequences = MaskletSequences(key, source="prompt")
    start = min(by_position)
    tracker = make_tracker(reverse=False, start=start)
    reached = -1
    for pos, frame in enumerate(frames):
        reached = pos
        if pos < start:
            continue
        _apply(tracker, by_position.get(pos, []))
        out = tracker.step(frame.rgb)
        record(sequences, frame.index, out)
    missed = [p for pos, items in by_position.items() if pos > reached for p in items]
    if missed:
        p = missed[0]
        raise PromptError(
            f"video {key!r}, object {p.obj_id}, prompt {p.index} (frame {p.frame}): the video ended before it",
            key,
            p.obj_id,
            p.index,
        )
    late = {o: pos for o, pos in first.items() if pos > 0}
    if late:
        _backward(late, by_position, make_tracker, frames.reopen, sequences)
    return sequences.finish()


def _apply(tracker: Tracker, prompts: list[ObjectPrompt]) -> None:
    for p in prompts:
        tracker.add_object(p.obj_id, **p.tracker_kwargs())


def _backward(
    late: dict[int, int],
    by_position: dict[int, list[ObjectPrompt]],
    make_tracker: TrackerFactory,
    reopen: Reopen,
    sequences: MaskletSequences,
) -> None:
    """Objects first prompted at position p > 0, tracked from p back to 0 with their first prompt."""
    last = max(late.values())
    tracker = make_tracker(reverse=True, start=last)
    for pos, frame in replay_backward(reopen, last):
        _apply(tracker, [p for p in by_position.get(pos, []) if late.get(p.obj_id) == pos])
        out = tracker.step(frame.rgb)
        record(sequences, frame.index, out, keep=lambda o, pos=pos: late[o] > pos)


def build_pipeline(
    config: JobConfig, model: SAM2Model, device: torch.device
) -> Callable[[VideoInput, FrameStream], JudgedMasklets]:
    """The factory (masklet.pipelines.contract): every prompted masklet of a video, filtered, never all
    held as records (masklet.pipelines.streamed)."""
    make_tracker = tracker_factory(model)

    def pipeline(video: VideoInput, frames: FrameStream) -> JudgedMasklets:
        store = track_prompts(
            video.key, video.prompts, frames, make_tracker=make_tracker, policy=config.pipeline.prompt_frames
        )
        return JudgedMasklets(store, judge(store, config.filters))

    return pipeline
