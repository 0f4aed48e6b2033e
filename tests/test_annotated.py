"""Videos paired with SA-V annotations: in the same tar, or found by key in the source shards."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

from masklet.io.annotated import AnnotatedVideo, iter_annotated
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
