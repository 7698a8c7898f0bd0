"""The dense families moec imports and exports (no MoE layer): Llama, Mistral (one sliding window on every
layer), Qwen2 (q/k/v biases) and Qwen3 (per-head q/k RMSNorm), the latter two with sliding windows on the
layers layer_types or max_window_layers name. Their checkpoints use transformers' common names.
"""

from __future__ import annotations

from typing import Any

from moec.hf.draft import CannotExport, Draft, Family, HFConfig
from moec.hf.families._common import base, defaults, dense_ffn, gqa, typed_windows, uniform_window
from moec.hf.families._export_common import dense_plan, export_base, layer_types, uniform_window_of
from moec.spec.plan import ResolvedModel

# fmt: off
LLAMA_DEFAULTS = defaults(10000.0, vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                          num_attention_heads=32, num_key_value_heads=None, max_position_embeddings=2048,
                          rms_norm_eps=1e-6, attention_bias=False, mlp_bias=False, head_dim=None)
MISTRAL_DEFAULTS = defaults(10000.0, vocab_size=32000, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                            num_attention_heads=32, num_key_value_heads=8, head_dim=None, max_position_embeddings=131072,
                            rms_norm_eps=1e-6, sliding_window=4096)
QWEN2_DEFAULTS = defaults(10000.0, vocab_size=151936, hidden_size=4096, intermediate_size=22016, num_hidden_layers=32,
                          num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=32768, rms_norm_eps=1e-6,
                          use_sliding_window=False, sliding_window=4096, max_window_layers=28, layer_types=None)
QWEN3_DEFAULTS = {**QWEN2_DEFAULTS, "head_dim": 128, "attention_bias": False}
# fmt: on


def _every_layer_dense(c: HFConfig, d: Draft, bias: bool = False, bias_src: str = "") -> None:
    """A dense model: the one FFN (``bias``, said by ``bias_src``) on every layer."""
    dense_ffn(c, d, bias=bias, bias_src=bias_src)
    d.ffn = ["dense"] * d.n_layers


def translate_llama(c: HFConfig, d: Draft) -> None:
    base(c, d, "Llama")
    b = c.bool("attention_bias")
    gqa(c, d, bias=b, out_bias=b, bias_src=c.src("attention_bias") + " (q, k, v and o)")
    _every_layer_dense(c, d, bias=c.bool("mlp_bias"), bias_src=c.src("mlp_bias"))


def translate_mistral(c: HFConfig, d: Draft) -> None:
    base(c, d, "Mistral")
    gqa(c, d, bias=False, out_bias=False, bias_src="MistralAttention has no biases")
    _every_layer_dense(c, d, bias_src="MistralMLP has no biases")
    uniform_window(c, d)
    if c.given("layer_types"):
        d.gap(
            "layer_types",
            "…",
            "transformers 5.23 ignores layer_types for model_type mistral (Ministral "
            "checkpoints need model_type ministral)",
            "use model_type ministral (not supported yet)",
        )


def _qwen_windows(c: HFConfig, d: Draft) -> None:
    """Qwen2/Qwen3 dense: sliding only with use_sliding_window, on layers ≥ max_window_layers by default."""
    on = c.bool("use_sliding_window")
    w = c.int("sliding_window", optional=True) if on else None
    c.value("sliding_window")
    mwl = c.int("max_window_layers", minimum=0)
    default = ["sliding_attention" if w is not None and i >= mwl else "full_attention" for i in range(d.n_layers)]
    typed_windows(c, d, w, default, f"use_sliding_window {on}, max_window_layers {mwl}")


def translate_qwen2(c: HFConfig, d: Draft) -> None:
    base(c, d, "Qwen2")
    gqa(c, d, bias=True, out_bias=False, bias_src="Qwen2Attention: bias on q, k, v, none on o")
    _every_layer_dense(c, d, bias_src="Qwen2MLP has no biases")
    _qwen_windows(c, d)


def translate_qwen3(c: HFConfig, d: Draft) -> None:
    base(c, d, "Qwen3")
    b = c.bool("attention_bias")
    gqa(c, d, bias=b, out_bias=b, bias_src=c.src("attention_bias"), qk_norm=True)
    d.put("attention.qk_norm", True, "Qwen3Attention: RMSNorm(head_dim) on q and k")
    _every_layer_dense(c, d, bias_src="Qwen3MLP has no biases")
    _qwen_windows(c, d)


def export_llama(m: ResolvedModel) -> dict[str, Any]:
    cfg = export_base(m, LLAMA)
    a, f = m.layers[0].attention, dense_plan(m)
    if f is None:
        raise CannotExport("is a dense family and the spec has MoE layers")
    cfg.update(intermediate_size=f.d_ff, attention_bias=a.bias, mlp_bias=f.bias)
    return cfg


def export_mistral(m: ResolvedModel) -> dict[str, Any]:
    cfg = export_base(m, MISTRAL)
    f = dense_plan(m)
    if f is None:
        raise CannotExport("is a dense family and the spec has MoE layers")
    cfg.update(intermediate_size=f.d_ff, sliding_window=uniform_window_of(m))
    return cfg


def _export_qwen(m: ResolvedModel, family: Family) -> dict[str, Any]:
    cfg = export_base(m, family)
    f = dense_plan(m)
    if f is None:
        raise CannotExport("is a dense family and the spec has MoE layers")
    w, types = layer_types(m)
    cfg.update(
        intermediate_size=f.d_ff,
        use_sliding_window=w is not None,
        sliding_window=w,
        max_window_layers=m.n_layers,
        layer_types=types,
    )
    if family is QWEN3:
        cfg["attention_bias"] = m.layers[0].attention.bias
    else:
        cfg.pop("head_dim")  # Qwen2Config has no head_dim (the model derives hidden_size / heads)
    return cfg


def export_qwen2(m: ResolvedModel) -> dict[str, Any]:
    return _export_qwen(m, QWEN2)


def export_qwen3(m: ResolvedModel) -> dict[str, Any]:
    return _export_qwen(m, QWEN3)


LLAMA = Family(
    "llama", "LlamaForCausalLM", LLAMA_DEFAULTS, translate_llama, export=export_llama, export_rank=10, dense=True
)
MISTRAL = Family(
    "mistral",
    "MistralForCausalLM",
    MISTRAL_DEFAULTS,
    translate_mistral,
    export=export_mistral,
    export_rank=20,
    dense=True,
)
QWEN2 = Family(
    "qwen2", "Qwen2ForCausalLM", QWEN2_DEFAULTS, translate_qwen2, export=export_qwen2, export_rank=30, dense=True
)
QWEN3 = Family(
    "qwen3", "Qwen3ForCausalLM", QWEN3_DEFAULTS, translate_qwen3, export=export_qwen3, export_rank=40, dense=True
)
FAMILIES = (LLAMA, MISTRAL, QWEN2, QWEN3)
