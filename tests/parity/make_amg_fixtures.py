"""Make the automatic-mask-generation parity fixture: what the official `SAM2AutomaticMaskGenerator` returns.

Runs only in the reference venv of make_fixtures.py (official `sam2` 1.1.0 + torchvision), never in CI:

    /work/refvenv/bin/python tests/parity/make_amg_fixtures.py [--out tests/fixtures/parity/amg.pt]

Model: the small seeded SAM 2.1 of tests/fixtures/parity/sam2.1 (spec.json + model.pt, built by
make_fixtures.py), with the image post-processing of the official `build_sam2` (dynamic multimask).
Image: frame 0 of synthetic scene (seed 3, video 1) at 96 x 160 from `masklet.synth.scene`.
Deterministic (CPU, fp32, one thread). Writes one file, loadable with `torch.load(weights_only=True)`:

    image           uint8 [96, 160, 3]
    defaults        the generator's numeric and boolean keyword defaults
    cases           list of {name, kwargs (generator arguments), seconds (official generate time),
                    masks_zlib (np.packbits of the bool [N, H, W] masks, zlib-compressed), shape [N, H, W],
                    predicted_iou [N] float32, stability_score [N] float32 (NaN where the official divides
                    0 by 0), bbox [N, 4] XYWH, area [N], point_coords [N, 2], crop_box [N, 4] XYWH},
                    records in the official output order
    point_grids     {"n,layers,downscale": official build_all_layer_point_grids(...) as float64 tensors}
    crop_boxes      {"h,w,layers,ratio": (boxes, layer_idxs) of the official generate_crop_boxes}
    nms             list of {boxes [N, 4] float32, scores [N] with many ties, iou_threshold,
                    keep (torchvision.ops.batched_nms, one category)}; N on both sides of torchvision's
                    switch to its per-category path (1000 boxes on CPU)

Official behaviour worth knowing: `min_mask_region_area` is not SAM 1's post-processing of the output
masks (SAM 2's `postprocess_small_regions` is never called); it becomes the image predictor's
`max_hole_area` / `max_sprinkle_area`, which fill holes and remove islands in the low-res logits with
the CUDA extension `sam2._C` (8-connected components). Without the extension (any CPU install) the
official code warns and skips the step. Here `get_connected_components` is replaced by a plain numpy
labelling with the kernel's semantics (8-connectivity, per-pixel component areas), so the fixture holds
what a GPU install computes. SAM2ImagePredictor hard-codes the feature sizes of a 1024 model (patched).
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import sys
import time
import zlib
from typing import Any

import numpy as np
import sam2.utils.misc
import torch
from sam2.automatic_mask_generator import SAM2AutomaticMaskGenerator
from sam2.modeling.sam2_base import SAM2Base
from sam2.utils.amg import build_all_layer_point_grids, generate_crop_boxes
from torchvision.ops import batched_nms

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.normpath(os.path.join(HERE, "..", ".."))
sys.path[:0] = [HERE, ROOT]
import make_fixtures  # noqa: E402

from masklet.synth.scene import make_scene  # noqa: E402  (numpy only)

FLAG_SET = "sam2.1"
SCENE = {"seed": 3, "index": 1, "width": 160, "height": 96}
# The random-weight model's masks barely depend on the point (they follow the image), so at the default
# thresholds (0.8 / 0.95) nothing passes and at box_nms_thresh 0.7 a handful of near-identical full-frame
# boxes remain. Most cases therefore switch the filters off and NMS to 1.0 (nothing suppressed: IoU is
# never > 1), which returns every candidate and so checks each one's mask and scores; the others keep
# NMS on to check which masks it keeps, including past torchvision's switch of path (> 1000 boxes).
ALL = {"pred_iou_thresh": 0.0, "stability_score_thresh": 0.0, "box_nms_thresh": 1.0}
CASES: list[tuple[str, dict[str, Any]]] = [
    ("all_candidates", {"points_per_side": 12, **ALL}),
    ("thresholds", {"points_per_side": 16, **ALL, "pred_iou_thresh": 0.55, "stability_score_thresh": 0.2}),
    ("nms", {"points_per_side": 16, **ALL, "box_nms_thresh": 0.7}),
    ("nms_many_boxes", {"points_per_side": 20, **ALL, "box_nms_thresh": 0.7}),
    ("crops_all", {"points_per_side": 8, "crop_n_layers": 1, **ALL, "crop_nms_thresh": 1.0}),
    (
        "crops_nms",
        {"points_per_side": 16, "crop_n_layers": 2, "crop_n_points_downscale_factor": 2, **ALL, "box_nms_thresh": 0.7},
    ),
    ("min_region_area", {"points_per_side": 12, "min_mask_region_area": 12, **ALL}),
    ("m2m", {"points_per_side": 8, "use_m2m": True, **ALL}),
    ("single_mask", {"points_per_side": 8, "multimask_output": False, **ALL}),
    ("shifted_threshold", {"points_per_side": 8, "mask_threshold": 1.0, "stability_score_offset": 2.0, **ALL}),
]


def connected_components(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """What `sam2._C.get_connected_componnets` returns for [N, 1, H, W] masks: labels (0 = background) and
    each foreground pixel's component area, 8-connected, by propagating the minimum pixel index."""
    fg = mask.numpy().astype(bool)[:, 0]
    none = fg.size
    labels = np.where(fg, np.arange(fg.size).reshape(fg.shape), none)
    while True:
        padded = np.pad(labels, ((0, 0), (1, 1), (1, 1)), constant_values=none)
        h, w = fg.shape[1:]
        neighbours = np.min([padded[:, dy : dy + h, dx : dx + w] for dy in range(3) for dx in range(3)], axis=0)
        new = np.where(fg, neighbours, none)
        if np.array_equal(new, labels):
            break
        labels = new
    _, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    areas = np.where(fg, counts[inverse.reshape(labels.shape)], 0)
    out = np.where(fg, labels + 1, 0)
    return torch.from_numpy(out[:, None].astype(np.int32)), torch.from_numpy(areas[:, None].astype(np.int32))


def run_case(model: SAM2Base, image: np.ndarray, name: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    generator = SAM2AutomaticMaskGenerator(model, output_mode="binary_mask", **kwargs)
    size = model.image_size
    generator.predictor._bb_feat_sizes = [(size // s, size // s) for s in (4, 8, 16)]
    start = time.perf_counter()
    records = generator.generate(image)
    seconds = time.perf_counter() - start
    masks = np.stack([r["segmentation"] for r in records]) if records else np.zeros((0, *image.shape[:2]), bool)

    def column(key: str, dtype: torch.dtype) -> torch.Tensor:
        return torch.tensor([r[key] for r in records], dtype=dtype)

    return {
        "name": name,
        "kwargs": kwargs,
        "seconds": seconds,
        "masks_zlib": torch.frombuffer(bytearray(zlib.compress(np.packbits(masks).tobytes(), 9)), dtype=torch.uint8),
        "shape": list(masks.shape),
        "predicted_iou": column("predicted_iou", torch.float32),
        "stability_score": column("stability_score", torch.float32),
        "bbox": column("bbox", torch.float32).reshape(-1, 4),
        "area": column("area", torch.int64),
        "point_coords": torch.tensor([r["point_coords"][0] for r in records], dtype=torch.float32).reshape(-1, 2),
        "crop_box": column("crop_box", torch.float32).reshape(-1, 4),
    }


def nms_cases() -> list[dict[str, Any]]:
    """Integer boxes with heavily tied scores, small and past torchvision's switch of path."""
    g = torch.Generator().manual_seed(3)
    cases = []
    for n, threshold in ((60, 0.5), (300, 0.3), (1500, 0.7)):
        xy = torch.randint(0, 60, (n, 2), generator=g)
        wh = torch.randint(0, 25, (n, 2), generator=g)
        boxes = torch.cat([xy, xy + wh], 1).float()
        scores = torch.randint(0, 6, (n,), generator=g).float() / 5
        keep = batched_nms(boxes, scores, torch.zeros(n, dtype=torch.int64), threshold)
        cases.append({"boxes": boxes, "scores": scores, "iou_threshold": threshold, "keep": keep})
    return cases


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.path.join(ROOT, "tests", "fixtures", "parity", "amg.pt"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    sam2.utils.misc.get_connected_components = connected_components
    fixture_dir = os.path.join(ROOT, "tests", "fixtures", "parity", FLAG_SET)
    with open(os.path.join(fixture_dir, "spec.json")) as f:
        spec = json.load(f)["model"]
    state = torch.load(os.path.join(fixture_dir, "model.pt"), weights_only=True)["model"]
    state = {k: v.float() for k, v in state.items()}
    model = make_fixtures.build_model(spec, state, SAM2Base, **make_fixtures.POSTPROCESS["image"])
    image = make_scene(SCENE["seed"], SCENE["index"], width=SCENE["width"], height=SCENE["height"], frames=1)
    image = image.render(0).rgb
    cases = []
    for name, kwargs in CASES:
        cases.append(run_case(model, image, name, kwargs))
        print(f"{name:18s} {cases[-1]['shape'][0]:4d} masks  {cases[-1]['seconds']:.2f} s")
    grids = {(32, 0, 1), (16, 2, 2), (12, 1, 3), (7, 1, 1)}
    crops = {(96, 160, 1, 512 / 1500), (96, 160, 2, 512 / 1500), (1080, 1920, 3, 0.25), (333, 97, 2, 0.5)}
    torch.save(
        {
            "image": torch.from_numpy(image),
            "defaults": {
                name: p.default
                for name, p in inspect.signature(SAM2AutomaticMaskGenerator).parameters.items()
                if isinstance(p.default, (bool, int, float))
            },
            "scene": SCENE,
            "flag_set": FLAG_SET,
            "cases": cases,
            "point_grids": {
                f"{n},{layers},{scale}": [torch.from_numpy(g) for g in build_all_layer_point_grids(n, layers, scale)]
                for n, layers, scale in sorted(grids)
            },
            "crop_boxes": {
                f"{h},{w},{layers},{ratio!r}": generate_crop_boxes((h, w), layers, ratio)
                for h, w, layers, ratio in sorted(crops)
            },
            "nms": nms_cases(),
        },
        args.out,
    )
    print(f"{os.path.getsize(args.out)} bytes  {args.out}")


if __name__ == "__main__":
    main()
