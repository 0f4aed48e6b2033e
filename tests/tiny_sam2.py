"""A tiny SAM 2.1 model with random weights that behave like a trained model's in the ways tests need:
mask logits and object scores well away from 0, objects that come and go."""

from __future__ import annotations

import math

import torch
from torch import nn

from masklet.model import ModelSpec, SAM2Model, build_model
from masklet.model.layers import LayerNorm2d

TINY = ModelSpec(
    name="tiny",
    image_size=128,
    embed_dim=8,
    num_heads=1,
    stages=(1, 1, 2, 1),
    global_att_blocks=(3,),
    window_spec=(8, 4, 4, 2),
    window_pos_embed_bkg_spatial_size=(4, 4),
    hidden_dim=32,
    mem_dim=16,
    decoder_num_heads=2,
    decoder_mlp_dim=64,
    iou_head_hidden_dim=32,
    memory_attention_layers=2,
    memory_attention_mlp_dim=64,
)
# output layers scaled up (as in tests/parity/make_fixtures.py) and the object-score bias centred
GAINS = {"output_hypernetworks_mlps": 10.0, "pred_obj_score_head.layers.2.weight": 30.0}
OBJ_SCORE_BIAS_SHIFT = 7.5


def tiny_model(apply_postprocessing: bool = True, seed: int = 0) -> SAM2Model:
    """`TINY` with unit-variance random weights (LayerNorms near 1, biases near 0), the same whatever ran
    before: buffers drawn at build time (the prompt encoder's random Fourier matrix) are seeded too."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = build_model(TINY, apply_postprocessing=apply_postprocessing)
    return randomize_(model, seed)


def randomize_(model: SAM2Model, seed: int = 0) -> SAM2Model:
    """Overwrite every parameter in place with seeded unit-variance values, output heads scaled up:
    any preset then gives confident masks and objects that come and go (benchmarks/gpu uses it too)."""
    gen = torch.Generator().manual_seed(seed)
    norms = {id(m.weight) for m in model.modules() if isinstance(m, (nn.LayerNorm, LayerNorm2d))}
    with torch.no_grad():
        for name, p in model.named_parameters():
            n = torch.randn(p.shape, generator=gen)
            if id(p) in norms:
                p.copy_(1 + 0.1 * n)
            elif p.dim() == 1:
                p.copy_(0.1 * n)
            else:
                gain = next((g for key, g in GAINS.items() if key in name and name.endswith("2.weight")), 1.0)
                p.copy_(gain * n / math.sqrt(p[0].numel()))
        model.sam_mask_decoder.pred_obj_score_head.layers[2].bias += OBJ_SCORE_BIAS_SHIFT
    return model
