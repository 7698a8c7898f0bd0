"""What the plan's attention asks of the generated ``model.py`` beyond its kind and shapes: the features of MLA
(DeepSeek-V3.2's sparse-attention indexer, LongCat-Flash's latent scales), each checked, and the checked text of
the constants they print (for :mod:`moec.codegen.features`)."""

from __future__ import annotations

from dataclasses import dataclass

from moec.codegen.checks import checked_bool, checked_choice, float_text, int_text
from moec.spec.indexer import ROPE_LAYOUTS
from moec.spec.plan import AttentionPlan
from moec.vocab import OUTPUT_GATE_BIASES, OUTPUT_GATE_FNS, TEMPERATURE_FORMS


@dataclass(frozen=True)
class GQAFeatures:
    """GQA's optional shapes and gate function (the defaults for MLA and MoA)."""

    v_head_dim: bool = False  # the values' head width differs from the queries' and keys' (MiMo-V2-Flash)
    gate_fn: str = "sigmoid"  # the output gate's function: sigmoid, or softplus in fp32 at least (Laguna)
    layer_heads: bool = False  # layers differ in n_heads or n_kv_heads: Attention takes each layer's
    layer_sinks: bool = False  # some layers have attention sinks, some not: Attention takes `sinks`
    value_scale: bool = False  # the values are scaled after v_proj (MiMo-V2-Flash)
    layer_rotary_dim: bool = False  # some rotating layer has rotated dims of its own (Laguna)
    chunk: bool = False  # some layer attends within chunks (Llama-4): Attention takes `chunk`
    l2_norm: str = ""  # Llama-4's weightless L2 qk-norm: "all" layers, "some" (Attention takes `qk_norm`), or ""
    temperature: str = ""  # NoPE temperature tuning: "all" layers, "some" (Attention takes `temperature_tuning`)
    temperature_form: str = "floor_log"  # its form: floor_log (Llama-4) or power (Beam)
    gate_bias: str = "qkv"  # the output gate's bias: its projection's (as attention.bias), none, or one per head


def _which(flags: list[bool]) -> str:
    """ "all", "some" or "" of the layers have it."""
    return "all" if flags and all(flags) else "some" if any(flags) else ""


def _temperature(attns: list[AttentionPlan], c: dict[str, str | None]) -> tuple[str, str]:
    """Which layers tune their queries' temperature, and its form; its two numbers into ``c`` (one pair per model)."""
    tuned = [x for x in attns if x.temperature_floor_scale is not None and x.temperature_scale is not None]
    if not tuned:
        return "", "floor_log"
    pairs = {(x.temperature_floor_scale, x.temperature_scale, x.temperature_form) for x in tuned}
    if len(pairs) > 1:
        raise ValueError("codegen supports one temperature tuning (floor scale, scale, form) per model")
    floor_scale, scale, form = pairs.pop()
    c["temperature_floor_scale"] = float_text(floor_scale, "attention.temperature_tuning.floor_scale")
    c["temperature_scale"] = float_text(scale, "attention.temperature_tuning.scale")
    which = _which([x in tuned for x in attns])
    return which, checked_choice(form, TEMPERATURE_FORMS, "attention.temperature_tuning.form")


def gqa_features(a: AttentionPlan, attns: list[AttentionPlan], c: dict[str, str | None]) -> GQAFeatures:
    """GQA's optional parts of ``a`` (every attention layer's configuration but what tells layers apart) and
    ``attns`` (each attention layer's plan); the constants they print into ``c``."""
    if a.kind != "gqa":
        return GQAFeatures()
    temperature, form = _temperature(attns, c)
    return GQAFeatures(
        v_head_dim=int_text(a.v_dim, "attention.v_head_dim") != int_text(a.head_dim, "attention.head_dim"),
        gate_fn=checked_choice(a.output_gate_fn, OUTPUT_GATE_FNS, "attention.output_gate_fn"),
        layer_heads=len({(x.n_heads, x.n_kv_heads) for x in attns}) > 1,
        layer_sinks=len({checked_bool(x.sinks, "attention.sinks") for x in attns}) > 1,
        value_scale=a.value_scale is not None,
        layer_rotary_dim=any(x.rope and x.rotary_dim is not None for x in attns),
        chunk=any(x.chunk is not None for x in attns),
        l2_norm=_which([checked_bool(x.qk_norm, "qk_norm") and x.qk_norm_kind == "l2" for x in attns]),
        temperature=temperature,
        temperature_form=form,
        gate_bias=checked_choice(a.output_gate_bias, OUTPUT_GATE_BIASES, "attention.output_gate_bias"),
    )


@dataclass(frozen=True)
class MLAFeatures:
    """MLA's optional parts (all off for GQA)."""

    indexer: bool = False  # DeepSeek Sparse Attention's indexer picks the keys each query attends
    indexer_rotate: str = ""  # the rotation of its first qk_rope_head_dim dims: apply_rope or apply_rope_interleaved
    latent_scales: bool = False  # constant factors on the query and the normed kv latent (LongCat-Flash)
    rope_key_norm: bool = False  # the shared rotary key normed before its rotation (Dots3)


def mla_features(a: AttentionPlan, rotates: bool, c: dict[str, str | None]) -> MLAFeatures:
    """MLA's optional parts of ``a`` (every attention layer's configuration), their constants into ``c``."""
    if a.kind != "mla":
        return MLAFeatures()
    latent_scales = checked_bool(a.latent_scales, "attention.latent_scales")
    rope_key_norm = checked_bool(a.rope_key_norm, "attention.rope_key_norm")
    if not a.has_indexer:
        return MLAFeatures(latent_scales=latent_scales, rope_key_norm=rope_key_norm)
    c["indexer_n_heads"] = int_text(a.indexer_n_heads, "attention.indexer.n_heads")
    c["indexer_head_dim"] = int_text(a.indexer_head_dim, "attention.indexer.head_dim")
    c["indexer_top_k"] = int_text(a.indexer_top_k, "attention.indexer.top_k")
    c["indexer_key_norm_eps"] = float_text(a.indexer_key_norm_eps, "attention.indexer.key_norm_eps")
    layout = checked_choice(a.indexer_rope_layout, ROPE_LAYOUTS, "attention.indexer.rope_layout")
    rotate = ("apply_rope_interleaved" if layout == "interleaved" else "apply_rope") if rotates else ""
    return MLAFeatures(indexer=True, indexer_rotate=rotate, latent_scales=latent_scales, rope_key_norm=rope_key_norm)
