"""The CVAT export read by datumaro, the reader of CVAT's XML that the CVAT team started and Intel maintains
(`datumaro` on PyPI), in a venv of its own (tests/review_tools.py): every video folder loads as a "cvat"
dataset, with its images, and every mask datumaro decodes equals masklet's RLE pixel for pixel.

datumaro reads masks inside `<image>` elements only (its `_parse_shape_ann` takes the frame size from the
image; inside a `<track>` it fails), which is one reason masklet writes the "CVAT for images" layout
(masklet/review/formats/cvat.py says why CVAT itself needs it). Without the venv the test is skipped,
except in CI (CI=true), where it fails.
"""

from __future__ import annotations

import base64
import json
import subprocess
from pathlib import Path

import numpy as np
from review_helpers import HEIGHT, WIDTH, build_output, model_masks
from review_tools import tool_or_skip

from masklet.cli import main
from masklet.io.outputs import read_shard
from masklet.review.formats import cvat
from masklet.review.manifest import load

READER = """
import base64, json, sys
import numpy as np
import datumaro as dm

out = {}
for folder in sys.argv[1:]:
    dataset = dm.Dataset.import_from(folder, "cvat")
    labels = dataset.categories()[dm.AnnotationType.label]
    items = []
    for item in dataset:
        anns = []
        for ann in item.annotations:
            mask = np.asarray(ann.image, dtype=bool)
            anns.append({"type": ann.type.name, "label": labels[ann.label].name, "attributes": ann.attributes,
                         "shape": list(mask.shape), "bits": base64.b64encode(np.packbits(mask)).decode()})
        image = item.media
        items.append({"id": item.id, "frame": item.attributes.get("frame"), "path": image.path,
                      "size": list(image.size) if image.has_size else None, "loaded": image.data.shape[:2],
                      "annotations": anns})
    out[folder] = items
json.dump(out, sys.stdout)
"""


def _unpack(bits: str, shape: list[int]) -> np.ndarray:
    flat = np.unpackbits(np.frombuffer(base64.b64decode(bits), dtype=np.uint8))[: shape[0] * shape[1]]
    return flat.reshape(shape).astype(bool)


def test_datumaro_reads_the_cvat_export_pixel_for_pixel(tmp_path: Path) -> None:
    python = tool_or_skip("datumaro")
    root = str(tmp_path / "out")
    build_output(root, str(tmp_path / "corpus"))
    review = tmp_path / "review"
    assert main(["review", "export", root, str(review), "--fraction", "1", "--format", "cvat"]) == 0
    manifest = load(str(review))
    records = {
        (m.video_key, m.masklet_id): m for s in ("shard-000000", "shard-000001") for m in read_shard(root, s).masklets
    }
    folders = [str(review / "videos" / v.video_key) for v in manifest.videos]
    done = subprocess.run([str(python), "-c", READER, *folders], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    read = json.loads(done.stdout)
    checked = 0
    for video, folder in zip(manifest.videos, folders, strict=True):
        items = sorted(read[folder], key=lambda item: item["frame"])
        assert [item["frame"] for item in items] == list(range(len(video.frames)))
        assert [item["id"] for item in items] == [
            cvat.frame_name(video.video_key, t)[: -len(".jpg")] for t in range(len(video.frames))
        ]
        assert all(item["size"] == [HEIGHT, WIDTH] and item["loaded"] == [HEIGHT, WIDTH] for item in items)
        expected = {m: model_masks(records[(video.video_key, m)], video.frames) for m in video.masklets}
        for position, item in enumerate(items):
            seen = set()
            for ann in item["annotations"]:
                assert ann["type"] == "mask" and ann["label"] == cvat.LABEL and ann["shape"] == [HEIGHT, WIDTH]
                export_id, key, masklet_id = ann["attributes"]["masklet"].split("/")
                assert (export_id, key) == (manifest.export_id, video.video_key)
                assert ann["attributes"]["review"] == "unreviewed"
                assert np.array_equal(_unpack(ann["bits"], ann["shape"]), expected[int(masklet_id)][position])
                seen.add(int(masklet_id))
                checked += 1
            assert seen == {m for m, masks in expected.items() if masks[position].any()}  # every visible mask, once
    assert checked >= 30
