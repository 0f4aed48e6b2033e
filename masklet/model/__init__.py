"""The SAM 2 / SAM 2.1 memory model in pure PyTorch, state-dict compatible with the official checkpoints."""

from masklet.model.image_predictor import ImagePredictor, Prediction
from masklet.model.mask_decoder import DecoderOutput
from masklet.model.presets import PRESETS, ModelSpec, get_spec
from masklet.model.sam2 import (
    IMAGE_MEAN,
    IMAGE_STD,
    NO_OBJ_SCORE,
    ImageFeatures,
    SAM2Model,
    SegmentOutput,
    build_model,
    normalize_images,
)
from masklet.model.tracker import TrackOutput, VideoTracker

__all__ = [
    "IMAGE_MEAN",
    "IMAGE_STD",
    "NO_OBJ_SCORE",
    "PRESETS",
    "DecoderOutput",
    "ImageFeatures",
    "ImagePredictor",
    "ModelSpec",
    "Prediction",
    "SAM2Model",
    "SegmentOutput",
    "TrackOutput",
    "VideoTracker",
    "build_model",
    "get_spec",
    "normalize_images",
]
