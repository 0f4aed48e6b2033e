"""Videos paired with SA-V annotations: in the same tar, or found by key in the source shards."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

from masklet.io.annotated import AnnotatedVideo, iter_annotated, read_members
from masklet.io.sources import VideoError
from masklet.synth.corpus import write_corpus


def _members(tar_path: Path) -> dict[str, bytes]:
    with tarfile.open(tar_path) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers()}


def _write_tar(path: Path, members: dict[str, bytes]) -> None:
    with tarfile.open(path, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_annotations_with_videos_in_the_tar_or_in_the_sources(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    write_corpus(str(corpus), videos=2, per_shard=2, seed=3, width=32, height=32, frames=4, fps=24)
    shard = corpus / "shard-000000.tar"
    members = _members(shard)
    keys = sorted(n[: -len(".gt.json")] for n in members if n.endswith(".gt.json"))

    # a synthetic corpus: video and ground truth side by side
    items = list(iter_annotated(str(shard), "gt.json"))
    assert [i.video.key for i in items] == keys and all(isinstance(i, AnnotatedVideo) for i in items)
    assert items[0].video.read_bytes() == members[f"{keys[0]}.mp4"]
    assert items[0].annotation.frame_indices == [0, 1, 2, 3]

    # a masklet output without video bytes: {key}.json only, plus one annotation that is not SA-V
    labels = tmp_path / "wds"
    labels.mkdir()
    _write_tar(
        labels / "out.tar",
        {**{f"{k}.json": members[f"{k}.gt.json"] for k in keys}, "stray.json": b'{"not": "sa-v"}'},
    )
    found = list(iter_annotated(str(labels / "out.tar"), "json", videos_uri=str(corpus)))
    ok = [i for i in found if isinstance(i, AnnotatedVideo)]
    assert [i.video.key for i in ok] == keys
    assert ok[1].video.read_bytes() == members[f"{keys[1]}.mp4"]
    (error,) = [i for i in found if isinstance(i, VideoError)]
    assert error.key == "stray" and "not SA-V JSON" in error.reason

    missing = [i for i in iter_annotated(str(labels / "out.tar"), "json") if isinstance(i, VideoError)]
    assert {e.key for e in missing} == {*keys, "stray"}
    assert all("no video for annotation" in e.reason for e in missing if e.key != "stray")


@pytest.fixture
def three_samples(tmp_path: Path) -> tuple[Path, bytes, list[int]]:
    """A synthetic 3-video shard, its bytes and the byte offset where each sample's first header starts."""
    write_corpus(str(tmp_path / "corpus"), videos=3, per_shard=3, seed=1, width=32, height=32, frames=2, fps=24)
    shard = tmp_path / "corpus" / "shard-000000.tar"
    with tarfile.open(shard) as tar:
        starts = {}
        for m in tar.getmembers():
            starts.setdefault(m.name.split(".", 1)[0], m.offset)
    return shard, shard.read_bytes(), list(starts.values())


def test_a_corrupt_header_keeps_the_samples_before_it_and_reports_the_shard(
    tmp_path: Path, three_samples: tuple[Path, bytes, list[int]]
) -> None:
    # stream-mode tarfile would take the bad header for the end of the archive and say nothing
    _, data, starts = three_samples
    bad = tmp_path / "bad" / "shard-000009.tar"
    bad.parent.mkdir()
    bad.write_bytes(data[: starts[1] + 148] + b"0000000\0" + data[starts[1] + 156 :])  # checksum 0: wrong
    members = read_members(str(bad), "gt.json")
    assert len(members.annotations) == len(members.videos) == 1
    assert members.error is not None and str(bad) in members.error
    assert f"corrupt header at byte {starts[1]}" in members.error

    items = list(iter_annotated(str(bad), "gt.json"))
    assert [type(i).__name__ for i in items] == ["AnnotatedVideo", "VideoError"]
    assert items[1].key == "shard-000009" and items[1].source_uri == str(bad)


def test_a_cut_tar_is_reported(tmp_path: Path, three_samples: tuple[Path, bytes, list[int]]) -> None:
    shard, data, starts = three_samples
    with tarfile.open(shard) as tar:
        last = tar.getmembers()[-1]
    cut = tmp_path / "cut.tar"
    for end in (starts[2], last.offset_data + (last.size + 511) // 512 * 512):  # at a sample; before the end blocks
        cut.write_bytes(data[:end])
        members = read_members(str(cut), "gt.json", video_bytes=False)
        assert members.error is not None and "end-of-archive" in members.error
        assert len(members.annotations) == (2 if end == starts[2] else 3)


def test_an_intact_tar_has_no_error(three_samples: tuple[Path, bytes, list[int]]) -> None:
    shard, _, _ = three_samples
    members = read_members(str(shard), "gt.json")
    assert members.error is None and len(members.annotations) == len(members.videos) == 3
    assert all(isinstance(i, AnnotatedVideo) for i in iter_annotated(str(shard), "gt.json"))
