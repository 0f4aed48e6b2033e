"""H.264 MP4 encoding in memory with PyAV: videos travel as tar members, never as local files.

The output is byte-for-byte reproducible: x264 runs on one thread (its output depends on the thread
count, which would otherwise follow the machine's cores), macroblock-tree rate control is off (with
it on, the libx264 in PyAV 18's wheel gave different bytes run to run on an AVX-512 CPU: 10 distinct
outputs in 10 encodes of one 320x240 clip) and the MP4 muxer writes no timestamps.
yuv420p halves the chroma planes, so width and height must be even; odd sizes are refused rather
than padded, so a video's size always equals its masks' size.
"""

from __future__ import annotations

import io
import itertools
from collections.abc import Iterable
from fractions import Fraction

import av
import numpy as np

CODEC = "libx264"
CRF = 14  # near-transparent: a segmenter should be judged on the content, not on codec artefacts
X264_OPTIONS = {"preset": "veryfast", "x264-params": "mbtree=0"}


def check_even_size(width: int, height: int) -> None:
    """Refuse sizes yuv420p cannot hold, naming the offending dimension."""
    for name, value in (("width", width), ("height", height)):
        if value < 2 or value % 2:
            raise ValueError(f"{name} must be an even number >= 2 for yuv420p H.264, got {value}")


def encode_mp4(frames: Iterable[np.ndarray], *, fps: float | Fraction, crf: int = CRF) -> bytes:
    """Encode RGB uint8 frames [H, W, 3] (any iterable, consumed once) as H.264 yuv420p MP4 bytes."""
    rate = Fraction(fps).limit_denominator(1001)
    if rate <= 0:
        raise ValueError(f"fps must be positive, got {fps}")
    stream_of_frames = iter(frames)
    first = next(stream_of_frames, None)
    if first is None:
        raise ValueError("cannot encode a video with no frames")
    shape = np.shape(first)
    if len(shape) != 3 or shape[2] != 3:
        raise ValueError(f"frames must be RGB [H, W, 3], got shape {shape}")
    height, width = shape[:2]
    check_even_size(width, height)
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="mp4") as container:
        stream = container.add_stream(CODEC, rate=rate, options={"crf": str(crf), **X264_OPTIONS})
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.codec_context.thread_count = 1
        for index, rgb in enumerate(itertools.chain([first], stream_of_frames)):
            rgb = np.asarray(rgb)
            if rgb.shape != shape or rgb.dtype != np.uint8:
                raise ValueError(f"frame {index} is {rgb.dtype} {rgb.shape}, expected uint8 {shape}")
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
            frame.pts, frame.time_base = index, 1 / rate
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return buffer.getvalue()
