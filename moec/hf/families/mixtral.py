"""Mixtral (``model_type`` mixtral, MixtralForCausalLM): every layer MoE, softmax top-k routing renormalised
over the chosen experts, an optional uniform sliding window. Released checkpoints name the MoE block
``block_sparse_moe`` and the experts' matrices ``w1``/``w3``/``w2``.
"""

from __future__ import annotations

from typing import Any

from moec.hf.draft import Draft, Family, HFConfig
from moec.hf.families._common import aux, base, defaults, gqa, jitter_on_hidden, moe_core, router, uniform_window
from moec.hf.families._export_common import export_base, export_moe_common, moe_plan, uniform_window_of
from moec.hf.mapper import Mapper
from moec.spec.plan import ResolvedModel

# fmt: off
DEFAULTS = defaults(1e6, vocab_size=32000, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                    num_attention_heads=32, num_key_value_heads=8, head_dim=None, max_position_embeddings=131072,
                    rms_norm_eps=1e-5, sliding_window=None, num_experts_per_tok=2, num_local_experts=8,
                    router_aux_loss_coef=0.001, router_jitter_noise=0.0)
# fmt: on


def translate(c: HFConfig, d: Draft) -> None:
    base(c, d, "Mixtral")
    gqa(c, d, bias=False, out_bias=False, bias_src="MixtralAttention has no biases")
    uniform_window(c, d)
    moe_core(c, d, experts_key="num_local_experts", width_key="intermediate_size")
    router(
        d,
        "MixtralTopKRouter: softmax over all experts, top-k, renormalise",
        score="softmax",
        softmax_after_topk=False,
        normalize_topk=True,
    )
    jitter_on_hidden(c, d, "router_jitter_noise")
    aux(c, d)
    d.ffn_note = "every Mixtral layer is MoE"


def export(m: ResolvedModel) -> dict[str, Any]:
    cfg = export_base(m, FAMILY)
    e = moe_plan(m, all_layers=True)
    cfg.update(
        intermediate_size=e.d_ff,
        num_local_experts=e.n_experts,
        sliding_window=uniform_window_of(m),
        router_jitter_noise=0.0,
    )
    export_moe_common(cfg, e)
    return cfg


class MixtralMapper(Mapper):
    moe_blocks = ("block_sparse_moe.", "mlp.")  # released checkpoints: block_sparse_moe.experts.{e}.w1/w2/w3


FAMILY = Family(
    "mixtral",
    "MixtralForCausalLM",
    DEFAULTS,
    translate,
    aliases={"num_experts": "num_local_experts"},
    export=export,
    export_rank=10,
    mapper=MixtralMapper,
)
