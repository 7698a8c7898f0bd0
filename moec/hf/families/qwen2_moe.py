"""Qwen2-MoE (``model_type`` qwen2_moe, Qwen2MoeForCausalLM): softmax top-k routing, one shared expert
scaled by a sigmoid gate, dense layers where mlp_only_layers or decoder_sparse_step say, q/k/v biases and
sliding windows on the layers layer_types names. Checkpoints name the shared expert ``shared_expert``.
"""

from __future__ import annotations

from typing import Any

from moec.hf.draft import Draft, Family, HFConfig
from moec.hf.families._common import base, defaults, gqa, moe_core, qwen_moe_ffn, router, typed_windows
from moec.hf.families._export_common import export_qwen_moe, layer_types
from moec.hf.mapper import Mapper
from moec.spec.plan import ResolvedModel

# fmt: off
DEFAULTS = defaults(10000.0, vocab_size=151936, hidden_size=2048, intermediate_size=5632, num_hidden_layers=24,
                    num_attention_heads=16, num_key_value_heads=16, max_position_embeddings=32768,
                    rms_norm_eps=1e-6, use_sliding_window=False, sliding_window=4096, max_window_layers=28,
                    decoder_sparse_step=1, moe_intermediate_size=1408, shared_expert_intermediate_size=5632,
                    num_experts_per_tok=4, num_experts=60, norm_topk_prob=False, router_aux_loss_coef=0.001,
                    mlp_only_layers=None, qkv_bias=True, layer_types=None)
# fmt: on


def translate(c: HFConfig, d: Draft) -> None:
    base(c, d, "Qwen2-MoE")
    b = c.bool("qkv_bias")
    gqa(c, d, bias=b, out_bias=False, bias_src=c.src("qkv_bias") + " (q, k, v; o has none)")
    on = c.bool("use_sliding_window")
    w = c.int("sliding_window", optional=True) if on else None
    c.value("sliding_window")
    mwl = c.int("max_window_layers", minimum=0)
    # Qwen2MoeConfig's default differs from Qwen2's: sliding on even layers below max_window_layers
    default = ["sliding_attention" if (i + 1) % 2 and i < mwl and on else "full_attention" for i in range(d.n_layers)]
    typed_windows(c, d, w, default, f"use_sliding_window {on}; even layers < max_window_layers {mwl}")
    moe_core(c, d, experts_key="num_experts", width_key="moe_intermediate_size")
    router(d, "Qwen2MoeTopKRouter: softmax over all experts, top-k", score="softmax", softmax_after_topk=False)
    d.put("moe.router.normalize_topk", c.bool("norm_topk_prob"), c.src("norm_topk_prob"))
    d.section(
        "moe",
        n_shared_experts=(1, "Qwen2MoeSparseMoeBlock.shared_expert"),
        d_ff_shared=(c.int("shared_expert_intermediate_size"), c.src("shared_expert_intermediate_size")),
        shared_gate=(True, "shared_expert_gate: sigmoid(Linear(d, 1)) scales the shared expert"),
    )
    qwen_moe_ffn(c, d, "num_experts", bias_src="Qwen2MoeMLP has no biases")


def export(m: ResolvedModel) -> dict[str, Any]:
    cfg, e = export_qwen_moe(m, FAMILY)
    w, types = layer_types(m)
    cfg.update(
        use_sliding_window=w is not None,
        sliding_window=w,
        max_window_layers=m.n_layers,
        layer_types=types,
        shared_expert_intermediate_size=e.d_ff_shared,
        qkv_bias=m.layers[0].attention.bias,
    )
    return cfg


class Qwen2MoeMapper(Mapper):
    shared = "shared_expert."


FAMILY = Family(
    "qwen2_moe", "Qwen2MoeForCausalLM", DEFAULTS, translate, export=export, export_rank=30, mapper=Qwen2MoeMapper
)
