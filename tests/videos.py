"""Test videos, good and bad, made in memory with PyAV: any codec, pixel format and container.

Every frame carries its own index as a row of black/white blocks across the top, which survives
lossy codecs, so a test can tell exactly which original frame a decoder returned.
"""

from __future__ import annotations

import io
import os
import tarfile
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

INDEX_BITS = 10  # up to 1024 frames
# videos encoded once by this module (`python tests/videos.py` writes them) with encoders that could not be
# trusted to open inside the test process: libvpx's VP9 encoder now and then refused (EINVAL) on CI machines
STORED = Path(__file__).parent / "fixtures" / "videos"
STORED_ENCODINGS = {"vp9.webm": {"count": 3, "codec": "libvpx-vp9", "container": "webm"}}


def index_frame(index: int, width: int = 64, height: int = 48) -> np.ndarray:
    """A grey RGB frame whose top half holds `index` in binary, one block per bit (MSB first)."""
    rgb = np.full((height, width, 3), 128, np.uint8)
    block = width // INDEX_BITS
    for bit in range(INDEX_BITS):
        rgb[: height // 2, bit * block : (bit + 1) * block] = 255 * (index >> (INDEX_BITS - 1 - bit) & 1)
    return rgb


def read_index(rgb: np.ndarray) -> int:
    """The index written by `index_frame`, read from the middle of each block."""
    height, width = rgb.shape[:2]
    block = width // INDEX_BITS
    value = 0
    for bit in range(INDEX_BITS):
        level = rgb[height // 4, bit * block + block // 2].mean()
        value = value << 1 | int(level > 128)
    return value


def encode(
    count: int,
    *,
    width: int = 64,
    height: int = 48,
    fps: float = 24,
    codec: str = "libx264",
    container: str = "mp4",
    pix_fmt: str = "yuv420p",
    keyint: int | None = None,
) -> bytes:
    """`count` index frames encoded with any codec, pixel format and container PyAV can write.

    `keyint`: a keyframe every `keyint` frames (with B-frames for H.264), as a streaming encoder writes;
    None leaves the encoder's default (x264: 250)."""
    os.environ.setdefault("SVT_LOG", "1")  # SVT-AV1 prints a banner on every encode otherwise
    buffer = io.BytesIO()
    rate = Fraction(fps).limit_denominator(1001)
    options = {"preset": "ultrafast"} if codec == "libx264" else {}
    if keyint is not None:
        options |= {"g": str(keyint)} | ({"bf": "2", "sc_threshold": "0"} if codec == "libx264" else {})
    with av.open(buffer, mode="w", format=container) as out:
        stream = out.add_stream(codec, rate=rate, options=options)
        stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
        for index in range(count):
            frame = av.VideoFrame.from_ndarray(index_frame(index, width, height), format="rgb24")
            frame.pts, frame.time_base = index, 1 / rate
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return buffer.getvalue()


def jpeg(rgb: np.ndarray) -> bytes:
    """One JPEG file's bytes, made with FFmpeg's mjpeg encoder (no Pillow)."""
    codec = av.CodecContext.create("mjpeg", "w")
    codec.width, codec.height = rgb.shape[1], rgb.shape[0]
    codec.pix_fmt, codec.time_base = "yuvj444p", Fraction(1, 24)
    frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
    return b"".join(bytes(packet) for packet in codec.encode(frame) + codec.encode(None))


def unknown_codec(mp4: bytes) -> bytes:
    """An MP4 whose video stream names a codec no FFmpeg knows (`avc1` renamed wherever it occurs)."""
    assert b"avc1" in mp4
    return mp4.replace(b"avc1", b"zzzz")


def tar_bytes(members: list[tuple[str, bytes | None]]) -> bytes:
    """A tar of raw member names, unchecked; a None body makes a symlink."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            if data is None:
                info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def stored(name: str) -> bytes:
    """A video of STORED_ENCODINGS, as encoded into tests/fixtures/videos."""
    return (STORED / name).read_bytes()


if __name__ == "__main__":
    STORED.mkdir(parents=True, exist_ok=True)
    for name, settings in STORED_ENCODINGS.items():
        (STORED / name).write_bytes(encode(**settings))
