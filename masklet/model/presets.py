"""Hyper-parameters of the SAM 2 / SAM 2.1 models: a frozen `ModelSpec` and the eight official presets.

Values come from the official configs (`sam2/configs/sam2{,.1}/sam2{,.1}_hiera_{t,s,b+,l}.yaml`) and
the constants of the official builders. What the configs never vary (FPN levels, q-pooling, the
mask down-sampler, RoPE and position flags of memory attention, `directly_add_no_mem_embed=True`,
...) is fixed in the modules. Widths are fields so tests can build tiny models.

SAM 2.1 differs from SAM 2 only in four flags: `no_obj_embed_spatial`, `add_tpos_enc_to_obj_ptrs`,
`proj_tpos_enc_in_obj_ptrs` and `use_signed_tpos_enc_to_obj_ptrs`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass


@dataclass(frozen=True)
class ModelSpec:
    """Everything that decides a SAM 2 model's parameters and its behaviour. Defaults: sam2.1_hiera_t."""

    name: str = "custom"
    image_size: int = 1024  # square input side; the image embedding is image_size / 16

    # Hiera trunk
    embed_dim: int = 96
    num_heads: int = 1
    stages: tuple[int, ...] = (1, 2, 7, 2)
    global_att_blocks: tuple[int, ...] = (5, 7, 9)
    window_spec: tuple[int, ...] = (8, 4, 14, 7)
    window_pos_embed_bkg_spatial_size: tuple[int, int] = (7, 7)

    # widths of the heads and of the memory
    hidden_dim: int = 256  # FPN / prompt / decoder / memory-attention width
    mem_dim: int = 64  # memory features; object pointers are split into hidden_dim / mem_dim tokens
    decoder_num_heads: int = 8
    decoder_mlp_dim: int = 2048
    iou_head_hidden_dim: int = 256
    memory_attention_layers: int = 4
    memory_attention_heads: int = 1
    memory_attention_mlp_dim: int = 2048
    rope_theta: float = 10000.0
    num_maskmem: int = 7  # memory frames attended: 1 conditioning slot + 6 previous frames

    # SAM heads
    use_high_res_features_in_sam: bool = True
    iou_prediction_use_sigmoid: bool = True
    pred_obj_scores: bool = True
    pred_obj_scores_mlp: bool = True
    use_multimask_token_for_obj_ptr: bool = True
    # multimask on the first click(s) of conditioning frames (and, with the flag, while tracking)
    multimask_output_in_sam: bool = True
    multimask_output_for_tracking: bool = True
    multimask_min_pt_num: int = 0
    multimask_max_pt_num: int = 1

    # memory encoding of a predicted mask: sigmoid(logits) * scale + bias
    sigmoid_scale_for_mem_enc: float = 20.0
    sigmoid_bias_for_mem_enc: float = -10.0
    use_mask_input_as_output_without_sam: bool = True
    no_obj_embed_spatial: bool = True  # SAM 2.1

    # object pointers
    use_obj_ptrs_in_encoder: bool = True
    max_obj_ptrs_in_encoder: int = 16
    add_tpos_enc_to_obj_ptrs: bool = True  # SAM 2.1
    proj_tpos_enc_in_obj_ptrs: bool = True  # SAM 2.1
    use_signed_tpos_enc_to_obj_ptrs: bool = True  # SAM 2.1
    only_obj_ptrs_in_the_past_for_eval: bool = True
    fixed_no_obj_ptr: bool = True
    use_mlp_for_obj_ptr_proj: bool = True

    # post-processing the official builders switch on with `apply_postprocessing=True`
    dynamic_multimask_via_stability: bool = False
    dynamic_multimask_stability_delta: float = 0.05
    dynamic_multimask_stability_thresh: float = 0.98
    binarize_mask_from_pts_for_mem_enc: bool = False

    def __post_init__(self) -> None:
        problems = []
        if len(self.stages) != 4 or len(self.window_spec) != 4:
            problems.append("stages and window_spec need 4 entries (strides 4, 8, 16, 32)")
        if self.image_size % 32 or (self.image_size // 4) % self.window_spec[0]:
            problems.append(
                f"image_size {self.image_size} must be a multiple of 32 and of 4 * window_spec[0]"
                f" = {4 * self.window_spec[0]}"
            )
        if self.hidden_dim % 8:
            problems.append("hidden_dim must be a multiple of 8 (mask upscaling uses hidden_dim / 8)")
        if self.mem_dim > self.hidden_dim or self.hidden_dim % self.mem_dim:
            problems.append("mem_dim must divide hidden_dim (object pointers are split into mem_dim tokens)")
        if self.proj_tpos_enc_in_obj_ptrs and not self.add_tpos_enc_to_obj_ptrs:
            problems.append("proj_tpos_enc_in_obj_ptrs needs add_tpos_enc_to_obj_ptrs")
        if self.fixed_no_obj_ptr and not (self.pred_obj_scores and self.use_obj_ptrs_in_encoder):
            problems.append("fixed_no_obj_ptr needs pred_obj_scores and use_obj_ptrs_in_encoder")
        if problems:
            raise ValueError(f"invalid ModelSpec {self.name!r}: " + "; ".join(problems))

    @property
    def image_embedding_size(self) -> int:
        """Side of the stride-16 image embedding (64 at 1024)."""
        return self.image_size // 16

    def with_postprocessing(self) -> ModelSpec:
        """The spec as the official builders' `apply_postprocessing=True` leaves it."""
        return dataclasses.replace(
            self,
            dynamic_multimask_via_stability=True,
            dynamic_multimask_stability_delta=0.05,
            dynamic_multimask_stability_thresh=0.98,
            binarize_mask_from_pts_for_mem_enc=True,
        )


_TRUNKS = {
    "t": dict(embed_dim=96, num_heads=1, stages=(1, 2, 7, 2), global_att_blocks=(5, 7, 9)),
    "s": dict(embed_dim=96, num_heads=1, stages=(1, 2, 11, 2), global_att_blocks=(7, 10, 13)),
    "b_plus": dict(
        embed_dim=112,
        num_heads=2,
        stages=(2, 3, 16, 3),
        global_att_blocks=(12, 16, 20),
        window_pos_embed_bkg_spatial_size=(14, 14),
    ),
    "l": dict(
        embed_dim=144, num_heads=2, stages=(2, 6, 36, 4), global_att_blocks=(23, 33, 43), window_spec=(8, 4, 16, 8)
    ),
}

_SAM2_FLAGS = dict(
    no_obj_embed_spatial=False,
    add_tpos_enc_to_obj_ptrs=False,
    proj_tpos_enc_in_obj_ptrs=False,
    use_signed_tpos_enc_to_obj_ptrs=False,
)

PRESETS: dict[str, ModelSpec] = {}
for _size, _trunk in _TRUNKS.items():
    PRESETS[f"sam2_hiera_{_size}"] = ModelSpec(name=f"sam2_hiera_{_size}", **_trunk, **_SAM2_FLAGS)
    PRESETS[f"sam2.1_hiera_{_size}"] = ModelSpec(name=f"sam2.1_hiera_{_size}", **_trunk)

# masklet's own small model, trained on the synthetic corpus (masklet/model/weights/, docs/demo-model.md):
# a quarter of the tiny preset's widths at image_size 256, so it trains and runs on a laptop CPU
DEMO_SPEC = ModelSpec(
    name="masklet_demo",
    image_size=256,
    embed_dim=24,
    num_heads=1,
    stages=(1, 2, 3, 1),
    global_att_blocks=(5,),
    window_spec=(8, 4, 8, 4),
    hidden_dim=64,
    mem_dim=32,
    decoder_num_heads=4,
    decoder_mlp_dim=256,
    iou_head_hidden_dim=64,
    memory_attention_layers=2,
    memory_attention_mlp_dim=256,
)
OWN_PRESETS: dict[str, ModelSpec] = {DEMO_SPEC.name: DEMO_SPEC}

# the official checkpoint / config spellings of the sizes
_ALIASES = {"tiny": "t", "small": "s", "b+": "b_plus", "base_plus": "b_plus", "large": "l"}


def get_spec(name: str) -> ModelSpec:
    """The preset called `name`: `sam2[.1]_hiera_{t,s,b_plus,l}` (also `b+`, `tiny`, `base_plus`, ...) or
    one of masklet's own (`masklet_demo`)."""
    if name in OWN_PRESETS:
        return OWN_PRESETS[name]
    version, _, size = name.rpartition("_")
    key = f"{version}_{_ALIASES.get(size, size)}"
    if key not in PRESETS:
        raise KeyError(f"unknown model preset {name!r}; known: {', '.join([*PRESETS, *OWN_PRESETS])}")
    return PRESETS[key]
