"""OLMoE (``model_type`` olmoe, OlmoeForCausalLM): every layer MoE, softmax top-k routing, RMSNorm over the
whole q and k projections, optional clipping of q, k and v. Its checkpoints use transformers' common
names (the base Mapper).
"""

from __future__ import annotations

from typing import Any

from moec.hf.draft import CannotExport, Draft, Family, HFConfig
from moec.hf.families._common import aux, base, clip_qkv, defaults, gqa, moe_core, router, window_ignored
from moec.hf.families._export_common import export_base, export_moe_common, moe_plan, uniform_window_of
from moec.spec.plan import ResolvedModel

# fmt: off
DEFAULTS = defaults(10000.0, vocab_size=50304, hidden_size=2048, intermediate_size=2048, num_hidden_layers=16,
                    num_attention_heads=16, num_key_value_heads=None, max_position_embeddings=4096, rms_norm_eps=1e-5,
                    attention_bias=False, clip_qkv=None, num_experts_per_tok=8, num_experts=64,
                    router_aux_loss_coef=0.01, norm_topk_prob=False)
# fmt: on


def translate(c: HFConfig, d: Draft) -> None:
    base(c, d, "OLMoE")
    b = c.bool("attention_bias")
    gqa(c, d, bias=b, out_bias=b, bias_src=c.src("attention_bias"), qk_norm=True)
    d.put("attention.qk_norm", True, "OlmoeAttention: q_norm, k_norm")
    d.put("attention.qk_norm_scope", "projection", "RMSNorm(hidden_size) on q, RMSNorm(kv·head_dim) on k, whole")
    clip_qkv(c, d, "clip_qkv")
    # OlmoeModel builds one full causal mask and its attention passes no window: a window in the config
    # does nothing in transformers, and would in a model that honours it, so it is refused as ambiguous
    window_ignored(c, d, "OLMoE")
    olmoe_moe(c, d, "Olmoe", "OLMoE")


def olmoe_moe(c: HFConfig, d: Draft, cls: str, family: str) -> None:
    """OLMoE's MoE on every layer, FlexOlmo's too (``cls`` names the router class, ``family`` the model):
    softmax over all experts, top-k, renormalised when norm_topk_prob says so."""
    moe_core(c, d, experts_key="num_experts", width_key="intermediate_size")
    router(d, f"{cls}TopKRouter: softmax over all experts, top-k", score="softmax", softmax_after_topk=False)
    d.put("moe.router.normalize_topk", c.bool("norm_topk_prob"), c.src("norm_topk_prob"))
    aux(c, d)
    d.ffn_note = f"every {family} layer is MoE"


def export(m: ResolvedModel) -> dict[str, Any]:
    cfg = export_base(m, FAMILY)
    a, e = m.layers[0].attention, moe_plan(m, all_layers=True)
    if a.n_heads * a.head_dim != m.d_model:
        raise CannotExport("derives head_dim as hidden_size / heads (its q_norm spans hidden_size)")
    if uniform_window_of(m) is not None:
        raise CannotExport("has no sliding window (transformers' OLMoE ignores sliding_window)")
    cfg.pop("head_dim")
    cfg.update(
        intermediate_size=e.d_ff,
        num_experts=e.n_experts,
        norm_topk_prob=e.router.normalize_topk,
        attention_bias=a.bias,
        clip_qkv=a.clip_qkv,
    )
    export_moe_common(cfg, e)
    return cfg


FAMILY = Family(
    "olmoe",
    "OlmoeForCausalLM",
    DEFAULTS,
    translate,
    aliases={"num_local_experts": "num_experts"},
    export=export,
    export_rank=70,
)
