"""Phi-MoE (``model_type`` phimoe, PhimoeForCausalLM; Phi-3.5-MoE): every layer MoE, SparseMixer top-2
routing, LayerNorm with bias, a biased lm_head. Checkpoints name the MoE block and the experts as
Mixtral's do.
"""

from __future__ import annotations

from typing import Any

from moec.hf.draft import Draft, Family, HFConfig
from moec.hf.families._common import aux, base, defaults, dropout, gqa, moe_core, router, uniform_window
from moec.hf.families._export_common import export_base, export_moe_common, moe_plan, uniform_window_of
from moec.hf.families.mixtral import MixtralMapper
from moec.spec.plan import ResolvedModel

# fmt: off
DEFAULTS = defaults(1e6, vocab_size=32064, hidden_size=4096, intermediate_size=6400, num_hidden_layers=32,
                    num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=131072, rms_norm_eps=1e-5,
                    sliding_window=None, num_experts_per_tok=2, num_local_experts=16, router_aux_loss_coef=0.001,
                    router_jitter_noise=0.01, input_jitter_noise=0.0, attention_bias=False, lm_head_bias=False)
# fmt: on


def translate(c: HFConfig, d: Draft) -> None:
    base(c, d, "Phi-MoE", norm="layernorm")
    b = c.bool("attention_bias")
    gqa(c, d, bias=b, out_bias=b, bias_src=c.src("attention_bias") + " (q, k, v and o)")
    uniform_window(c, d)
    dropout(c, d, "hidden_dropout")
    moe_core(c, d, experts_key="num_local_experts", width_key="intermediate_size")
    router(
        d,
        "PhimoeTopKRouter: sparsemixer top-2",
        kind="sparsemixer",
        score="softmax",
        softmax_after_topk=False,
        normalize_topk=False,
    )
    d.put("moe.router.sparsemixer_eps", c.float("router_jitter_noise"), c.src("router_jitter_noise") + " (its eps)")
    if c.value("num_experts_per_tok") != 2:
        c.bad("num_experts_per_tok", "PhimoeTopKRouter's sparsemixer always picks 2 experts")
    # multiplicative U(1±j) noise on the hidden state, in training only; SparseMixer's own training path
    # (Gumbel sampling, Heun's gradient estimator) is not implemented: moec trains with the inference routing
    j = c.float("input_jitter_noise", optional=True)
    if j:
        d.training_only.append(f"input_jitter_noise {j!r}")
    d.training_only.append("SparseMixer's training-time sampling (moec routes as at inference)")
    d.put("model.head_bias", c.bool("lm_head_bias"), c.src("lm_head_bias"))
    aux(c, d)
    d.ffn_note = "every Phi-MoE layer is MoE"


def export(m: ResolvedModel) -> dict[str, Any]:
    cfg = export_base(m, FAMILY, norm="layernorm")
    a, e = m.layers[0].attention, moe_plan(m, all_layers=True)
    cfg.update(
        intermediate_size=e.d_ff,
        num_local_experts=e.n_experts,
        sliding_window=uniform_window_of(m),
        attention_bias=a.bias,
        lm_head_bias=m.head_bias,
        router_jitter_noise=e.router.sparsemixer_eps,
        input_jitter_noise=0.0,
    )
    export_moe_common(cfg, e)
    return cfg


# block_sparse_moe.gate and experts.{e}.w1/w2/w3, as Mixtral
FAMILY = Family(
    "phimoe", "PhimoeForCausalLM", DEFAULTS, translate, export=export, export_rank=110, mapper=MixtralMapper
)
