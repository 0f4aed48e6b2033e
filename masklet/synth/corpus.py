"""A synthetic video corpus with exact ground truth, as WebDataset tar shards at any fsspec URI.

Each sample is `{key}.mp4` (H.264), `{key}.json` (what was generated: sizes, objects, events) and
`{key}.gt.json`: SA-V annotation of every frame (so any stride a job or a clip sampler picks has exact
ground truth), `masklet_type` "manual", `masklet_source` "synthetic", and `fps` the video's rate
(rounded) so that SAM 2's loader configured for SA-V reads frame f from entry f, not f // 4. A video
depends only on (seed, video index), so any shard can be regenerated alone, and the shard bytes are
reproducible: tar headers carry fixed names, mtime, owner and mode. Videos are made one at a time,
frames streamed through the encoder, so memory does not grow with the corpus; each shard is published
atomically.
"""

from __future__ import annotations

import io
import json
import math
import tarfile
from numbers import Integral, Real

import numpy as np

from masklet.io import rle, sav, storage
from masklet.io.video_writer import check_even_size, encode_mp4
from masklet.synth.scene import EVENTS, make_scene

GENERATOR = "masklet.synth/1"


def validate(*, videos: int, per_shard: int, seed: int, width: int, height: int, frames: int, fps: float) -> None:
    """Raise ValueError naming the first bad argument, before any file is touched."""
    for name, value in (("videos", videos), ("per_shard", per_shard), ("frames", frames)):
        _check_int(name, value, minimum=1)
    _check_int("seed", seed, minimum=0)
    _check_int("width", width, minimum=2)
    _check_int("height", height, minimum=2)
    check_even_size(width, height)
    if isinstance(fps, bool) or not isinstance(fps, Real) or not (fps > 0 and math.isfinite(fps)):
        raise ValueError(f"fps must be a positive number, got {fps!r}")


def _check_int(name: str, value: int, *, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, Integral) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


def shard_name(shard: int) -> str:
    return f"shard-{shard:06d}.tar"


def sample_key(index: int) -> str:
    return f"synth-{index:06d}"


def write_corpus(
    out_uri: str, *, videos: int, per_shard: int, seed: int, width: int, height: int, frames: int, fps: float
) -> list[str]:
    """Write `videos` videos, `per_shard` to a shard, under `out_uri`; return the shard URIs."""
    validate(videos=videos, per_shard=per_shard, seed=seed, width=width, height=height, frames=frames, fps=fps)
    storage.ensure_writable_dir(out_uri)
    written = []
    for shard, start in enumerate(range(0, videos, per_shard)):
        uri = storage.join(out_uri, shard_name(shard))
        with storage.staged_file(uri) as stage, tarfile.open(stage, "w", format=tarfile.USTAR_FORMAT) as tar:
            for index in range(start, min(start + per_shard, videos)):
                sample = render_sample(seed, index, width=width, height=height, frames=frames, fps=fps)
                for name, data in sample.items():
                    _add_member(tar, name, data)
        written.append(uri)
    return written


def render_sample(seed: int, index: int, *, width: int, height: int, frames: int, fps: float) -> dict[str, bytes]:
    """The tar members of one video: {key}.mp4, {key}.json and {key}.gt.json."""
    key = sample_key(index)
    scene = make_scene(seed, index, width=width, height=height, frames=frames)
    num_objects = len(scene.objects)
    amodal_area = np.zeros((frames, num_objects), dtype=np.int64)
    visible_area = np.zeros((frames, num_objects), dtype=np.int64)
    masklet: list[list[rle.RLE]] = []

    def rgb_frames():
        for t in range(frames):
            frame = scene.render(t)
            amodal_area[t] = frame.amodal.sum(axis=(1, 2))
            visible_area[t] = frame.visible.sum(axis=(1, 2))
            masklet.append(rle.encode_batch(frame.visible))
            yield frame.rgb

    mp4 = encode_mp4(rgb_frames(), fps=fps)
    gt = sav.build(key, masklet, height=height, width=width, fps=fps)
    events = scene.events(amodal_area, visible_area)
    objects = []
    for obj, happened in zip(scene.objects, events, strict=True):
        seen = visible_area[:, obj.id] > 0
        objects.append(
            {
                **obj.describe(),
                "first_visible_frame": int(np.argmax(seen)) if seen.any() else -1,
                "visible_frames": int(seen.sum()),
                "events": happened,
            }
        )
    meta = {
        "key": key,
        "generator": GENERATOR,
        "seed": int(seed),
        "index": int(index),
        "fps": float(fps),
        "frame_count": int(frames),
        "width": int(width),
        "height": int(height),
        "objects": objects,
        "events": {name: [o["id"] for o in objects if o["events"][name]] for name in EVENTS},
    }
    return {f"{key}.mp4": mp4, f"{key}.json": _json(meta), f"{key}.gt.json": _json(gt)}


def _json(doc: dict) -> bytes:
    return json.dumps(doc, separators=(",", ":")).encode()


def _add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), 0, 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    tar.addfile(info, io.BytesIO(data))
