"""The typed configuration of `masklet train`: which shards to learn from, which model, the recipe.

Validated whole before any work starts, like a job's config; the defaults are the SAM 2 paper's
recipe scaled down to what a laptop CPU can run (8-frame clips, AdamW with warm-up and cosine decay).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from masklet.config import (
    MODEL_PRESETS,
    ConfigError,
    Fraction,
    Section,
    read_yaml_config,
    require_weights,
    validate_section,
)
from masklet.weights import resolve_weights


class DataConfig(Section):
    """Where SA-V annotations and their videos are."""

    uri: str = Field(min_length=1, description="tar shards (glob / braces) holding {key}.{annotation} SA-V JSON")
    annotation: str = Field(
        default="json",
        pattern=r"^[a-z0-9]+(\.[a-z0-9]+)*$",
        description="annotation member suffix: json in masklet outputs (wds/*.tar), gt.json from `masklet synth`",
    )
    videos_uri: str | None = Field(
        default=None, description="source tar shards holding {key}.mp4 when the annotation tars carry no video"
    )
    max_videos: int | None = Field(default=None, ge=1, description="use at most this many videos (sorted by key)")


class TrainModelConfig(Section):
    """The model to train: a preset, its input size and where to start from."""

    name: str = "masklet_demo"
    image_size: int | None = Field(default=None, ge=64, multiple_of=32, description="null: the preset's")
    init_checkpoint: str | None = Field(
        default=None,
        description="fine-tune from these weights: a URI or 'official'; null: the weights shipped with the package",
    )
    init: Literal["checkpoint", "random"] = Field(
        default="checkpoint", description="random: train from untrained seeded weights, only when asked for by name"
    )
    device: str = Field(default="auto", pattern=r"^(auto|cpu|cuda(:\d+)?)$")
    dtype: Literal["auto", "float32", "bfloat16"] = Field(default="auto", description="auto: bfloat16 on cuda")

    @model_validator(mode="after")
    def _known_preset(self) -> TrainModelConfig:
        if self.name not in MODEL_PRESETS:
            raise ValueError(f"unknown model {self.name!r}; expected one of {', '.join(MODEL_PRESETS)}")
        require_weights(self.name, self.init_checkpoint, self.init, "model.init_checkpoint")
        return self

    @property
    def weights(self) -> str | None:
        """The URI to start from (`init_checkpoint` resolved, else the shipped weights); None for `init: random`."""
        return None if self.init == "random" else resolve_weights(self.name, self.init_checkpoint)


class PromptConfig(Section):
    """How prompts are simulated, as in the SAM 2 paper's training (section 4.2 / appendix D)."""

    p_mask: Fraction = 0.5
    p_click: Fraction = 0.25
    p_box: Fraction = 0.25
    box_noise: Fraction = Field(default=0.1, description="box corners move by up to this fraction of its side")
    first_frame_corrections: int = Field(default=1, ge=0, description="corrective clicks after a click/box prompt")
    p_correct_later: Fraction = Field(default=0.5, description="chance that one later frame gets a corrective click")

    @model_validator(mode="after")
    def _probabilities_sum_to_one(self) -> PromptConfig:
        total = self.p_mask + self.p_click + self.p_box
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"p_mask + p_click + p_box must be 1, got {total:g}")
        return self


class LossConfig(Section):
    """Weights of the SAM 2 losses: focal and dice on the best of the masks, L1 on IoU, BCE on presence."""

    focal: float = Field(default=20.0, ge=0)
    dice: float = Field(default=1.0, ge=0)
    iou: float = Field(default=1.0, ge=0)
    object_score: float = Field(default=1.0, ge=0)


class OptimConfig(Section):
    """AdamW, linear warm-up then cosine decay to `final_lr_ratio * lr`, gradient clipping."""

    steps: int = Field(default=3000, ge=1)
    lr: float = Field(default=1e-3, gt=0)
    encoder_lr_ratio: float = Field(
        default=1.0,
        gt=0,
        description="the image encoder learns at lr * this (the official training gives it its own lower lr); "
        "from scratch, a fast-changing encoder keeps the decoder from learning where a prompt points",
    )
    weight_decay: float = Field(default=0.01, ge=0)
    warmup_steps: int = Field(default=100, ge=0)
    final_lr_ratio: Fraction = 0.05
    grad_clip: float | None = Field(default=1.0, gt=0, description="max gradient norm; null: off")


class ClipConfig(Section):
    """Which frames and objects make one training sample."""

    frames: int = Field(
        default=8, ge=1, description="frames per clip (the paper: 8); 1 trains promptable segmentation of single frames"
    )
    min_stride: int = Field(
        default=1, ge=1, description="clips take every k-th annotated frame, k in min_stride..max_stride"
    )
    max_stride: int = Field(default=4, ge=1)
    max_objects: int = Field(default=3, ge=1, description="objects per clip, among those visible on its first frame")
    hflip: Fraction = Field(default=0.5, description="chance of flipping a clip left-right")
    min_objects: int = Field(default=2, ge=1, description="prefer clips with this many objects on the first frame")

    @model_validator(mode="after")
    def _stride_range(self) -> ClipConfig:
        if self.min_stride > self.max_stride:
            raise ValueError(f"min_stride {self.min_stride} is above max_stride {self.max_stride}")
        return self


class TrainOutputConfig(Section):
    """Where checkpoints go (any fsspec URI): `last.pt` to resume from and `model.pt` at the end."""

    uri: str = Field(min_length=1)
    checkpoint_every: int = Field(default=200, ge=1, description="steps between checkpoints of `last.pt`")
    log_every: int = Field(default=20, ge=1)


class TrainConfig(Section):
    """A whole training run: everything `masklet train` needs."""

    data: DataConfig
    model: TrainModelConfig = TrainModelConfig()
    clip: ClipConfig = ClipConfig()
    prompts: PromptConfig = PromptConfig()
    loss: LossConfig = LossConfig()
    optim: OptimConfig = OptimConfig()
    output: TrainOutputConfig
    seed: int = 0
    threads: int | None = Field(default=None, ge=1, description="torch CPU threads; null: torch's default")
    storage: dict[str, dict] = Field(
        default_factory=dict, description="fsspec arguments per protocol, as in a job config"
    )


def load_train_config(uri: str, overrides: list[str] | None = None) -> TrainConfig:
    """Read a training YAML from any fsspec URI, apply dotted overrides and validate the whole."""
    return validate_section(TrainConfig, read_yaml_config(uri, overrides), origin=uri)


__all__ = ["ConfigError", "TrainConfig", "load_train_config"]
