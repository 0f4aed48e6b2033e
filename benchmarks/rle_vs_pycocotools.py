"""Encode / decode throughput of masklet.io.rle against pycocotools.mask on the same masks.

Masks are made the way SAM makes them: a low-resolution random field, bilinearly upsampled and
thresholded, so each frame holds a few smooth blobs. masklet starts from the [N, H, W] bool batch a
worker holds; pycocotools needs it as F-order uint8 [H, W, N], so its encode is timed with that
conversion and without it. pycocotools' decode returns F-order [H, W, N]; masklet's returns
C-contiguous [N, H, W]. Each figure is the best of --repeats runs; ratio > 1 means masklet is faster.

    python benchmarks/rle_vs_pycocotools.py --case 1024x1024x64 --case 256x256x256 --repeats 5
"""

from __future__ import annotations

import argparse
import time
import warnings
from collections.abc import Callable

import numpy as np
import pycocotools.mask as mask_util

from masklet.io import rle


def sam_like_masks(n: int, h: int, w: int, seed: int) -> np.ndarray:
    """[N, H, W] bool: thresholded bilinear upsampling of 1/32-resolution Gaussian noise."""
    rng = np.random.default_rng(seed)
    low_h, low_w = h // 32 + 2, w // 32 + 2
    rows = _bilinear(low_h, h)
    cols = _bilinear(low_w, w)
    field = rows @ rng.standard_normal((n, low_h, low_w)) @ cols.T
    # A per-mask threshold near the top of the field keeps a few objects, 5-15% of the frame.
    cut = [np.quantile(f, q) for f, q in zip(field, rng.uniform(0.85, 0.95, n), strict=True)]
    return field > np.array(cut)[:, None, None]


def _bilinear(src: int, dst: int) -> np.ndarray:
    """[dst, src] linear interpolation matrix (align_corners=False, as torch's interpolate)."""
    pos = np.clip((np.arange(dst) + 0.5) * src / dst - 0.5, 0, src - 1)
    lo = np.floor(pos).astype(int)
    hi = np.minimum(lo + 1, src - 1)
    weights = np.zeros((dst, src))
    np.add.at(weights, (np.arange(dst), lo), 1 - (pos - lo))
    np.add.at(weights, (np.arange(dst), hi), pos - lo)
    return weights


def best_seconds(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def bench_case(h: int, w: int, n: int, repeats: int, seed: int) -> list[tuple[str, float, float]]:
    """(operation, masklet seconds, pycocotools seconds) for one batch; checks both agree first."""
    masks = sam_like_masks(n, h, w, seed)
    laid_out = np.asfortranarray(masks.transpose(1, 2, 0), dtype=np.uint8)
    ours = rle.encode_batch(masks)
    theirs = mask_util.encode(laid_out)
    assert [r["counts"] for r in ours] == [r["counts"].decode() for r in theirs], "encodings differ"
    assert np.array_equal(rle.decode_batch(ours), masks), "decode differs"

    def time_it(fn: Callable[[], object]) -> float:
        return best_seconds(fn, repeats)

    encode = time_it(lambda: rle.encode_batch(masks))
    convert_and_encode = time_it(lambda: mask_util.encode(np.asfortranarray(masks.transpose(1, 2, 0), dtype=np.uint8)))
    coco_area = time_it(lambda: [mask_util.area(r) for r in theirs])
    return [
        ("encode_batch vs convert+encode", encode, convert_and_encode),
        ("encode_batch vs encode(F-order u8)", encode, time_it(lambda: mask_util.encode(laid_out))),
        ("decode_batch vs decode(list)", time_it(lambda: rle.decode_batch(ours)),
         time_it(lambda: mask_util.decode(theirs))),
        ("decode, one call per mask", time_it(lambda: [rle.decode(r) for r in ours]),
         time_it(lambda: [mask_util.decode(r) for r in theirs])),
        # pycocotools' area(list) overflows past 255 RLEs under numpy 2, so it is called per mask.
        ("area_batch vs area per mask", time_it(lambda: rle.area_batch(ours)), coco_area),
        ("area, one call per mask", time_it(lambda: [rle.area(r) for r in ours]), coco_area),
    ]  # fmt: skip


def parse_case(text: str) -> tuple[int, int, int]:
    try:
        h, w, n = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected HxWxN, e.g. 1024x1024x64, got {text!r}") from None
    return h, w, n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--case", type=parse_case, action="append",
                        help="HxWxN: mask height, width and masks per batch (repeatable)")  # fmt: skip
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per figure; the best is kept")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    # pycocotools' Cython decode predates numpy 2's __array__(copy=...) and warns on every call.
    warnings.filterwarnings("ignore", "__array__ implementation", DeprecationWarning)
    cases = args.case or [(1024, 1024, 64), (256, 256, 256), (720, 1280, 32)]

    print(f"{'case':<14} {'operation':<34} {'masklet masks/s':>16} {'pycocotools masks/s':>20} {'ratio':>7}")
    for h, w, n in cases:
        for name, ours, theirs in bench_case(h, w, n, args.repeats, args.seed):
            print(f"{f'{h}x{w} x{n}':<14} {name:<34} {n / ours:>16,.0f} {n / theirs:>20,.0f} {theirs / ours:>6.2f}x")


if __name__ == "__main__":
    main()
