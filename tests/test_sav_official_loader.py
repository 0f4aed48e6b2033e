"""Our SA-V JSON as SAM 2's own training code reads it: every annotated frame gets its own masks.

`OfficialReader` restates, without importing it, what the sam2 1.1.0 sdist's `training/` does with a
file (tests/parity/check_sav_loader.py runs the real class against the same kind of files):
- vos_segment_loader.py, `JSONSegmentLoader.__init__`: the entries are `data["masklet"]`; a file with
  an `fps` field sets `ann_every = frames_fps // int(fps)` after asserting `frames_fps % int(fps) == 0`,
  otherwise the dataset's `ann_every` stands;
- `JSONSegmentLoader.load(frame_id)`: asserts `frame_id % ann_every == 0`, reads entry
  `frame_id // ann_every` and decodes its RLEs with pycocotools;
- vos_raw_dataset.py, `JSONRawDataset.get_video`: frame ids are the names of the video's JPEGs and,
  with `rm_unannotated` (the default), only ids `i * ann_every` of entries i without a None are kept.
The training README configures SA-V as `JSONRawDataset` with `ann_every: 4` and the default
`frames_fps` 24; docs/output-schema.md says to use one such dataset per frame rate.
"""

from __future__ import annotations

import numpy as np
import pytest

from masklet.io import rle, sav
from masklet.io.schema import MaskletRecord, VideoRecord
from masklet.io.sinks import sav_annotation
from masklet.io.video import frame_stride
from masklet.synth.corpus import render_sample
from masklet.synth.scene import make_scene

mask_util = pytest.importorskip("pycocotools.mask")

H, W = 48, 64
SAV_CONFIG = {"ann_every": 4, "frames_fps": 24}  # the training README's SA-V dataset


class OfficialReader:
    """One video's annotation file as `JSONRawDataset.get_video` and `JSONSegmentLoader` read it."""

    def __init__(self, doc: dict, *, ann_every: int, frames_fps: int) -> None:
        self.frame_annots = doc["masklet"]
        self.ann_every = ann_every
        if "fps" in doc:
            annotations_fps = int(doc["fps"][0] if isinstance(doc["fps"], list) else doc["fps"])
            assert frames_fps % annotations_fps == 0
            self.ann_every = frames_fps // annotations_fps

    def kept_frames(self, jpeg_frame_ids: range) -> list[int]:
        """The frame ids `rm_unannotated` keeps out of the video's JPEG folder."""
        valid = {i * self.ann_every for i, a in enumerate(self.frame_annots) if a is not None and None not in a}
        return [f for f in jpeg_frame_ids if f in valid]

    def load(self, frame_id: int) -> np.ndarray:
        """Masks [objects, H, W] of a frame."""
        assert frame_id % self.ann_every == 0
        row = self.frame_annots[frame_id // self.ann_every]
        return mask_util.decode(row).transpose(2, 0, 1).astype(bool)


def read_all(doc: dict, frame_count: int, **config: int) -> dict[int, np.ndarray]:
    """Masks by frame id of every frame the official loader keeps, with every frame extracted as a JPEG."""
    reader = OfficialReader(doc, **config)
    return {f: reader.load(f) for f in reader.kept_frames(range(frame_count))}


def job_output(fps: float, frame_count: int) -> tuple[dict, dict[int, np.ndarray]]:
    """A job's SA-V JSON of a video at `fps`, sampled as a job samples it at 6 fps, and the masks it means.

    Masklet 1 is tracked from the third annotated frame only (empty before), and a dropped masklet
    must not show. Returns the JSON and the intended masks [objects, H, W] by video frame.
    """
    indices = list(range(0, frame_count, frame_stride(fps, 6.0)))
    scene = make_scene(0, 0, width=W, height=H, frames=frame_count)
    visible = {f: scene.render(f).visible for f in indices}
    video = VideoRecord("vid", "vid", "s3://in/vid.mp4", fps=fps, frame_count=frame_count, height=H, width=W,
                        frame_indices=indices)  # fmt: skip
    records, intended = [], {f: np.zeros_like(visible[f]) for f in indices}
    for k in range(visible[0].shape[0]):
        frames = indices[2:] if k == 1 else indices
        records.append(MaskletRecord.from_frames(
            "vid", k, source="prompt" if k else "auto", frame_indices=frames,
            rles=[rle.encode(visible[f][k]) for f in frames], pred_iou=[0.9] * len(frames),
            stability=[0.95] * len(frames), object_score=[5.0] * len(frames),
        ))  # fmt: skip
        for f in frames:
            intended[f][k] = visible[f][k]
    records.append(MaskletRecord.from_frames(
        "vid", 99, source="auto", frame_indices=indices, rles=[rle.encode(visible[f][0]) for f in indices],
        pred_iou=[0.1] * len(indices), stability=[0.1] * len(indices), object_score=[5.0] * len(indices),
        kept=False, reject_reason="low_stability",
    ))  # fmt: skip
    return sav_annotation(video, records), intended


def assert_read_as_intended(read: dict[int, np.ndarray], intended: dict[int, np.ndarray]) -> None:
    assert list(read) == list(intended)
    wrong = [f for f in intended if not np.array_equal(read[f], intended[f])]
    assert not wrong, f"{len(wrong)}/{len(intended)} frames read with the wrong masks: {wrong[:5]}"


@pytest.mark.parametrize(
    ("fps", "frames_fps", "ann_fps"),
    [(24.0, 24, 6), (30.0, 30, 6), (29.97, 30, 6), (23.976, 24, 6), (60.0, 60, 6)],
)
def test_job_output_is_read_at_its_own_stride(fps: float, frames_fps: int, ann_fps: int) -> None:
    """One dataset per frame rate (frames_fps = the rate rounded); the file's `fps` overrides ann_every."""
    doc, intended = job_output(fps, frame_count=60)
    assert_read_as_intended(read_all(doc, 60, ann_every=4, frames_fps=frames_fps), intended)
    assert doc["fps"] == ann_fps and doc["video_fps"] == fps
    assert doc["masklet_frame_indices"] == list(intended)
    assert sav.parse(doc).frame_indices == list(intended)  # masklet's own reader agrees


def test_a_30_fps_file_in_a_24_fps_dataset_is_read_at_the_wrong_stride() -> None:
    """Why the schema doc says one dataset per frame rate: the loader knows a video's rate only from its config."""
    doc, _ = job_output(30.0, frame_count=60)
    assert OfficialReader(doc, **SAV_CONFIG).ann_every == 4 != doc["masklet_frame_indices"][1]


def test_a_stride_that_does_not_divide_the_rate_falls_back_to_the_datasets_ann_every() -> None:
    """25 fps at stride 4 is 6.25 annotated frames a second: no `fps` the loader can use, so none is written."""
    doc, intended = job_output(25.0, frame_count=60)
    assert "fps" not in doc and doc["masklet_frame_indices"][1] == 4
    assert_read_as_intended(read_all(doc, 60, ann_every=4, frames_fps=25), intended)


@pytest.mark.parametrize(("fps", "frames_fps"), [(24, 24), (30, 30)])
def test_synthetic_ground_truth_is_read_on_every_frame(fps: int, frames_fps: int) -> None:
    frames = 12
    sample = render_sample(3, 0, width=W, height=H, frames=frames, fps=fps)
    doc = sav.parse(sample["synth-000000.gt.json"]).doc
    scene = make_scene(3, 0, width=W, height=H, frames=frames)
    intended = {f: scene.render(f).visible for f in range(frames)}
    assert_read_as_intended(read_all(doc, frames, ann_every=4, frames_fps=frames_fps), intended)
    assert doc["fps"] == fps and doc["masklet_type"] == ["manual"] * len(scene.objects)
