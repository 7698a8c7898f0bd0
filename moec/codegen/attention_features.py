"""What the plan's attention asks of the generated ``model.py`` beyond its kind and shapes: the features of MLA
(DeepSeek-V3.2's sparse-attention indexer, LongCat-Flash's latent scales), each checked, and the checked text of
the constants they print (for :mod:`moec.codegen.features`)."""

from __future__ import annotations

from dataclasses import dataclass

from moec.codegen.checks import checked_bool, checked_choice, float_text, int_text
from moec.spec.indexer import ROPE_LAYOUTS
from moec.spec.plan import AttentionPlan
from moec.vocab import OUTPUT_GATE_FNS


@dataclass(frozen=True)
class GQAFeatures:
    """GQA's optional shapes and gate function (the defaults for MLA and MoA)."""

    v_head_dim: bool = False  # the values' head width differs from the queries' and keys' (MiMo-V2-Flash)
    gate_fn: str = "sigmoid"  # the output gate's function: sigmoid, or softplus in fp32 at least (Laguna)
    layer_heads: bool = False  # layers differ in n_heads or n_kv_heads: Attention takes each layer's
    layer_sinks: bool = False  # some layers have attention sinks, some not: Attention takes `sinks`
    value_scale: bool = False  # the values are scaled after v_proj (MiMo-V2-Flash)
    layer_rotary_dim: bool = False  # some rotating layer has rotated dims of its own (Laguna)


def gqa_features(a: AttentionPlan, attns: list[AttentionPlan]) -> GQAFeatures:
    """GQA's optional parts of ``a`` (every attention layer's configuration but its head counts) and ``attns``
    (each attention layer's plan)."""
    if a.kind != "gqa":
        return GQAFeatures()
    return GQAFeatures(
        v_head_dim=int_text(a.v_dim, "attention.v_head_dim") != int_text(a.head_dim, "attention.head_dim"),
        gate_fn=checked_choice(a.output_gate_fn, OUTPUT_GATE_FNS, "attention.output_gate_fn"),
        layer_heads=len({(x.n_heads, x.n_kv_heads) for x in attns}) > 1,
        layer_sinks=len({checked_bool(x.sinks, "attention.sinks") for x in attns}) > 1,
        value_scale=a.value_scale is not None,
        layer_rotary_dim=any(x.rope and x.rotary_dim is not None for x in attns),
    )


@dataclass(frozen=True)
class MLAFeatures:
    """MLA's optional parts (all off for GQA)."""

    indexer: bool = False  # DeepSeek Sparse Attention's indexer picks the keys each query attends
    indexer_rotate: str = ""  # the rotation of its first qk_rope_head_dim dims: apply_rope or apply_rope_interleaved
    latent_scales: bool = False  # constant factors on the query and the normed kv latent (LongCat-Flash)


def mla_features(a: AttentionPlan, rotates: bool, c: dict[str, str | None]) -> MLAFeatures:
    """MLA's optional parts of ``a`` (every attention layer's configuration), their constants into ``c``."""
    if a.kind != "mla":
        return MLAFeatures()
    latent_scales = checked_bool(a.latent_scales, "attention.latent_scales")
    if not a.has_indexer:
        return MLAFeatures(latent_scales=latent_scales)
    c["indexer_n_heads"] = int_text(a.indexer_n_heads, "attention.indexer.n_heads")
    c["indexer_head_dim"] = int_text(a.indexer_head_dim, "attention.indexer.head_dim")
    c["indexer_top_k"] = int_text(a.indexer_top_k, "attention.indexer.top_k")
    c["indexer_key_norm_eps"] = float_text(a.indexer_key_norm_eps, "attention.indexer.key_norm_eps")
    layout = checked_choice(a.indexer_rope_layout, ROPE_LAYOUTS, "attention.indexer.rope_layout")
    rotate = ("apply_rope_interleaved" if layout == "interleaved" else "apply_rope") if rotates else ""
    return MLAFeatures(indexer=True, indexer_rotate=rotate, latent_scales=latent_scales)
