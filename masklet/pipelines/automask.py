"""Automatic mask generation on one frame: the masks a SAM 2 model finds when prompted everywhere.

The semantics, parameters and defaults of the official `SAM2AutomaticMaskGenerator` (and the same
masks for the same weights and image, see tests/test_automask.py): every point of a grid prompts the
model; each answer (3 masks per point with multimask output) is kept if its predicted IoU is >
`pred_iou_thresh` and its stability score >= `stability_score_thresh`, and if its box does not touch a
crop edge that is not an image edge; box NMS removes duplicates within a crop, and again across crops
preferring masks of smaller crops. With `crop_n_layers` > 0 the image is also cut into overlapping
crops, each embedded and prompted on its own, which finds small objects.

Differences from the official code, all in what is returned, not which masks:
- `min_mask_region_area` does what it does in SAM 2 (not SAM 1): the decoder's low-res logits get
  small holes filled and small islands removed before upsampling (`mask_ops`), with the official
  CUDA kernel's 8-connectivity done by scipy on CPU; the official code silently skips this step where
  its CUDA extension is missing (any CPU run). SAM 1's `postprocess_small_regions` at image
  resolution is never called by the SAM 2 generator and is not reproduced.
- The results keep what the video pipeline needs besides the official records: the binary masks at
  image size, the low-res logits they come from (to prompt or compare without re-decoding) and the
  decoder's object score; an empty mask's stability is 0 instead of NaN.
- Candidates are carried as low-res logits and boxes, never as image-size masks or RLE; the masks of
  the survivors are upsampled again at the end (bilinear upsampling is per-mask, so they are the same
  masks), which keeps memory to a few hundred KB per candidate at 1024.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from masklet.io.rle import RLE, encode_tensor
from masklet.model.mask_decoder import reuse_buffers
from masklet.model.sam2 import ImageFeatures, SAM2Model
from masklet.model.transforms import ArrayLike, prepare_image, scale_coords
from masklet.pipelines.grids import CropBox, crop_boxes, layer_point_grids
from masklet.pipelines.mask_ops import fill_holes_and_remove_sprinkles, masks_to_boxes, stability_score
from masklet.pipelines.nms import batched_nms, box_area

LOW_RES_CLAMP = 32.0  # the official predictor clamps low-res logits before feeding them back (m2m)
EDGE_TOLERANCE = 20.0  # pixels: a box this close to a crop edge (not an image edge) is cut by the crop
# on CPU, masks are upsampled to image size this many bytes of logits at a time: below glibc's largest mmap
# threshold (32 MiB), so that each chunk reuses the memory of the last instead of faulting in fresh pages
MAP_CHUNK_BYTES = 16 * 2**20


@dataclass(frozen=True)
class AutoMaskConfig:
    """Parameters of automatic mask generation, named and defaulted like `SAM2AutomaticMaskGenerator`.

    Thresholds of 0 switch their filter off. `min_mask_region_area` counts low-res decoder pixels
    (see `mask_ops.fill_holes_and_remove_sprinkles`). `use_m2m` re-decodes every candidate once with
    its own low-res mask as the mask prompt (single-mask output) before filtering.
    """

    points_per_side: int = 32
    points_per_batch: int = 64
    pred_iou_thresh: float = 0.8
    stability_score_thresh: float = 0.95
    stability_score_offset: float = 1.0
    mask_threshold: float = 0.0
    box_nms_thresh: float = 0.7
    crop_n_layers: int = 0
    crop_nms_thresh: float = 0.7
    crop_overlap_ratio: float = 512 / 1500
    crop_n_points_downscale_factor: int = 1
    min_mask_region_area: int = 0
    use_m2m: bool = False
    multimask_output: bool = True

    def __post_init__(self) -> None:
        problems = []
        if self.points_per_batch < 1:
            problems.append(f"points_per_batch must be >= 1, got {self.points_per_batch}")
        if self.crop_n_layers < 0 or self.crop_n_points_downscale_factor < 1:
            problems.append("crop_n_layers must be >= 0 and crop_n_points_downscale_factor >= 1")
        elif int(self.points_per_side / self.crop_n_points_downscale_factor**self.crop_n_layers) < 1:
            problems.append(
                f"points_per_side {self.points_per_side} leaves no point in crop layer {self.crop_n_layers}"
                f" after downscaling by {self.crop_n_points_downscale_factor} per layer"
            )
        for name in ("pred_iou_thresh", "stability_score_thresh", "box_nms_thresh", "crop_nms_thresh"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                problems.append(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if not 0.0 <= self.crop_overlap_ratio < 1.0:
            problems.append(f"crop_overlap_ratio must be in [0, 1), got {self.crop_overlap_ratio}")
        if self.min_mask_region_area < 0:
            problems.append(f"min_mask_region_area must be >= 0, got {self.min_mask_region_area}")
        if problems:
            raise ValueError("invalid automatic mask generation config: " + "; ".join(problems))


@dataclass
class AutoMasks:
    """The masks found on one frame, N of them, every field aligned on N and on CPU.

    masks [N, H, W] bool at image size; low_res_logits [N, S/4, S/4] float32, the logits (after
    clean-up) that upsampled to the crop and thresholded give the mask, in the frame of `crop_boxes`
    (the whole image for crop layer 0); boxes [N, 4] float32 (x0, y0, x1, y1) with x1 / y1 the last
    pixel inside; predicted_iou, stability_score, object_score_logits [N] float32 (object score > 0:
    the decoder thinks an object is there); point_coords [N, 2] float32, the prompt, in image pixels;
    crop_boxes [N, 4] int64 (x0, y0, x1, y1), x1 / y1 exclusive; rles the COCO RLE of each mask.
    """

    masks: Tensor
    low_res_logits: Tensor
    boxes: Tensor
    predicted_iou: Tensor
    stability_score: Tensor
    object_score_logits: Tensor
    point_coords: Tensor
    crop_boxes: Tensor
    rles: list[RLE]

    def __len__(self) -> int:
        return len(self.rles)

    @property
    def areas(self) -> Tensor:
        """Foreground pixels per mask, int64 [N]."""
        return self.masks.flatten(1).sum(1)

    def records(self) -> list[dict[str, Any]]:
        """One dict per mask with the official generator's keys (`segmentation` as COCO RLE, boxes
        XYWH with the official inclusive width x1 - x0) plus `object_score`."""
        xywh = torch.cat([self.boxes[:, :2], self.boxes[:, 2:] - self.boxes[:, :2]], dim=1)
        crops = self.crop_boxes.float()
        crops_xywh = torch.cat([crops[:, :2], crops[:, 2:] - crops[:, :2]], dim=1)
        return [
            {
                "segmentation": rle,
                "area": area,
                "bbox": box,
                "predicted_iou": iou,
                "point_coords": [point],
                "stability_score": stability,
                "crop_box": crop,
                "object_score": score,
            }
            for rle, area, box, iou, point, stability, crop, score in zip(
                self.rles,
                self.areas.tolist(),
                xywh.tolist(),
                self.predicted_iou.tolist(),
                self.point_coords.tolist(),
                self.stability_score.tolist(),
                crops_xywh.tolist(),
                self.object_score_logits.tolist(),
                strict=True,
            )
        ]


@dataclass
class _Candidates:
    """Masks under consideration, aligned on their first axis; `crop` indexes the generator's crop list."""

    low_res: Tensor
    iou: Tensor
    stability: Tensor
    object_score: Tensor
    points: Tensor
    boxes: Tensor
    crop: Tensor

    def select(self, index: Tensor) -> _Candidates:
        return _Candidates(*(getattr(self, f.name)[index] for f in dataclasses.fields(self)))

    @staticmethod
    def cat(parts: list[_Candidates]) -> _Candidates:
        return _Candidates(*(torch.cat([getattr(p, f.name) for p in parts]) for f in dataclasses.fields(_Candidates)))


class AutoMaskGenerator:
    """`SAM2AutomaticMaskGenerator` for a `SAM2Model`: `generate(image)` -> `AutoMasks`."""

    def __init__(self, model: SAM2Model, config: AutoMaskConfig | None = None) -> None:
        self.model = model
        self.config = config or AutoMaskConfig()
        c = self.config
        self.point_grids = layer_point_grids(c.points_per_side, c.crop_n_layers, c.crop_n_points_downscale_factor)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.inference_mode()
    def generate(self, image: ArrayLike, features: ImageFeatures | None = None) -> AutoMasks:
        """Masks of a uint8 RGB image [H, W, 3] (numpy or torch).

        `features`: the whole image's features when the caller already has them (a video tracker's, of
        the same frame), so that it is not encoded twice. Without them the image is prepared as the
        official image predictor does (`prepare_image`), which the official generator's masks need.
        """
        c = self.config
        h, w = int(image.shape[0]), int(image.shape[1])
        boxes, layers = crop_boxes((h, w), c.crop_n_layers, c.crop_overlap_ratio)
        with reuse_buffers():  # the decoder's buffers serve batch after batch
            found = _Candidates.cat(
                [
                    self._process_crop(image, i, boxes[i], layers[i], (h, w), features if i == 0 else None)
                    for i in range(len(boxes))
                ]
            )
        crop_xyxy = torch.tensor(boxes, dtype=torch.int64, device=found.crop.device)
        if len(boxes) > 1:
            # prefer masks from smaller crops: they saw the object at a higher resolution
            scores = 1 / box_area(crop_xyxy[found.crop])
            found = found.select(batched_nms(found.boxes.float(), scores, None, c.crop_nms_thresh))
        masks = self._paint(found, boxes, (h, w))
        return AutoMasks(
            masks=masks,
            low_res_logits=found.low_res.cpu(),
            boxes=found.boxes.float().cpu(),
            predicted_iou=found.iou.cpu(),
            stability_score=found.stability.cpu(),
            object_score_logits=found.object_score.cpu(),
            point_coords=found.points.cpu(),
            crop_boxes=crop_xyxy[found.crop].cpu(),
            rles=encode_tensor(masks),
        )

    def _process_crop(
        self,
        image: ArrayLike,
        index: int,
        crop_box: CropBox,
        layer: int,
        image_hw: tuple[int, int],
        features: ImageFeatures | None,
    ) -> _Candidates:
        """Candidates of one crop after within-crop NMS, with boxes and points in image pixels; the crop
        is encoded unless its `features` are given."""
        x0, y0, x1, y1 = crop_box
        crop_hw = (y1 - y0, x1 - x0)
        if features is None:
            crop = prepare_image(image[y0:y1, x0:x1], self.model.spec.image_size, self.device)
            features = self.model.encode_image(crop)
        grid = self.point_grids[layer] * np.array([crop_hw[1], crop_hw[0]])
        points = torch.as_tensor(grid, dtype=torch.float32, device=self.device)
        step = self.config.points_per_batch
        found = _Candidates.cat(
            [
                self._process_batch(features, points[i : i + step], crop_box, crop_hw, image_hw)
                for i in range(0, len(points), step)
            ]
        )
        found = found.select(batched_nms(found.boxes.float(), found.iou, None, self.config.box_nms_thresh))
        offset = torch.tensor([x0, y0], device=self.device)
        found.boxes = found.boxes + offset.repeat(2)
        found.points = found.points + offset
        found.crop = torch.full_like(found.crop, index)
        return found

    def _process_batch(
        self,
        features: ImageFeatures,
        points: Tensor,
        crop_box: CropBox,
        crop_hw: tuple[int, int],
        image_hw: tuple[int, int],
    ) -> _Candidates:
        """Decode a batch of grid points (crop pixels) and keep the candidates that pass the filters."""
        c = self.config
        coords = scale_coords(points, crop_hw, self.model.spec.image_size)[:, None]
        labels = torch.ones(len(points), 1, dtype=torch.int32, device=points.device)
        out = self.model.decode(features, coords, labels, multimask_output=c.multimask_output)
        masks = out.masks  # [B, M, h, w], not copied before the IoU filter has picked the candidates
        m = masks.shape[1]
        iou = out.iou.float().flatten(0, 1)
        object_score = out.object_score_logits.float().repeat_interleave(m, dim=0)[:, 0]
        points = points.repeat_interleave(m, dim=0)
        if c.use_m2m:
            low_res, iou, object_score = self._refine(features, points, masks.float().flatten(0, 1), crop_hw)
            masks = low_res[:, None]
        keep = iou > c.pred_iou_thresh if c.pred_iou_thresh > 0 else torch.ones_like(iou, dtype=torch.bool)
        n = int(keep.sum())
        # stability, boxes and crop index are filled in below, once known
        found = _Candidates(
            masks[keep.view(masks.shape[:2])].float(),  # [n, h, w], only the candidates that pass
            iou[keep],
            iou.new_zeros(n),
            object_score[keep],
            points[keep],
            iou.new_zeros(n, 4, dtype=torch.int64),
            iou.new_zeros(n, dtype=torch.int64),
        )
        if c.min_mask_region_area > 0:
            found.low_res = fill_holes_and_remove_sprinkles(found.low_res, c.min_mask_region_area)
        found.stability, found.boxes = self._measure(found.low_res, crop_hw)
        if c.stability_score_thresh > 0:
            found = found.select(found.stability >= c.stability_score_thresh)
        return found.select(~_near_crop_edge(found.boxes, crop_box, image_hw))

    def _measure(self, low_res: Tensor, crop_hw: tuple[int, int]) -> tuple[Tensor, Tensor]:
        """Stability scores [N] and boxes [N, 4] (int64, crop pixels) of the masks of low-res logits
        [N, h, w] upsampled to the crop; boxes only of the masks that pass the stability filter (the
        others' are zeros, for the caller to drop).

        On CPU the masks are upsampled a few at a time (`_map_chunk`): a whole batch's crop-size logits
        are hundreds of MB, fresh memory from the OS at every batch, whereas chunks reuse the same memory.
        """
        c = self.config
        n = len(low_res)
        stability = low_res.new_zeros(n)
        boxes = torch.zeros((n, 4), dtype=torch.int64, device=low_res.device)
        step = _map_chunk(low_res, crop_hw)
        for start in range(0, n, step):
            stop = min(start + step, n)
            logits = _upsample(low_res[start:stop], crop_hw)
            stability[start:stop] = stability_score(logits, c.mask_threshold, c.stability_score_offset)
            if c.stability_score_thresh > 0:
                rows = (stability[start:stop] >= c.stability_score_thresh).nonzero()[:, 0]
                boxes[start + rows] = masks_to_boxes(logits[rows] > c.mask_threshold)
            else:
                boxes[start:stop] = masks_to_boxes(logits > c.mask_threshold)
        return stability, boxes

    def _refine(
        self, features: ImageFeatures, points: Tensor, low_res: Tensor, crop_hw: tuple[int, int]
    ) -> tuple[Tensor, Tensor, Tensor]:
        """One more decoding per candidate with its clamped low-res logits as mask prompt (single mask)."""
        size, step = self.model.spec.image_size, self.config.points_per_batch
        coords = scale_coords(points, crop_hw, size)[:, None]
        labels = torch.ones(len(points), 1, dtype=torch.int32, device=points.device)
        prompts = low_res.clamp(-LOW_RES_CLAMP, LOW_RES_CLAMP)[:, None]
        outs = [
            self.model.decode(features, coords[i : i + step], labels[i : i + step], None, prompts[i : i + step], False)
            for i in range(0, len(points), step)
        ]
        return (
            torch.cat([o.masks[:, 0] for o in outs]).float(),
            torch.cat([o.iou[:, 0] for o in outs]).float(),
            torch.cat([o.object_score_logits[:, 0] for o in outs]).float(),
        )

    def _paint(self, found: _Candidates, boxes: list[CropBox], image_hw: tuple[int, int]) -> Tensor:
        """Image-size bool masks [N, H, W] (CPU) of the survivors, upsampled from their low-res logits."""
        masks = torch.zeros((len(found.iou), *image_hw), dtype=torch.bool)
        for index, (x0, y0, x1, y1) in enumerate(boxes):
            rows = (found.crop == index).nonzero()[:, 0]
            step = _map_chunk(found.low_res, (y1 - y0, x1 - x0))
            for part in rows.split(step):
                logits = _upsample(found.low_res[part], (y1 - y0, x1 - x0))
                masks[part.cpu(), y0:y1, x0:x1] = (logits > self.config.mask_threshold).cpu()
        return masks


def _near_crop_edge(boxes: Tensor, crop_box: CropBox, image_hw: tuple[int, int]) -> Tensor:
    """Which boxes (crop pixels, [N, 4]) lie within EDGE_TOLERANCE of an edge of the crop that is not an
    edge of the image: their mask is probably cut off by the crop (the official `is_box_near_crop_edge`)."""
    x0, y0 = crop_box[:2]
    crop = torch.tensor(crop_box, dtype=torch.float32, device=boxes.device)
    image = torch.tensor([0, 0, image_hw[1], image_hw[0]], dtype=torch.float32, device=boxes.device)
    uncropped = (boxes + torch.tensor([x0, y0, x0, y0], device=boxes.device)).float()
    near_crop = (uncropped - crop).abs() <= EDGE_TOLERANCE
    near_image = (uncropped - image).abs() <= EDGE_TOLERANCE
    return (near_crop & ~near_image).any(dim=1)


def _map_chunk(like: Tensor, size: tuple[int, int]) -> int:
    """Masks per chunk when upsampling to `size`: on CPU, as many float maps as fit in MAP_CHUNK_BYTES (at
    least one); elsewhere all at once."""
    if like.device.type != "cpu":
        return max(1, len(like))
    return max(1, MAP_CHUNK_BYTES // (size[0] * size[1] * 4))


def _upsample(low_res: Tensor, size: tuple[int, int]) -> Tensor:
    """Low-res logits [N, h, w] -> [N, H, W], bilinear like the official predictor's `postprocess_masks`."""
    return F.interpolate(low_res[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
