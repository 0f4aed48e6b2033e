"""masklet.jobs.shard without Ray: what a video's error row may hold."""

from __future__ import annotations

import dataclasses
import tarfile
import tempfile
from pathlib import Path

import pytest

from masklet.config import SourceConfig
from masklet.io import sources
from masklet.io.errors import InputError, printable_message
from masklet.io.outputs import read_shard
from masklet.io.sources import VideoInput, list_shards
from masklet.jobs.shard import process_shard
from masklet.pipelines.contract import FrameStream
from masklet.synth.corpus import write_corpus

HOSTILE = "\x1b[2J\x1b]0;pwned\x07" + "password=hunter2 " * 500  # a screen clear, a title change, 8.5 kB


def _quoting_pipeline(video: VideoInput, frames: FrameStream) -> list:
    """A pipeline whose input error quotes the input, as a native library's message may."""
    raise InputError(f"video {video.key!r}: cannot read {HOSTILE}")


def test_an_error_row_holds_no_control_character_and_is_cut(tmp_path: Path) -> None:
    write_corpus(str(tmp_path / "in"), videos=1, per_shard=1, seed=0, width=64, height=48, frames=2, fps=24.0)
    source = SourceConfig(uri=str(tmp_path / "in" / "shard-*.tar"))
    [shard] = list_shards(source)
    out = str(tmp_path / "out")
    result = process_shard(shard, _quoting_pipeline, source=source, output_uri=out, model="m", config_hash="h")
    assert result.counts["videos_error"] == 1
    [row] = read_shard(out, shard.id).videos
    assert row.error == printable_message(f"video {row.video_key!r}: cannot read {HOSTILE}")
    assert row.error.startswith(f"video {row.video_key!r}: cannot read \\x1b[2J\\x1b]0;pwned\\x07password=hunter2")
    assert not any(ord(c) < 32 and c not in "\t\n" for c in row.error) and len(row.error) < 2100


def _reading_pipeline(video: VideoInput, frames: FrameStream) -> list:
    """Reads the video at the job's rate, then positions 4..5 again, as a backward pass would."""
    assert [f.index for f in frames] == [0, 2, 4, 6, 8, 10]
    assert [f.index for f in frames.reopen(4, 6)] == [8, 10]
    return []


def test_a_video_row_counts_the_frames_its_decoder_decoded(tmp_path: Path) -> None:
    """12 frames at half the rate: the 6 annotated and the 5 between them decoded only to reach them
    (frame 11 is never reached), then the second pass's 11 again, from the video's only keyframe, its
    first frame (the synthetic corpus keeps x264's default interval, 250)."""
    write_corpus(str(tmp_path / "in"), videos=1, per_shard=1, seed=0, width=64, height=48, frames=12, fps=24.0)
    source = SourceConfig(uri=str(tmp_path / "in" / "shard-*.tar"), fps=12.0)
    [shard] = list_shards(source)
    out = str(tmp_path / "out")
    process_shard(shard, _reading_pipeline, source=source, output_uri=out, model="m", config_hash="h")
    [row] = read_shard(out, shard.id).videos
    assert row.status == "ok" and row.frame_indices == [0, 2, 4, 6, 8, 10]
    assert row.frames_decoded == 11 + 11


def test_a_video_spilled_from_its_tar_is_labelled_and_copied_as_one_held_in_memory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Video members written out of the tar (over SPILL_MEMBER_BYTES) give the same rows and, with
    `write_video`, the same output tar as members read into memory; no local copy outlives the shard."""
    write_corpus(str(tmp_path / "in"), videos=2, per_shard=2, seed=0, width=64, height=48, frames=12, fps=24.0)
    source = SourceConfig(uri=str(tmp_path / "in" / "shard-*.tar"), fps=12.0)
    [shard] = list_shards(source)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    outputs = []
    for spill in (sources.SPILL_MEMBER_BYTES, 0):
        monkeypatch.setattr(sources, "SPILL_MEMBER_BYTES", spill)
        out = str(tmp_path / f"out-{spill}")
        job = {"output_uri": out, "model": "m", "config_hash": "h", "write_video": True}
        process_shard(shard, _reading_pipeline, source=source, **job)
        with tarfile.open(f"{out}/wds/{shard.id}.tar") as tar:
            members = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
        rows = [dataclasses.replace(v, total_seconds=0.0, decode_seconds=0.0, model_seconds=0.0)
                for v in read_shard(out, shard.id).videos]  # fmt: skip
        outputs.append((members, rows))
    assert outputs[0] == outputs[1]
    assert sum(name.endswith(".mp4") for name in outputs[0][0]) == 2
    assert list((tmp_path / "tmp").iterdir()) == []
