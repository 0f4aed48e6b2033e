"""One training clip through the SAM 2 memory model, differentiably, as the official `SAM2Train` unrolls it.

The first frame is prompted (a ground-truth mask, a click or a box, then corrective clicks); every
later frame is tracked from the memories of the frames before it (the prompted frames, the last
`num_maskmem - 1` frames and their object pointers), and one of them may get a corrective click,
which makes it a prompted (conditioning) frame too. Memories keep their gradients, so the memory
encoder and memory attention learn from the frames that read them. All objects of the clip are one
batch; the frames are encoded in one image-encoder call.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from masklet.model.sam2 import ImageFeatures, SAM2Model, SegmentOutput
from masklet.train.clicks import box_labels, corrective_clicks, noisy_boxes, positive_clicks
from masklet.train.config import PromptConfig


@dataclass
class _Memory:
    """What one frame leaves for the frames after it."""

    maskmem: Tensor  # [N, mem_dim, h, w]
    obj_ptr: Tensor  # [N, C]
    prompted: bool


def frame_features(features: ImageFeatures, t: int) -> ImageFeatures:
    """Frame t of a batch of encoded frames."""
    return ImageFeatures([x[t : t + 1] for x in features.backbone_fpn], [x[t : t + 1] for x in features.vision_pos_enc])


def unroll(
    model: SAM2Model, frames: Tensor, masks: Tensor, prompts: PromptConfig, rng: np.random.Generator
) -> list[tuple[int, SegmentOutput]]:
    """Run a clip (frames [T, 3, S, S] normalized, ground truth [T, N, S, S] bool) and return every
    decoder output that a loss applies to, as (frame, output); a mask prompt's output is the mask itself
    and has none."""
    num_frames, size = frames.shape[0], (model.spec.image_size, model.spec.image_size)
    features = model.encode_image(frames)
    kind = str(rng.choice(["mask", "click", "box"], p=[prompts.p_mask, prompts.p_click, prompts.p_box]))
    correct_at = -1
    if num_frames > 1 and rng.random() < prompts.p_correct_later:
        correct_at = int(rng.integers(1, num_frames))
    outputs: list[tuple[int, SegmentOutput]] = []
    memories: list[_Memory] = []
    maskmem_pos: Tensor | None = None
    for t in range(num_frames):
        feats, gt = frame_features(features, t), masks[t]
        if t == 0:
            steps = _prompted_first_frame(model, feats, gt, kind, prompts, rng)
            last = steps[-1] if steps else model.mask_as_output(feats, gt[:, None].float())
            # the video predictor encodes a prompted frame's memory from its low-res output, upsampled
            memory_mask = F.interpolate(last.low_res_masks, size=size, mode="bilinear", align_corners=False)
            from_points = kind != "mask"
        else:
            embedding = _condition(model, feats, memories, t, num_frames, maskmem_pos)
            steps = [model.segment(feats, embedding, multimask_output=model.use_multimask(False, 0))]
            if t == correct_at:
                steps.append(_correct(model, feats, embedding, steps[0], gt, rng))
            last, from_points = steps[-1], t == correct_at
            memory_mask = last.high_res_masks
        outputs += [(t, s) for s in steps]
        maskmem, pos = model.encode_memory(feats, memory_mask, last.object_score_logits, from_points)
        maskmem_pos = pos[:1] if maskmem_pos is None else maskmem_pos
        memories.append(_Memory(maskmem, last.obj_ptr, prompted=t in (0, correct_at)))
    return outputs


def _prompted_first_frame(
    model: SAM2Model,
    feats: ImageFeatures,
    gt: Tensor,
    kind: str,
    prompts: PromptConfig,
    rng: np.random.Generator,
) -> list[SegmentOutput]:
    """Decode the first frame from its prompt, then corrective clicks (none for a mask taken as output)."""
    if kind == "mask" and model.spec.use_mask_input_as_output_without_sam:
        return []
    n, gt_cpu = gt.shape[0], gt.cpu()
    embedding = model.embed_without_memory(feats).expand(n, -1, -1, -1)
    if kind == "box":
        coords, labels = noisy_boxes(gt_cpu, rng, prompts.box_noise).reshape(n, 2, 2), box_labels(n)
    elif kind == "click":
        coords, labels = positive_clicks(gt_cpu, rng)
    else:  # a mask decoded by the SAM heads (models without use_mask_input_as_output_without_sam)
        out = model.segment(
            feats, embedding, mask_input=gt[:, None].float(), multimask_output=model.use_multimask(True, 0)
        )
        return [out]
    coords, labels = coords.to(embedding.device), labels.to(embedding.device)
    out = model.segment(feats, embedding, coords, labels, multimask_output=model.use_multimask(True, labels.shape[1]))
    steps = [out]
    for _ in range(prompts.first_frame_corrections):
        new_coords, new_labels = corrective_clicks(out.high_res_masks[:, 0].detach().cpu() > 0, gt_cpu, rng)
        coords = torch.cat([coords, new_coords.to(coords.device)], dim=1)
        labels = torch.cat([labels, new_labels.to(labels.device)], dim=1)
        out = model.segment(
            feats,
            embedding,
            coords,
            labels,
            mask_input=out.low_res_masks.detach(),
            multimask_output=model.use_multimask(True, labels.shape[1]),
        )
        steps.append(out)
    return steps


def _correct(
    model: SAM2Model,
    feats: ImageFeatures,
    embedding: Tensor,
    out: SegmentOutput,
    gt: Tensor,
    rng: np.random.Generator,
) -> SegmentOutput:
    """Decode a tracked frame again with a corrective click and the tracked mask as mask input."""
    coords, labels = corrective_clicks(out.high_res_masks[:, 0].detach().cpu() > 0, gt.cpu(), rng)
    return model.segment(
        feats,
        embedding,
        coords.to(embedding.device),
        labels.to(embedding.device),
        mask_input=out.low_res_masks.detach(),
        multimask_output=model.use_multimask(False, 1),
    )


def _condition(
    model: SAM2Model,
    feats: ImageFeatures,
    memories: list[_Memory],
    t: int,
    num_frames: int,
    maskmem_pos: Tensor | None,
) -> Tensor:
    """Frame t's embedding conditioned on the clip's memories, selected as the official model does:
    every prompted frame, the previous `num_maskmem - 1` frames, and object pointers of up to
    `max_obj_ptrs_in_encoder` past frames with their signed frame distances."""
    assert maskmem_pos is not None
    spec = model.spec
    cond = [i for i, m in enumerate(memories) if m.prompted]
    spatial = [(0, i) for i in cond]
    for t_pos in range(1, spec.num_maskmem):
        i = t - (spec.num_maskmem - t_pos)
        if i >= 0 and i not in cond:
            spatial.append((t_pos, i))
    tokens, positions = [], []
    for t_pos, i in spatial:
        tok, pos = model.spatial_memory_tokens(memories[i].maskmem, maskmem_pos, t_pos)
        tokens.append(tok)
        positions.append(pos.expand_as(tok))
    num_ptr_tokens = 0
    if spec.use_obj_ptrs_in_encoder:
        max_ptrs = min(num_frames, spec.max_obj_ptrs_in_encoder)
        recent = [i for i in range(t - 1, max(t - max_ptrs, -1), -1) if i not in cond]
        ptr_frames = cond + recent
        ptrs = torch.stack([memories[i].obj_ptr for i in ptr_frames], dim=1)
        diffs = torch.tensor([t - i for i in ptr_frames], dtype=torch.float32)
        tok, pos = model.pointer_memory_tokens(ptrs, diffs, num_frames)
        tokens.append(tok)
        positions.append(pos)
        num_ptr_tokens = tok.shape[1]
    return model.condition_on_memory(feats, torch.cat(tokens, 1), torch.cat(positions, 1), num_ptr_tokens)
