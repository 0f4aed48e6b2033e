"""masklet.io.sources: listing shards without reading them, streaming their videos, bad input as errors."""

from __future__ import annotations

import csv
import gc
import gzip
import http.server
import io
import json
import re
import tarfile
import threading
import time
from pathlib import Path

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import s3fs
from fsspec.implementations.local import LocalFileSystem
from moto.core import DEFAULT_ACCOUNT_ID
from moto.s3.models import s3_backends
from videos import encode, index_frame, jpeg, read_index, stored, tar_bytes

from masklet.config import SourceConfig
from masklet.io import sources, storage
from masklet.io.errors import InputError
from masklet.io.sources import VideoError, VideoInput, iter_videos, list_shards
from masklet.io.tars import MAX_KEY_LENGTH, sanitize_key
from masklet.io.video import VideoDecodeError
from masklet.synth.corpus import write_corpus


def config(uri: str, format: str = "wds", **kwargs) -> SourceConfig:
    return SourceConfig(uri=uri, format=format, **kwargs)


def process(shard: sources.Shard) -> list[tuple[str, str]]:
    """What a worker does with a shard: decode each video or report it; (original key, 'ok' or reason)."""
    results = []
    for item in iter_videos(shard):
        assert re.fullmatch(rf"[A-Za-z0-9_-]{{1,{MAX_KEY_LENGTH}}}", item.key), item.key  # tar-safe, errors too
        if isinstance(item, VideoInput):
            try:
                with item.open(fps=None) as stream:
                    frames = list(stream)
                assert len(frames) == stream.frame_count, item.key
                assert stream.width < 60 or all(read_index(f.rgb) == f.index for f in frames), item.key
                results.append((item.original_key, "ok"))
                continue
            except VideoDecodeError as exc:
                item = item.error(exc.reason)
        results.append((item.original_key, item.reason))
    return results


def forbid_reads(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any attempt to open or fetch a file fails the test."""

    def refuse(self, path, *args, **kwargs):
        raise AssertionError(f"listing read {path}")

    monkeypatch.setattr(LocalFileSystem, "_open", refuse)
    monkeypatch.setattr(s3fs.S3FileSystem, "_open", refuse)
    monkeypatch.setattr(s3fs.S3FileSystem, "_cat_file", refuse)


# ---- WebDataset shards ----


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("corpus")
    write_corpus(str(root), videos=3, per_shard=2, seed=0, width=64, height=48, frames=6, fps=24)
    return root


@pytest.mark.parametrize(
    "pattern",
    ["{root}", "{root}/", "{root}/shard-*.tar", "{root}/shard-{{000000..000001}}.tar", "file://{root}/shard-*.tar"],
)
def test_wds_shards_from_a_directory_glob_or_brace_pattern(corpus: Path, pattern: str) -> None:
    shards = list_shards(config(pattern.format(root=corpus)))
    assert [s.id for s in shards] == ["shard-000000", "shard-000001"]
    assert [s.uri.rsplit("/", 1)[-1] for s in shards] == ["shard-000000.tar", "shard-000001.tar"]


def test_wds_samples_stream_with_metadata(corpus: Path) -> None:
    first, second = list_shards(config(str(corpus)))
    videos = list(iter_videos(first)) + list(iter_videos(second))
    assert [v.key for v in videos] == ["synth-000000", "synth-000001", "synth-000002"]
    video = videos[0]
    assert isinstance(video, VideoInput) and video.original_key == video.key and video.ext == "mp4"
    assert video.metadata["key"] == "synth-000000" and video.prompts is None  # .gt.json is not metadata
    assert video.source_uri.endswith("shard-000000.tar#synth-000000.mp4")
    with video.open(fps=6, max_frames=1) as stream:
        assert (stream.frame_count, stream.height, stream.width) == (6, 48, 64)
        assert [f.index for f in stream] == [0]


def test_wds_shards_on_s3(s3_bucket: str) -> None:
    write_corpus(f"s3://{s3_bucket}/videos", videos=2, per_shard=1, seed=0, width=64, height=48, frames=4, fps=24)
    for pattern in ("videos/shard-{000000..000001}.tar", "videos/*.tar", "videos"):
        shards = list_shards(config(f"s3://{s3_bucket}/{pattern}"))
        assert [s.id for s in shards] == ["shard-000000", "shard-000001"]
        assert shards[1].uri == f"s3://{s3_bucket}/videos/shard-000001.tar"
    (video,) = iter_videos(shards[1])
    with video.open(fps=None) as stream:
        assert len(list(stream)) == 4


def test_listing_thousands_of_local_shards_reads_none(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for i in range(2000):
        (tmp_path / f"shard-{i:06d}.tar").touch()
    forbid_reads(monkeypatch)
    start = time.perf_counter()
    shards = list_shards(config(f"{tmp_path}/shard-*.tar"))
    assert time.perf_counter() - start < 2
    assert len(shards) == 2000 and shards[1234].id == "shard-001234"


def test_listing_thousands_of_s3_shards_reads_none(s3_bucket: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # straight into moto's store, which serves the endpoint: 2000 PUTs over HTTP would take ~20 s
    backend = s3_backends[DEFAULT_ACCOUNT_ID]["aws"]
    for i in range(2000):
        backend.put_object(s3_bucket, f"many/shard-{i:06d}.tar", b"")
    forbid_reads(monkeypatch)
    start = time.perf_counter()
    shards = list_shards(config(f"s3://{s3_bucket}/many/shard-*.tar"))
    assert time.perf_counter() - start < 5
    assert len(shards) == 2000 and shards[-1].uri == f"s3://{s3_bucket}/many/shard-001999.tar"


def test_brace_patterns_list_without_any_request(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sources, "url_to_fs", lambda uri: pytest.fail(f"looked up {uri}"))
    shards = list_shards(config("s3://b/videos/shard-{000000..000999}.tar"))
    assert len(shards) == 1000 and shards[7].id == "shard-000007"
    assert shards[7].uri == "s3://b/videos/shard-000007.tar"


def test_listing_refuses_ambiguous_or_empty_sources(tmp_path: Path) -> None:
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "shard-000000.tar").touch()
    with pytest.raises(ValueError, match="both give shard id 'shard-000000'"):
        list_shards(config(f"{tmp_path}/*/shard-*.tar"))
    with pytest.raises(ValueError, match="no .tar files match") as err:
        list_shards(config(f"{tmp_path}/nothing-*.tar"))
    assert "relative" not in str(err.value)


def test_a_relative_source_says_where_it_was_looked_for(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A relative source.uri in a config file is read from the working directory: the error says so."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError) as err:
        list_shards(config("demo-output/corpus/shard-*.tar"))
    assert str(err.value) == (
        "no .tar files match 'demo-output/corpus/shard-*.tar' (a relative path: read from the working directory "
        f"{tmp_path}, not from the config file's folder)"
    )


def test_a_missing_shard_fails_naming_it(tmp_path: Path, s3_bucket: str) -> None:
    for root in (str(tmp_path), f"s3://{s3_bucket}", "s3://no-such-bucket-masklet"):
        (shard,) = list_shards(config(f"{root}/shard-{{000000..000000}}.tar"))
        with pytest.raises(FileNotFoundError, match=f"shard {re.escape(root)}/shard-000000.tar does not exist"):
            list(iter_videos(shard))


def test_bad_members_become_errors_and_later_videos_still_come(tmp_path: Path) -> None:
    good = encode(4)
    long_key = "v" * 300
    members = [
        ("first.mp4", good),
        ("first.json", b'{"source": "youtube"}'),
        ("first.prompts.json", b'{"frames": {}}'),
        ("../escape.mp4", good),
        ("/etc/absolute.mp4", good),
        ("link.mp4", None),
        ("empty.mp4", b""),
        ("notes.json", b"{}"),  # no video with this key
        ("clip.v2.final.json", b'{"dots": true}'),  # metadata before its video, key with dots
        ("clip.v2.final.mp4", good),
        (f"{long_key}.webm", stored("vp9.webm")),
        ("dir/nested.mkv", encode(3, container="matroska")),
        ("badmeta.mp4", good),
        ("badmeta.json", b"{not json"),
        ("html.mp4", b"<html>403 Forbidden</html>"),
        ("cut.mp4", good[: len(good) // 2]),
        ("still.mp4", encode(1)),
        ("odd.mkv", encode(3, width=17, height=33, codec="ffv1", container="matroska")),
        ("gray.mp4", encode(3, pix_fmt="gray")),
        ("av1.mp4", encode(3, codec="libsvtav1")),
        ("first.avi", encode(3, codec="mpeg4", container="avi")),  # same key as the first video
        ("last.mp4", good),
    ]
    (tmp_path / "shard-000000.tar").write_bytes(tar_bytes(members))
    (shard,) = list_shards(config(str(tmp_path)))
    expected = [
        ("first", "ok"),
        ("../escape.mp4", "absolute paths and '..' are not allowed"),
        ("/etc/absolute.mp4", "absolute paths and '..' are not allowed"),
        ("link.mp4", "link or special file"),
        ("empty", "is empty (0 bytes)"),
        ("notes.json", "belongs to no video"),
        ("clip.v2.final", "ok"),
        (long_key, "ok"),
        ("dir/nested", "ok"),
        ("badmeta", "badmeta.json is not valid JSON"),
        ("html", "not a video FFmpeg can read"),
        ("cut", "truncated, corrupt or not a video"),
        ("still", "1 frame(s); at least 2"),
        ("odd", "ok"),
        ("gray", "ok"),
        ("av1", "ok"),
        ("first", "duplicate key"),
        ("last", "ok"),
    ]
    results = process(shard)
    assert [key for key, _ in results] == [key for key, _ in expected]
    for (key, got), (_, want) in zip(results, expected, strict=True):
        assert want in got, key


def test_keys_are_sanitised_for_tar_members_with_the_original_kept(tmp_path: Path) -> None:
    long_key = "v" * 300
    members = [(f"{long_key}.mp4", b"x"), ("clip.v2.final.mp4", b"x"), ("clip.v2.final.json", b'{"a": 1}')]
    (tmp_path / "s.tar").write_bytes(tar_bytes(members))
    (shard,) = list_shards(config(str(tmp_path / "s.tar")))
    long, dotted = iter_videos(shard)
    assert long.original_key == long_key and len(long.key) == MAX_KEY_LENGTH and long.key.startswith("vvvv")
    assert dotted.original_key == "clip.v2.final" and dotted.key.startswith("clip_v2_final-")
    assert "." not in dotted.key and dotted.metadata == {"a": 1}


def test_sanitize_key() -> None:
    assert sanitize_key("video_0001-a") == "video_0001-a"
    assert sanitize_key("a.b") != sanitize_key("a_b") == "a_b"
    assert sanitize_key("a/b") != sanitize_key("a.b")  # the hash keeps different originals apart
    assert len(sanitize_key("x" * 1000)) == MAX_KEY_LENGTH
    assert sanitize_key("x" * 1000) != sanitize_key("x" * 999)
    assert sanitize_key("") and sanitize_key("vidéo").startswith("vid_o-")


@pytest.mark.parametrize("spill", [None, 2000])  # b (5.5 KB) read into memory, or written out to a file
def test_a_truncated_tar_keeps_what_was_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, spill: int) -> None:
    if spill is not None:
        monkeypatch.setattr(sources, "SPILL_MEMBER_BYTES", spill)
    b = encode(40)
    data = tar_bytes([("a.mp4", encode(3)), ("b.mp4", b), ("c.mp4", encode(3))])
    (tmp_path / "shard-000007.tar").write_bytes(data[: data.index(b) + len(b) // 2])  # cut inside b
    (shard,) = list_shards(config(str(tmp_path)))
    items = list(iter_videos(shard))
    assert [type(i).__name__ for i in items] == ["VideoInput", "VideoError"]
    assert items[0].key == "a"
    assert items[1].key == "shard-000007" and "truncated or corrupt" in items[1].reason
    assert "'b.mp4'" in items[1].reason and items[1].source_uri == shard.uri


def test_a_large_video_member_is_decoded_from_a_local_copy_removed_after_use(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A video member over SPILL_MEMBER_BYTES is written to a local file as it is read from the tar; its
    input decodes from that file (never holding the bytes), and the file goes when the input does."""
    monkeypatch.setattr(sources, "SPILL_MEMBER_BYTES", 2000)
    big, small = encode(40), encode(3)  # 5.5 KB and 1.7 KB
    (tmp_path / "s.tar").write_bytes(tar_bytes([("big.mp4", big), ("big.json", b'{"a": 1}'), ("small.mp4", small)]))
    (shard,) = list_shards(config(str(tmp_path / "s.tar")))
    assert process(shard) == [("big", "ok"), ("small", "ok")]
    first, second = iter_videos(shard)
    assert isinstance(first.content, sources.SpilledMember) and second.content == small
    copy = Path(first.content)
    assert copy.read_bytes() == big and first.metadata == {"a": 1}
    assert first.local(str(tmp_path)) == copy and first.read_bytes() == big
    del first
    gc.collect()
    assert not copy.exists()


def three_samples() -> tuple[bytes, list[int]]:
    """A well-formed 3-sample tar (two zero blocks at its end) and the byte offset of each header."""
    data = tar_bytes([("a.mp4", encode(3)), ("b.mp4", encode(4)), ("c.mp4", encode(3))])
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return data, [m.offset for m in tar.getmembers()]


def damage(data: bytes, offsets: list[int], how: str) -> bytes:
    """`data` with the second header corrupt, zeroed or cut, or without the end-of-archive blocks."""
    second = offsets[1]
    if how == "checksum":  # a valid octal number, just not the header's sum
        return data[: second + 148] + b"0000000\0" + data[second + 156 :]
    if how == "zeroed":
        return data[:second] + bytes(512) + data[second + 512 :]
    if how == "cut before a header":
        return data[:second]
    if how == "cut inside a header":
        return data[: second + 100]
    assert how == "no end blocks"
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        last = tar.getmembers()[-1]
    return data[: last.offset_data + (last.size + 511) // 512 * 512]


@pytest.mark.parametrize("how", ["checksum", "zeroed", "cut before a header", "cut inside a header"])
def test_a_damaged_tar_header_keeps_what_was_read_and_reports_the_rest(tmp_path: Path, how: str) -> None:
    # stream-mode tarfile takes a bad header after the first for the end of the archive, silently
    data, offsets = three_samples()
    (tmp_path / "shard-000007.tar").write_bytes(damage(data, offsets, how))
    (shard,) = list_shards(config(str(tmp_path)))
    items = list(iter_videos(shard))
    assert [type(i).__name__ for i in items] == ["VideoInput", "VideoError"]
    assert items[0].key == "a"
    error = items[1]
    assert error.key == "shard-000007" and error.source_uri == shard.uri
    assert "truncated or corrupt" in error.reason and f"at byte {offsets[1]} (member 2)" in error.reason


def test_a_tar_without_its_end_blocks_is_reported_after_its_samples(tmp_path: Path) -> None:
    data, offsets = three_samples()
    (tmp_path / "shard-000007.tar").write_bytes(damage(data, offsets, "no end blocks"))
    (shard,) = list_shards(config(str(tmp_path)))
    items = list(iter_videos(shard))
    assert [i.key for i in items] == ["a", "b", "c", "shard-000007"]
    assert "without its two end-of-archive zero blocks" in items[-1].reason


def test_a_corrupt_header_is_reported_from_a_compressed_shard_on_s3(s3_bucket: str) -> None:
    data, offsets = three_samples()
    fs = s3fs.S3FileSystem()
    fs.pipe(f"{s3_bucket}/bad/shard-000007.tar.gz", gzip.compress(damage(data, offsets, "checksum")))
    (shard,) = list_shards(config(f"s3://{s3_bucket}/bad/shard-000007.tar.gz"))
    items = list(iter_videos(shard))
    assert [i.key for i in items] == ["a", "shard-000007"]
    assert "corrupt header at byte" in items[1].reason


@pytest.mark.parametrize("compress", [False, True])
def test_an_intact_tar_has_no_error(tmp_path: Path, compress: bool) -> None:
    data, _ = three_samples()
    (tmp_path / "shard-000007.tar").write_bytes(gzip.compress(data) if compress else data)
    (shard,) = list_shards(config(str(tmp_path)))
    items = list(iter_videos(shard))
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        members = [tar.extractfile(m).read() for m in tar.getmembers()]
    assert [type(i).__name__ for i in items] == ["VideoInput"] * 3 and [i.key for i in items] == ["a", "b", "c"]
    assert [i.content for i in items] == members


# ---- manifests ----


@pytest.fixture
def video_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "videos"
    folder.mkdir()
    for name in ("a", "b", "c"):
        (folder / f"{name}.mp4").write_bytes(encode(3))
    return folder


def write_manifest(path: Path, rows: list[dict]) -> None:
    if path.suffix == ".parquet":
        pq.write_table(pa.Table.from_pylist(rows), path)
    elif path.suffix == ".csv":
        with path.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=sorted({k for row in rows for k in row}))
            writer.writeheader()
            writer.writerows(rows)
    else:
        path.write_text("".join(json.dumps(row) + "\n" for row in rows))


@pytest.mark.parametrize("ext", ["parquet", "csv", "jsonl"])
def test_manifest_rows_become_shards_and_bad_rows_errors(tmp_path: Path, video_dir: Path, ext: str) -> None:
    rows = [
        {"uri": "videos/a.mp4", "key": "", "prompts": None, "lang": "en"},  # relative to the manifest
        {"uri": str(video_dir / "b.mp4"), "key": "clip.b", "prompts": '{"points": [[1, 2]]}', "lang": "fr"},
        {"uri": "", "key": "no-uri", "prompts": None, "lang": ""},
        {"uri": str(video_dir / "gone.mp4"), "key": "", "prompts": None, "lang": ""},
        {"uri": f"file://{video_dir}/c.mp4", "key": "", "prompts": None, "lang": "de"},
    ]
    write_manifest(tmp_path / f"list.{ext}", rows)
    shards = list_shards(config(str(tmp_path / f"list.{ext}"), "manifest", videos_per_shard=2))
    assert [s.id for s in shards] == ["list-000000", "list-000001", "list-000002"]
    items = [item for shard in shards for item in iter_videos(shard)]
    assert [i.original_key for i in items] == ["a", "clip.b", "no-uri", "gone", "c"]
    assert items[1].prompts == '{"points": [[1, 2]]}' and items[1].metadata == {"lang": "fr"}
    assert isinstance(items[2], VideoError) and "has no uri" in items[2].reason
    results = {k: v for shard in shards for k, v in process(shard)}
    assert results["a"] == results["clip.b"] == results["c"] == "ok"
    assert "gone.mp4 does not exist" in results["gone"]


def test_jsonl_lines_that_do_not_parse_are_errors(tmp_path: Path, video_dir: Path) -> None:
    (tmp_path / "m.jsonl").write_text(f'{{"uri": "{video_dir}/a.mp4"}}\n{{oops\n\n[1, 2]\n')
    (shard,) = list_shards(config(str(tmp_path / "m.jsonl"), "manifest"))
    items = list(iter_videos(shard))
    assert isinstance(items[0], VideoInput)
    assert "line 2 is not valid JSON" in items[1].reason and "line 4 is not a JSON object" in items[2].reason


def test_a_manifest_without_a_uri_column_is_refused_at_listing(tmp_path: Path) -> None:
    write_manifest(tmp_path / "m.csv", [{"path": "a.mp4"}])
    with pytest.raises(ValueError, match="has no 'uri' column"):
        list_shards(config(str(tmp_path / "m.csv"), "manifest"))


def test_manifests_on_s3(s3_bucket: str) -> None:
    s3 = fsspec.filesystem("s3")
    s3.pipe(f"{s3_bucket}/videos/a.mp4", encode(3))
    buffer = io.BytesIO()
    rows = [
        {"uri": "../videos/a.mp4"},
        {"uri": f"s3://{s3_bucket}/videos/missing.mp4"},
        {"uri": "s3://no-such-bucket-masklet/x.mp4"},
    ]
    pq.write_table(pa.Table.from_pylist(rows), buffer)
    s3.pipe({f"{s3_bucket}/lists/part-0.parquet": buffer.getvalue(), f"{s3_bucket}/lists/part-1.parquet": b""})
    shards = list_shards(config(f"s3://{s3_bucket}/lists/part-{{0..0}}.parquet", "manifest"))
    assert [s.id for s in shards] == ["part-0-000000"]
    results = dict(process(shards[0]))
    assert results["a"] == "ok"
    assert f"s3://{s3_bucket}/videos/missing.mp4 does not exist" in results["missing"]
    assert "no-such-bucket-masklet/x.mp4" in results["x"]
    with pytest.raises(ValueError, match="cannot read manifest s3://.*part-1.parquet"):
        list_shards(config(f"s3://{s3_bucket}/lists/*.parquet", "manifest"))


# ---- frame folders ----


def make_frame_folders(root: Path) -> None:
    def frames(name: str, numbers: range | list[int]) -> Path:
        folder = root / name
        folder.mkdir(parents=True)
        for n in numbers:
            (folder / f"{n:05d}.jpg").write_bytes(jpeg(index_frame(n)))
        return folder

    frames("v1", range(6))
    frames("v2", [0, 1, 3, 4])  # 00002 missing
    corrupt = frames("v3", range(6))
    (corrupt / "00003.jpg").write_bytes((corrupt / "00003.jpg").read_bytes()[:200])
    frames("v4", [0, 5, 10, 15])  # a constant step of 5 (YouTube-VOS style): not a gap
    frames("v5", [0, 5, 10, 20])  # a gap in that step
    (root / "v6").mkdir()
    (root / "v6" / "notes.txt").write_text("no frames here")


def test_frame_folders_local(tmp_path: Path) -> None:
    root = tmp_path / "JPEGImages_24fps"
    make_frame_folders(root)
    shards = list_shards(config(str(root), "frames", videos_per_shard=4))
    assert [s.id for s in shards] == ["JPEGImages_24fps-000000", "JPEGImages_24fps-000001"]
    results = {k: v for shard in shards for k, v in process(shard)}
    assert results.pop("v1") == results.pop("v4") == "ok"
    assert "frames missing from the folder: 00002 (frames 00000..00004 in steps of 1)" in results.pop("v2")
    assert "00003.jpg is not a complete JPEG" in results.pop("v3")
    assert "frames missing from the folder: 00015" in results.pop("v5")
    assert "holds no frames" in results.pop("v6")
    (v4,) = [i for i in iter_videos(shards[0]) if i.key == "v4"]
    with v4.open(fps=None) as stream:
        assert [f.index for f in stream] == [0, 5, 10, 15]
    assert results == {}


def test_frame_folders_on_s3(s3_bucket: str) -> None:
    s3 = fsspec.filesystem("s3")
    s3.pipe({f"{s3_bucket}/sav/JPEGImages/sav_000001/{n:05d}.jpg": jpeg(index_frame(n)) for n in range(9)})
    s3.pipe(f"{s3_bucket}/sav/JPEGImages/sav_000002/00000.jpg", jpeg(index_frame(0)))
    (shard,) = list_shards(config(f"s3://{s3_bucket}/sav/JPEGImages", "frames"))
    assert shard.id == "JPEGImages-000000"
    first, second = iter_videos(shard)
    with first.open(fps=6) as stream:
        assert [(f.index, read_index(f.rgb)) for f in stream] == [(0, 0), (4, 4), (8, 8)]
    with pytest.raises(VideoDecodeError, match="1 frame"):
        second.open(fps=6)


@pytest.mark.parametrize("how", ["read_bytes", "local"])
def test_reading_a_video_uri_is_retried_and_a_lasting_outage_is_not_the_videos_fault(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, how: str
) -> None:
    """A manifest's video URI, read into memory or downloaded to a local file (as a worker does): 404 is
    the input's fault (an error row), a 503 that outlasts the retries is the machine's (a StorageError:
    the shard attempt fails and is retried, nothing committed)."""
    replies = {"/flaky.mp4": [503, 200], "/down.mp4": [503] * 10, "/gone.mp4": [404]}

    def read(item: VideoInput) -> bytes:
        return item.read_bytes() if how == "read_bytes" else Path(item.local(str(tmp_path))).read_bytes()

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:  # noqa: A002
            pass

        def do_GET(self) -> None:
            status = replies[self.path].pop(0) if len(replies[self.path]) > 1 else replies[self.path][0]
            body = b"video bytes" if status == 200 else b""
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_HEAD = do_GET

    monkeypatch.setattr(storage, "DEFAULT_RETRY", storage.RetryPolicy(attempts=3, base_delay=0.0))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True).start()
    base = f"http://127.0.0.1:{httpd.server_address[1]}"
    try:
        assert read(VideoInput("flaky", "flaky", "m#1", f"{base}/flaky.mp4", "mp4")) == b"video bytes"
        with pytest.raises(storage.StorageError, match=f"{base}/down.mp4 failed after 3 attempts") as err:
            read(VideoInput("down", "down", "m#2", f"{base}/down.mp4", "mp4"))
        assert err.value.transient and not isinstance(err.value, InputError)
        with pytest.raises(VideoDecodeError, match=f"{base}/gone.mp4 does not exist"):
            read(VideoInput("gone", "gone", "m#3", f"{base}/gone.mp4", "mp4"))
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_a_manifest_split_when_listed_keeps_its_rows_out_of_memory(tmp_path: Path, video_dir: Path) -> None:
    """With `spill`, every shard's rows go to a file (read back by the worker), written once per
    version of the manifest: a rerun reuses them, an edited manifest is split afresh."""
    rows = [{"uri": str(video_dir / "a.mp4"), "key": f"v{i}", "n": i} for i in range(5)]
    write_manifest(tmp_path / "list.jsonl", rows)
    spill = tmp_path / "out" / "_manifest"
    shards = list_shards(config(str(tmp_path / "list.jsonl"), "manifest", videos_per_shard=2), spill=str(spill))
    assert [s.id for s in shards] == ["list-000000", "list-000001", "list-000002"]
    assert all(s.items == () and s.rows_uri for s in shards)
    assert [v.original_key for s in shards for v in iter_videos(s)] == [f"v{i}" for i in range(5)]
    assert next(iter_videos(shards[1])).metadata == {"n": 2}
    (folder,) = spill.iterdir()
    before = {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}
    again = list_shards(config(str(tmp_path / "list.jsonl"), "manifest", videos_per_shard=2), spill=str(spill))
    assert again == shards and {p.name: p.stat().st_mtime_ns for p in folder.iterdir()} == before  # reused
    write_manifest(tmp_path / "list.jsonl", rows[:3])
    edited = list_shards(config(str(tmp_path / "list.jsonl"), "manifest", videos_per_shard=2), spill=str(spill))
    assert len(edited) == 2 and len(list(spill.iterdir())) == 2  # a new split, not the old files


@pytest.mark.parametrize("name", ["bad name", "_x", "café"])
def test_an_input_whose_name_cannot_be_a_shard_id_is_refused_when_listed(tmp_path: Path, name: str) -> None:
    """Each would fail every attempt at its output files, and "rerun to retry" could never succeed."""
    (tmp_path / f"{name}.tar").write_bytes(tar_bytes([("a.mp4", b"x")]))
    with pytest.raises(ValueError, match=f"gives shard id {name!r}, which cannot name output files"):
        list_shards(config(str(tmp_path)))


def test_a_member_name_that_is_not_utf8_is_escaped_and_its_video_kept(tmp_path: Path) -> None:
    """Latin-1 and raw bytes in member names: the video is read under an escaped name, its row writable."""
    good = encode(3)
    buffer = io.BytesIO()
    with tarfile.open(
        fileobj=buffer, mode="w", format=tarfile.GNU_FORMAT, encoding="utf-8", errors="surrogateescape"
    ) as tar:
        for raw in (b"caf\xe9.mp4", b"\xff\xfe.mp4", b"plain.mp4"):
            info = tarfile.TarInfo(raw.decode("utf-8", "surrogateescape"))
            info.size = len(good)
            tar.addfile(info, io.BytesIO(good))
    (tmp_path / "shard-000000.tar").write_bytes(buffer.getvalue())
    (shard,) = list_shards(config(str(tmp_path)))
    videos = list(iter_videos(shard))
    assert [v.original_key for v in videos] == ["caf%E9", "%FF%FE", "plain"]
    assert all(isinstance(v, VideoInput) for v in videos)
    for v in videos:
        v.original_key.encode("utf-8")  # what Parquet needs
        assert re.fullmatch(r"[A-Za-z0-9_-]+", v.key)


def test_a_member_over_the_size_limit_or_sparse_is_refused_unread(tmp_path: Path) -> None:
    good = encode(3)
    (tmp_path / "shard-000000.tar").write_bytes(tar_bytes([("big.mp4", good), ("ok.mp4", good)]))
    (shard,) = list_shards(config(str(tmp_path)))
    big, ok = iter_videos(shard, max_member_bytes=len(good) - 1)
    assert isinstance(big, VideoError) and "over the limit of" in big.reason and "source.max_member_bytes" in big.reason
    assert isinstance(ok, VideoError)  # both are that size here
    assert all(isinstance(v, VideoInput) for v in iter_videos(shard, max_member_bytes=len(good)))


def test_a_sparse_member_claiming_a_gigabyte_is_refused_unread(tmp_path: Path) -> None:
    """10 KiB on disk, 1 GiB of zeros if read: refused before a byte of it is materialised."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        sparse_map = b"1\n0\n0\n".ljust(512, b"\0")  # GNU sparse 1.0: one empty region
        info = tarfile.TarInfo("GNUSparseFile.0/huge.mp4")
        info.size = len(sparse_map)
        info.pax_headers = {"GNU.sparse.major": "1", "GNU.sparse.minor": "0", "GNU.sparse.name": "huge.mp4"}
        info.pax_headers["GNU.sparse.realsize"] = str(2**30)
        tar.addfile(info, io.BytesIO(sparse_map))
    (tmp_path / "shard-000000.tar").write_bytes(buffer.getvalue())
    (shard,) = list_shards(config(str(tmp_path)))
    (item,) = iter_videos(shard)
    assert isinstance(item, VideoError) and "a sparse member" in item.reason
