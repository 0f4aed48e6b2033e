"""Label videos from Python: no Ray, no output root, the same config sections as a job.

    import masklet

    labeler = masklet.Labeler({"model": {"name": "sam2.1_hiera_t", "checkpoint": "official"}})
    result = labeler.label("s3://bucket/clip.mp4")              # automatic masklets
    result = labeler.label("clip.mp4", prompts={"objects": [...]})  # prompted (docs/prompts.md)
    for m in result.kept:
        m.rles()   # COCO RLE per annotated frame, always there
        m.masks()  # bool [frames, H, W], decoded on demand

The model is loaded once per `Labeler`; each `label` call decodes one video (a path, any fsspec URI,
or its bytes) at `source.fps` and runs the pipeline a job's worker runs on it (`masklet.jobs.shard`).
Errors reach the caller as exceptions: an `InputError` for a video or prompt at fault.
"""

from __future__ import annotations

import json
import os
import posixpath
import tempfile
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from masklet.config import ConfigError, JobConfig, read_yaml_config, validate_config
from masklet.io import storage
from masklet.io.schema import MaskletRecord, VideoRecord
from masklet.io.sources import VideoInput
from masklet.io.tars import sanitize_key
from masklet.jobs.shard import LabeledVideo, run_video
from masklet.model.device import resolve_device
from masklet.pipelines.contract import make_pipeline
from masklet.pipelines.model_loading import load_model

if TYPE_CHECKING:
    import torch

NO_OUTPUT = "memory://masklet-labeler"  # a Labeler writes nothing: the config's output section is moot


class Labeler:
    """A model and a pipeline, built once, that label one video per `label` call."""

    def __init__(
        self, config: Mapping[str, Any] | str | None = None, *, device: str | torch.device | None = None
    ) -> None:
        """`config`: job config sections as a dict, or the URI of a job's YAML file (its source.uri and
        output.uri are not used; source.fps and max_frames are). `device` overrides model.device."""
        data = read_yaml_config(config) if isinstance(config, str) else json.loads(json.dumps(config or {}))
        data.setdefault("source", {}).setdefault("uri", "unused: Labeler.label names each video")
        data.setdefault("output", {}).setdefault("uri", NO_OUTPUT)
        if device is not None:
            data.setdefault("model", {})["device"] = str(device)
        self.config: JobConfig = validate_config(data, origin=config if isinstance(config, str) else "(Labeler)")
        storage.configure(self.config.storage)
        self.device = resolve_device(self.config.model.device)
        self.model = load_model(self.config.model, self.device, self.config.model.sha256)
        self.pipeline = make_pipeline(self.config, self.model, self.device)

    def label(
        self, video: str | os.PathLike[str] | bytes, *, prompts: Mapping[str, Any] | str | None = None, key: str = ""
    ) -> Masklets:
        """Every masklet of `video`, kept or not; `prompts` for `pipeline.mode: prompted`."""
        if self.config.pipeline.mode == "prompted" and prompts is None:
            raise ConfigError("pipeline.mode is prompted: give the video's prompts (docs/prompts.md)")
        uri = "<bytes>" if isinstance(video, bytes) else os.fspath(video)
        original = key or ("video" if isinstance(video, bytes) else posixpath.basename(uri.rstrip("/")))
        item = VideoInput(
            key=sanitize_key(original.rsplit(".", 1)[0] or original),
            original_key=original,
            source_uri=uri,
            content=video if isinstance(video, bytes) else uri,
            ext=original.rsplit(".", 1)[1].lower() if "." in original else None,
            prompts=prompts if prompts is None or isinstance(prompts, str) else json.dumps(prompts),
        )
        with tempfile.TemporaryDirectory(prefix="masklet-video-") as folder:  # a remote video's download
            return Masklets.of(run_video(item, self.pipeline, self.config.source, folder=folder))


class Masklets(list[MaskletRecord]):
    """The masklets of one video (`MaskletRecord`s, kept or not), with the video's row as `video`."""

    video: VideoRecord

    @classmethod
    def of(cls, labeled: LabeledVideo) -> Masklets:
        result = cls(labeled.masklets)
        result.video = labeled.record
        return result

    @property
    def kept(self) -> list[MaskletRecord]:
        """Those the quality filters kept (`filters` section)."""
        return [m for m in self if m.kept]
