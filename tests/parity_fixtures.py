"""The parity fixtures of tests/fixtures/parity (made by tests/parity/make_fixtures.py): our specs for
them, and how to read what the script stores compressed."""

from __future__ import annotations

import json
import zlib
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from masklet.model import ModelSpec

FIXTURES = Path(__file__).parent / "fixtures" / "parity"


def spec_from_fixture(flag_set: str) -> ModelSpec:
    """Our spec for the official constructor arguments recorded in spec.json."""
    meta = json.loads((FIXTURES / flag_set / "spec.json").read_text())
    m, hard = meta["model"], meta["hard_coded"]["sam_mask_decoder"]
    trunk, layer = m["image_encoder"]["trunk"], m["memory_attention"]["layer"]
    return ModelSpec(
        name=f"parity-{flag_set}",
        image_size=m["image_size"],
        embed_dim=trunk["embed_dim"],
        num_heads=trunk["num_heads"],
        stages=tuple(trunk["stages"]),
        global_att_blocks=tuple(trunk["global_att_blocks"]),
        window_spec=tuple(trunk["window_spec"]),
        window_pos_embed_bkg_spatial_size=tuple(trunk["window_pos_embed_bkg_spatial_size"]),
        hidden_dim=m["memory_attention"]["d_model"],
        mem_dim=m["memory_encoder"]["out_dim"],
        decoder_num_heads=hard["transformer"]["num_heads"],
        decoder_mlp_dim=hard["transformer"]["mlp_dim"],
        iou_head_hidden_dim=hard["iou_head_hidden_dim"],
        memory_attention_layers=m["memory_attention"]["num_layers"],
        memory_attention_heads=layer["self_attention"]["num_heads"],
        memory_attention_mlp_dim=layer["dim_feedforward"],
        num_maskmem=m["num_maskmem"],
        max_obj_ptrs_in_encoder=m["max_obj_ptrs_in_encoder"],
        no_obj_embed_spatial=m["no_obj_embed_spatial"],
        add_tpos_enc_to_obj_ptrs=m["add_tpos_enc_to_obj_ptrs"],
        proj_tpos_enc_in_obj_ptrs=m["proj_tpos_enc_in_obj_ptrs"],
        use_signed_tpos_enc_to_obj_ptrs=m["use_signed_tpos_enc_to_obj_ptrs"],
    )


def inflate(packed: dict[str, Any]) -> Tensor:
    """A float32 tensor the fixture script stored zlib-compressed ({"zlib": uint8 bytes, "shape"})."""
    data = bytearray(zlib.decompress(bytes(packed["zlib"].numpy())))
    return torch.frombuffer(data, dtype=torch.float32).reshape(packed["shape"])
