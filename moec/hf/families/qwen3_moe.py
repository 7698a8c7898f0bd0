"""Qwen3-MoE (``model_type`` qwen3_moe, Qwen3MoeForCausalLM): softmax top-k routing, optionally
renormalised, RMSNorm on each head's q and k, no shared expert, dense layers where mlp_only_layers or
decoder_sparse_step say. Its checkpoints use transformers' common names (the base Mapper).
"""

from __future__ import annotations

from typing import Any

from moec.hf.draft import Draft, Family, HFConfig
from moec.hf.families._common import base, defaults, gqa, moe_core, qwen_moe_ffn, router, uniform_window
from moec.hf.families._export_common import export_qwen_moe, uniform_window_of
from moec.hf.families.hy_v3 import equals, ignored
from moec.spec.plan import ResolvedModel

# fmt: off
DEFAULTS = defaults(10000.0, vocab_size=151936, hidden_size=2048, intermediate_size=6144, num_hidden_layers=24,
                    num_attention_heads=32, num_key_value_heads=4, max_position_embeddings=32768,
                    rms_norm_eps=1e-6, attention_bias=False, use_sliding_window=False, sliding_window=4096,
                    decoder_sparse_step=1, moe_intermediate_size=768, num_experts_per_tok=8, num_experts=128,
                    norm_topk_prob=False, router_aux_loss_coef=0.001, mlp_only_layers=None)
# fmt: on


def translate(c: HFConfig, d: Draft) -> None:
    base(c, d, "Qwen3-MoE")
    b = c.bool("attention_bias")
    gqa(c, d, bias=b, out_bias=b, bias_src=c.src("attention_bias"), qk_norm=True)
    d.put("attention.qk_norm", True, "Qwen3MoeAttention: RMSNorm(head_dim) on q and k")
    uniform_window(c, d, enabled=c.bool("use_sliding_window"))
    c.value("sliding_window")
    c.value("max_window_layers")  # read by Qwen3MoeConfig, unused by its model
    moe_core(c, d, experts_key="num_experts", width_key="moe_intermediate_size")
    router(d, "Qwen3MoeTopKRouter: softmax over all experts, top-k", score="softmax", softmax_after_topk=False)
    d.put("moe.router.normalize_topk", c.bool("norm_topk_prob"), c.src("norm_topk_prob"))
    qwen_moe_ffn(c, d, "num_experts", bias_src="Qwen3MoeMLP has no biases")
    # Qwen's own release fields (Qwen3-Coder-480B-A35B carries them) that Qwen3MoeConfig keeps and no
    # transformers code reads: named where they agree with the model it builds, refused where they do not
    ignored(c, d, "Qwen3Moe", "qkv_bias", equals(b), "attention.bias")
    ignored(c, d, "Qwen3Moe", "use_qk_norm", equals(True), "attention.qk_norm")
    ignored(c, d, "Qwen3Moe", "shared_expert_intermediate_size", equals(0), "moe.n_experts")


def export(m: ResolvedModel) -> dict[str, Any]:
    cfg, _ = export_qwen_moe(m, FAMILY)
    w = uniform_window_of(m)
    cfg.update(use_sliding_window=w is not None, sliding_window=w, attention_bias=m.layers[0].attention.bias)
    return cfg


FAMILY = Family(
    "qwen3_moe",
    "Qwen3MoeForCausalLM",
    DEFAULTS,
    translate,
    aliases={"num_local_experts": "num_experts"},
    export=export,
    export_rank=20,
)
