"""The streaming tracker and its memory bank on a tiny random model (CPU).

Parity with the official predictor is tests/test_parity.py; these tests pin the streaming semantics:
batching over objects equals tracking each alone, reverse mirrors forward, one model call per frame,
memory that stays bounded, and the prompt API.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import torch
from tiny_sam2 import TINY, tiny_model

from masklet.model import SAM2Model
from masklet.model import tracker as tracker_module
from masklet.model.image_predictor import ImagePredictor
from masklet.model.memory_bank import MemoryBank
from masklet.model.tracker import TrackOutput, VideoTracker

HW = (48, 64)
FP32 = {"memory_dtype": torch.float32}  # exact comparisons between trackers (no bfloat16 rounding ties)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def model() -> SAM2Model:
    return tiny_model()


@pytest.fixture(scope="module")
def frames() -> np.ndarray:
    """12 uint8 frames [T, 48, 64, 3]: a bright square moving right over a noisy background."""
    rng = np.random.default_rng(0)
    video = rng.integers(0, 80, size=(12, *HW, 3), dtype=np.uint8)
    for t in range(12):
        video[t, 14:34, 4 + 3 * t : 24 + 3 * t] = 230
    return video


def square(t: int) -> np.ndarray:
    mask = np.zeros(HW, dtype=bool)
    mask[14:34, 4 + 3 * t : 24 + 3 * t] = True
    return mask


PROMPTS = {  # object id -> (frame, add_object kwargs)
    1: (0, {"mask": square(0)}),
    2: (2, {"points": [[20.0, 24.0], [50.0, 5.0]], "labels": [1, 0]}),
    3: (4, {"box": [8.0, 10.0, 40.0, 40.0]}),
}


def run(
    model: SAM2Model, frames: np.ndarray, order: list[int], prompts: dict, **kwargs
) -> dict[tuple[int, int], dict[str, torch.Tensor]]:
    """Step through `frames[order]`, prompting as the stream reaches each prompt; -> {(object, frame): outputs}."""
    tracker = VideoTracker(model, start_frame=order[0], **kwargs)
    results = {}
    for f in order:
        for obj_id, (frame, prompt) in prompts.items():
            if frame == f:
                tracker.add_object(obj_id, **prompt)
        out = tracker.step(frames[f])
        for i, obj_id in enumerate(out.obj_ids):
            results[(obj_id, f)] = {
                "low_res": out.low_res_logits[i],
                "iou": out.iou[i],
                "score": out.object_score_logits[i],
                "ptr": out.obj_ptr[i],
            }
    return results


def assert_same(a: dict, b: dict, atol: float) -> None:
    assert a.keys() == b.keys()
    for key in a:
        for name in a[key]:
            diff = (a[key][name] - b[key][name]).abs().max().item()
            assert diff <= atol, f"{name} of object {key[0]} on frame {key[1]}: {diff:.3g}"


def test_step_outputs(model: SAM2Model, frames: np.ndarray) -> None:
    tracker = VideoTracker(model)
    tracker.add_object(7, points=[[30.0, 20.0]], labels=[1])
    out = tracker.step(frames[0])
    assert isinstance(out, TrackOutput) and out.frame_index == 0 and out.obj_ids == [7]
    assert tracker.video_hw == HW and tracker.frame_index == 1
    s = TINY.image_size // 4
    assert out.low_res_logits.shape == (1, 1, s, s) and out.low_res_logits.dtype == torch.float32
    assert out.video_res_logits.shape == (1, 1, *HW)
    assert out.masks().shape == (1, *HW) and out.masks().dtype == torch.bool
    assert out.iou.shape == out.object_score_logits.shape == (1,)
    assert out.obj_ptr.shape == (1, TINY.hidden_dim)
    tracked = tracker.step(frames[1])
    assert tracked.frame_index == 1 and tracked.obj_ids == [7]
    assert not torch.equal(tracked.low_res_logits, out.low_res_logits)


@pytest.mark.parametrize("reverse", [False, True])
def test_batch_of_objects_equals_each_alone(model: SAM2Model, frames: np.ndarray, reverse: bool) -> None:
    """Objects prompted on different frames hold different numbers of memories, so the batch is padded."""
    order = list(range(11, -1, -1)) if reverse else list(range(12))
    prompts = {o: (order[p[0]], p[1]) for o, p in PROMPTS.items()}
    together = run(model, frames, order, prompts, reverse=reverse, **FP32)
    alone: dict = {}
    for obj_id, prompt in prompts.items():
        alone |= run(model, frames, order, {obj_id: prompt}, reverse=reverse, **FP32)
    assert_same(together, alone, atol=1e-4)


def test_memory_encoder_batches_on_cpu_change_nothing(
    model: SAM2Model, frames: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On CPU the memory encoder takes the objects a few at a time (its large maps cost page faults)."""
    assert len(PROMPTS) <= tracker_module.CPU_MEMORY_ENCODER_BATCH  # one call for all three here
    together = run(model, frames, list(range(12)), PROMPTS, **FP32)
    monkeypatch.setattr(tracker_module, "CPU_MEMORY_ENCODER_BATCH", 1)
    calls = []
    hook = model.memory_encoder.register_forward_hook(lambda *_: calls.append(1))
    try:
        one_by_one = run(model, frames, list(range(12)), PROMPTS, **FP32)
    finally:
        hook.remove()
    assert len(calls) == 2 * 1 + 2 * 2 + 8 * 3  # frames 0-1: one object, 2-3: two, 4-11: three
    assert_same(together, one_by_one, atol=1e-4)  # batch sizes change float rounding, as in the test above


def test_reverse_mirrors_forward(model: SAM2Model, frames: np.ndarray) -> None:
    """Reverse tracking over frames 11..0 is forward tracking over the reversed video: offsets flip sign."""
    backward = run(model, frames, list(range(11, -1, -1)), {1: (11, {"mask": square(11)})}, reverse=True, **FP32)
    mirrored = run(model, frames[::-1].copy(), list(range(12)), {1: (0, {"mask": square(11)})}, **FP32)
    assert_same(backward, {(o, 11 - f): v for (o, f), v in mirrored.items()}, atol=1e-6)


def test_one_model_call_per_frame_for_all_objects(model: SAM2Model, frames: np.ndarray) -> None:
    tracker = VideoTracker(model)
    for obj_id, (_, prompt) in PROMPTS.items():
        tracker.add_object(obj_id, **prompt)
    tracker.step(frames[0])
    calls = {"image_encoder": 0, "memory_attention": 0, "sam_mask_decoder": 0, "memory_encoder": 0}

    def count(name: str) -> Callable[..., None]:
        return lambda *_: calls.__setitem__(name, calls[name] + 1)

    hooks = [getattr(model, name).register_forward_hook(count(name)) for name in calls]
    try:
        out = tracker.step(frames[1])
    finally:
        for hook in hooks:
            hook.remove()
    assert out.obj_ids == [1, 2, 3]
    assert calls == {"image_encoder": 1, "memory_attention": 1, "sam_mask_decoder": 1, "memory_encoder": 1}


def test_memory_stays_bounded(model: SAM2Model, frames: np.ndarray) -> None:
    """40 frames with two objects, one re-prompted every 5 frames: what is stored stops growing."""
    tracker = VideoTracker(model, max_cond_frames=2)
    per_object_cap = 2 * 2 + (TINY.num_maskmem - 1) + (TINY.max_obj_ptrs_in_encoder - 1)
    stored = []
    for t in range(40):
        if t % 5 == 0:
            tracker.add_object(1, mask=square(t % 12))
        if t == 1:
            tracker.add_object(2, points=[[30.0, 20.0]], labels=[1])
        tracker.step(frames[t % 12])
        stored.append(tracker.bank.num_stored())
        assert stored[-1] <= 2 * per_object_cap
        assert len(tracker.bank.objects[1].cond) <= 2
    assert stored[-1] == stored[24] and max(stored[20:]) == max(stored[30:])


def test_memory_bank_selects_like_the_official_code() -> None:
    bank = MemoryBank(num_maskmem=7, max_obj_ptrs=16, signed_ptr_offsets=True, stride=2, num_frames=12)
    marker = torch.zeros(1)
    bank.add(1, 0, marker, marker, prompted=True)
    for f in range(1, 11):
        bank.add(1, f, torch.tensor([f]), torch.tensor([f]), prompted=False)
    sel = bank.select(1, 11)
    # t_pos 6 is the frame before; the others every 2nd frame from (11 - 2) // 2 * 2 = 8 back
    assert [(t, int(m)) for t, m in sel.spatial[1:]] == [(2, 2), (3, 4), (4, 6), (5, 8), (6, 10)]
    assert sel.spatial[0][0] == 0 and len(sel.spatial) == 6
    # the prompted frame 11 frames back, then the last min(12, 16) - 1 = 11 frames
    assert [t for t, _ in sel.pointers] == [11, *range(1, 11)]
    bank.prune(11)
    assert sorted(bank.objects[1].spatial) == [2, 4, 6, 8, 10]
    assert sorted(bank.objects[1].pointers) == list(range(1, 11))

    reverse = MemoryBank(num_maskmem=7, max_obj_ptrs=16, signed_ptr_offsets=False, reverse=True, stride=2)
    reverse.add(1, 30, marker, marker, prompted=True)
    for f in range(29, 9, -1):
        reverse.add(1, f, torch.tensor([f]), torch.tensor([f]), prompted=False)
    sel = reverse.select(1, 9)
    assert [(t, int(m)) for t, m in sel.spatial[1:]] == [(1, 20), (2, 18), (3, 16), (4, 14), (5, 12), (6, 10)]
    assert [t for t, _ in sel.pointers] == [21, *range(1, 16)]


def test_prompted_frames_beyond_the_cap_become_ordinary_memories() -> None:
    bank = MemoryBank(num_maskmem=3, max_obj_ptrs=4, signed_ptr_offsets=True, max_cond_frames=2)
    for f in range(8):
        bank.add(1, f, torch.tensor([f]), torch.tensor([f]), prompted=f in (0, 3, 6))
    assert list(bank.objects[1].cond) == [3, 6]
    assert 0 in bank.objects[1].spatial and 0 in bank.objects[1].pointers
    bank.prune(8)
    assert sorted(bank.objects[1].spatial) == [7]
    assert sorted(bank.objects[1].pointers) == [5, 7]


def test_reprompt_is_a_new_conditioning_frame_without_memory(model: SAM2Model, frames: np.ndarray) -> None:
    tracker = VideoTracker(model, **FP32)
    tracker.add_object(1, mask=square(0))
    for t in range(3):
        tracker.step(frames[t])
    tracker.add_object(1, box=[10.0, 12.0, 40.0, 36.0])
    reprompted = tracker.step(frames[3])
    assert list(tracker.bank.objects[1].cond) == [0, 3]
    fresh = VideoTracker(model, start_frame=3, **FP32)
    fresh.add_object(1, box=[10.0, 12.0, 40.0, 36.0])
    first = fresh.step(frames[3])
    assert torch.allclose(reprompted.low_res_logits, first.low_res_logits, atol=1e-6)


def test_correct_after_step_equals_prompting_before_it(model: SAM2Model, frames: np.ndarray) -> None:
    """A mask given with `correct` right after a step (to a tracked object, and a new one) leaves the
    tracker exactly as if it had been given with `add_object` before that step."""

    def track(correct: bool) -> dict:
        tracker = VideoTracker(model, **FP32)
        results = {}
        tracker.add_object(1, mask=square(0))
        for t in range(6):
            fixes = {1: square(t), 2: square(t)[::-1].copy()} if t == 2 else {}
            if not correct:
                for obj_id, mask in fixes.items():
                    tracker.add_object(obj_id, mask=mask)
            outputs = [tracker.step(frames[t])]
            if correct and fixes:
                outputs.append(tracker.correct(fixes))  # replaces the tracked outputs of its objects
                assert outputs[1].obj_ids == [1, 2] and outputs[1].frame_index == 2
            for out in outputs:
                for i, obj_id in enumerate(out.obj_ids):
                    results[(obj_id, t)] = {"low_res": out.low_res_logits[i], "score": out.object_score_logits[i]}
        assert list(tracker.bank.objects[1].cond) == [0, 2] and list(tracker.bank.objects[2].cond) == [2]
        return results

    assert_same(track(correct=True), track(correct=False), atol=1e-5)


def test_correct_needs_a_frame_just_processed(model: SAM2Model, frames: np.ndarray) -> None:
    tracker = VideoTracker(model, **FP32)
    with pytest.raises(RuntimeError, match="just processed"):
        tracker.correct({1: square(0)})
    tracker.step(frames[0])  # nothing tracked: the frame is encoded only when corrected
    assert tracker.correct({1: square(0)}).obj_ids == [1]
    assert tracker.step(frames[1]).obj_ids == [1]


def test_prompt_coordinates_in_pixels_or_normalized(model: SAM2Model, frames: np.ndarray) -> None:
    outs = []
    for points, normalize in (([[32.0, 12.0]], True), ([[0.5, 0.25]], False)):
        tracker = VideoTracker(model, video_hw=HW)
        tracker.add_object(1, points=points, labels=[1], normalize_coords=normalize)
        outs.append(tracker.step(frames[0]).low_res_logits)
    assert torch.allclose(outs[0], outs[1], atol=1e-6)


def test_mask_prompt_is_taken_as_the_output(model: SAM2Model, frames: np.ndarray) -> None:
    tracker = VideoTracker(model)
    tracker.add_object(1, mask=square(0))
    out = tracker.step(frames[0])
    assert out.object_score_logits.item() == 10.0 and out.iou.item() == 1.0
    mask, expected = out.masks()[0], torch.from_numpy(square(0))
    assert (mask & expected).sum() / (mask | expected).sum() > 0.9


def test_features_can_be_shared_with_the_image_predictor(model: SAM2Model, frames: np.ndarray) -> None:
    a, b = VideoTracker(model), VideoTracker(model)
    for tracker in (a, b):
        tracker.add_object(1, box=[10.0, 12.0, 40.0, 36.0])
    features = b.encode(frames[0])
    assert torch.equal(a.step(frames[0]).low_res_logits, b.step(features).low_res_logits)
    predictor = ImagePredictor(model)
    predictor.set_features(features, HW)
    masks, iou, _ = predictor.predict(box=np.array([10.0, 12.0, 40.0, 36.0]))
    assert masks.shape == (3, *HW) and iou.shape == (3,)


def test_remove_object_frees_its_memory(model: SAM2Model, frames: np.ndarray) -> None:
    tracker = VideoTracker(model)
    for obj_id, (_, prompt) in PROMPTS.items():
        tracker.add_object(obj_id, **prompt)
    tracker.step(frames[0])
    tracker.remove_object(2)
    assert tracker.obj_ids == [1, 3] and 2 not in tracker.bank.objects
    assert tracker.step(frames[1]).obj_ids == [1, 3]


def test_no_objects_and_normalized_frames(model: SAM2Model, frames: np.ndarray) -> None:
    tracker = VideoTracker(model)
    out = tracker.step(frames[0])
    assert out.obj_ids == [] and out.low_res_logits.shape[0] == 0 and tracker.video_hw == HW
    normalized = torch.randn(3, TINY.image_size, TINY.image_size)
    with pytest.raises(ValueError, match="video_hw is unknown"):
        VideoTracker(model).step(normalized)
    tracker.add_object(1, points=[[30.0, 20.0]], labels=[1])
    assert tracker.step(normalized).obj_ids == [1]


def test_bfloat16_autocast_gives_float32_outputs(model: SAM2Model, frames: np.ndarray) -> None:
    tracker = VideoTracker(model, dtype=torch.bfloat16)
    tracker.add_object(1, box=[10.0, 12.0, 40.0, 36.0])
    for t in range(2):
        out = tracker.step(frames[t])
    assert out.low_res_logits.dtype == torch.float32 and torch.isfinite(out.low_res_logits).all()
    assert tracker.bank.objects[1].spatial[1].dtype == torch.bfloat16


def test_bad_prompts_and_frames(model: SAM2Model, frames: np.ndarray) -> None:
    tracker = VideoTracker(model, num_frames=1)
    with pytest.raises(ValueError, match="together"):
        tracker.add_object(1, points=[[1.0, 2.0]])
    with pytest.raises(ValueError, match="not both"):
        tracker.add_object(1, mask=square(0), box=[0.0, 0.0, 5.0, 5.0])
    with pytest.raises(ValueError, match="needs"):
        tracker.add_object(1)
    with pytest.raises(ValueError, match="labels"):
        tracker.add_object(1, points=[[1.0, 2.0], [3.0, 4.0]], labels=[1])
    with pytest.raises(ValueError, match="start_frame"):
        VideoTracker(model, reverse=True)
    tracker.step(frames[0])
    with pytest.raises(IndexError):
        tracker.step(frames[1])
    with pytest.raises(ValueError, match="size"):
        VideoTracker(model, video_hw=(10, 10)).step(frames[0])
