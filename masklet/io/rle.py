"""COCO compressed RLE, bit-identical to pycocotools.

Masks leave a worker only as RLE, so encoding sits on the hot path. A worker holds masks as a torch
[N, H, W] bool batch in C order; pycocotools reads them column-major, as Fortran-order uint8
[H, W, N]. Which encoder is faster depends on where that layout change happens
(benchmarks/rle_vs_pycocotools.py has the figures), so `encode_tensor` picks by device:

- on an accelerator the batch is transposed there, a device-memory copy, and the host copy (the
  same bytes as without it) is already the layout pycocotools reads, whose encode of it takes
  0.4-0.75x the time of ours (host side, measured on a CPU; benchmarks/gpu measures the whole route);
- on the CPU that byte transpose alone costs more than our whole encode, which is vectorised over
  the C-order batch in numpy (no per-pixel or per-run Python loop) and never transposes it.

Both give the same strings. Decoding and areas are ours, vectorised likewise.

Format (pycocotools maskApi.c): run lengths of the mask read column-major, starting with a zero
run; each count from the fourth on is stored as the delta to the count two before it; every value
is written as little-endian 5-bit groups, sign-terminated, one char per group (+48, bit 0x20 means
"more groups follow").
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, TypedDict

import numpy as np
import pycocotools.mask as mask_util

if TYPE_CHECKING:
    from torch import Tensor


class RLE(TypedDict):
    """A COCO compressed RLE: `size` is [height, width], `counts` the LEB128-like string."""

    size: list[int]
    counts: str


# A count is a uint32 in pycocotools, so a delta fits 34 signed bits: at most 7 groups of 5 bits.
_MAX_GROUPS = 7
# Work units for the per-run and per-char steps, measured best: small enough that their many
# intermediate arrays stay in cache, large enough to amortise numpy's per-call overhead.
_CHUNK_PIXELS = 1 << 22
_CHUNK_CHARS = 1 << 16


def _vertical_changes(flat: np.ndarray, w: int) -> np.ndarray:
    """Indices p with flat[p] != flat[p + w], found by comparing 8 pixels per uint64 word."""
    pixels = flat.view(np.uint8)
    pairs = max(pixels.size - w, 0)
    n8 = pairs // 8
    lo = pixels[: 8 * n8].view(np.uint64)
    hi = pixels[w : w + 8 * n8].view(np.uint64)
    words = np.flatnonzero(lo != hi)
    # Pixels are 0/1 bytes, so the XOR of two words is a valid bool per pixel.
    hit = np.flatnonzero((lo[words] ^ hi[words]).view(bool))
    tail = np.flatnonzero(pixels[8 * n8 : pairs] != pixels[w + 8 * n8 :]) + 8 * n8
    return np.concatenate((8 * words[hit >> 3] + (hit & 7), tail))


def _run_lengths(masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Column-major run lengths of every mask, concatenated, and the number of runs per mask.

    Changes are found between vertically adjacent pixels in C order, so the batch is never
    transposed; only the few change positions are reordered into column-major order.
    """
    n, h, w = masks.shape
    a = h * w
    if a == 0:
        # pycocotools writes a mask without pixels as one empty run.
        return np.zeros(n, dtype=np.int64), np.ones(n, dtype=np.int64)
    mi, pixel = np.divmod(_vertical_changes(masks.reshape(-1), w), a)
    inside = pixel < a - w
    mi, (row, col) = mi[inside], np.divmod(pixel[inside], w)
    # A column's first pixel differs from the previous column's last pixel.
    wrap_mi, wrap_col = np.divmod(np.flatnonzero(masks[:, 0, 1:] != masks[:, -1, :-1]), w - 1)
    change = np.concatenate((mi * a + col * h + row + 1, wrap_mi * a + (wrap_col + 1) * h))
    change.sort()
    starts = np.arange(n + 1, dtype=np.int64) * a
    runs = np.diff(np.insert(change, np.searchsorted(change, starts), starts))
    n_runs = np.bincount(mi, minlength=n) + np.bincount(wrap_mi, minlength=n) + 1
    # pycocotools always starts with a (possibly empty) run of zeros.
    first_on = np.flatnonzero(masks[:, 0, 0])
    runs = np.insert(runs, (np.cumsum(n_runs) - n_runs)[first_on], 0)
    n_runs[first_on] += 1
    return runs, n_runs


def _segment_index(lengths: np.ndarray) -> np.ndarray:
    """Position of every element within its segment, for segments laid end to end."""
    starts = np.cumsum(lengths) - lengths
    return np.arange(int(lengths.sum()), dtype=np.int64) - np.repeat(starts, lengths)


def _counts_to_strings(counts: np.ndarray, n_runs: np.ndarray) -> list[str]:
    """pycocotools' rleToString for many masks at once."""
    two_back = np.concatenate((counts[:2], counts[:-2]))
    values = np.where(_segment_index(n_runs) > 2, counts - two_back, counts)
    # Groups needed: v must fit 5*k signed bits, i.e. bit_length(v ^ sign) <= 5*k - 1 (frexp's
    # exponent is the bit length, exact below 2^53).
    groups = np.frexp(values ^ (values >> 63))[1] // 5 + 1
    shift = 5 * _segment_index(groups)
    chars = ((np.repeat(values, groups) >> shift) & 0x1F).astype(np.uint8) | 0x20
    ends = np.cumsum(groups)
    chars[ends - 1] ^= 0x20
    text = (chars + 48).tobytes().decode("ascii")
    bounds = ends[np.cumsum(n_runs) - 1].tolist()
    return [text[i:j] for i, j in zip([0, *bounds[:-1]], bounds, strict=True)]


def _strings_to_counts(strings: Sequence[str | bytes]) -> tuple[np.ndarray, np.ndarray]:
    """pycocotools' rleFrString for many strings: concatenated counts and counts per string."""
    try:
        encoded = [s.encode("ascii") if isinstance(s, str) else bytes(s) for s in strings]
    except UnicodeEncodeError as err:
        raise ValueError(f"RLE counts string is not ASCII: {err}") from None
    # Minus 48 in uint8: characters below '0' wrap past 63 and fail with those above 'o'.
    chars = np.frombuffer(b"".join(encoded), dtype=np.uint8) - np.uint8(48)
    if (chars > 63).any():
        raise ValueError("RLE counts string holds characters outside '0'..'o'")
    lengths = np.array([len(s) for s in encoded], dtype=np.int64)
    if (chars[np.cumsum(lengths)[lengths > 0] - 1] > 31).any():
        raise ValueError("truncated RLE counts string: it ends inside a value")
    ends = np.flatnonzero(chars < 32)  # no "more" bit (0x20): the value's last group
    groups = np.diff(ends, prepend=-1)
    if (groups > _MAX_GROUPS).any():
        raise ValueError(f"RLE counts string holds a value longer than {_MAX_GROUPS} characters")
    shifted = (chars & np.uint8(0x1F)).astype(np.int64) << (5 * _segment_index(groups))
    values = np.add.reduceat(shifted, ends - groups + 1) if len(ends) else np.zeros(0, np.int64)
    values -= (chars[ends] > 15).astype(np.int64) << (5 * groups)  # sign bit 0x10 of the last group
    n_runs = np.diff(np.searchsorted(ends, np.cumsum(lengths)), prepend=0)
    # Undo the delta: from index 3 on, counts[i] = values[i] + counts[i - 2], a running sum along
    # the odd chain (1, 3, 5, ...) and the even chain (2, 4, ...), restarted for every string.
    local = _segment_index(n_runs)
    odd = (local & 1).astype(bool)
    odd_sum = np.cumsum(np.where(odd, values, 0))
    even_sum = np.cumsum(np.where(odd | (local == 0), 0, values))
    first, per = (np.cumsum(n_runs) - n_runs)[n_runs > 0], n_runs[n_runs > 0]
    counts = np.where(odd, odd_sum - np.repeat(odd_sum[first], per), even_sum - np.repeat(even_sum[first], per))
    counts[first] = values[first]
    return counts, n_runs


def _as_batch(masks: np.ndarray) -> np.ndarray:
    """Any numeric or bool array as C-contiguous bool; truthy is foreground."""
    masks = np.asarray(masks)
    return np.ascontiguousarray(masks if masks.dtype == bool else masks != 0)


def encode(mask: np.ndarray) -> RLE:
    """Encode one 2-D mask (anything truthy is foreground) as COCO compressed RLE."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"RLE encode expects a 2-D [H, W] mask, got shape {mask.shape}")
    return encode_batch(mask[None])[0]


def encode_batch(masks: np.ndarray) -> list[RLE]:
    """Encode an [N, H, W] stack of masks in one vectorised pass."""
    masks = _as_batch(masks)
    if masks.ndim != 3:
        raise ValueError(f"RLE encode_batch expects [N, H, W] masks, got shape {masks.shape}")
    n, h, w = masks.shape
    if n == 0:
        return []
    step = max(1, _CHUNK_PIXELS // max(h * w, 1))
    strings = [s for i in range(0, n, step) for s in _counts_to_strings(*_run_lengths(masks[i : i + step]))]
    return [{"size": [h, w], "counts": s} for s in strings]


def encode_tensor(masks: Tensor) -> list[RLE]:
    """Encode a torch [N, H, W] mask batch (anything nonzero is foreground) by the faster route for
    its device: on an accelerator, transposed there and encoded by pycocotools; on the CPU, by ours."""
    if masks.ndim != 3:
        raise ValueError(f"RLE encode_tensor expects [N, H, W] masks, got shape {tuple(masks.shape)}")
    masks = masks.bool()
    if masks.device.type == "cpu":
        return encode_batch(masks.numpy())
    # C-contiguous [N, W, H] is, byte for byte, the Fortran-order [H, W, N] pycocotools reads.
    return _encode_columns(masks.transpose(1, 2).contiguous().cpu().numpy())


def _encode_columns(columns: np.ndarray) -> list[RLE]:
    """pycocotools' encode of a C-contiguous bool [N, W, H] batch: every mask stored column by column."""
    n, w, h = columns.shape
    if n == 0:
        return []
    # Transposing the C array gives the F-order [H, W, N] view without a copy; bool bytes are 0/1 uint8.
    encoded = mask_util.encode(columns.view(np.uint8).transpose(2, 1, 0))
    return [{"size": [h, w], "counts": r["counts"].decode("ascii")} for r in encoded]


def _parse(rles: Sequence[RLE]) -> tuple[np.ndarray, np.ndarray, list[tuple[int, int]]]:
    """Run lengths of many RLEs (concatenated), runs per RLE and sizes, checked to tile each mask."""
    sizes = []
    for rle in rles:
        size, counts = rle["size"], rle["counts"]
        if len(size) != 2 or min(size) < 0:
            raise ValueError(f"RLE size must be [height, width], got {size!r}")
        if not isinstance(counts, (str, bytes)):
            raise ValueError("RLE counts must be a compressed str or bytes, not an uncompressed list")
        sizes.append((int(size[0]), int(size[1])))
    strings = [rle["counts"] for rle in rles]
    parts = [_strings_to_counts(strings[i : i + step]) for i, step in _spans(rles)] or [_strings_to_counts([])]
    runs, n_runs = (np.concatenate(p) for p in zip(*parts, strict=True))
    if (runs < 0).any():
        raise ValueError("RLE counts string decodes to a negative run length")
    total = np.concatenate(([0], np.cumsum(runs)))
    ends = np.cumsum(n_runs)
    covered = total[ends] - total[ends - n_runs]
    bad = np.flatnonzero(covered != [h * w for h, w in sizes])
    if len(bad):
        (h, w), got = sizes[bad[0]], covered[bad[0]]
        raise ValueError(f"RLE counts cover {got} pixels, size {h}x{w} needs {h * w}")
    return runs, n_runs, sizes


def _paint(runs: np.ndarray, n_runs: np.ndarray, n: int, h: int, w: int) -> np.ndarray:
    """[N, H, W] bool masks from column-major run lengths, written directly in C order.

    Every run start toggles the value; marking toggles and XOR-accumulating down the rows (with
    each column's starting value carried over from the previous column) avoids a transposed copy.
    """
    a = h * w
    inner = _segment_index(n_runs) > 0
    start = np.cumsum(runs) - runs  # masks are laid end to end, so this is n * a + offset
    if ((runs == 0) & inner).any():
        # Empty runs past the first toggle twice at one pixel (cancelling) or sit at the mask's end.
        end = np.repeat(np.arange(1, n + 1, dtype=np.int64) * a, n_runs)
        flips, hits = np.unique(start[inner & (start < end)], return_counts=True)
        flips = flips[hits % 2 == 1]
    else:
        flips = start[inner]
    mi, pixel = np.divmod(flips, a)
    col, row = np.divmod(pixel, h)
    out = np.zeros((n, h, w), dtype=np.uint8)
    out.reshape(-1)[mi * a + row * w + col] = 1
    if a:
        per_column = np.bincount(mi * w + col, minlength=n * w).reshape(n, w)
        out[:, 0, 1:] ^= (np.cumsum(per_column, axis=1)[:, :-1] % 2).astype(np.uint8)
    for r in range(1, h):
        np.bitwise_xor(out[:, r], out[:, r - 1], out=out[:, r])
    return out.view(bool)


def decode(rle: RLE) -> np.ndarray:
    """Decode a COCO compressed RLE (counts as str or bytes) to a C-contiguous bool [H, W] mask."""
    runs, n_runs, [(h, w)] = _parse([rle])
    # One mask fits in cache, where expanding column-major and transposing beats `_paint`.
    values = (np.arange(len(runs)) % 2).astype(bool)
    return np.ascontiguousarray(np.repeat(values, runs).reshape(w, h).T)


def decode_batch(rles: Sequence[RLE]) -> np.ndarray:
    """Decode same-size RLEs to a C-contiguous bool [N, H, W] stack in one pass."""
    if not rles:
        raise ValueError("decode_batch needs at least one RLE to know the mask size")
    runs, n_runs, sizes = _parse(rles)
    if len(set(sizes)) != 1:
        raise ValueError(f"decode_batch needs RLEs of one size, got {sorted(set(sizes))}")
    return _paint(runs, n_runs, len(rles), *sizes[0])


def area(rle: RLE) -> int:
    """Foreground pixel count without decoding the mask."""
    return int(area_batch([rle])[0])


def area_batch(rles: Sequence[RLE]) -> np.ndarray:
    """Foreground pixel counts of many RLEs (any sizes) in one pass.

    Per-call overhead dominates small masks, so a frame's objects are cheaper counted together.
    """
    return np.concatenate([_areas(rles[i : i + step]) for i, step in _spans(rles)] or [np.zeros(0, np.int64)])


def _spans(rles: Sequence[RLE]) -> Iterator[tuple[int, int]]:
    """(start, length) of consecutive groups of about _CHUNK_CHARS characters of counts: a long masklet's
    RLEs are parsed a group at a time, its run lengths (8 bytes per run) never all at once."""
    chars = sum(len(rle["counts"]) for rle in rles)
    step = max(1, len(rles) * _CHUNK_CHARS // max(chars, 1))
    return ((i, step) for i in range(0, len(rles), step))


def _areas(rles: Sequence[RLE]) -> np.ndarray:
    runs, n_runs, _ = _parse(rles)
    on = np.concatenate(([0], np.cumsum(np.where(_segment_index(n_runs) % 2 == 1, runs, 0))))
    ends = np.cumsum(n_runs)
    return on[ends] - on[ends - n_runs]
