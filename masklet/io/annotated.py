"""Videos paired with their SA-V annotations, for whatever learns from or is scored against labels.

Annotations are tar members `{key}.{suffix}`: `json` in a masklet output's `wds/*.tar`, `gt.json` in
a `masklet synth` corpus. The video is `{key}.mp4` (or another video extension) in the same tar, as
in a synthetic corpus or an output written with `output.write_video`, or else the sample of that key
in the source shards at `videos_uri` (an output that only references its videos). Problems are
`VideoError`s naming the key and the reason, and iteration goes on, as for a job's inputs.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import fsspec

from masklet.config import SourceConfig
from masklet.io import sav
from masklet.io.sources import VIDEO_EXTENSIONS, VideoError, VideoInput, iter_videos, list_shards
from masklet.io.tars import TarDamaged, read_tar, sanitize_key


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
        members = read_members(shard.uri, suffix)
        for key, raw in members.annotations.items():
            where = f"{shard.uri}#{key}.{suffix}"
            try:
                annotation = sav.parse(raw)
            except (ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
                yield VideoError(sanitize_key(key), where, f"annotation {key}.{suffix} is not SA-V JSON: {exc}", key)
                continue
            video: VideoInput | VideoError | None = None
            if key in members.videos:
                name, ext, data = members.videos[key]
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
        if members.error is not None:
            yield VideoError(sanitize_key(shard.id), shard.uri, members.error, shard.id)


@dataclass
class TarMembers:
    """The annotation and video members of one tar shard, by key, in the order they came."""

    annotations: dict[str, bytes] = field(default_factory=dict)
    videos: dict[str, tuple[str, str, bytes | None]] = field(default_factory=dict)  # name, extension, bytes
    error: str | None = None  # why the tar ended early, when it did (what was read before stands)


def read_members(uri: str, suffix: str, *, video_bytes: bool = True) -> TarMembers:
    """Read `{key}.{suffix}` members and video members of the tar at `uri` (video bytes only when asked).
    Refused members (links, special files, unsafe names) are skipped; a truncated or corrupt tar keeps
    what came before the break and says where it broke in `error` (masklet.io.tars)."""
    found = TarMembers()
    try:
        with fsspec.open(uri, "rb") as f:
            for member in read_tar(f, uri):
                if member.refused:
                    continue
                name = member.name
                ext = name.rsplit(".", 1)[-1].lower() if "." in name.rsplit("/", 1)[-1] else ""
                if name.endswith(f".{suffix}"):
                    found.annotations[name[: -len(suffix) - 1]] = member.read()
                elif ext in VIDEO_EXTENSIONS:
                    found.videos[name[: -len(ext) - 1]] = (name, ext, member.read() if video_bytes else None)
    except TarDamaged as exc:
        found.error = f"{exc}; members after it are lost"
    return found


def _index_sources(videos_uri: str) -> dict[str, VideoInput | VideoError]:
    """The videos of the source shards by key (bytes in memory: callers hold the decoded frames anyway)."""
    return {
        sample.key: sample
        for shard in list_shards(SourceConfig(uri=videos_uri, format="wds"))
        for sample in iter_videos(shard)
    }
