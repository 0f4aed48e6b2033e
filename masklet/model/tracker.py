"""Streaming, batched video object tracking with the SAM 2 memory model.

Frames go in one at a time and are never kept: `step(frame)` encodes the frame once and advances
every tracked object with one memory-attention call, one mask-decoder call and one memory-encoder
call for all of them (objects with fewer memories are padded and masked). Objects are added or
re-prompted with `add_object` on the frame the next `step` processes, or corrected with `correct` on
the frame `step` just processed (for pipelines that only judge a frame once it is tracked). The memory bank keeps per
object only what attention can still use (see `memory_bank`), so memory does not grow with the video.

Semantics follow the official `SAM2VideoPredictor` (sam2 1.1.0) replaying the same calls as the
stream reaches each frame; where a streaming tracker cannot do what the offline predictor does,
docs/model.md says so.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from masklet.model.memory_bank import MemoryBank, MemorySelection
from masklet.model.sam2 import BOX_LABELS, ImageFeatures, SAM2Model, SegmentOutput
from masklet.model.transforms import ArrayLike, prepare_mask_prompt, prepare_video_frame, resize_logits, scale_coords

Frame = ArrayLike | ImageFeatures

# Objects per memory-encoder call on CPU. Its full-resolution intermediates for 32 objects are fresh
# tensors of tens of MB, paid in page faults each frame: measured about 3 s a frame for 32 objects in one
# batch against 1.7 s in batches of 4 (tiny preset at 512, one thread). A GPU gets every object at once.
CPU_MEMORY_ENCODER_BATCH = 4


@dataclass
class TrackOutput:
    """Every tracked object on one frame, in the order the objects were added.

    low_res_logits [N, 1, S/4, S/4] mask logits (-1024 where the object is predicted absent); iou [N]
    predicted IoU of the chosen mask; object_score_logits [N] (> 0: visible); obj_ptr [N, C] the
    object pointers stored in memory. Full-size logits are computed on first use (they are large).
    """

    frame_index: int
    obj_ids: list[int]
    low_res_logits: Tensor
    iou: Tensor
    object_score_logits: Tensor
    obj_ptr: Tensor
    video_hw: tuple[int, int]

    @cached_property
    def video_res_logits(self) -> Tensor:
        """Mask logits [N, 1, H, W] at the video's original size (bilinear, as the official predictor)."""
        return resize_logits(self.low_res_logits, self.video_hw)

    def masks(self) -> Tensor:
        """Binary masks [N, H, W] at the video's original size."""
        return self.video_res_logits[:, 0] > 0


@dataclass
class _Prompt:
    """A prompt waiting for the next step: points (a box being its first two) or a mask."""

    pixel_coords: bool  # coords in pixels of the original video (scaled at the step, once its size is known)
    coords: Tensor | None = None  # [n, 2] (x, y)
    labels: Tensor | None = None  # [n] int32
    mask: Tensor | None = None  # [1, 1, S, S] in {0, 1}


class _Rows(NamedTuple):
    """Outputs of one group of objects decoded together."""

    obj_ids: list[int]
    out: SegmentOutput
    memory_masks: Tensor  # [k, 1, S, S] logits the memory encoder sees
    prompted: bool


class VideoTracker:
    """Track any number of objects through a stream of frames, forward or in reverse.

    - `video_hw`: the original (H, W); taken from the first uint8 frame when not given. Prompts are
      in its pixels and `TrackOutput.video_res_logits` come back at that size.
    - `reverse`: frames are visited in decreasing order from `start_frame` (default: 0 forward,
      `num_frames - 1` in reverse); temporal offsets flip as in the official code.
    - `num_frames`: the video length when known. The official predictor bounds the object-pointer
      window by it and normalises pointer time encodings by min(num_frames, 16) - 1; without it
      the window is the model's `max_obj_ptrs_in_encoder`, as for a long video.
    - `max_cond_frames`: attend to at most this many prompted frames (the closest); None = all, as
      the official default. Set it when prompts keep coming (e.g. periodic re-seeding), so that
      memory stays bounded. `memory_stride`: the official `memory_temporal_stride_for_eval`.
    - `dtype`: torch.bfloat16 (or float16) runs the model under autocast; `memory_dtype`: how spatial
      memories are stored (bfloat16 like the official predictor, which rounds them even on CPU).
    """

    def __init__(
        self,
        model: SAM2Model,
        *,
        video_hw: tuple[int, int] | None = None,
        reverse: bool = False,
        start_frame: int | None = None,
        num_frames: int | None = None,
        max_cond_frames: int | None = None,
        memory_stride: int = 1,
        dtype: torch.dtype = torch.float32,
        memory_dtype: torch.dtype = torch.bfloat16,
    ) -> None:
        spec = model.spec
        if start_frame is None:
            if reverse and num_frames is None:
                raise ValueError("tracking in reverse needs start_frame or num_frames")
            start_frame = num_frames - 1 if reverse and num_frames is not None else 0
        self.model = model
        self.video_hw = None if video_hw is None else (int(video_hw[0]), int(video_hw[1]))
        self.reverse = reverse
        self.num_frames = num_frames
        self.dtype = dtype
        self.memory_dtype = memory_dtype
        self.bank = MemoryBank(
            spec.num_maskmem,
            spec.max_obj_ptrs_in_encoder if spec.use_obj_ptrs_in_encoder else 0,
            spec.use_signed_tpos_enc_to_obj_ptrs,
            reverse=reverse,
            stride=memory_stride,
            max_cond_frames=max_cond_frames,
            num_frames=num_frames,
        )
        self._frame_index = start_frame
        self._obj_ids: list[int] = []
        self._pending: dict[int, _Prompt] = {}
        self._maskmem_pos: Tensor | None = None  # the same for every memory, kept once
        self._last: tuple[int, Frame] | None = None  # the frame just processed (encoded if it was)

    # ------------------------------------------------------------------ state
    @property
    def frame_index(self) -> int:
        """The index of the frame the next `step` processes."""
        return self._frame_index

    @property
    def obj_ids(self) -> list[int]:
        """Objects tracked (or prompted for the next step), in the order they were added."""
        return list(self._obj_ids)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def image_size(self) -> int:
        return self.model.spec.image_size

    # ------------------------------------------------------------------ prompts
    def add_object(
        self,
        obj_id: int,
        points: ArrayLike | Sequence[Sequence[float]] | None = None,
        labels: ArrayLike | Sequence[int] | None = None,
        box: ArrayLike | Sequence[float] | None = None,
        mask: ArrayLike | None = None,
        normalize_coords: bool = True,
    ) -> None:
        """Prompt `obj_id` on the frame the next `step` processes (a new object, or a new prompt for one).

        points [n, 2] (x, y) with labels [n] (1 foreground, 0 background) and / or box (x0, y0, x1, y1),
        in pixels of the original video (in [0, 1] when not `normalize_coords`); or a binary mask [H, W]
        of any size. The prompted frame becomes a conditioning frame of the object, segmented without
        memory as in the official predictor; a later prompt for the same object and frame replaces it.
        """
        if (points is None) != (labels is None):
            raise ValueError("points and labels must be given together")
        if mask is not None and (points is not None or box is not None):
            raise ValueError("give either a mask or points / a box, not both")
        if mask is None and points is None and box is None:
            raise ValueError("a prompt needs points, a box or a mask")
        prompt = _Prompt(pixel_coords=normalize_coords)
        if mask is not None:
            prompt.mask = prepare_mask_prompt(mask, self.image_size, self.device)
        else:
            prompt.coords = torch.zeros(0, 2)
            prompt.labels = torch.zeros(0, dtype=torch.int32)
            if points is not None:
                prompt.coords = torch.as_tensor(np.asarray(points, dtype=np.float32)).reshape(-1, 2)
                prompt.labels = torch.as_tensor(np.asarray(labels, dtype=np.int32)).reshape(-1)
                if len(prompt.labels) != len(prompt.coords):
                    raise ValueError(f"{len(prompt.coords)} points but {len(prompt.labels)} labels")
            if box is not None:
                # a box is two corner points placed before the clicks, as the model was trained
                corners = torch.as_tensor(np.asarray(box, dtype=np.float32)).reshape(2, 2)
                prompt.coords = torch.cat([corners, prompt.coords])
                prompt.labels = torch.cat([torch.tensor(BOX_LABELS, dtype=torch.int32), prompt.labels])
        if obj_id not in self._obj_ids:
            self._obj_ids.append(obj_id)
        self._pending[obj_id] = prompt

    def remove_object(self, obj_id: int) -> None:
        """Stop tracking `obj_id` and free its memory."""
        if obj_id in self._obj_ids:
            self._obj_ids.remove(obj_id)
        self._pending.pop(obj_id, None)
        self.bank.remove(obj_id)

    # ------------------------------------------------------------------ frames
    @contextlib.contextmanager
    def _inference(self) -> Iterator[None]:
        autocast = (
            contextlib.nullcontext()
            if self.dtype == torch.float32
            else torch.autocast(self.device.type, dtype=self.dtype)
        )
        with torch.inference_mode(), autocast:
            yield

    def encode(self, frame: ArrayLike) -> ImageFeatures:
        """Image features of a frame: uint8 RGB [H, W, 3], or the normalized model input [(1,) 3, S, S]
        (as `masklet.model.transforms.prepare_video_frame` makes it). Pass them to `step`, or share them with an
        `ImagePredictor` (`set_features`) to prompt on the same frame without encoding it twice."""
        with self._inference():
            return self.model.encode_image(self._model_input(frame))

    def _as_tensor(self, frame: ArrayLike) -> Tensor:
        """The frame as a tensor; a uint8 frame's size is checked against (or sets) the video size."""
        x = torch.from_numpy(np.ascontiguousarray(frame)) if isinstance(frame, np.ndarray) else frame
        if x.dtype == torch.uint8:
            hw = (int(x.shape[0]), int(x.shape[1]))
            if self.video_hw is None:
                self.video_hw = hw
            elif hw != self.video_hw:
                raise ValueError(f"frame of size {hw} in a video of size {self.video_hw}")
        return x

    def _model_input(self, frame: ArrayLike) -> Tensor:
        x = self._as_tensor(frame)
        if x.dtype == torch.uint8:
            return prepare_video_frame(x, self.image_size, self.device)
        s = self.image_size
        if x.ndim == 3:
            x = x[None]
        if x.ndim != 4 or tuple(x.shape[1:]) != (3, s, s):
            raise ValueError(f"expected uint8 [H, W, 3] or a normalized [3, {s}, {s}] frame, got {tuple(x.shape)}")
        return x.to(self.device)

    def step(self, frame: Frame) -> TrackOutput:
        """Process the next frame (uint8 RGB, normalized model input, or features from `encode`):
        segment every prompted object, track every other one, and store their memories."""
        f = self._frame_index
        if f < 0 or (self.num_frames is not None and f >= self.num_frames):
            raise IndexError(f"frame {f} is outside the video of {self.num_frames} frames")
        with self._inference():
            features = frame if isinstance(frame, ImageFeatures) else None
            if features is None and self._obj_ids:
                features = self.model.encode_image(self._model_input(frame))
            elif features is None:
                self._as_tensor(frame)  # nothing to track: only learn the video size
            if self.video_hw is None:
                raise ValueError("video_hw is unknown: give it to VideoTracker or step with uint8 frames")
            if features is None or not self._obj_ids:
                output = self._empty_output(f)
            else:
                output = self._store(features, f, self._prompted_rows(features) + self._tracked_rows(features, f))
        self._last = (f, frame if features is None else features)
        self._pending.clear()
        self._frame_index = f + (-1 if self.reverse else 1)
        self.bank.prune(self._frame_index)
        return output

    def correct(self, masks: Mapping[int, ArrayLike]) -> TrackOutput:
        """Replace the output of the frame `step` just processed by a binary mask [H, W] per object
        (tracked or new), and return those objects' new outputs in the order given.

        The frame becomes a conditioning frame of each object, exactly as if the mask had been given
        with `add_object` before the step: its memory is encoded again from the mask and replaces the
        tracked one. This is what an automatic pipeline needs, as it only judges a frame's masks once
        the frame is tracked. Valid until the next `step` (only that frame's features are kept).
        """
        if not masks:
            raise ValueError("correct() needs at least one mask")
        if self._last is None:
            raise RuntimeError("correct() applies to the frame step() just processed, and none was")
        frame, features = self._last
        obj_ids = [int(o) for o in masks]
        prompts = torch.cat([prepare_mask_prompt(m, self.image_size, self.device) for m in masks.values()])
        with self._inference():
            if not isinstance(features, ImageFeatures):  # nothing was tracked on it: encoded only now
                features = self.model.encode_image(self._model_input(features))
                self._last = (frame, features)
            output = self._store(features, frame, [self._mask_rows(features, obj_ids, prompts)], obj_ids)
        self._obj_ids += [o for o in obj_ids if o not in self._obj_ids]
        return output

    def _empty_output(self, frame: int) -> TrackOutput:
        assert self.video_hw is not None
        s, c = self.image_size // 4, self.model.spec.hidden_dim
        empty = torch.zeros(0, device=self.device)
        return TrackOutput(frame, [], empty.reshape(0, 1, s, s), empty, empty, empty.reshape(0, c), self.video_hw)

    # ------------------------------------------------------------------ one step
    def _prompted_rows(self, features: ImageFeatures) -> list[_Rows]:
        """Prompted objects, segmented without memory: masks in one batch, points batched by count."""
        model, rows = self.model, []
        masks = {o: p.mask for o, p in self._pending.items() if p.mask is not None}
        if masks:
            rows.append(self._mask_rows(features, list(masks), torch.cat(list(masks.values()))))
        by_count: dict[int, dict[int, _Prompt]] = {}
        for obj_id, p in self._pending.items():
            if p.labels is not None:
                by_count.setdefault(len(p.labels), {})[obj_id] = p
        for n, group in by_count.items():
            coords = torch.stack([self._input_coords(p) for p in group.values()]).to(self.device)
            labels = torch.stack([p.labels for p in group.values()]).to(self.device)
            embedding = model.embed_without_memory(features).expand(len(group), -1, -1, -1)
            out = model.segment(features, embedding, coords, labels, multimask_output=model.use_multimask(True, n))
            rows.append(self._prompted(list(group), out))
        return rows

    def _mask_rows(self, features: ImageFeatures, obj_ids: list[int], mask: Tensor) -> _Rows:
        """Objects prompted with masks [k, 1, S, S], segmented without memory in one batch."""
        model = self.model
        if model.spec.use_mask_input_as_output_without_sam:
            out = model.mask_as_output(features, mask)
        else:
            embedding = model.embed_without_memory(features).expand(len(obj_ids), -1, -1, -1)
            out = model.segment(features, embedding, mask_input=mask, multimask_output=model.use_multimask(True, 0))
        return self._prompted(obj_ids, out)

    def _input_coords(self, prompt: _Prompt) -> Tensor:
        """A prompt's points in model-input pixels, as the official predictor scales them."""
        assert prompt.coords is not None and self.video_hw is not None
        if prompt.pixel_coords:
            return scale_coords(prompt.coords, self.video_hw, self.image_size)
        return prompt.coords * self.image_size

    def _prompted(self, obj_ids: list[int], out: SegmentOutput) -> _Rows:
        # the official predictor encodes a prompted frame's memory from its low-res output, upsampled
        size = (self.image_size, self.image_size)
        memory_masks = F.interpolate(out.low_res_masks.float(), size=size, mode="bilinear", align_corners=False)
        return _Rows(obj_ids, out, memory_masks, prompted=True)

    def _tracked_rows(self, features: ImageFeatures, frame: int) -> list[_Rows]:
        """Every object not prompted on this frame, conditioned on its memories in one batch."""
        obj_ids = [o for o in self._obj_ids if o not in self._pending]
        if not obj_ids:
            return []
        memory, memory_pos, num_ptr_tokens, mask = self._memory_inputs([self.bank.select(o, frame) for o in obj_ids])
        embedding = self.model.condition_on_memory(features, memory, memory_pos, num_ptr_tokens, mask)
        out = self.model.segment(features, embedding, multimask_output=self.model.use_multimask(False, 0))
        return [_Rows(obj_ids, out, out.high_res_masks, prompted=False)]

    def _memory_inputs(self, selections: list[MemorySelection]) -> tuple[Tensor, Tensor, int, Tensor | None]:
        """Memories of B objects as padded attention inputs: spatial frames slot by slot (prompted frames
        first, then t_pos 1, 2, ...), then pointer tokens; the mask is None when nothing is padded."""
        model, b, device = self.model, len(selections), self.device
        assert self._maskmem_pos is not None
        cond = [[m for t, m in s.spatial if t == 0] for s in selections]
        recent = [{t: m for t, m in s.spatial if t > 0} for s in selections]
        slots = [(0, j) for j in range(max(len(c) for c in cond))]
        slots += [(t, 0) for t in sorted({t for r in recent for t in r})]
        _, m, h, w = self._maskmem_pos.shape
        # spatial tokens are written straight into the padded attention inputs (absent slots stay zero),
        # the pointer tokens after them
        pointer_tokens = model.spec.hidden_dim // m
        size = len(slots) * h * w + max(len(s.pointers) for s in selections) * pointer_tokens
        memory = torch.zeros(b, size, m, device=device)
        memory_pos = torch.empty(b, size, m, device=device)
        slot_present = []
        for k, (t_pos, j) in enumerate(slots):
            maps = [c[j] if j < len(c) else None for c in cond] if t_pos == 0 else [r.get(t_pos) for r in recent]
            span = slice(k * h * w, (k + 1) * h * w)
            for i, x in enumerate(maps):
                if x is not None:
                    tok, pos = model.spatial_memory_tokens(x[None], self._maskmem_pos, t_pos)
                    memory[i, span] = tok[0]
            memory_pos[:, span] = pos
            slot_present.append([x is not None for x in maps])
        lengths = [len(s.pointers) for s in selections]
        num_ptrs, num_ptr_tokens = max(lengths), 0
        if num_ptrs:
            blank_ptr = torch.zeros(model.spec.hidden_dim, device=device)
            ptrs = torch.stack(
                [
                    torch.stack([p for _, p in s.pointers] + [blank_ptr] * (num_ptrs - len(s.pointers)))
                    for s in selections
                ]
            )
            offsets = [[o for o, _ in s.pointers] + [0] * (num_ptrs - len(s.pointers)) for s in selections]
            tok, pos = model.pointer_memory_tokens(
                ptrs, torch.tensor(offsets, dtype=torch.float32, device=device), self.num_frames
            )
            num_ptr_tokens = tok.shape[1]
            memory[:, size - num_ptr_tokens :] = tok
            memory_pos[:, size - num_ptr_tokens :] = pos
        mask = None
        if not all(all(p) for p in slot_present) or min(lengths) < num_ptrs:
            parts = [torch.tensor(slot_present, device=device).T.repeat_interleave(h * w, dim=1)]
            if num_ptrs:
                real = torch.arange(num_ptrs, device=device) < torch.tensor(lengths, device=device)[:, None]
                parts.append(real.repeat_interleave(num_ptr_tokens // num_ptrs, dim=1))
            mask = torch.cat(parts, dim=1)
        return memory, memory_pos, num_ptr_tokens, mask

    def _encode_memory(
        self, features: ImageFeatures, masks: Tensor, scores: Tensor, prompted: Tensor
    ) -> tuple[Tensor, Tensor]:
        """`SAM2Model.encode_memory` of every object, in batches of `CPU_MEMORY_ENCODER_BATCH` on CPU."""
        n = masks.shape[0]
        step = n if self.device.type != "cpu" else CPU_MEMORY_ENCODER_BATCH
        parts = [
            self.model.encode_memory(features, masks[i : i + step], scores[i : i + step], prompted[i : i + step])
            for i in range(0, n, step)
        ]
        return torch.cat([m for m, _ in parts]), parts[0][1]

    def _store(
        self, features: ImageFeatures, frame: int, groups: list[_Rows], order: list[int] | None = None
    ) -> TrackOutput:
        """Encode the memories of this frame of the objects in `groups` in one batch, store them, and
        gather the outputs in `order` (default: every tracked object, in the order they were added)."""
        assert self.video_hw is not None
        order_ids = self._obj_ids if order is None else order
        obj_ids = [o for g in groups for o in g.obj_ids]
        rows = [obj_ids.index(o) for o in order_ids]
        order = torch.tensor(rows, dtype=torch.long, device=self.device)
        flags = [g.prompted for g in groups for _ in g.obj_ids]
        prompted = [flags[r] for r in rows]

        def gather(values: list[Tensor]) -> Tensor:
            return torch.cat(values).index_select(0, order)

        low_res = gather([g.out.low_res_masks.float() for g in groups])
        iou = gather([g.out.ious.float().max(dim=-1).values for g in groups])
        scores = gather([g.out.object_score_logits.float() for g in groups])
        obj_ptr = gather([g.out.obj_ptr.float() for g in groups])
        maskmem, pos = self._encode_memory(
            features, gather([g.memory_masks for g in groups]), scores, torch.tensor(prompted, device=self.device)
        )
        if self._maskmem_pos is None:
            self._maskmem_pos = pos[:1].float().clone()
        maskmem = maskmem.to(self.memory_dtype)
        for i, obj_id in enumerate(order_ids):
            # memories of tracked frames are dropped for all objects at once, so they may share storage;
            # a prompted frame's memory can outlive the others and gets its own
            spatial, ptr = (maskmem[i].clone(), obj_ptr[i].clone()) if prompted[i] else (maskmem[i], obj_ptr[i])
            self.bank.add(obj_id, frame, spatial, ptr, prompted=prompted[i])
        return TrackOutput(frame, list(order_ids), low_res, iou, scores[:, 0], obj_ptr, self.video_hw)
