"""Automatic masklets: the pipeline's logic on a model double answering from synthetic ground truth,
then end to end with a tiny real model through the entry point the jobs worker calls.

Scene (seed 0, 64x48, 8 frames): GT objects 1 and 2 are visible on frame 0, object 0 appears on
frame 1, object 2 leaves on frames 2-5 and comes back on frame 6.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
import torch
from model_double import ProposerDouble, Script, TrackerDouble, TrackerFactoryDouble, Truth, frame_folder, job_config
from tiny_sam2 import tiny_model

from masklet.config import PipelineConfig
from masklet.io import rle
from masklet.io.schema import MaskletRecord
from masklet.pipelines.autolabel import AutoLabeler, automask_config, match
from masklet.pipelines.automask import AutoMaskGenerator
from masklet.pipelines.contract import make_pipeline
from masklet.pipelines.tracking import tracker_factory

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def run(
    truth: Truth, script: Script | None = None, hide: dict[int, set[int]] | None = None, **options: object
) -> tuple[list[MaskletRecord], TrackerFactoryDouble, ProposerDouble]:
    trackers = TrackerFactoryDouble(truth, script)
    proposer = ProposerDouble(truth, hide or {})
    labeler = AutoLabeler(PipelineConfig(**options), trackers, proposer)
    records = labeler("vid", iter(truth), lambda start, stop: itertools.islice(truth, start, stop)).records()
    return records, trackers, proposer


def follows(trackers: TrackerFactoryDouble) -> dict[int, int]:
    """masklet id -> GT object, as the forward tracker ended up following them."""
    return trackers.made[0].follows


def trackers_after(truth: Truth, **options: object) -> TrackerDouble:
    """The forward tracker of a run."""
    return run(truth, **options)[1].made[0]


def masks(record: MaskletRecord) -> list[np.ndarray]:
    return [rle.decode(r).astype(bool) for r in record.rles()]


def test_seeds_on_the_first_frame_only_by_default() -> None:
    truth = Truth()
    records, trackers, proposer = run(truth)
    assert proposer.calls == [0]
    assert {follows(trackers)[r.masklet_id] for r in records} == {1, 2}
    for r in records:
        assert r.frame_indices == list(range(8)) and r.edit_count == 0 and r.source == "auto"
        gt = follows(trackers)[r.masklet_id]
        assert all(np.array_equal(m, truth.visible[t][gt].numpy()) for t, m in enumerate(masks(r)))
    tracker = trackers.made[0]
    assert [t for t, _ in tracker.steps] == list(range(8))  # one batched step per frame, all objects in it
    assert all(objs == [r.masklet_id for r in records] for _, objs in tracker.steps[1:])
    assert len(trackers.made) == 1  # no backward pass


def test_reseeding_starts_masklets_for_new_objects() -> None:
    records, trackers, proposer = run(Truth(), reseed_every=1)
    assert proposer.calls == list(range(8))
    by_gt = {follows(trackers)[r.masklet_id]: r for r in records}
    assert set(by_gt) == {0, 1, 2}  # object 2 coming back on frame 6 is not a new masklet
    assert by_gt[0].frame_indices == list(range(1, 8)) and by_gt[0].first_frame == 1
    assert all(r.edit_count == 0 for r in records)


def test_reseed_every_k_frames() -> None:
    _, _, proposer = run(Truth(), reseed_every=3)
    assert proposer.calls == [0, 3, 6]


def test_lost_and_drifting_objects_are_corrected_and_counted_as_edits() -> None:
    truth = Truth()
    script = Script(lost={1: {2, 3}}, drift={1: {5}})
    records, trackers, _ = run(truth, script, reseed_every=1)
    by_gt = {follows(trackers)[r.masklet_id]: r for r in records}
    assert by_gt[1].edit_count == 3  # re-found on 2 and 3, corrected on 5
    assert by_gt[0].edit_count == by_gt[2].edit_count == 0
    corrected = [t for t, fixes in trackers.made[0].corrections if by_gt[1].masklet_id in fixes and t > 0]
    assert corrected == [2, 3, 5]
    # the corrected output replaces the tracked one on that frame
    assert np.array_equal(masks(by_gt[1])[5], truth.visible[5][1].numpy())


def test_edits_happen_only_on_seed_frames() -> None:
    records, trackers, _ = run(Truth(), Script(drift={1: {1, 2}}), reseed_every=2)
    by_gt = {follows(trackers)[r.masklet_id]: r for r in records}
    assert by_gt[1].edit_count == 1  # frame 2; frame 1 is not a seed frame and keeps the drifted mask
    assert not np.array_equal(masks(by_gt[1])[1], Truth().visible[1][1].numpy())


def test_cap_on_objects() -> None:
    records, _, _ = run(Truth(), reseed_every=1, max_objects=2)
    assert len(records) == 2
    records, _, _ = run(Truth(), reseed_every=1, max_objects=1)
    assert len(records) == 1


def test_late_masklets_propagate_backward_over_a_second_decode() -> None:
    truth = Truth()
    records, trackers, _ = run(truth, hide={1: {0, 1}}, reseed_every=1, propagate_backward=True)
    by_gt = {follows(trackers)[r.masklet_id]: r for r in records}
    assert all(r.frame_indices == list(range(8)) for r in records)
    assert truth.decodes == 2
    reverse = trackers.made[1]
    assert reverse.reverse and [t for t, _ in reverse.steps] == [2, 1, 0]  # from the latest birth back to 0
    assert np.array_equal(masks(by_gt[1])[0], truth.visible[0][1].numpy())  # hidden from seeding, found backwards
    assert masks(by_gt[0])[0].sum() == 0  # object 0 is not on frame 0


def test_without_backward_late_masklets_start_at_birth() -> None:
    truth = Truth()
    records, trackers, _ = run(truth, hide={1: {0, 1}}, reseed_every=1)
    by_gt = {follows(trackers)[r.masklet_id]: r for r in records}
    assert by_gt[1].frame_indices == list(range(2, 8)) and truth.decodes == 1


def test_lost_objects_are_dropped_after_n_unseen_frames() -> None:
    """GT object 2 is out of the frame on 2-5: with drop_lost_after=2 it is released after frame 3."""
    truth = Truth()
    off, _, _ = run(truth)
    records, trackers, _ = run(truth, drop_lost_after=2)
    tracker = trackers.made[0]
    (gone,) = tracker.removed
    assert tracker.removed[gone] == 2
    assert [len(objs) for _, objs in tracker.steps] == [0, 2, 2, 2, 1, 1, 1, 1]  # one row fewer from frame 4
    by_id = {r.masklet_id: r for r in records}
    assert by_id[gone].frame_indices == list(range(4))  # the frames it was tracked on; none once released
    assert [m.any() for m in masks(by_id[gone])] == [True, True, False, False]  # nothing when it is back on 6
    assert [r for r in records if r.masklet_id != gone] == [r for r in off if r.masklet_id != gone]
    # unseen on 4 consecutive frames, 2-5: dropped at 4, not at 5, which leaves everything as with the option off
    assert trackers_after(truth, drop_lost_after=4).removed and not trackers_after(truth, drop_lost_after=5).removed
    assert run(truth, drop_lost_after=5)[0] == off


def test_a_dropped_object_is_not_matched_and_may_start_a_new_masklet() -> None:
    truth = Truth()
    records, trackers, _ = run(truth, reseed_every=1, drop_lost_after=2)
    tracker = trackers.made[0]
    (gone,) = tracker.removed
    assert [t for t, fixes in tracker.corrections if gone in fixes] == [0]  # born on 0, never edited once dropped
    reborn = [r for r in records if tracker.follows.get(r.masklet_id) == 2]
    assert [r.first_frame for r in reborn] == [6] and reborn[0].masklet_id > max(tracker.removed)
    ends = {r.masklet_id: r.frame_indices[-1] for r in records}
    assert ends == {o: 3 if o == gone else 7 for o in ends}  # released after frame 3, the others to the end
    assert all(r.frame_indices == list(range(r.frame_indices[0], ends[r.masklet_id] + 1)) for r in records)


def test_match_rules() -> None:
    h = w = 20

    def box(x0: int, y0: int, x1: int, y1: int) -> torch.Tensor:
        m = torch.zeros(h, w, dtype=torch.bool)
        m[y0:y1, x0:x1] = True
        return m

    current = torch.stack([box(0, 0, 10, 10), torch.zeros(h, w, dtype=torch.bool)])  # object 2 lost
    last = torch.stack([box(0, 0, 10, 10), box(12, 12, 18, 18)])
    candidates = torch.stack(
        [
            box(0, 0, 10, 10),  # confirms object 1
            box(1, 1, 10, 10),  # also object 1, but it is confirmed: nothing
            box(12, 12, 18, 17),  # re-finds object 2
            box(2, 2, 5, 5),  # inside object 1: a part, not a new object
            box(0, 12, 8, 20),  # new
            box(0, 13, 8, 20),  # the same as the previous new one: not another
        ]
    )
    scores = torch.linspace(1, 0.5, 6)
    got = match(candidates, scores, [1, 2], current, last, new_iou=0.3, edit_iou=0.9, room=5)
    assert got.edits == {2: 2} and got.new == [4]
    drifted = torch.stack([box(3, 0, 13, 10), torch.zeros(h, w, dtype=torch.bool)])
    got = match(candidates[:1], scores[:1], [1, 2], drifted, last, new_iou=0.3, edit_iou=0.9, room=5)
    assert got.edits == {1: 0} and got.new == []
    assert match(candidates[4:5], scores[:1], [1, 2], current, last, new_iou=0.3, edit_iou=0.9, room=0).new == []


def test_end_to_end_with_a_tiny_model(tmp_path: Path) -> None:
    """The worker's entry point on a 64x48, 6-frame synthetic video: structure, not quality."""
    truth = Truth(frames=6)
    video = frame_folder(truth, tmp_path)
    pipeline = {"reseed_every": 2, "propagate_backward": True, "points_per_side": 4}
    pipeline |= {"pred_iou_thresh": 0.0, "stability_score_thresh": 0.0}
    config = job_config(pipeline=pipeline, filters={"min_visible_frames": 2})
    run_video = make_pipeline(config, tiny_model(), torch.device("cpu"))
    with video.open(fps=None) as stream:
        records = run_video(video, stream)
    assert records and len(records) <= config.pipeline.max_objects
    for r in records:
        assert r.video_key == "vid" and r.source == "auto" and (r.height, r.width) == (48, 64)
        assert set(r.frame_indices) <= set(range(6)) and r.frame_indices == sorted(r.frame_indices)
        assert all(rle.decode(x).shape == (48, 64) for x in r.rles())
        assert r.kept == (r.reject_reason is None)
        assert r.kept or r.reject_reason
    assert [r.masklet_id for r in records] == sorted({r.masklet_id for r in records})


def test_a_seed_frame_is_encoded_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """The generator proposes from the tracker's features of a seed frame: one image-encoder call per
    frame; given features of the same model input, it finds what it finds encoding the frame itself."""
    truth = Truth(frames=3)
    model = tiny_model()
    config = PipelineConfig(reseed_every=1, points_per_side=4, pred_iou_thresh=0.0, stability_score_thresh=0.0)
    generator = AutoMaskGenerator(model, automask_config(config))
    calls: list[int] = []
    encoder = model.image_encoder.forward
    monkeypatch.setattr(model.image_encoder, "forward", lambda x: calls.append(1) or encoder(x))
    records = AutoLabeler(config, tracker_factory(model), generator.generate)("vid", iter(truth)).records()
    assert records and len(calls) == 3  # 64x48 frames: the correction on frame 0 reuses them too

    square = Truth(width=128, height=128, frames=1).rgb[0]  # at the model's size both recipes only normalize
    own = generator.generate(square)
    shared = generator.generate(square, tracker_factory(model)(reverse=False, start=0).encode(square))
    assert torch.equal(own.masks, shared.masks) and torch.equal(own.predicted_iou, shared.predicted_iou)
    assert trackers_after(Truth(), reseed_every=3).encoded == [0, 3, 6]
