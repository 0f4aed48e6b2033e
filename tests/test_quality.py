import errno
import os
import tempfile
import tracemalloc

import numpy as np
import pycocotools.mask as mask_util
import pytest
import torch

from masklet.io import rle
from masklet.pipelines.mask_ops import stability_score
from masklet.pipelines.quality import MaskletSequences, _Spill, frame_quality


def official_stability(masks: torch.Tensor, mask_threshold: float, threshold_offset: float) -> torch.Tensor:
    """sam2.utils.amg.calculate_stability_score (sam2 1.1.0), verbatim."""
    intersections = (masks > (mask_threshold + threshold_offset)).sum(-1, dtype=torch.int16).sum(-1, dtype=torch.int32)
    unions = (masks > (mask_threshold - threshold_offset)).sum(-1, dtype=torch.int16).sum(-1, dtype=torch.int32)
    return intersections / unions


def test_stability_by_hand():
    logits = torch.tensor([[[2.0, 2.0, 0.5], [0.5, -0.5, -2.0], [-2.0, -2.0, -2.0]]])
    # > 1: two pixels; > -1: five pixels
    assert stability_score(logits, 0.0, 1.0).tolist() == [pytest.approx(2 / 5)]
    # a mask empty at the lower cut-off scores 0 (the official code gives NaN)
    assert stability_score(torch.full((1, 4, 4), -5.0), 0.0, 1.0).tolist() == [0.0]


@pytest.mark.parametrize("threshold, offset", [(0.0, 1.0), (0.5, 0.25), (-1.0, 2.0)])
def test_stability_matches_official(threshold, offset):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 37, 53, generator=g) * 3 + torch.linspace(-4, 4, 6)[:, None, None]
    ours = stability_score(logits, threshold, offset)
    theirs = official_stability(logits, threshold, offset)
    assert torch.equal(ours, theirs)


def test_frame_quality_masks_scores_and_visibility():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(3, 1, 21, 34, generator=g) * 4
    logits[2] = -8.0  # visible by its score, but an empty mask
    iou = torch.tensor([0.9, 0.8, 0.7])
    score = torch.tensor([3.0, -0.5, 2.0])  # object 1 absent by its score
    q = frame_quality(logits, iou, score)
    expected = mask_util.encode(np.asfortranarray((logits[0, 0] > 0).numpy().astype(np.uint8)))
    assert q.counts[0] == expected["counts"].decode()
    assert q.counts[1:] == ["", ""]
    assert (q.height, q.width) == (21, 34)
    assert q.pred_iou == [float(np.float32(v)) for v in (0.9, 0.8, 0.7)]
    assert q.object_score == [3.0, -0.5, 2.0]
    assert q.stability == official_stability(logits[:2, 0], 0.0, 1.0).tolist() + [0.0]


def test_frame_quality_refuses_mismatched_shapes():
    with pytest.raises(ValueError, match="2 masks"):
        frame_quality(torch.zeros(2, 4, 4), torch.zeros(3), torch.zeros(2))


def _logits(mask: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.where(mask, 5.0, -5.0).astype(np.float32))


def test_sequences_to_records():
    h, w = 12, 16
    a = np.zeros((h, w), bool)
    a[2:6, 3:9] = True
    b = np.zeros((h, w), bool)
    b[7:11, 1:4] = True
    seq = MaskletSequences("vid", source="prompt")
    # frames arrive out of order (a backward pass), object 7 starts late, frame 8 is visited twice
    seq.add_frame(8, [3], _logits(np.zeros((h, w), bool))[None], torch.tensor([0.5]), torch.tensor([-1.0]))
    seq.add_frame(4, [3, 7], torch.stack([_logits(a), _logits(b)]), torch.tensor([0.9, 0.8]), torch.tensor([2.0, 1.0]))
    seq.add_frame(0, [3], _logits(a)[None], torch.tensor([0.7]), torch.tensor([4.0]))
    seq.add_frame(8, [3, 7], torch.stack([_logits(a), _logits(b)]), torch.tensor([0.6, 0.5]), torch.tensor([1.0, -3.0]))
    records = seq.records(edit_counts={7: 2})
    assert [r.masklet_id for r in records] == [3, 7]
    r3, r7 = records
    assert r3.frame_indices == [0, 4, 8] and r7.frame_indices == [4, 8]
    assert r3.source == r7.source == "prompt"
    assert (r3.num_visible, r3.first_frame, r3.edit_count) == (3, 0, 0)  # the second visit of frame 8 won
    assert (r7.num_visible, r7.first_frame, r7.visibility_changes, r7.edit_count) == (1, 4, 1, 2)
    assert r7.rle[1] == "" and r7.area == [int(b.sum()), 0]
    assert np.array_equal(rle.decode_batch(r3.rles()), np.stack([a, a, a]))
    assert r3.pred_iou == [float(np.float32(v)) for v in (0.7, 0.9, 0.6)]
    assert r3.stability == [1.0, 1.0, 1.0]
    assert r3.area_rel_mean == pytest.approx(a.sum() / (h * w))
    assert MaskletSequences("empty").records() == []


def test_sequences_keep_rles_on_local_disk(monkeypatch: pytest.MonkeyPatch) -> None:
    """A long video's RLEs (1 to 2 KB a masklet-frame at 1080p) are spilled to a file as they come: what
    stays in memory is a few dozen bytes an entry, and the records read them back."""
    monkeypatch.setattr(_Spill, "BUFFER_BYTES", 4096)
    rng = np.random.default_rng(0)
    noisy = rng.random((40, 64)) < 0.5  # a mask whose RLE is long: ~1.3k runs
    seq = MaskletSequences("vid")

    def add(frames: range) -> None:
        for f in frames:
            seq.add_frame(f, [1], _logits(np.roll(noisy, f, axis=1))[None], torch.tensor([0.9]), torch.tensor([2.0]))

    add(range(100))  # what the first frames start (caches, arrays) is not the per-entry cost
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    add(range(100, 1100))
    held = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    spilled = os.fstat(seq._spill._file.fileno()).st_size
    assert spilled > 1100 * 1000, "each RLE is over 1 KB"
    assert held < 1000 * 128, f"{held / 1000:.0f} bytes held an entry"
    (record,) = seq.records()
    assert np.array_equal(record.masks(), np.stack([np.roll(noisy, f, axis=1) for f in range(1100)]))


def test_a_full_disk_under_the_spill_names_the_folder(monkeypatch: pytest.MonkeyPatch) -> None:
    class Full:
        def write(self, data: bytes) -> None:
            raise OSError(errno.ENOSPC, "No space left on device")

    seq = MaskletSequences("vid")
    seq.add_frame(0, [1], torch.zeros(1, 4, 4), torch.zeros(1), torch.zeros(1))
    monkeypatch.setattr(seq._spill, "_file", Full())
    with pytest.raises(OSError, match=f"no space left in {tempfile.gettempdir()} for a video's RLEs"):
        seq.records()


def test_sequences_refuse_bad_frames():
    seq = MaskletSequences("vid")
    with pytest.raises(ValueError, match="repeated object ids"):
        seq.add_frame(0, [1, 1], torch.zeros(2, 4, 4), torch.zeros(2), torch.zeros(2))
    seq.add_frame(0, [1], torch.zeros(1, 4, 4), torch.zeros(1), torch.zeros(1))
    with pytest.raises(ValueError, match="masks 5x5, earlier ones 4x4"):
        seq.add_frame(1, [1], torch.zeros(1, 5, 5), torch.zeros(1), torch.zeros(1))
