"""Granite-MoE (``model_type`` granitemoe, GraniteMoeForCausalLM): every layer MoE, top-k of the router
logits then softmax over the k, and the μP scalars (embedding, residual and logits multipliers, the
attention scale). Released checkpoints stack the experts as ``input_linear`` / ``output_linear``.
"""

from __future__ import annotations

import math
from typing import Any

from moec.hf.draft import Draft, Family, HFConfig
from moec.hf.families._common import aux, base, defaults, gqa, moe_core, router
from moec.hf.families._export_common import export_base, export_moe_common, moe_plan
from moec.hf.mapper import Mapper
from moec.spec.plan import ResolvedModel

# fmt: off
DEFAULTS = defaults(10000.0, vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                    num_attention_heads=32, num_key_value_heads=None, max_position_embeddings=2048,
                    rms_norm_eps=1e-6, attention_bias=False, embedding_multiplier=1.0, logits_scaling=1.0,
                    residual_multiplier=1.0, attention_multiplier=1.0, num_local_experts=8,
                    num_experts_per_tok=2, router_aux_loss_coef=0.001)
# fmt: on


def translate(c: HFConfig, d: Draft) -> None:
    base(c, d, "Granite-MoE")
    b = c.bool("attention_bias")
    gqa(c, d, bias=b, out_bias=b, bias_src=c.src("attention_bias") + " (q, k, v and o)")
    for k in ("embedding_multiplier", "residual_multiplier", "logits_scaling"):
        v = c.float(k)
        if v != 1.0:  # GraniteMoeModel / DecoderLayer / ForCausalLM (μP scalars)
            d.put(f"model.{k}", v, c.src(k))
    am = c.float("attention_multiplier")
    hd = d.get("attention.head_dim")
    # GraniteMoeAttention.scaling = attention_multiplier; the standard 1/sqrt(head_dim) stays implicit
    if hd < 1 or not math.isclose(am, hd**-0.5, rel_tol=1e-12):  # hd 0: d_model < heads, refused later
        d.put("attention.scale", am, c.src("attention_multiplier") + " (softmax scale)")
    moe_core(c, d, experts_key="num_local_experts", width_key="intermediate_size")
    router(
        d,
        "GraniteMoeTopKRouter: top-k of the logits, softmax over the k",
        score="softmax",
        softmax_after_topk=True,
        normalize_topk=False,
    )
    aux(c, d)
    d.ffn_note = "every Granite-MoE layer is MoE"


def export(m: ResolvedModel) -> dict[str, Any]:
    cfg = export_base(m, FAMILY)
    e = moe_plan(m, all_layers=True)
    a = m.layers[0].attention
    cfg.update(
        intermediate_size=e.d_ff,
        num_local_experts=e.n_experts,
        attention_bias=a.bias,
        embedding_multiplier=m.embedding_multiplier,
        residual_multiplier=m.residual_multiplier,
        logits_scaling=m.logits_scaling,
        attention_multiplier=a.scale if a.scale is not None else 1.0 / a.head_dim**0.5,
    )
    export_moe_common(cfg, e)
    return cfg


class GraniteMoeMapper(Mapper):
    moe_blocks = ("block_sparse_moe.",)
    routers = ("router.layer.", "router.")  # released: router.layer.weight; transformers 5: router.weight


FAMILY = Family(
    "granitemoe",
    "GraniteMoeForCausalLM",
    DEFAULTS,
    translate,
    export=export,
    export_rank=60,
    mapper=GraniteMoeMapper,
)
