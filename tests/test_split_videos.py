"""One long video as several units of work (issue 20, item 3): chunks of annotated frames with an overlap,
labelled on their own, their masklets stitched into one set with ids through the whole video.

The Ray-free tests run a shard's, a chunk's and a stitch's work directly on a synthetic corpus with the
ground-truth test pipeline (jobs_plugins), whose masks are exact, so a stitched video can be compared
frame by frame with the same video labelled whole. The job tests run `masklet run` on a local Ray:
chunks spread over two workers, a chunk retried on its own after its worker died, a run resumed from
what an interrupted one left.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import fsspec
import numpy as np
import pytest
import ray
from jobs_helpers import read_output, start_local_ray, write_config
from jobs_plugins import CRASH_KEY, DELAY_ENV, GroundTruthPipeline
from model_double import Truth, frame_folder
from videos import encode, read_index

from masklet.cli import main
from masklet.config import FiltersConfig, SourceConfig, SplitConfig, validate_config
from masklet.io import rle
from masklet.io.errors import InputError
from masklet.io.outputs import read_shard
from masklet.io.schema import MaskletRecord
from masklet.io.sinks import list_done
from masklet.io.sources import Shard, list_shards
from masklet.io.video import open_video
from masklet.jobs import split as splits
from masklet.jobs.chunks import process_chunk, stitch_split
from masklet.jobs.shard import process_shard
from masklet.jobs.split import ChunkUnit, SplitQueue, SplitVideo, StitchUnit, spans
from masklet.pipelines.filters import apply_filters
from masklet.pipelines.stitching import Boundary, Stitched, plan_stitch
from masklet.pipelines.streamed import JudgedMasklets, judge
from masklet.synth.corpus import write_corpus

# 120 frames at 24 fps, every frame annotated: chunks of 24 frames running 6 into the next
CHUNKS = SplitConfig(chunk_seconds=1.0, overlap_seconds=0.25)
JOB = {"output_uri": "", "model": "m", "config_hash": "h"}


# ---- the plan


@pytest.mark.parametrize("positions", [1, 29, 30, 31, 54, 55, 120, 1000])
def test_chunks_cover_the_video_each_running_into_the_next(positions: int) -> None:
    chunk, overlap = 24, 6
    parts = spans(positions, chunk, overlap)
    ends = [positions if stop is None else stop for _, stop in parts]
    assert parts[0][0] == 0 and parts[-1][1] is None
    assert [s for s, _ in parts[1:]] == [e - overlap for e in ends[:-1]], "each chunk runs `overlap` into the next"
    assert all(e - s == chunk + overlap for (s, _), e in zip(parts[:-1], ends[:-1], strict=True))
    if positions <= chunk + overlap:
        assert len(parts) == 1
    else:
        assert overlap < ends[-1] - parts[-1][0] <= chunk + overlap


def test_a_long_video_is_split_a_short_one_is_not(tmp_path: Path) -> None:
    shard = Shard("shard-000000", "x.tar", "wds")
    source = SourceConfig(uri="x", fps=6)
    plan = splits.plan_split(CHUNKS, source, shard, "k", annotated_fps=6.0, positions=9, video={})
    assert plan is not None and plan.spans == ((0, 8), (6, None))  # 1 s = 6 frames, 0.25 s rounds to 2
    assert splits.plan_split(CHUNKS, source, shard, "k", annotated_fps=6.0, positions=8, video={}) is None
    capped = SourceConfig(uri="x", fps=6, max_frames=8)
    assert splits.plan_split(CHUNKS, capped, shard, "k", annotated_fps=6.0, positions=100, video={}) is None
    assert splits.plan_split(SplitConfig(), source, shard, "k", annotated_fps=6.0, positions=10**6, video={}) is None


def test_a_plan_reads_back_as_written(tmp_path: Path) -> None:
    shard = list_shards(SourceConfig(uri=str(_manifest(tmp_path)), format="manifest"))[0]
    plan = SplitVideo("shard-000000.a", shard, "a", ((0, 30), (24, None)), {"video_key": "a", "fps": 24.0})
    splits.write_plan(str(tmp_path / "out"), plan)
    units, waiting = splits.pending_units(str(tmp_path / "out"), committed={shard.id})
    assert units == [ChunkUnit(plan, 0), ChunkUnit(plan, 1)] and waiting == {plan.split_id: {0, 1}}
    assert splits.pending_units(str(tmp_path / "out"), committed=set()) == ([], {}), "its shard will split it again"


def test_split_settings_are_checked_before_any_work() -> None:
    base = {"source": {"uri": "in/*.tar"}, "output": {"uri": "out"}, "model": {"init": "random"}}
    with pytest.raises(ValueError, match="overlap_seconds .* must be shorter than chunk_seconds"):
        validate_config({**base, "split": {"chunk_seconds": 10, "overlap_seconds": 10}})
    with pytest.raises(ValueError, match="prompted objects cannot be tracked across chunks"):
        validate_config({**base, "split": {"chunk_seconds": 60}, "pipeline": {"mode": "prompted"}})
    unsplit = validate_config(base)
    assert validate_config({**base, "split": {"min_iou": 0.9}}).content_hash() == unsplit.content_hash()
    assert validate_config({**base, "split": {"chunk_seconds": 60}}).content_hash() != unsplit.content_hash()


# ---- a chunk's frames


def test_a_chunk_stream_gives_the_videos_frames_of_its_span() -> None:
    data = encode(200, fps=24, keyint=24)
    with open_video(data, fps=6) as whole:
        every = [f.index for f in whole]
    with open_video(data, fps=6, start=5, stop=12) as chunk:
        got = [(f.index, read_index(f.rgb)) for f in chunk]
        assert [i for i, _ in got] == every[5:12] and all(i == pixels for i, pixels in got)
        assert [f.index for f in chunk.reopen(2, 4)] == every[7:9], "a chunk's positions count from its start"
        assert [f.index for f in chunk.reopen(3)] == every[8:12], "a reopen stays inside the chunk"
    with open_video(data, fps=6, start=45) as last:
        assert [f.index for f in last] == every[45:]


# ---- stitching


def _box(x: int, y: int = 4, size: int = 8, shape: tuple[int, int] = (32, 64)) -> rle.RLE:
    mask = np.zeros(shape, bool)
    mask[y : y + size, x : x + size] = True
    return rle.encode(mask)


def _masklet(masklet_id: int, frames: range, x: Iterator[int] | int, score: float) -> MaskletRecord:
    """A box moving along x (None: not visible) over `frames`; `score` tells the chunk it came from."""
    xs = [x] * len(frames) if isinstance(x, int) else list(x)
    empty = rle.encode(np.zeros((32, 64), bool))
    rles = [empty if v is None else _box(v) for v in xs]
    n = len(frames)
    return MaskletRecord.from_frames(
        "v",
        masklet_id,
        source="auto",
        frame_indices=list(frames),
        rles=rles,
        pred_iou=[score] * n,
        stability=[score] * n,
        object_score=[1.0] * n,
        edit_count=masklet_id,
    )


def _stitch(
    chunks: list[list[MaskletRecord]], frames: list[range], min_iou: float, filters: FiltersConfig | None = None
) -> tuple[list[MaskletRecord], list[Boundary]]:
    """Stitch in-memory chunks as a stitch unit does its chunk files; every masklet kept by default."""
    plan = plan_stitch(lambda k: chunks[k], frames, min_iou)
    by_id = [{m.masklet_id: m for m in chunk} for chunk in chunks]
    own = [f for fs in plan.own_frames(frames) for f in fs]
    stitched = Stitched("v", plan, lambda k: chunks[k], lambda k, i: by_id[k][i], own)
    filters = filters or FiltersConfig(min_visible_frames=0, dedup_iou=None)
    return list(JudgedMasklets(stitched, judge(stitched, filters))), plan.boundaries


def test_a_masklet_keeps_its_id_across_a_boundary_each_chunk_giving_half_the_overlap() -> None:
    first = [_masklet(1, range(0, 10), 0, 0.1), _masklet(2, range(0, 10), 30, 0.1)]
    second = [_masklet(1, range(6, 16), 31, 0.2), _masklet(2, range(6, 16), 1, 0.2)]  # the other order
    joined, (boundary,) = _stitch([first, second], [range(0, 10), range(6, 16)], min_iou=0.5)
    assert [m.masklet_id for m in joined] == [1, 2]
    assert (boundary.cut, boundary.shared_frames, boundary.matched, boundary.ended, boundary.started) == (8, 4, 2, 0, 0)
    left, right = joined
    assert left.frame_indices == list(range(16)) and right.frame_indices == list(range(16))
    assert left.pred_iou == pytest.approx([0.1] * 8 + [0.2] * 8), "cut in the middle of frames 6..9"
    assert {int(np.argmax(m.any(0))) for m in left.masks()[8:]} == {1}, "the box at x=0 went on with x=1"
    assert left.edit_count == 1 + 2 and left.num_visible == 16


def test_unmatched_masklets_end_and_start_at_the_cut() -> None:
    first = [_masklet(1, range(0, 10), 0, 0.1), _masklet(2, range(0, 8), 40, 0.1)]
    second = [_masklet(1, range(6, 16), 3, 0.2), _masklet(2, range(6, 16), 20, 0.2)]  # IoU 5/11 with x=0
    joined, (boundary,) = _stitch([first, second], [range(0, 10), range(6, 16)], min_iou=0.5)
    assert (boundary.matched, boundary.ended, boundary.started) == (0, 2, 2)
    assert [(m.masklet_id, m.frame_indices[0], m.frame_indices[-1]) for m in joined] == [
        (1, 0, 7),
        (2, 0, 7),
        (3, 8, 15),
        (4, 8, 15),
    ], "each frame's labels come from one chunk"
    loose, _ = _stitch([first, second], [range(0, 10), range(6, 16)], min_iou=0.4)
    assert [(m.masklet_id, len(m.frame_indices)) for m in loose] == [(1, 16), (2, 8), (3, 8)], "0.4: x=3 goes on"


def test_one_to_one_matching_does_not_give_two_masklets_one_id() -> None:
    first = [_masklet(1, range(0, 10), 10, 0.1)]
    second = [_masklet(1, range(6, 16), 10, 0.2), _masklet(2, range(6, 16), 10, 0.2)]
    joined, (boundary,) = _stitch([first, second], [range(0, 10), range(6, 16)], min_iou=0.5)
    assert (boundary.matched, boundary.started) == (1, 1) and [m.masklet_id for m in joined] == [1, 2]


def test_an_id_runs_through_every_chunk_and_a_masklet_empty_on_an_overlap_ends() -> None:
    frames = [range(0, 10), range(6, 16), range(12, 22)]
    through = [_masklet(1, f, 5, 0.1 * (k + 1)) for k, f in enumerate(frames)]
    gone = _masklet(2, range(0, 10), iter([30] * 6 + [None] * 4), 0.1)  # not seen on the overlap
    back = _masklet(2, range(6, 16), iter([None] * 4 + [30] * 6), 0.2)
    joined, boundaries = _stitch([[through[0], gone], [through[1], back], [through[2]]], frames, min_iou=0.5)
    assert [(m.masklet_id, m.frame_indices[0], m.frame_indices[-1]) for m in joined] == [
        (1, 0, 21),
        (2, 0, 7),
        (3, 8, 13),
    ]
    assert [(b.cut, b.matched, b.ended, b.started) for b in boundaries] == [(8, 1, 1, 1), (14, 1, 1, 0)]


def test_the_stitchs_verdicts_are_the_filters_on_the_whole_list() -> None:
    """Judged chunk by chunk (the duplicate filter's tube IoUs summed over chunks) = `apply_filters`."""
    frames = [range(0, 10), range(6, 16), range(12, 22)]
    rng = np.random.default_rng(0)
    chunks = []
    for f in frames:
        xs = [int(x) for x in rng.integers(0, 8, 5)]
        chunks.append(
            [
                _masklet(i + 1, f, iter([x + int(d) for d in rng.integers(0, 3, 10)]), 0.5 + 0.1 * i)
                for i, x in enumerate(xs)
            ]
        )
    for filters in (
        FiltersConfig(dedup_iou=0.5),
        FiltersConfig(dedup_iou=0.3, min_visible_frames=9),
        FiltersConfig(min_stability_mean=0.65, dedup_iou=0.6),
    ):
        joined, _ = _stitch(chunks, frames, min_iou=0.5, filters=filters)
        assert any(not m.kept for m in joined) and any(m.kept for m in joined)
        assert joined == apply_filters(joined, filters)


# ---- a shard, its chunks and the stitch, without Ray


@pytest.fixture(scope="module")
def long_corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("long")
    write_corpus(str(root), videos=3, per_shard=1, seed=0, width=64, height=48, frames=120, fps=24.0)
    return root


def _split_whole(shard: Shard, out: Path, pipeline: object = None) -> str:
    """Label `shard` with splitting on: the shard, every chunk, the stitch (twice: the second answers
    from the first's commit, as after a worker lost with its answer). The split video's id."""
    pipeline = pipeline or GroundTruthPipeline()
    source = SourceConfig(uri="x", fps=None)
    job = {**JOB, "output_uri": str(out)}
    result = process_shard(shard, pipeline, source=source, split=CHUNKS, **job)
    (plan,) = result.splits
    assert result.counts["videos"] == 0, "the long video is not in its shard's outputs"
    for k in range(len(plan.spans)):
        process_chunk(ChunkUnit(plan, k), pipeline, source=source, **job)
    stitched = stitch_split(StitchUnit(plan), source=source, filters=FiltersConfig(), min_iou=CHUNKS.min_iou, **job)
    marker = (out / "_done" / f"{plan.split_id}.json").read_bytes()
    again = stitch_split(StitchUnit(plan), source=source, filters=FiltersConfig(), min_iou=CHUNKS.min_iou, **job)
    assert (again.counts, again.failed_videos) == (stitched.counts, stitched.failed_videos)
    assert (out / "_done" / f"{plan.split_id}.json").read_bytes() == marker, "committed once"
    return plan.split_id


def test_a_split_video_gets_the_masks_of_the_whole_one_and_one_id_per_object(long_corpus: Path, tmp_path: Path) -> None:
    shard = list_shards(SourceConfig(uri=str(long_corpus / "*.tar"), fps=None))[0]
    split_id = _split_whole(shard, tmp_path / "split")
    process_shard(
        shard,
        GroundTruthPipeline(),
        source=SourceConfig(uri="x", fps=None),
        output_uri=str(tmp_path / "whole"),
        model="m",
        config_hash="h",
    )
    whole, parts = read_shard(str(tmp_path / "whole"), shard.id), read_shard(str(tmp_path / "split"), split_id)
    assert parts.videos[0].frame_indices == whole.videos[0].frame_indices == list(range(120))
    assert len(parts.marker["extra"]["split"]["chunks_by"]) == 5
    truth = {m.masklet_id: m.masks() for m in whole.masklets}
    objects: dict[int, list[int]] = {}
    for m in parts.masklets:
        if m.num_visible == 0:
            assert not m.kept
            continue
        masks, at = m.masks(), np.array(m.frame_indices)
        same = [g for g, t in truth.items() if np.array_equal(masks, t[at])]
        assert len(same) == 1, f"masklet {m.masklet_id} is exactly one object's masks on its frames"
        objects.setdefault(same[0], []).append(m.masklet_id)
    assert set(objects) == {g for g, t in truth.items() if t.any()}
    for g, ids in objects.items():
        seen = np.flatnonzero(truth[g].reshape(120, -1).any(1))
        # an object visible on every overlap keeps one id; one unseen through a chunk's overlap starts again
        assert len(ids) == 1 or len(seen) < 120, (g, ids)
    assert not (tmp_path / "split" / "_split" / split_id).exists(), "the staging goes once the video is committed"


def test_a_split_video_on_s3_is_planned_resumed_and_stitched(s3_bucket: str) -> None:
    """The staging on an object store (moto's S3 server): listed, resumed from, removed."""
    corpus, out = f"s3://{s3_bucket}/corpus", f"s3://{s3_bucket}/out"
    write_corpus(corpus, videos=1, per_shard=1, seed=1, width=64, height=48, frames=72, fps=24.0)
    (shard,) = list_shards(SourceConfig(uri=f"{corpus}/*.tar", fps=None))
    source, job = SourceConfig(uri="x", fps=None), {**JOB, "output_uri": out}
    (plan,) = process_shard(shard, GroundTruthPipeline(), source=source, split=CHUNKS, **job).splits
    assert len(plan.spans) == 3
    process_chunk(ChunkUnit(plan, 0), GroundTruthPipeline(), source=source, **job)
    units, waiting = splits.pending_units(out, list_done(out))
    assert units == [ChunkUnit(plan, 1), ChunkUnit(plan, 2)] and waiting == {plan.split_id: {1, 2}}
    for unit in units:
        process_chunk(unit, GroundTruthPipeline(), source=source, **job)
    assert splits.pending_units(out, list_done(out))[0] == [StitchUnit(plan)]
    stitch_split(StitchUnit(plan), source=source, filters=FiltersConfig(), min_iou=CHUNKS.min_iou, **job)
    assert list_done(out) == {shard.id, plan.split_id}
    assert splits.pending_units(out, list_done(out)) == ([], {})
    fs = fsspec.filesystem("s3")
    fs.invalidate_cache()
    assert not fs.find(f"{s3_bucket}/out/_split"), "the staging is gone"
    (video,) = read_shard(out, plan.split_id).videos
    assert video.status == "ok" and video.frame_indices == list(range(72))


class _StillBox:
    """One masklet: a box that does not move, on every frame it is given."""

    def __call__(self, video, frames):  # type: ignore[no-untyped-def]
        at = [f.index for f in frames]
        box = _box(10, size=10, shape=(48, 64))
        one = [1.0] * len(at)
        return [
            MaskletRecord.from_frames(
                video.key,
                1,
                source="auto",
                frame_indices=at,
                rles=[box] * len(at),
                pred_iou=one,
                stability=one,
                object_score=one,
            )
        ]


def test_a_folder_of_frames_is_split_too(tmp_path: Path) -> None:
    (tmp_path / "root" / "vid").mkdir(parents=True)
    frame_folder(Truth(seed=3, frames=60), tmp_path / "root" / "vid")
    source = SourceConfig(uri=str(tmp_path / "root"), format="frames", fps=None)
    (shard,) = list_shards(source)
    job = {**JOB, "output_uri": str(tmp_path / "out")}
    (plan,) = process_shard(shard, _StillBox(), source=source, split=CHUNKS, **job).splits
    assert plan.spans == ((0, 30), (24, 54), (48, None))  # a folder of frames counts as 24 fps
    for k in range(3):
        process_chunk(ChunkUnit(plan, k), _StillBox(), source=source, **job)
    stitch_split(StitchUnit(plan), source=source, filters=FiltersConfig(), min_iou=CHUNKS.min_iou, **job)
    stitched = read_shard(str(tmp_path / "out"), plan.split_id)
    assert stitched.videos[0].frame_indices == list(range(60))
    assert [(m.masklet_id, m.frame_indices) for m in stitched.masklets] == [(1, list(range(60)))]


class _FailsOnFrame(GroundTruthPipeline):
    """The input's fault (an InputError) on the chunk holding frame 110 (the last one only)."""

    def __call__(self, video, frames):  # type: ignore[no-untyped-def]
        frames = list(frames)
        if any(f.index == 110 for f in frames):
            raise InputError("frame 110 cannot be labelled")
        return super().__call__(video, iter(frames))


def test_a_chunks_fault_makes_the_video_an_error_row(long_corpus: Path, tmp_path: Path) -> None:
    shard = list_shards(SourceConfig(uri=str(long_corpus / "*.tar"), fps=None))[0]
    split_id = _split_whole(shard, tmp_path, _FailsOnFrame())
    (video,) = read_shard(str(tmp_path), split_id).videos
    assert video.status == "error" and video.error_type == "InputError"
    assert video.error == "chunk 4 (annotated frames 96 to the end): frame 110 cannot be labelled"
    assert read_shard(str(tmp_path), split_id).masklets == []


def test_a_seek_that_gives_other_pixels_makes_the_video_an_error_row(long_corpus: Path, tmp_path: Path) -> None:
    """Chunk k's overlap frames, reached by a seek, must be chunk k-1's, decoded on to them: the CRCs of the
    first pass say. A container whose timestamps mislead is played here by one altered checksum."""
    shard = list_shards(SourceConfig(uri=str(long_corpus / "*.tar"), fps=None))[1]
    source, job = SourceConfig(uri="x", fps=None), {**JOB, "output_uri": str(tmp_path)}
    (plan,) = process_shard(shard, GroundTruthPipeline(), source=source, split=CHUNKS, **job).splits
    for k in range(len(plan.spans)):
        process_chunk(ChunkUnit(plan, k), GroundTruthPipeline(), source=source, **job)
    row = tmp_path / "_split" / plan.split_id / "chunk-2.json"
    doc = json.loads(row.read_text())
    assert len(doc["checksums"]) == len(doc["video"]["frame_indices"]) == 30
    doc["checksums"][1] ^= 1  # frame 49, which chunk 1 decoded too
    row.write_text(json.dumps(doc))
    stitch_split(StitchUnit(plan), source=source, filters=FiltersConfig(), min_iou=CHUNKS.min_iou, **job)
    (video,) = read_shard(str(tmp_path), plan.split_id).videos
    assert video.status == "error" and video.error_type == "VideoDecodeError"
    assert video.error.startswith("chunk 2 (annotated frames 48 to 77): seeking to this chunk gave other pixels")
    assert "(frames [49])" in video.error


def test_the_queue_makes_chunks_then_the_stitch_due() -> None:
    shard = Shard("shard-000000", "x.tar", "wds")
    plan = SplitVideo("shard-000000.k", shard, "k", ((0, 8), (6, None)), {})

    class Result:
        splits = [plan]

    queue = SplitQueue()
    assert queue.follow(shard, Result()) == [ChunkUnit(plan, 0), ChunkUnit(plan, 1)]
    assert queue.follow(ChunkUnit(plan, 1), None) == []
    assert queue.follow(ChunkUnit(plan, 0), None) == [StitchUnit(plan)]


# ---- jobs on Ray


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    """The module's Ray, whose workers take 0.5 s more per video or chunk (DELAY_ENV, set while Ray starts:
    its workers inherit it, this process does not keep it), so a job outlasts its second worker's start."""
    os.environ[DELAY_ENV] = "0.5"
    try:
        start_local_ray()
    finally:
        del os.environ[DELAY_ENV]
    yield
    ray.shutdown()


def _run(tmp_path: Path, corpus: Path, out: Path, **workers: object) -> int:
    config = write_config(
        tmp_path / f"{out.name}.yaml",
        str(corpus / "*.tar"),
        out,
        split={"chunk_seconds": 1.0, "overlap_seconds": 0.25},
        workers={"count": 2, **workers},
    )
    return main(["run", str(config)])


def _rows(root: Path) -> dict[str, dict[str, list]]:
    """Every shard's rows, without the config hash (the test pipelines are settings of their own)."""

    def rows(table: list[dict]) -> list[dict]:
        return [{k: v for k, v in row.items() if k != "config_hash"} for row in table]

    return {k: {"masklets": rows(v["masklets"]), "videos": rows(v["videos"])} for k, v in read_output(root).items()}


@pytest.mark.usefixtures("local_ray")
def test_a_job_spreads_a_videos_chunks_over_workers_and_stitches_it(long_corpus: Path, tmp_path: Path) -> None:
    assert _run(tmp_path, long_corpus, tmp_path / "out") == 0
    out = _rows(tmp_path / "out")
    ids = [f"shard-00000{i}" for i in range(3)]
    assert sorted(out) == sorted(ids + [f"{s}.synth-00000{i}" for i, s in enumerate(ids)])
    for i, shard in enumerate(ids):
        assert out[shard]["videos"] == [] and out[f"{shard}.synth-00000{i}"]["videos"][0]["status"] == "ok"
    progress = json.loads((tmp_path / "out" / "progress.json").read_text())
    assert progress["shards"]["done"] == 3 + 3 * (5 + 1), "3 shards, then 5 chunks and a stitch per video"
    stitched = [json.loads(p.read_text()) for p in sorted((tmp_path / "out" / "_done").glob("*.synth-*.json"))]
    assert [len(m["extra"]["split"]["chunks_by"]) for m in stitched] == [5, 5, 5]
    chunk_workers = {by["worker"] for m in stitched for by in m["extra"]["split"]["chunks_by"]}
    assert chunk_workers == {"w0", "w1"}, "the chunks of the videos went to both workers"
    assert not list((tmp_path / "out" / "_split").iterdir())
    # the same video split without Ray
    for i, shard in enumerate(list_shards(SourceConfig(uri=str(long_corpus / "*.tar"), fps=None))):
        split_id = _split_whole(shard, tmp_path / "ray-free")
        alone = read_shard(str(tmp_path / "ray-free"), split_id)
        got = out[split_id]["masklets"]
        assert [(m["masklet_id"], m["rle"], m["kept"]) for m in got] == [
            (m.masklet_id, m.rle, m.kept) for m in alone.masklets
        ], i


@pytest.mark.usefixtures("local_ray")
def test_a_chunk_whose_worker_died_is_retried_alone_and_a_rerun_resumes_a_split_video(
    long_corpus: Path, tmp_path: Path
) -> None:
    assert _run(tmp_path, long_corpus, tmp_path / "clean") == 0
    clean = _rows(tmp_path / "clean")
    # the first chunk of CRASH_KEY's video to run kills its worker once: that chunk alone is done again
    assert CRASH_KEY == "synth-000002"
    assert _run(tmp_path, long_corpus, tmp_path / "crashed", pipeline="jobs_plugins:crash_once") == 0
    assert _rows(tmp_path / "crashed") == clean
    progress = json.loads((tmp_path / "crashed" / "progress.json").read_text())
    assert progress["workers"]["restarts"] >= 1
    marker = json.loads((tmp_path / "crashed" / "_done" / "shard-000002.synth-000002.json").read_text())
    attempts = [by["attempt"] for by in marker["extra"]["split"]["chunks_by"]]
    assert sorted(attempts) == [1, 1, 1, 1, 2], "the chunk whose worker died, alone, twice"
    # an interrupted run left shard-000002's plan and its first two chunks: a rerun does the rest
    shard = list_shards(SourceConfig(uri=str(long_corpus / "*.tar"), fps=None))[2]
    source, job = SourceConfig(uri="x", fps=None), {**JOB, "output_uri": str(tmp_path / "resumed")}
    (plan,) = process_shard(shard, GroundTruthPipeline(), source=source, split=CHUNKS, **job).splits
    for k in (0, 1):
        process_chunk(ChunkUnit(plan, k), GroundTruthPipeline(), source=source, **job)
    assert _run(tmp_path, long_corpus, tmp_path / "resumed") == 0
    resumed = json.loads((tmp_path / "resumed" / "progress.json").read_text())
    assert resumed["shards"]["done"] == 2 + 2 * 6 + 3 + 1, "2 shards, 2 whole videos, 3 chunks and a stitch"
    assert _rows(tmp_path / "resumed") == clean


def _manifest(tmp_path: Path) -> Path:
    path = tmp_path / "videos.jsonl"
    path.write_text(json.dumps({"key": "a", "uri": str(tmp_path / "a.mp4")}) + "\n")
    return path
