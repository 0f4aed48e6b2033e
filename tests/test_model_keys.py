"""The eight presets have exactly the official checkpoints' state-dict keys, shapes and key order."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from masklet.model import PRESETS, ModelSpec, build_model, get_spec

# Copied from ../shared/reference/sam2-checkpoint-keys: every key and shape of the eight official checkpoints.
KEYS_DIR = Path(__file__).parent / "fixtures" / "sam2-checkpoint-keys"
SHOW = 10


def _diff(ours: dict[str, list[int]], ref: dict[str, list[int]]) -> str:
    missing = [k for k in ref if k not in ours]
    unexpected = [k for k in ours if k not in ref]
    shapes = [f"{k}: ours {ours[k]} official {ref[k]}" for k in ref if k in ours and ours[k] != ref[k]]
    lines = []
    for title, items in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", shapes)):
        if items:
            lines.append(f"{len(items)} {title}:")
            lines += [f"  {item}" for item in items[:SHOW]]
            if len(items) > SHOW:
                lines.append(f"  ... and {len(items) - SHOW} more")
    return "\n".join(lines)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_state_dict_matches_official_checkpoint(name: str) -> None:
    ref = json.loads((KEYS_DIR / f"{name}.json").read_text())["shapes"]
    model = build_model(name, device="meta")
    ours = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert ours == ref, f"{name} state dict differs from the official checkpoint:\n{_diff(ours, ref)}"
    assert list(ours) == list(ref), f"{name}: same keys, different order"
    assert all(p.is_meta for p in model.parameters())


def test_presets_are_the_eight_official_models() -> None:
    assert sorted(PRESETS) == sorted(f"sam2{v}_hiera_{s}" for v in ("", ".1") for s in ("t", "s", "b_plus", "l"))
    assert get_spec("sam2.1_hiera_b+") is PRESETS["sam2.1_hiera_b_plus"]
    assert get_spec("sam2_hiera_large") is PRESETS["sam2_hiera_l"]
    with pytest.raises(KeyError, match="unknown model preset"):
        get_spec("sam3_hiera_t")


def test_sam2_and_sam21_differ_only_in_their_four_flags() -> None:
    for size in ("t", "s", "b_plus", "l"):
        a, b = vars(PRESETS[f"sam2_hiera_{size}"]), vars(PRESETS[f"sam2.1_hiera_{size}"])
        differing = {k for k in a if a[k] != b[k]} - {"name"}
        assert differing == {
            "no_obj_embed_spatial",
            "add_tpos_enc_to_obj_ptrs",
            "proj_tpos_enc_in_obj_ptrs",
            "use_signed_tpos_enc_to_obj_ptrs",
        }


def test_build_options() -> None:
    model = build_model("sam2.1_hiera_l", image_size=512, device="meta", apply_postprocessing=False)
    assert model.spec.image_size == 512 and model.sam_prompt_encoder.mask_input_size == (128, 128)
    assert not model.spec.dynamic_multimask_via_stability and not model.spec.binarize_mask_from_pts_for_mem_enc
    model = build_model("sam2_hiera_t", device="meta", dtype=torch.bfloat16)
    assert model.spec.dynamic_multimask_via_stability and model.spec.binarize_mask_from_pts_for_mem_enc
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert not model.training


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"image_size": 1000}, "image_size"),
        ({"mem_dim": 48}, "mem_dim"),
        ({"add_tpos_enc_to_obj_ptrs": False}, "proj_tpos_enc_in_obj_ptrs"),
        ({"use_obj_ptrs_in_encoder": False}, "fixed_no_obj_ptr"),
    ],
)
def test_invalid_specs_are_refused(change: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ModelSpec(**change)
