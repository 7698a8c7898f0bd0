"""Solar Open (``model_type`` solar_open, SolarOpenForCausalLM; Upstage's Solar-Open-100B): Llama's attention with
biases on q, k and v only (attention_bias; o_proj never has one) and rotary positions over whole heads, GLM-4.5's
MoE on every layer (DeepSeek-V3's router: sigmoid scores, a selection-only bias, top-2-sum groups, optional
renormalisation, a routed scale; shared experts fused into one MLP). Checkpoints use transformers' common names
(the base Mapper).

SolarOpenConfig drops GLM-4.5's intermediate_size, first_k_dense_replace and use_qk_norm, which the release config
still carries: transformers ignores them. intermediate_size sizes nothing transformers builds (named as ignored
beside the experts' width); first_k_dense_replace and use_qk_norm are accepted when they say what transformers
builds (0, false) and refused as ambiguous otherwise, since GLM-4.5's code, which ports of Solar Open run, would
obey them.
"""

from __future__ import annotations

from moec.hf.draft import Draft, Family, HFConfig, shown
from moec.hf.families._common import base, defaults, gqa, ignored_field_agrees
from moec.hf.families.glm4_moe import glm4_moe_block, take_partial_rotary

# fmt: off
DEFAULTS = defaults(1e6, vocab_size=196608, hidden_size=4096, num_hidden_layers=48, num_attention_heads=64,
                    num_key_value_heads=8, head_dim=128, max_position_embeddings=131072, rms_norm_eps=1e-5,
                    attention_bias=False, moe_intermediate_size=1280, num_experts_per_tok=8, n_shared_experts=1,
                    n_routed_experts=128, routed_scaling_factor=1.0, n_group=1, topk_group=1, norm_topk_prob=True)
# fmt: on

# GLM-4.5 fields SolarOpenConfig deletes, with the value that says what transformers' SolarOpen builds
_GLM_FIELDS = {"first_k_dense_replace": 0, "use_qk_norm": False}


def translate(c: HFConfig, d: Draft) -> None:
    factor, factor_src = take_partial_rotary(c, None)
    base(c, d, "SolarOpen")
    if factor is not None and factor != 1.0:
        d.gap(
            factor_src,
            factor,
            "SolarOpenAttention rotates whole heads (Llama's apply_rotary_pos_emb) while its rotary tables would "
            "cover only part of each: transformers' forward fails on it",
            "none: remove partial_rotary_factor or set it to 1.0",
        )
    elif factor is not None:
        d.put("model.positions.kind", "rope", f"SolarOpen uses rotary positions ({factor_src} 1.0: whole heads)")
    b = c.bool("attention_bias")
    gqa(c, d, bias=b, out_bias=False, bias_src=c.src("attention_bias") + " (q, k and v; o_proj has none)")
    glm4_moe_block(c, d, "SolarOpen")
    d.ffn_note = "SolarOpenDecoderLayer: MoE on every layer"
    width = c.value("intermediate_size")
    if width is not None:
        d.put("moe.d_ff", d.get("moe.d_ff"), f"{c.src('moe_intermediate_size')} (intermediate_size {shown(width)}: "
              "SolarOpenConfig drops it, nothing has that width; ignored)")  # fmt: skip
    _glm_fields(c, d)


def _glm_fields(c: HFConfig, d: Draft) -> None:
    for key, what in _GLM_FIELDS.items():
        ambiguity = (
            f"transformers' SolarOpen ignores {key} and builds what {shown(what)} says, while GLM-4.5's code "
            "obeys it: ambiguous"
        )
        if not ignored_field_agrees(c, d, key, what, ambiguity):
            continue
        if key == "use_qk_norm":
            d.put("attention.qk_norm", False, "use_qk_norm false: agrees (transformers ignores it)")
        else:
            d.ffn_note += " (first_k_dense_replace 0: agrees; transformers ignores it)"


FAMILY = Family(
    "solar_open", "SolarOpenForCausalLM", DEFAULTS, translate, aliases={"num_local_experts": "n_routed_experts"}
)
