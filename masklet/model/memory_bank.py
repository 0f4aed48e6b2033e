"""The memory bank of a streaming tracker: per object, exactly the memories attention can still use.

Which memories a frame attends to follows the official `SAM2Base._prepare_memory_conditioned_features`
in eval: every prompted ("conditioning") frame, or the `max_cond_frames` closest ones; the previous
`num_maskmem - 1` unprompted frames (the last one, then every `stride`-th); and object pointers of
the selected prompted frames plus of the frames up to `max_obj_ptrs - 1` back. Tracking in reverse
mirrors all of this in time.

Because frames arrive in order and prompts only ever land on the frame being processed, a memory
that no frame from now on can select will never be selected again, so `prune` drops it. A prompted
frame pushed out of the closest `max_cond_frames` is demoted to an ordinary memory, which is how the
official code still attends to unselected prompted frames that are recent enough. What is stored is
then bounded by the number of objects (and, without `max_cond_frames`, of prompted frames), never
by the length of the video.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor


@dataclass
class ObjectMemory:
    """One object's stored memories: spatial memories [mem_dim, h, w] and object pointers [C] by frame."""

    cond: dict[int, tuple[Tensor, Tensor]] = field(default_factory=dict)  # prompted frames, oldest first
    spatial: dict[int, Tensor] = field(default_factory=dict)  # unprompted (or demoted) frames
    pointers: dict[int, Tensor] = field(default_factory=dict)

    def __len__(self) -> int:
        """Stored tensors; what the bounded-memory guarantee is about."""
        return 2 * len(self.cond) + len(self.spatial) + len(self.pointers)


@dataclass
class MemorySelection:
    """What one object attends to on one frame.

    spatial: (t_pos, memory) with t_pos 0 for prompted frames and num_maskmem - k for the frame k
    steps back; pointers: (temporal offset as the official code encodes it, pointer).
    """

    spatial: list[tuple[int, Tensor]]
    pointers: list[tuple[int, Tensor]]


class MemoryBank:
    """Memories of all tracked objects of one video, for frames visited in one direction."""

    def __init__(
        self,
        num_maskmem: int,
        max_obj_ptrs: int,
        signed_ptr_offsets: bool,
        reverse: bool = False,
        stride: int = 1,
        max_cond_frames: int | None = None,
        num_frames: int | None = None,
    ) -> None:
        if stride < 1:
            raise ValueError(f"memory stride must be >= 1, got {stride}")
        if max_cond_frames is not None and max_cond_frames < 2:
            raise ValueError(f"max_cond_frames must be None or >= 2 (as in the official code), got {max_cond_frames}")
        self.num_maskmem = num_maskmem
        # the official window is min(num_frames, max_obj_ptrs_in_encoder); 0 disables pointers
        self.max_obj_ptrs = max_obj_ptrs if num_frames is None else min(num_frames, max_obj_ptrs)
        self.signed_ptr_offsets = signed_ptr_offsets
        self.sign = -1 if reverse else 1
        self.stride = stride
        self.max_cond_frames = max_cond_frames
        self.num_frames = num_frames
        self.objects: dict[int, ObjectMemory] = {}

    # time runs forward in "v" = frame * sign, so one set of rules serves both directions
    def _v(self, frame: int) -> int:
        return frame * self.sign

    def _frame(self, v: int) -> int:
        return v * self.sign

    def _prev_frame(self, frame: int, t_rel: int) -> int:
        """The official choice of the memory frame `t_rel` steps back (every `stride`-th beyond the last)."""
        v = self._v(frame)
        if t_rel == 1:
            return self._frame(v - 1)
        r = self.stride
        return self._frame(((v - 2) // r) * r - (t_rel - 2) * r)

    def add(self, obj_id: int, frame: int, spatial: Tensor, pointer: Tensor, prompted: bool) -> None:
        """Store an object's memory of `frame`; prompted frames become conditioning memories."""
        mem = self.objects.setdefault(obj_id, ObjectMemory())
        if not prompted:
            mem.spatial[frame], mem.pointers[frame] = spatial, pointer
            return
        # a prompted memory replaces a tracked one of the same frame (`VideoTracker.correct`)
        mem.spatial.pop(frame, None)
        mem.pointers.pop(frame, None)
        mem.cond[frame] = (spatial, pointer)
        if self.max_cond_frames is not None and len(mem.cond) > self.max_cond_frames:
            # all prompted frames lie behind every later frame, so the oldest is never among the closest again
            oldest = next(iter(mem.cond))
            mem.spatial[oldest], mem.pointers[oldest] = mem.cond.pop(oldest)

    def remove(self, obj_id: int) -> None:
        self.objects.pop(obj_id, None)

    def select(self, obj_id: int, frame: int) -> MemorySelection:
        """The memories `obj_id` attends to on `frame`, in the official order."""
        mem = self.objects[obj_id]
        spatial = [(0, s) for s, _ in mem.cond.values()]
        for t_pos in range(1, self.num_maskmem):
            prev = mem.spatial.get(self._prev_frame(frame, self.num_maskmem - t_pos))
            if prev is not None:
                spatial.append((t_pos, prev))
        pointers: list[tuple[int, Tensor]] = []
        if self.max_obj_ptrs > 0:
            for t, (_, ptr) in mem.cond.items():
                offset = self._v(frame) - self._v(t) if self.signed_ptr_offsets else abs(frame - t)
                pointers.append((offset, ptr))
            for t_diff in range(1, self.max_obj_ptrs):
                t = self._frame(self._v(frame) - t_diff)
                if t < 0 or (self.num_frames is not None and t >= self.num_frames):
                    break
                ptr = mem.pointers.get(t)
                if ptr is not None:
                    pointers.append((t_diff, ptr))
        return MemorySelection(spatial, pointers)

    def prune(self, next_frame: int) -> None:
        """Drop every memory that neither `next_frame` nor any frame after it can select."""
        v_next, r = self._v(next_frame), self.stride
        oldest_strided = ((v_next - 2) // r) * r - (self.num_maskmem - 3) * r
        oldest_ptr = v_next - (self.max_obj_ptrs - 1)

        def keep_spatial(t: int) -> bool:
            v = self._v(t)
            if v == v_next - 1:
                return self.num_maskmem > 1
            return self.num_maskmem > 2 and t % r == 0 and v >= oldest_strided

        for mem in self.objects.values():
            mem.spatial = {t: s for t, s in mem.spatial.items() if keep_spatial(t)}
            mem.pointers = {t: p for t, p in mem.pointers.items() if self.max_obj_ptrs > 0 and self._v(t) >= oldest_ptr}

    def num_stored(self) -> int:
        """Stored tensors over all objects (for tests and monitoring)."""
        return sum(len(m) for m in self.objects.values())
