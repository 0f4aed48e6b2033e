"""Encode / decode throughput of masklet.io.rle against pycocotools.mask on the same masks.

Masks are made the way SAM makes them: a low-resolution random field, bilinearly upsampled and
thresholded, so each frame holds a few smooth blobs. A worker holds them as a torch [N, H, W] bool
tensor on --device (the GPU where there is one) and must turn them into COCO RLE strings. Encode is
timed, from that tensor to the list of {"size", "counts": str}, three ways:

  ours         masklet's codec on the host copy: rle.encode_batch(masks.cpu().numpy())
  coco+T       pycocotools fed the layout it reads, made by torch where the masks are:
               masks.transpose(1, 2).contiguous().cpu().numpy() is C [N, W, H], whose
               .transpose(2, 1, 0) is the F-order [H, W, N] view; the transpose is counted
  coco F       pycocotools given F-order uint8 [H, W, N] ready made (not counted): the floor of
               coco+T, which it nears when the transpose is free (on a GPU)

and `rle.encode_tensor`, the worker's path, which picks between the first two by device. Then
decode and area, which are ours alone: pycocotools' decode returns F-order [H, W, N], masklet's
C-contiguous [N, H, W]. Each figure is the best of --repeats runs; "x" > 1 means masklet is faster.

    python benchmarks/rle_vs_pycocotools.py --repeats 5
    python benchmarks/rle_vs_pycocotools.py --case 480x854x16 --device cuda --repeats 5
"""

from __future__ import annotations

import argparse
import time
import warnings
from collections.abc import Callable

import numpy as np
import pycocotools.mask as mask_util
import torch

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


def coco_transposed(masks: torch.Tensor) -> list[rle.RLE]:
    """pycocotools from the [N, H, W] tensor: transposed where the masks are, read as F-order [H, W, N]."""
    _, h, w = masks.shape
    columns = masks.transpose(1, 2).contiguous().cpu().numpy()
    encoded = mask_util.encode(columns.view(np.uint8).transpose(2, 1, 0))
    return [{"size": [h, w], "counts": r["counts"].decode("ascii")} for r in encoded]


def encode_case(masks: np.ndarray, device: str, repeats: int) -> dict[str, float]:
    """Seconds per batch of each encode route, from the same tensor; checks they all agree first."""
    tensor = torch.from_numpy(masks).to(device)
    laid_out = np.asfortranarray(masks.transpose(1, 2, 0), dtype=np.uint8)
    routes: dict[str, Callable[[], object]] = {
        "ours": lambda: rle.encode_batch(tensor.cpu().numpy()),
        "coco+T": lambda: coco_transposed(tensor),
        "coco F": lambda: mask_util.encode(laid_out),
        "encode_tensor": lambda: rle.encode_tensor(tensor),
    }
    expected = rle.encode_batch(masks)
    assert routes["ours"]() == routes["coco+T"]() == routes["encode_tensor"]() == expected, "encodings differ"
    assert [r["counts"].decode() for r in routes["coco F"]()] == [r["counts"] for r in expected], "encodings differ"
    return {name: best_seconds(fn, repeats) for name, fn in routes.items()}


def decode_case(masks: np.ndarray, repeats: int) -> list[tuple[str, float, float]]:
    """(operation, masklet seconds, pycocotools seconds) for decode and area of one batch."""
    ours = rle.encode_batch(masks)
    theirs = mask_util.encode(np.asfortranarray(masks.transpose(1, 2, 0), dtype=np.uint8))
    assert np.array_equal(rle.decode_batch(ours), masks), "decode differs"

    def time_it(fn: Callable[[], object]) -> float:
        return best_seconds(fn, repeats)

    coco_area = time_it(lambda: [mask_util.area(r) for r in theirs])
    return [
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
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="where the masks are, as in a worker (default: cuda if available)")  # fmt: skip
    parser.add_argument("--no-decode", action="store_true", help="encode only")
    args = parser.parse_args()
    # pycocotools' Cython decode predates numpy 2's __array__(copy=...) and warns on every call.
    warnings.filterwarnings("ignore", "__array__ implementation", DeprecationWarning)
    cases = args.case or [(1024, 1024, 64), (256, 256, 256), (480, 854, 16)]
    batches = {(h, w, n): sam_like_masks(n, h, w, args.seed) for h, w, n in cases}
    device = torch.device(args.device)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu, {torch.get_num_threads()} threads"

    print(f"encode from a torch [N, H, W] bool tensor on {device} ({where}); ms per batch, best of {args.repeats}")
    names = ("ours", "coco+T", "coco F", "encode_tensor")
    print(f"{'case':<15}" + "".join(f"{name:>15}" for name in names) + f"{'coco+T / ours':>15}{'coco F / ours':>15}")
    for (h, w, n), masks in batches.items():
        t = encode_case(masks, args.device, args.repeats)
        print(f"{f'{h}x{w} x{n}':<15}" + "".join(f"{1e3 * t[name]:>15.2f}" for name in names)
              + f"{t['coco+T'] / t['ours']:>14.2f}x{t['coco F'] / t['ours']:>14.2f}x")  # fmt: skip
    if args.no_decode:
        return

    print(f"\n{'case':<15} {'operation':<30} {'masklet masks/s':>16} {'pycocotools masks/s':>20} {'ratio':>7}")
    for (h, w, n), masks in batches.items():
        for name, ours, theirs in decode_case(masks, args.repeats):
            print(f"{f'{h}x{w} x{n}':<15} {name:<30} {n / ours:>16,.0f} {n / theirs:>20,.0f} {theirs / ours:>6.2f}x")


if __name__ == "__main__":
    main()
