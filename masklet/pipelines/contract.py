"""The one contract between a worker and the per-video pipeline, and where a worker finds its pipeline.

A worker builds its pipeline once, with the model it loaded, by calling a *factory*:

    factory(config: JobConfig, model: SAM2Model, device: torch.device) -> VideoPipeline

and then calls the pipeline once per video:

    pipeline(video: VideoInput, frames: FrameStream) -> list[MaskletRecord]

`frames` yields the decoded annotated frames (`masklet.io.video.Frame`) and knows the video's
size; the pipeline returns every masklet of the video, kept or not, RLE-encoded at the video's
resolution. It raises for a video it cannot label (a bad prompt, a decode error while iterating):
the worker turns that into the video's error row. Timing is the worker's job: the time the
pipeline waits for frames is decode time, the rest of its call is model time.

The factory is `workers.pipeline` ("module:function", a plug-in any user can write) or, when that
is null, the built-in one for `pipeline.mode` below. Both protocols are structural: pipelines
satisfy them without importing masklet.jobs (dependencies point jobs -> pipelines).
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Protocol

from masklet.config import ConfigError, JobConfig
from masklet.io.schema import MaskletRecord
from masklet.io.sources import VideoInput
from masklet.io.video import Frame

if TYPE_CHECKING:
    import torch

    from masklet.model import SAM2Model

BUILTIN_PIPELINES = {
    "auto": "masklet.pipelines.autolabel:build_pipeline",
    "prompted": "masklet.pipelines.prompted:build_pipeline",
}


class FrameStream(Protocol):
    """A video being decoded: its properties up front, its annotated frames when iterated (once)."""

    key: str
    height: int
    width: int
    frame_count: int
    source_fps: float | None
    stride: int

    def __iter__(self) -> Iterator[Frame]: ...


class VideoPipeline(Protocol):
    def __call__(self, video: VideoInput, frames: FrameStream) -> list[MaskletRecord]: ...


PipelineFactory = Callable[["JobConfig", "SAM2Model", "torch.device"], VideoPipeline]


def factory_path(config: JobConfig) -> str:
    return config.workers.pipeline or BUILTIN_PIPELINES[config.pipeline.mode]


def load_factory(path: str) -> PipelineFactory:
    """Import `module:function`; the current directory is importable, as for other plug-in runners.

    Raises ConfigError naming what is missing, so the driver refuses the job before any work.
    """
    module_name, _, attr = path.partition(":")
    if os.getcwd() not in sys.path:
        sys.path.append(os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"pipeline factory {path!r}: cannot import {module_name!r} ({exc})") from exc
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise ConfigError(f"pipeline factory {path!r}: {module_name} has no function {attr!r}")
    return factory
