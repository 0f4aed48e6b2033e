"""The one contract between whoever runs a pipeline (a job's worker, the Python API, eval, a benchmark)
and the per-video pipeline, and where the pipeline of a config is found.

The runner loads the model once (`masklet.pipelines.model_loading.load_model`) and builds the
pipeline once by calling a *factory*:

    factory(config: JobConfig, model: SAM2Model, device: torch.device) -> VideoPipeline

and then calls the pipeline once per video:

    pipeline(video: VideoInput, frames: FrameStream) -> Sequence[MaskletRecord]

`frames` yields the decoded annotated frames (`masklet.io.video.Frame`), knows the video's size, and
`reopen(start, stop)` gives annotated positions start..stop-1 again for a backward pass, decoded from
what the runner already holds (a pipeline never reads the source itself) at a cost that grows with
the frames asked for, not with `start` (`VideoStream` seeks to the keyframe before them). The
pipeline returns every masklet of the video, kept or not, RLE-encoded at the video's resolution: a
list, or a `masklet.pipelines.streamed.JudgedMasklets`, whose records are built one at a time as the
writer takes them, so a long video's masklets are never all in memory as records (the built-in
pipelines'). It raises for a video it cannot label: an `InputError` (a bad prompt, a decode error
while iterating) becomes the video's error row. Timing is the runner's: the time the pipeline waits for frames is
decode time, the rest of its call is model time.

The factory is `workers.pipeline` ("module:function", a plug-in any user can write) or, when that
is null, the built-in one for `pipeline.mode` below. Both protocols are structural: a plug-in
satisfies them without importing masklet.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
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
    """A video being decoded (`masklet.io.video.VideoStream` is one): its properties up front, its
    annotated frames when iterated (once), and some of them again from `reopen`."""

    key: str
    height: int
    width: int
    frame_count: int
    source_fps: float | None
    stride: int
    max_frames: int | None

    def __iter__(self) -> Iterator[Frame]: ...

    def reopen(self, start: int = 0, stop: int | None = None) -> Iterable[Frame]:
        """Annotated positions start..stop-1 (to the end when stop is None), as iterating yielded them."""
        ...


class VideoPipeline(Protocol):
    def __call__(self, video: VideoInput, frames: FrameStream) -> Sequence[MaskletRecord]: ...


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


def make_pipeline(config: JobConfig, model: SAM2Model, device: torch.device) -> VideoPipeline:
    """The config's pipeline on a loaded model: its factory found and called."""
    return load_factory(factory_path(config))(config, model, device)
