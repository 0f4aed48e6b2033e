"""Check that our SA-V annotations load with the official SAM 2 training code to the same masks.

The official loader is `JSONSegmentLoader` in `training/dataset/vos_segment_loader.py`, which the
PyPI sam2 1.1.0 sdist ships (`pip download --no-deps --no-binary :all: sam2==1.1.0`); the wheel
does not. The class needs only json, torch and pycocotools; its module also imports pandas and
Pillow, which it never uses here, so where they are missing they are stubbed. Run from our venv:

    .venv/bin/python tests/parity/check_sav_loader.py path/to/sam2-1.1.0.tar.gz   (or the unpacked folder)

It writes, from synthetic ground truth, the SA-V JSON of a video annotated every 4th frame of 24 fps
(SA-V's own rate) with `masklet.io.sinks.sav_annotation`: kept masklets visible from frame 0 and from
a later frame, frames where an object is absent, and a dropped masklet that must not appear. The
official loader then reads it as `JSONRawDataset` does (`ann_every=4`, `frames_fps=24`): every
annotated frame, every object, all frames valid (what `rm_unannotated` keeps), masks equal.
"""

from __future__ import annotations

import importlib.util
import json
import sys
import tarfile
import tempfile
import types
from pathlib import Path

import numpy as np

from masklet.io import rle
from masklet.io.schema import MaskletRecord, VideoRecord
from masklet.io.sinks import sav_annotation
from masklet.synth.scene import make_scene

STRIDE, FPS, POSITIONS = 4, 24.0, 6

LOADER = "training/dataset/vos_segment_loader.py"


def official_loader(sdist: Path) -> type:
    """`JSONSegmentLoader` from the sdist (a .tar.gz or its unpacked folder), unused imports stubbed."""
    if sdist.is_dir():
        source = next(sdist.rglob(LOADER)).read_text()
    else:
        with tarfile.open(sdist) as tar:
            member = next(m for m in tar.getmembers() if m.name.endswith(LOADER))
            source = tar.extractfile(member).read().decode()  # type: ignore[union-attr]
    for name in ("pandas", "PIL"):
        if name not in sys.modules and importlib.util.find_spec(name) is None:
            sys.modules[name] = types.ModuleType(name)
            sys.modules[f"{name}.Image"] = sys.modules[name].Image = types.ModuleType(f"{name}.Image")  # type: ignore[attr-defined]
    module = types.ModuleType("vos_segment_loader")
    exec(compile(source, LOADER, "exec"), module.__dict__)
    return module.JSONSegmentLoader


def check(loader_cls: type, path: Path, expected: np.ndarray) -> None:
    """Load every annotated frame as `JSONRawDataset` does and compare with `expected` [T, K, H, W]."""
    loader = loader_cls(video_json_path=str(path), ann_every=STRIDE, frames_fps=int(FPS))
    frames = [STRIDE * i for i in range(expected.shape[0])]
    assert len(loader.frame_annots) == len(frames)
    valid = [i * loader.ann_every for i, a in enumerate(loader.frame_annots) if a is not None and None not in a]
    assert valid == frames, valid
    for t, frame in enumerate(frames):
        segments = loader.load(frame)
        assert sorted(segments) == list(range(expected.shape[1])), sorted(segments)
        for k, mask in segments.items():
            assert np.array_equal(mask.numpy().astype(bool), expected[t, k]), f"frame {frame}, masklet {k}"
    assert all(v == frames for v in loader.get_valid_obj_frames_ids().values())


def records(height: int = 48, width: int = 64) -> tuple[VideoRecord, list[MaskletRecord], np.ndarray]:
    """A video, its masklets (one dropped, one starting late) and the kept masks [T, K, H, W]."""
    scene = make_scene(0, 0, width=width, height=height, frames=STRIDE * POSITIONS)
    indices = [STRIDE * i for i in range(POSITIONS)]
    visible = np.stack([scene.render(f).visible for f in indices])  # [T, objects, H, W]
    video = VideoRecord(
        "vid", "vid", "synthetic", fps=FPS, frame_count=STRIDE * POSITIONS, height=height, width=width,
        frame_indices=indices,
    )  # fmt: skip
    out, kept = [], []
    for k in range(visible.shape[1]):
        start = 2 if k == 0 else 0  # object 0 tracked from frame 8 only
        frames = indices[start:]
        masks = visible[start:, k]
        out.append(
            MaskletRecord.from_frames(
                "vid", k + 1, source="auto", frame_indices=frames, rles=[rle.encode(m) for m in masks],
                pred_iou=[0.9] * len(frames), stability=[0.95] * len(frames), object_score=[5.0] * len(frames),
                edit_count=k,
            )
        )  # fmt: skip
        full = np.zeros_like(visible[:, k])
        full[start:] = masks
        kept.append(full)
    out.append(MaskletRecord.from_frames(
        "vid", 99, source="auto", frame_indices=indices, rles=[rle.encode(m) for m in visible[:, 1]],
        pred_iou=[0.1] * POSITIONS, stability=[0.1] * POSITIONS, object_score=[5.0] * POSITIONS,
        kept=False, reject_reason="low_stability",
    ))  # fmt: skip
    return video, out, np.stack(kept, axis=1)


def main() -> int:
    if len(sys.argv) != 2:
        print(__doc__)
        return 2
    video, masklets, expected = records()
    doc = sav_annotation(video, masklets)
    assert doc["masklet_id"] == [1, 2, 3], doc["masklet_id"]  # the dropped masklet 99 is not there
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "vid_manual.json"
        path.write_text(json.dumps(doc))
        check(official_loader(Path(sys.argv[1])), path, expected)
    print(f"official JSONSegmentLoader: {expected.shape[0]} frames x {expected.shape[1]} masklets, same masks")
    return 0


if __name__ == "__main__":
    sys.exit(main())
