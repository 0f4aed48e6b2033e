"""A video's masklets judged and written without holding them as records give what the list path gives:
the same verdicts as `apply_filters`, the same Parquet rows, the same SA-V document, byte for byte."""

import json
import tarfile
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from masklet.config import FiltersConfig
from masklet.io.schema import VideoRecord
from masklet.io.sinks import ShardWriter
from masklet.jobs.shard import write_streamed
from masklet.pipelines.filters import apply_filters
from masklet.pipelines.quality import MaskletSequences, PackedMasklets
from masklet.pipelines.streamed import JudgedMasklets, judge

H, W = 12, 20
FRAMES = list(range(0, 40, 2))  # annotated frames


def _sequences(seed: int) -> MaskletSequences:
    """Six objects over FRAMES: two track one box together (a duplicate), one is small and short-lived,
    one is found late and tracked back (its early frames given last), one frame is given twice."""
    rng = np.random.default_rng(seed)
    seq = MaskletSequences("vid", source="auto")

    def logits(y: int, x: int, size: int) -> torch.Tensor:
        m = torch.full((H, W), -4.0)
        m[y : y + size, x : x + size] = 4.0
        return m

    for t, f in enumerate(FRAMES):
        y, x = t % 6, t % 14
        objs = [1, 2, 3, 4] + ([5] if 4 <= t < 7 else [])
        masks = [logits(y, x, 5), logits(y, x + rng.integers(0, 2), 5), logits(6, 2, 4), logits(1, 14, 3)]
        masks += [logits(9, 9, 1)] if 5 in objs else []
        if t >= 10:  # object 6 is born here
            objs.append(6)
            masks.append(logits(2, 8, 4))
        scores = torch.tensor(rng.uniform(0.5, 1.0, len(objs)), dtype=torch.float32)
        present = torch.tensor([-1.0 if o == 4 and t % 5 == 0 else 2.0 for o in objs])
        seq.add_frame(f, objs, torch.stack(masks), scores, present)
    for f in reversed(FRAMES[:10]):  # object 6, tracked back from its birth
        seq.add_frame(f, [6], logits(2, 8 - f // 8, 4)[None], torch.tensor([0.7]), torch.tensor([1.5]))
    seq.add_frame(FRAMES[3], [3], logits(6, 3, 4)[None], torch.tensor([0.6]), torch.tensor([3.0]))  # again
    return seq


def _video() -> VideoRecord:
    return VideoRecord(
        "vid", "vid.mp4", "s3://in/vid.mp4", fps=24.0, frame_count=40, height=H, width=W, frame_indices=FRAMES
    )


FILTERS = [
    FiltersConfig(),
    FiltersConfig(min_visible_frames=4, dedup_iou=0.5),
    FiltersConfig(min_stability_mean=0.9, min_area_rel=0.02, max_visibility_changes=2, dedup_iou=None),
]


@pytest.mark.parametrize("filters", FILTERS)
@pytest.mark.parametrize("window_frames", [1, 3, 256])
def test_verdicts_are_those_of_apply_filters(filters: FiltersConfig, window_frames: int) -> None:
    store = PackedMasklets(_sequences(0), {2: 3}, window_frames=window_frames)
    expected = apply_filters(store.records(), filters)
    judged = JudgedMasklets(store, judge(store, filters))
    assert list(judged) == expected
    assert len(judged) == 6 and judged.kept_ids == [m.masklet_id for m in expected if m.kept]
    assert any(not m.kept for m in expected), "some masklet is dropped"


def test_a_duplicate_is_found_across_windows() -> None:
    store = PackedMasklets(_sequences(0), {}, window_frames=3)
    assert len(store.windows) == 7
    reasons = {m.masklet_id: m.reject_reason for m in JudgedMasklets(store, judge(store, FiltersConfig()))}
    assert reasons[2] == "duplicate_of:1" or reasons[1] == "duplicate_of:2"


def test_packed_records_keep_the_last_entry_of_a_frame_given_twice() -> None:
    (r3,) = [m for m in _sequences(0).records() if m.masklet_id == 3]
    assert r3.frame_indices == FRAMES
    assert r3.pred_iou[3] == pytest.approx(0.6) and r3.object_score[3] == 3.0


def _written(root: Path, write) -> tuple[object, dict[str, bytes]]:
    with ShardWriter(str(root), "shard-000000", model="m", config_hash="h") as writer:
        write(writer)
        writer.commit()
    with tarfile.open(root / "wds" / "shard-000000.tar") as tar:
        members = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
    return pq.read_table(root / "masklets" / "shard-000000.parquet"), members


@pytest.mark.parametrize("window_frames", [1, 7])
def test_a_streamed_video_writes_the_files_the_list_path_writes(tmp_path: Path, window_frames: int) -> None:
    store = PackedMasklets(_sequences(1), {1: 2, 6: 1}, window_frames=window_frames)
    filters = FiltersConfig(dedup_iou=0.5)
    video = _video()
    listed = _written(tmp_path / "list", lambda w: w.add_video(video, apply_filters(store.records(), filters)))
    judged = JudgedMasklets(store, judge(store, filters))
    streamed = _written(tmp_path / "streamed", lambda w: write_streamed(w, video, judged))
    assert streamed[0].equals(listed[0])
    assert streamed[1] == listed[1]
    assert json.loads(streamed[1]["vid.json"])["masklet_id"] == judged.kept_ids == [1, 3, 4, 5, 6]
