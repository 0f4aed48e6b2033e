"""masklet.io.rle must be bit-identical to pycocotools.mask: same counts strings, same decodes."""

from __future__ import annotations

import numpy as np
import pycocotools.mask as mask_util
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from masklet.io import rle

# pycocotools' Cython decode predates numpy 2's __array__(copy=...) protocol and warns on every call.

FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
BIG = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def coco_encode(mask: np.ndarray) -> dict:
    """pycocotools' RLE of a 2-D mask; it compares raw bytes, so feed it 0/1 uint8 in F order."""
    return mask_util.encode(np.asfortranarray(np.asarray(mask) != 0, dtype=np.uint8))


def assert_same(mask: np.ndarray) -> None:
    """encode == pycocotools, and decode / area agree with the mask both ways."""
    ours, theirs = rle.encode(mask), coco_encode(mask)
    assert ours["size"] == list(theirs["size"])
    assert ours["counts"] == theirs["counts"].decode("ascii")
    expected = np.asarray(mask) != 0
    for decoded in (rle.decode(ours), rle.decode(theirs)):
        assert decoded.dtype == bool and decoded.shape == expected.shape
        np.testing.assert_array_equal(decoded, expected)
    assert rle.area(ours) == int(mask_util.area(theirs)) == int(expected.sum())


small_masks = st.tuples(st.integers(1, 40), st.integers(1, 40)).flatmap(
    lambda hw: hnp.arrays(bool, hw, elements=st.booleans())
)


@FAST
@given(small_masks)
def test_random_small_masks(mask: np.ndarray) -> None:
    assert_same(mask)


@FAST
@given(st.integers(1, 64), st.integers(1, 64), st.floats(0.0, 1.0), st.integers(0, 2**32 - 1))
def test_random_density(h: int, w: int, p: float, seed: int) -> None:
    assert_same(np.random.default_rng(seed).random((h, w)) < p)


@BIG
@given(st.data())
def test_long_runs(data: st.DataObject) -> None:
    """Few toggles in masks up to 2.2 Mpx: counts past 2^5, 2^10 and 2^20, negative deltas."""
    h = data.draw(st.sampled_from([1, 3, 32, 1024, 2048]))
    w = data.draw(st.sampled_from([1, 7, 33, 1024, 1080]))
    toggles = data.draw(st.lists(st.integers(0, h * w - 1), max_size=8))
    flat = np.zeros(h * w, dtype=np.int8)
    np.add.at(flat, toggles, 1)
    mask = (np.cumsum(flat) % 2 == 1).reshape((h, w), order="F")
    assert_same(mask)


@FAST
@given(st.data())
def test_decode_runs_with_empty_runs(data: st.DataObject) -> None:
    """Other encoders may write empty runs mid-mask or at its end; decode them as pycocotools does."""
    n = data.draw(st.integers(1, 4))
    h, w = data.draw(st.integers(1, 12)), data.draw(st.integers(1, 12))
    theirs = []
    for _ in range(n):
        cuts = sorted(data.draw(st.lists(st.integers(0, h * w), max_size=8)))
        counts = np.diff([0, *cuts, h * w]).tolist()
        theirs.append(mask_util.frPyObjects({"size": [h, w], "counts": counts}, h, w))
    expected = np.stack([mask_util.decode(one) for one in theirs])
    np.testing.assert_array_equal(rle.decode_batch(theirs), expected)
    for one, mask in zip(theirs, expected, strict=True):
        np.testing.assert_array_equal(rle.decode(one), mask)
        assert rle.area(one) == int(mask_util.area(one))


@pytest.mark.parametrize(
    "runs",
    [
        [2**21 + 7, 5000, 40, 3],  # a count past 2^20, then a negative multi-char delta (3 - 5000)
        [0, 2**20 + 1, 33, 2**10 + 1, 1],  # starts on foreground; counts at the 2^5 / 2^10 / 2^20 edges
        # Stored values 15, 16, 511, then deltas 512, 16383, 16384: each side of 1/2/3/4 chars.
        [15, 16, 511, 16 + 512, 511 + 16383, 16 + 512 + 16384],
    ],
)
def test_long_run_boundaries(runs: list[int]) -> None:
    h, w = 2048, 1080
    runs = [*runs, h * w - sum(runs)]
    flat = np.repeat(np.arange(len(runs)) % 2 == 1, runs)
    assert_same(flat.reshape((h, w), order="F"))


@pytest.mark.parametrize("shape", [(1, 1), (17, 33), (33, 17), (1, 100), (100, 1), (1024, 1024)])
@pytest.mark.parametrize("fill", [False, True])
def test_empty_and_full(shape: tuple[int, int], fill: bool) -> None:
    assert_same(np.full(shape, fill))


@pytest.mark.parametrize("shape", [(0, 0), (0, 5), (5, 0)])
def test_zero_area_matches_pycocotools(shape: tuple[int, int]) -> None:
    """pycocotools encodes a 0-pixel mask as one empty run, "0"; so do we."""
    assert_same(np.zeros(shape, dtype=bool))
    assert rle.encode(np.zeros(shape, dtype=bool))["counts"] == "0"


def blobs(n: int, h: int, w: int, seed: int) -> np.ndarray:
    """Thresholded smoothed noise: realistic objects with long runs and holes."""
    rng = np.random.default_rng(seed)
    noise = rng.standard_normal((n, h // 8 + 2, w // 8 + 2))
    coarse = np.repeat(np.repeat(noise, 8, axis=1), 8, axis=2)[:, :h, :w]
    return coarse > rng.uniform(0.5, 1.5, size=(n, 1, 1))


def stripes(h: int, w: int) -> np.ndarray:
    rows, cols = np.indices((h, w))
    return ((rows // 3 + cols // 5) % 2).astype(bool)


@pytest.mark.parametrize("shape", [(17, 33), (240, 427), (1080, 1920)])
def test_blobs_and_stripes(shape: tuple[int, int]) -> None:
    for mask in [*blobs(3, *shape, seed=1), stripes(*shape), ~stripes(*shape)]:
        assert_same(mask)


def test_memory_order_and_dtypes() -> None:
    """Fortran, C and strided views of any numeric dtype encode the same; truthy is foreground."""
    base = blobs(1, 61, 47, seed=2)[0]
    expected = coco_encode(base)["counts"].decode("ascii")
    variants = [
        np.asfortranarray(base),
        base.astype(np.uint8),
        np.asfortranarray(base.astype(np.uint8)),
        base.astype(np.int64) * 7,
        base.astype(np.float32),
        base.astype(np.uint8) * 255,
        base.T.copy().T,
        np.repeat(base, 2, axis=1)[:, ::2],
    ]
    for mask in variants:
        assert rle.encode(mask)["counts"] == expected
    assert rle.encode(base.tolist())["counts"] == expected


@FAST
@given(st.integers(0, 6), st.integers(0, 30), st.integers(0, 30), st.integers(0, 2**32 - 1))
def test_batch_equals_single(n: int, h: int, w: int, seed: int) -> None:
    masks = blobs(n, h, w, seed)
    masks[: n // 2] ^= np.random.default_rng(seed).random((n // 2, h, w)) < 0.1
    batch = rle.encode_batch(masks)
    assert batch == [rle.encode(m) for m in masks]
    np.testing.assert_array_equal(rle.area_batch(batch), masks.sum(axis=(1, 2)))
    if n:
        theirs = mask_util.encode(np.asfortranarray(masks.transpose(1, 2, 0), dtype=np.uint8))
        assert [r["counts"] for r in batch] == [r["counts"].decode("ascii") for r in theirs]
        np.testing.assert_array_equal(rle.decode_batch(batch), masks)
        np.testing.assert_array_equal(rle.decode_batch(theirs), masks)


def test_a_long_batch_is_counted_and_decoded_a_group_of_strings_at_a_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """A whole masklet's RLEs (a long video's) are parsed in groups of about _CHUNK_CHARS characters: the
    same areas and masks whether the groups hold one string or all of them."""
    masks = blobs(40, 9, 13, 3)
    batch = rle.encode_batch(masks)
    whole = rle.area_batch(batch), rle.decode_batch(batch)
    monkeypatch.setattr(rle, "_CHUNK_CHARS", 8)
    assert len(list(rle._spans(batch))) > 10
    np.testing.assert_array_equal(rle.area_batch(batch), masks.sum(axis=(1, 2)))
    np.testing.assert_array_equal(rle.area_batch(batch), whole[0])
    np.testing.assert_array_equal(rle.decode_batch(batch), whole[1])


def coco_counts(masks: np.ndarray) -> list[str]:
    """pycocotools' strings for an [N, H, W] batch, given the F-order uint8 [H, W, N] it reads."""
    if not len(masks):
        return []
    theirs = mask_util.encode(np.asfortranarray(np.asarray(masks).transpose(1, 2, 0) != 0, dtype=np.uint8))
    return [r["counts"].decode("ascii") for r in theirs]


def both_routes(masks: torch.Tensor) -> tuple[list[rle.RLE], list[rle.RLE]]:
    """encode_tensor's CPU route (ours) and its accelerator route (pycocotools on the transposed batch)."""
    on_device = rle._encode_columns(masks.bool().transpose(1, 2).contiguous().numpy())
    return rle.encode_tensor(masks), on_device


def assert_tensor_encodes(masks: torch.Tensor) -> None:
    """Both routes of encode_tensor give pycocotools' strings and [H, W] sizes for every mask."""
    n, h, w = masks.shape
    expected = coco_counts(masks.numpy())
    for encoded in both_routes(masks):
        assert [r["counts"] for r in encoded] == expected
        assert [r["size"] for r in encoded] == [[h, w]] * n
        assert all(type(v) is int for r in encoded for v in r["size"])


def edge_masks(h: int, w: int) -> np.ndarray:
    """Empty, full, one pixel at each corner and the centre, and a border-touching diagonal."""
    masks = np.zeros((7, h, w), dtype=bool)
    masks[1] = True
    for i, (y, x) in enumerate([(0, 0), (h - 1, 0), (0, w - 1), (h - 1, w - 1), (h // 2, w // 2)], start=2):
        masks[i, y, x] = True
    if h and w:
        masks[-1] |= np.eye(h, w, dtype=bool)
    return masks


@pytest.mark.parametrize("shape", [(1, 1), (1, 9), (9, 1), (17, 33), (33, 17), (480, 854), (257, 255)])
def test_encode_tensor_edge_masks(shape: tuple[int, int]) -> None:
    assert_tensor_encodes(torch.from_numpy(edge_masks(*shape)))


@FAST
@given(st.integers(0, 5), st.integers(1, 40), st.integers(1, 40), st.floats(0.0, 1.0), st.integers(0, 2**32 - 1))
def test_encode_tensor_random(n: int, h: int, w: int, p: float, seed: int) -> None:
    masks = torch.from_numpy(np.random.default_rng(seed).random((n, h, w)) < p)
    masks[: n // 2] = torch.from_numpy(blobs(n // 2, h, w, seed))
    assert_tensor_encodes(masks)


@pytest.mark.parametrize("shape", [(0, 4, 5), (0, 0, 0), (3, 0, 5), (3, 5, 0)])
def test_encode_tensor_empty(shape: tuple[int, int, int]) -> None:
    """No masks: an empty list; masks without pixels: one empty run each, "0", as pycocotools writes."""
    masks = torch.zeros(shape, dtype=torch.bool)
    for encoded in both_routes(masks):
        assert encoded == [{"size": list(shape[1:]), "counts": "0"}] * shape[0]


def test_encode_tensor_layouts_and_dtypes() -> None:
    """Non-contiguous views and any numeric dtype (nonzero is foreground) encode as the mask they show."""
    base = torch.from_numpy(blobs(4, 61, 47, seed=4))
    expected = coco_counts(base.numpy())
    variants = [
        base.transpose(1, 2).contiguous().transpose(1, 2),  # column-major storage
        base.permute(1, 2, 0).contiguous().permute(2, 0, 1),  # mask index innermost
        torch.repeat_interleave(base, 2, dim=2)[:, :, ::2],  # strided
        base.to(torch.uint8) * 255,
        base.float() * -0.5,
        base.to(torch.int64),
    ]
    for masks in variants:
        assert not masks.is_contiguous() or masks.dtype != torch.bool
        for encoded in both_routes(masks):
            assert [r["counts"] for r in encoded] == expected
    # every other mask of a batch: a view whose masks are not adjacent in memory
    assert [r["counts"] for r in rle.encode_tensor(base[::2])] == expected[::2]


def test_encode_tensor_matches_encode_batch() -> None:
    """The worker's path and the numpy path write the same records."""
    masks = blobs(5, 90, 70, seed=5)
    assert rle.encode_tensor(torch.from_numpy(masks)) == rle.encode_batch(masks)


def test_encode_tensor_rejects_other_ranks() -> None:
    with pytest.raises(ValueError, match=r"\[N, H, W\]"):
        rle.encode_tensor(torch.zeros(3, 4))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_encode_tensor_on_cuda() -> None:
    """On the GPU the batch is transposed there and pycocotools encodes the host copy."""
    masks = np.concatenate([edge_masks(48, 80), blobs(9, 48, 80, seed=6)])
    encoded = rle.encode_tensor(torch.from_numpy(masks).cuda())
    assert [r["counts"] for r in encoded] == coco_counts(masks)
    assert encoded == rle.encode_batch(masks)


def test_decode_is_c_contiguous_bool() -> None:
    mask = blobs(1, 20, 30, seed=3)[0]
    decoded = rle.decode(rle.encode(mask))
    assert decoded.flags.c_contiguous and decoded.dtype == bool
    assert rle.decode_batch(rle.encode_batch(mask[None])).flags.c_contiguous


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: rle.encode(np.zeros((2, 3, 4))), "2-D"),
        (lambda: rle.encode(np.zeros(5)), "2-D"),
        (lambda: rle.encode_batch(np.zeros((3, 4))), r"\[N, H, W\]"),
        (lambda: rle.decode({"size": [4, 4], "counts": "5"}), "cover 5 pixels, size 4x4 needs 16"),
        (lambda: rle.decode({"size": [4, 4], "counts": "R"}), "truncated"),
        (lambda: rle.decode({"size": [2, 2], "counts": "0a"}), "truncated"),
        (lambda: rle.decode({"size": [2, 2], "counts": "0~"}), "outside"),
        (lambda: rle.decode({"size": [2, 2], "counts": "4é"}), "ASCII"),
        (lambda: rle.decode({"size": [2, 2], "counts": "5O"}), "negative"),
        (lambda: rle.decode({"size": [2, 2], "counts": "RRRRRRRR0"}), "longer than 7"),
        (lambda: rle.decode({"size": [2, 2], "counts": [4]}), "compressed"),
        (lambda: rle.decode({"size": [2], "counts": "4"}), "height, width"),
        (lambda: rle.decode_batch([]), "at least one"),
        (lambda: rle.decode_batch([rle.encode(np.ones((2, 2))), rle.encode(np.ones((2, 3)))]), "one size"),
        (lambda: rle.area({"size": [3, 3], "counts": "4"}), "cover 4 pixels"),
    ],
)
def test_malformed_input_raises(call, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call()


def test_truncated_real_string() -> None:
    """Dropping the last char of a long-run RLE leaves a value half-written or the size uncovered."""
    mask = np.zeros((1024, 1024), dtype=bool)
    mask[100:900, 200:300] = True
    counts = rle.encode(mask)["counts"]
    for cut in range(1, len(counts)):
        with pytest.raises(ValueError, match="truncated|cover"):
            rle.decode({"size": [1024, 1024], "counts": counts[:cut]})
