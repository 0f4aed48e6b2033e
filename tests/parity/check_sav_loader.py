"""Check that our SA-V annotations load with the official SAM 2 training code to the same masks.

The official loader is `JSONSegmentLoader` in `training/dataset/vos_segment_loader.py`, which the
PyPI sam2 1.1.0 sdist ships (`pip download --no-deps --no-binary :all: --no-build-isolation sam2==1.1.0`;
without --no-build-isolation pip fails building metadata); the wheel does not. The class needs only
json, torch and pycocotools; its module also imports pandas and Pillow, which it never uses here, so
where they are missing they are stubbed. Run from our venv:

    .venv/bin/python tests/parity/check_sav_loader.py path/to/sam2-1.1.0.tar.gz   (or the unpacked folder)

It writes SA-V JSON with `masklet.io.sinks.sav_annotation` for videos a job samples at 6 fps (24 fps
at stride 4, 30 and 29.97 fps at stride 5, 25 fps at stride 4): kept masklets visible from frame 0
and from a later frame, frames where an object is absent, and a dropped masklet that must not
appear; and the `{key}.gt.json` of a synthetic video (every frame annotated). The official loader
reads each as `JSONRawDataset.get_video` does, configured as docs/output-schema.md says (the training
README's SA-V dataset, `ann_every=4`, with `frames_fps` the video's rate rounded): every annotated
frame, every object, all frames valid (what `rm_unannotated` keeps), masks equal, and no other frame.
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
from masklet.io.video import frame_stride
from masklet.synth.corpus import render_sample
from masklet.synth.scene import make_scene

ANN_EVERY, FRAME_COUNT, HEIGHT, WIDTH = 4, 60, 48, 64  # ANN_EVERY: the training README's SA-V config
JOB_FPS = ((24.0, 24), (30.0, 30), (29.97, 30), (25.0, 25))  # video fps, the dataset's frames_fps

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


def check(loader_cls: type, path: Path, expected: dict[int, np.ndarray], frames_fps: int) -> int:
    """Load every frame as `JSONRawDataset` does; compare with `expected` masks [K, H, W] by video frame."""
    loader = loader_cls(video_json_path=str(path), ann_every=ANN_EVERY, frames_fps=frames_fps)
    frames = list(expected)
    assert len(loader.frame_annots) == len(frames)
    valid = [i * loader.ann_every for i, a in enumerate(loader.frame_annots) if a is not None and None not in a]
    assert valid == frames, (valid, frames)
    for frame in frames:
        segments = loader.load(frame)
        assert sorted(segments) == list(range(len(expected[frame]))), sorted(segments)
        for k, mask in segments.items():
            assert np.array_equal(mask.numpy().astype(bool), expected[frame][k]), f"frame {frame}, masklet {k}"
    assert all(v == frames for v in loader.get_valid_obj_frames_ids().values())
    return len(frames) * len(expected[frames[0]])


def job_output(fps: float) -> tuple[dict, dict[int, np.ndarray]]:
    """A job's SA-V JSON of a video at `fps` sampled at 6 fps (one masklet late, one dropped) and its masks."""
    indices = list(range(0, FRAME_COUNT, frame_stride(fps, 6.0)))
    scene = make_scene(0, 0, width=WIDTH, height=HEIGHT, frames=FRAME_COUNT)
    visible = {f: scene.render(f).visible for f in indices}
    video = VideoRecord(
        "vid", "vid", "synthetic", fps=fps, frame_count=FRAME_COUNT, height=HEIGHT, width=WIDTH, frame_indices=indices
    )
    out, expected = [], {f: np.zeros_like(visible[f]) for f in indices}
    for k in range(visible[0].shape[0]):
        frames = indices[2:] if k == 0 else indices  # object 0 tracked from the third annotated frame only
        out.append(
            MaskletRecord.from_frames(
                "vid", k + 1, source="auto", frame_indices=frames, rles=[rle.encode(visible[f][k]) for f in frames],
                pred_iou=[0.9] * len(frames), stability=[0.95] * len(frames), object_score=[5.0] * len(frames),
                edit_count=k,
            )
        )  # fmt: skip
        for f in frames:
            expected[f][k] = visible[f][k]
    out.append(MaskletRecord.from_frames(
        "vid", 99, source="auto", frame_indices=indices, rles=[rle.encode(visible[f][1]) for f in indices],
        pred_iou=[0.1] * len(indices), stability=[0.1] * len(indices), object_score=[5.0] * len(indices),
        kept=False, reject_reason="low_stability",
    ))  # fmt: skip
    doc = sav_annotation(video, out)
    assert 99 not in doc["masklet_id"], doc["masklet_id"]
    return doc, expected


def synthetic_ground_truth(fps: int) -> tuple[dict, dict[int, np.ndarray]]:
    """The `{key}.gt.json` of a synthetic video and the masks it was drawn with, every frame."""
    frames = 12
    doc = json.loads(render_sample(3, 0, width=WIDTH, height=HEIGHT, frames=frames, fps=fps)["synth-000000.gt.json"])
    scene = make_scene(3, 0, width=WIDTH, height=HEIGHT, frames=frames)
    return doc, {f: scene.render(f).visible for f in range(frames)}


def main() -> int:
    if len(sys.argv) != 2:
        print(__doc__)
        return 2
    loader_cls = official_loader(Path(sys.argv[1]))
    cases = [(f"job output, {fps} fps", *job_output(fps), frames_fps) for fps, frames_fps in JOB_FPS]
    cases += [(f"synthetic ground truth, {fps} fps", *synthetic_ground_truth(fps), fps) for fps in (24, 30)]
    with tempfile.TemporaryDirectory() as tmp:
        for name, doc, expected, frames_fps in cases:
            path = Path(tmp) / "vid_manual.json"
            path.write_text(json.dumps(doc))
            masks = check(loader_cls, path, expected, frames_fps)
            stride = list(expected)[1]
            print(
                f"official JSONSegmentLoader, {name} (fps field {doc.get('fps')}, frames_fps {frames_fps}): "
                f"{len(expected)} frames at stride {stride}, {masks}/{masks} masks right"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
