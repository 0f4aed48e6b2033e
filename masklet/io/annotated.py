"""Videos paired with their SA-V annotations, for whatever learns from or is scored against labels.

Annotations are tar members `{key}.{suffix}`: `json` in a masklet output's `wds/*.tar`, `gt.json` in
a `masklet synth` corpus. The video is `{key}.mp4` (or another video extension) in the same tar, as
in a synthetic corpus or an output written with `output.write_video`, or else the sample of that key
in the source shards at `videos_uri` (an output that only references its videos). Problems are
`VideoError`s naming the key and the reason, and iteration goes on, as for a job's inputs.
"""

from __future__ import annotations

import tarfile
from collections.abc import Iterator
from dataclasses import dataclass

import fsspec

from masklet.config import SourceConfig
from masklet.io import sav
from masklet.io.sources import VIDEO_EXTENSIONS, VideoError, VideoInput, iter_videos, list_shards, sanitize_key


@dataclass(frozen=True)
class AnnotatedVideo:
    """One video and its SA-V annotation."""

    video: VideoInput
    annotation: sav.SavAnnotation


def iter_annotated(
    uri: str, suffix: str = "json", videos_uri: str | None = None
) -> Iterator[AnnotatedVideo | VideoError]:
    """Every `{key}.{suffix}` annotation under the tar shards at `uri` with its video, in shard order."""
    sources: dict[str, VideoInput | VideoError] | None = None
    for shard in list_shards(SourceConfig(uri=uri, format="wds")):
        annotations, videos = _read_tar(shard.uri, suffix)
        for key, raw in annotations.items():
            where = f"{shard.uri}#{key}.{suffix}"
            try:
                annotation = sav.parse(raw)
            except (ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
                yield VideoError(sanitize_key(key), where, f"annotation {key}.{suffix} is not SA-V JSON: {exc}", key)
                continue
            video: VideoInput | VideoError | None = None
            if key in videos:
                name, ext, data = videos[key]
                video = VideoInput(sanitize_key(key), key, f"{shard.uri}#{name}", data, ext)
            elif videos_uri is not None:
                sources = _index_sources(videos_uri) if sources is None else sources
                video = sources.get(sanitize_key(key))
            if video is None:
                where_else = f" nor in {videos_uri}" if videos_uri else " (set the videos' source shards)"
                yield VideoError(
                    sanitize_key(key), where, f"no video for annotation {key}.{suffix} in its tar{where_else}", key
                )
            elif isinstance(video, VideoError):
                yield video
            else:
                yield AnnotatedVideo(video, annotation)


def _read_tar(uri: str, suffix: str) -> tuple[dict[str, bytes], dict[str, tuple[str, str, bytes]]]:
    """Annotation members by key, and video members (name, extension, bytes) by key."""
    annotations: dict[str, bytes] = {}
    videos: dict[str, tuple[str, str, bytes]] = {}
    with fsspec.open(uri, "rb") as f, tarfile.open(fileobj=f, mode="r|*") as tar:
        for member in tar:
            if not member.isfile() or ".." in member.name.split("/") or member.name.startswith("/"):
                continue
            name = member.name
            ext = name.rsplit(".", 1)[-1].lower()
            reader = tar.extractfile(member)
            assert reader is not None
            if name.endswith(f".{suffix}"):
                annotations[name[: -len(suffix) - 1]] = reader.read()
            elif ext in VIDEO_EXTENSIONS:
                videos[name[: -len(ext) - 1]] = (name, ext, reader.read())
    return annotations, videos


def _index_sources(videos_uri: str) -> dict[str, VideoInput | VideoError]:
    """The videos of the source shards by key (bytes in memory: callers hold the decoded frames anyway)."""
    return {
        sample.key: sample
        for shard in list_shards(SourceConfig(uri=videos_uri, format="wds"))
        for sample in iter_videos(shard)
    }
