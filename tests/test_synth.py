"""masklet.synth: a synthetic corpus whose ground truth is exactly what was drawn, and whose events
(exit and re-entry, late entry, occlusion, scale change) really happen in that ground truth."""

from __future__ import annotations

import colorsys
import io
import json
import os
import time
from pathlib import Path

import av
import numpy as np
import pytest
import webdataset as wds

from masklet.io import sav
from masklet.synth import corpus
from masklet.synth.scene import EVENTS, Scene, make_scene

mask_util = pytest.importorskip("pycocotools.mask")

ARGS = {"videos": 5, "per_shard": 2, "seed": 7, "width": 64, "height": 48, "frames": 12, "fps": 24}


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    out = tmp_path_factory.mktemp("corpus") / "synth"
    return out, corpus.write_corpus(str(out), **ARGS)


@pytest.fixture(scope="module")
def samples(written: tuple[Path, list[str]]) -> list[dict]:
    _, uris = written
    return [s for uri in uris for s in wds.WebDataset(uri, shardshuffle=False)]


def gt_masks(sample: dict) -> np.ndarray:
    """Ground truth [objects, frames, H, W], decoded with pycocotools rather than our own RLE code."""
    doc = json.loads(sample["gt.json"])
    return np.stack(
        [
            np.stack([mask_util.decode({"size": r["size"], "counts": r["counts"].encode()}) for r in row])
            for row in doc["masklet"]
        ],
        axis=1,
    ).astype(bool)


def rendered(sample: dict):
    meta = json.loads(sample["json"])
    scene = make_scene(meta["seed"], meta["index"], width=meta["width"], height=meta["height"], frames=12)
    return scene, [scene.render(t) for t in range(meta["frame_count"])]


def test_shards_and_samples(written: tuple[Path, list[str]], samples: list[dict]) -> None:
    out, uris = written
    assert [os.path.basename(u) for u in uris] == ["shard-000000.tar", "shard-000001.tar", "shard-000002.tar"]
    assert sorted(os.listdir(out)) == ["shard-000000.tar", "shard-000001.tar", "shard-000002.tar"]
    assert [s["__key__"] for s in samples] == [f"synth-{i:06d}" for i in range(5)]
    for index, sample in enumerate(samples):
        assert {"mp4", "json", "gt.json"} <= set(sample)
        meta = json.loads(sample["json"])
        assert meta["key"] == sample["__key__"] and meta["index"] == index and meta["seed"] == 7
        assert (meta["fps"], meta["frame_count"], meta["width"], meta["height"]) == (24, 12, 64, 48)
        assert 3 <= len(meta["objects"]) <= 6
        assert all(set(o["events"]) == set(EVENTS) for o in meta["objects"])
        gt = sav.parse(sample["gt.json"])
        assert gt.video_id == sample["__key__"] and gt.frame_indices == list(range(12))
        assert gt.doc["masklet_type"] == ["manual"] * len(meta["objects"])  # ground truth: SA-V's "manual"
        assert gt.doc["masklet_source"] == ["synthetic"] * len(meta["objects"])
        assert (gt.doc["fps"], gt.doc["video_fps"]) == (24, 24.0)  # every frame of a 24 fps video annotated
    assert len({json.dumps([o["shape"] for o in json.loads(s["json"])["objects"]]) for s in samples}) > 1


def test_gt_is_exactly_what_was_drawn(samples: list[dict]) -> None:
    for sample in samples:
        _, frames = rendered(sample)
        expected = np.stack([f.visible for f in frames], axis=1)
        assert (gt_masks(sample) == expected).all()
        pixels_owned = expected.sum(axis=0)
        assert pixels_owned.max() <= 1  # a pixel shows at most one object


def test_mp4_decodes_close_to_the_render(samples: list[dict]) -> None:
    for sample in samples[:2]:
        _, frames = rendered(sample)
        with av.open(io.BytesIO(sample["mp4"])) as container:
            decoded = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
        assert len(decoded) == 12
        for original, back in zip(frames, decoded, strict=True):
            assert back.shape == (48, 64, 3)
            assert np.abs(back.astype(np.int16) - original.rgb).mean() < 6


def test_bytes_depend_only_on_seed(tmp_path: Path, written: tuple[Path, list[str]]) -> None:
    _, uris = written
    again = corpus.write_corpus(str(tmp_path / "again"), **ARGS)
    other = corpus.write_corpus(str(tmp_path / "other"), **{**ARGS, "seed": 8, "videos": 1})
    for a, b in zip(uris, again, strict=True):
        assert Path(a).read_bytes() == Path(b).read_bytes()
    assert Path(other[0]).read_bytes() != Path(uris[0]).read_bytes()
    # A video is a function of (seed, index): regenerating video 3 alone gives the same members.
    alone = corpus.render_sample(7, 3, width=64, height=48, frames=12, fps=24)
    members = {m["__key__"]: m for m in wds.WebDataset(uris[1], shardshuffle=False)}["synth-000003"]
    assert alone["synth-000003.mp4"] == members["mp4"]
    assert alone["synth-000003.gt.json"] == members["gt.json"]


@pytest.fixture(scope="module")
def truth(samples: list[dict]) -> list[tuple[dict, np.ndarray, np.ndarray, Scene]]:
    """Per video: metadata, ground truth [N, T, H, W] from the shard, amodal masks and scene re-rendered."""
    out = []
    for sample in samples:
        scene, frames = rendered(sample)
        out.append((json.loads(sample["json"]), gt_masks(sample), np.stack([f.amodal for f in frames], 1), scene))
    return out


def test_exit_and_reentry(truth: list) -> None:
    """Mask empty on some frames, then non-empty again, because the object was out of the frame."""
    found = 0
    for meta, gt, amodal, _ in truth:
        for obj, seen in enumerate(gt.any(axis=(2, 3))):
            on = np.flatnonzero(seen)
            gap = [t for t in range(on[0], on[-1]) if not seen[t]] if on.size else []
            out_of_frame = [t for t in gap if not amodal[obj, t].any()]
            assert meta["objects"][obj]["events"]["exit_reenter"] == bool(out_of_frame)
            found += bool(out_of_frame)
    assert found


def test_late_entry(truth: list, samples: list[dict]) -> None:
    found = 0
    for (meta, gt, _, _), sample in zip(truth, samples, strict=True):
        first = json.loads(sample["gt.json"])["masklet_first_appeared_frame"]
        for obj, seen in enumerate(gt.any(axis=(2, 3))):
            late = bool(seen.any() and not seen[0])
            assert meta["objects"][obj]["events"]["late_entry"] == late == (first[obj] > 0)
            assert meta["objects"][obj]["first_visible_frame"] == first[obj]  # every frame is annotated
            found += late
    assert found


def test_occlusion(truth: list) -> None:
    """Visible masks are disjoint where the full shapes overlap; the one behind loses those pixels."""
    found = 0
    for meta, gt, amodal, scene in truth:
        for back in scene.objects:
            in_front = [o.id for o in scene.objects if o.depth > back.depth]
            hidden = amodal[back.id] & amodal[in_front].any(axis=0)
            assert (gt[back.id] == amodal[back.id] & ~hidden).all()
            assert not (gt[back.id] & gt[in_front].any(axis=0)).any()
            assert meta["objects"][back.id]["events"]["occluded"] == bool(hidden.any())
            found += bool(hidden.any())
    assert found


def test_scale_change(truth: list) -> None:
    """Area changes by half or more between frames where the object is whole and unoccluded."""
    found = 0
    for meta, gt, amodal, scene in truth:
        for obj in scene.objects:
            whole = [t for t in range(12) if (gt[obj.id, t] == amodal[obj.id, t]).all() and _clear(gt[obj.id, t])]
            areas = gt[obj.id, whole].sum(axis=(1, 2))
            if meta["objects"][obj.id]["events"]["scale_change"] and len(whole) >= 2:
                found += areas.max() / areas.min() >= 1.5
    assert found


def test_every_planned_event_occurs_in_the_corpus(samples: list[dict]) -> None:
    listed = {name for s in samples for name, ids in json.loads(s["json"])["events"].items() if ids}
    assert {"late_entry", "exit_reenter", "occluded", "scale_change", "rotation"} <= listed


def _clear(mask: np.ndarray) -> bool:
    """True when the mask is non-empty and touches no border, i.e. the whole object is in the frame."""
    return mask.any() and not (mask[0].any() or mask[-1].any() or mask[:, 0].any() or mask[:, -1].any())


def test_objects_stand_out_by_colour() -> None:
    """Objects are saturated and the background is not; objects' hues differ."""
    for index in range(4):
        scene = make_scene(11, index, width=96, height=64, frames=6)
        for t in range(6):
            frame = scene.render(t)
            rgb = frame.rgb.astype(np.float32)
            saturation = (rgb.max(-1) - rgb.min(-1)) / np.maximum(rgb.max(-1), 1)
            background = ~frame.visible.any(axis=0)
            for mask in frame.visible:
                if mask.any():
                    assert saturation[mask].min() > saturation[background].max() + 0.3
        hues = [colorsys.rgb_to_hsv(*(o.texture.colors[0] / 255))[0] for o in scene.objects]
        gaps = [min(abs(a - b), 1 - abs(a - b)) for i, a in enumerate(hues) for b in hues[:i]]
        assert min(gaps) > 0.1


def test_object_count_scales_with_frame() -> None:
    small = {len(make_scene(0, i, width=64, height=48, frames=2).objects) for i in range(10)}
    large = {len(make_scene(0, i, width=320, height=240, frames=2).objects) for i in range(20)}
    assert small == {3}
    assert min(large) >= 3 and max(large) == 6


def test_fast_enough() -> None:
    start = time.perf_counter()
    corpus.render_sample(0, 0, width=64, height=48, frames=12, fps=24)
    assert time.perf_counter() - start < 1.0


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("frames", 0),
        ("width", 0),
        ("height", -4),
        ("width", 63),
        ("height", 47),
        ("videos", 0),
        ("per_shard", 0),
        ("fps", 0),
        ("fps", -24),
        ("seed", -1),
        ("frames", 2.5),
    ],
)
def test_bad_arguments_raise_and_write_nothing(tmp_path: Path, name: str, value: object) -> None:
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=rf"^{name} "):
        corpus.write_corpus(str(out), **{**ARGS, name: value})
    assert not out.exists()


def test_unwritable_output_fails_before_any_work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def never(*args, **kwargs):
        raise AssertionError("rendered before checking the output")

    monkeypatch.setattr(corpus, "render_sample", never)
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(OSError, match="cannot create output directory"):
        corpus.write_corpus(str(tmp_path / "file" / "out"), **ARGS)


@pytest.mark.parametrize(("fail_on", "published"), [(2, []), (3, ["shard-000000.tar"])])
def test_failure_mid_write_leaves_no_partial_shard(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fail_on: int, published: list[str]
) -> None:
    calls = []
    real = corpus.encode_mp4

    def flaky(frames, **kwargs):
        calls.append(1)
        if len(calls) == fail_on:
            raise RuntimeError("encoder died")
        return real(frames, **kwargs)

    monkeypatch.setattr(corpus, "encode_mp4", flaky)
    out = tmp_path / "out"
    with pytest.raises(RuntimeError, match="encoder died"):
        corpus.write_corpus(str(out), **ARGS)
    assert sorted(os.listdir(out)) == published
    for name in published:
        assert [s["__key__"] for s in wds.WebDataset(str(out / name), shardshuffle=False)] == [
            "synth-000000",
            "synth-000001",
        ]
