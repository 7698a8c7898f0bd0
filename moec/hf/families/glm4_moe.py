"""GLM-4.5 and GLM-4.5-Air (``model_type`` glm4_moe, Glm4MoeForCausalLM): GQA with biases on q, k and v only
(attention_bias; o_proj never has one), an optional RMSNorm over each head's q and k before the rotation
(use_qk_norm), rotary positions on the first partial_rotary_factor of each head (0.5 unless the config says
otherwise, Glm4MoeConfig's default); DeepSeek-V3's MoE (sigmoid scores, a selection-only bias, top-2-sum groups,
optional renormalisation, a routed scale, shared experts fused into one MLP) from first_k_dense_replace on.
Checkpoints use transformers' common names (the base Mapper), plus the multi-token-prediction layer that the
releases store as one more decoder layer (``model.layers.46.*`` in GLM-4.5-Air, ``.92.*`` in GLM-4.5):
transformers builds no MTP layer and lets those tensors go on load, and so does moec.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from moec.hf.draft import Draft, Family, HFConfig, is_number, shown
from moec.hf.families._common import base, defaults, dense_layers_ffn, gqa, moe_core, shared_experts
from moec.hf.families.dots1 import deepseek_v3_router
from moec.hf.mapper import Mapper
from moec.hf.rope import rope_field

if TYPE_CHECKING:
    from moec.hf.checkpoint import Checkpoint
    from moec.spec.plan import ResolvedModel

# fmt: off
DEFAULTS = defaults(10000.0, vocab_size=151552, hidden_size=4096, intermediate_size=10944, num_hidden_layers=46,
                    num_attention_heads=96, num_key_value_heads=8, max_position_embeddings=131072,
                    rms_norm_eps=1e-5, attention_bias=False, moe_intermediate_size=1408, num_experts_per_tok=8,
                    n_shared_experts=1, n_routed_experts=128, routed_scaling_factor=1.0, n_group=1, topk_group=1,
                    first_k_dense_replace=1, norm_topk_prob=True, use_qk_norm=False, num_nextn_predict_layers=1)
# fmt: on

# Glm4MoeConfig.__post_init__ sets it when the config gives none ("assign default for BC")
DEFAULT_PARTIAL_ROTARY = 0.5
_PARTIAL = "partial_rotary_factor"


def translate(c: HFConfig, d: Draft) -> None:
    factor, factor_src = take_partial_rotary(
        c, DEFAULT_PARTIAL_ROTARY, f"{_PARTIAL} unset: {DEFAULT_PARTIAL_ROTARY} (Glm4MoeConfig's default)"
    )
    base(c, d, "Glm4Moe")
    if factor is not None:
        d.put("model.positions.partial_rotary_factor", factor, factor_src)
    b = c.bool("attention_bias")
    gqa(c, d, bias=b, out_bias=False, bias_src=c.src("attention_bias") + " (q, k and v; o_proj has none)")
    qk = c.bool("use_qk_norm")
    d.put(
        "attention.qk_norm",
        qk,
        c.src("use_qk_norm") + (" (RMSNorm(head_dim) on q and k, before the rotation)" if qk else ""),
    )
    glm4_moe_block(c, d, "Glm4Moe")
    k_dense = c.int("first_k_dense_replace", minimum=0)
    d.ffn = ["dense" if i < k_dense else "moe" for i in range(d.n_layers)]
    d.ffn_note = f"Glm4MoeDecoderLayer: MoE from layer first_k_dense_replace ({k_dense}) on"
    dense_layers_ffn(c, d, bias_src="Glm4MoeMLP has no biases")
    mtp_not_built(c, d, optional=False)


def mtp_not_built(c: HFConfig, d: Draft, optional: bool = True) -> None:
    """num_nextn_predict_layers (GLM-4.5's, GLM-4.7-Flash's and K-EXAONE's), reported beside the layer count:
    transformers builds no MTP layer (and drops its tensors), so moec imports none."""
    mtp = c.int("num_nextn_predict_layers", minimum=0, optional=optional)
    if mtp:
        d.put("model.n_layers", d.n_layers, f"{c.src('num_hidden_layers')}; num_nextn_predict_layers {mtp}: "
              "transformers builds none (ignored)")  # fmt: skip


def glm4_moe_block(c: HFConfig, d: Draft, cls: str) -> None:
    """Glm4MoeMoE (which SolarOpen reuses; ``cls`` names the family's classes): the routed experts, DeepSeek-V3's
    router with the config's group counts, and the shared experts fused into one MLP."""
    moe_core(c, d, experts_key="n_routed_experts", width_key="moe_intermediate_size")
    deepseek_v3_router(c, d, f"{cls}TopkRouter")
    d.put("moe.router.n_groups", c.int("n_group"), c.src("n_group"))
    d.put("moe.router.topk_groups", c.int("topk_group"), c.src("topk_group"))
    shared_experts(c, d, "n_shared_experts", f" ({cls}MoE fuses them into one MLP of n·width)")


def take_partial_rotary(c: HFConfig, default: float | None, default_src: str = "") -> tuple[Any, str]:
    """The rotated fraction of each head and its source, taken out of the rope fields before the shared rope
    reader sees them (it refuses the factor for families whose attention rotates whole heads). The rotary
    embeddings of GLM-4.5 and the families built on it read it from rope_parameters, where transformers moves a
    top-level one; when both are given they must agree. Neither given: ``default`` (None: none given)."""
    nested_key = rope_field(c)
    nested = c.raw.get(nested_key)
    inner = None
    if isinstance(nested, dict) and _PARTIAL in nested:
        inner = nested[_PARTIAL]
        c.raw[nested_key] = {k: v for k, v in nested.items() if k != _PARTIAL}  # a copy: the caller's stays
    top = c.value(_PARTIAL) if c.given(_PARTIAL) else None
    c.raw.pop(_PARTIAL, None)  # read here (above), so not again by the rope reader
    if inner is not None and top is not None and inner != top:
        c.bad(_PARTIAL, f"{shown(top)} disagrees with {nested_key}.{_PARTIAL} ({shown(inner)}): ambiguous")
        return None, ""
    factor, src = (inner, f"{nested_key}.{_PARTIAL}") if inner is not None else (top, _PARTIAL)
    if factor is None:
        return default, default_src
    if not is_number(factor) or not 0 < factor <= 1:
        c.bad(src.split(" ")[0], f"{shown(factor)}: expected a number in (0, 1]")
        return None, ""
    return float(factor), src


class Glm4MoeMapper(Mapper):
    """The base names, and the release's MTP layer let go as transformers does
    (Glm4MoePreTrainedModel._keys_to_ignore_on_load_unexpected: ``model.layers.92.*`` and ``.46.*``, the layer
    after the last of GLM-4.5 and of GLM-4.5-Air)."""

    def __init__(self, ck: Checkpoint, plan: ResolvedModel):
        super().__init__(ck, plan)
        extra = [f"model.layers.{i}." for i in (46, 92) if i >= len(plan.layers)]
        ck.used.update(n for n in ck.file_of if n.startswith(tuple(extra)))


FAMILY = Family(
    "glm4_moe",
    "Glm4MoeForCausalLM",
    DEFAULTS,
    translate,
    aliases={"num_local_experts": "n_routed_experts", "num_mtp_layers": "num_nextn_predict_layers"},
    mapper=Glm4MoeMapper,
)
