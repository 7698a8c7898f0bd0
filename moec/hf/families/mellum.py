"""Mellum (``model_type`` mellum, MellumForCausalLM; JetBrains Mellum 2): Qwen3-MoE's attention (GQA, RMSNorm
over each head's q and k before the rotation) and MoE (softmax over all experts, top-k, optionally
renormalised, no shared expert), with sliding windows on the ``layer_types`` layers, dense MLPs on the
``mlp_layer_types`` "dense" layers, and rotary parameters per attention type: ``rope_parameters`` maps
full_attention and sliding_attention to their own mapping (base and scaling), read as Laguna's are
(moec/hf/families/_typed_rope.py). A ``partial_rotary_factor`` other than 1 is refused at its type's mapping:
MellumRotaryEmbedding builds tables that narrow, but MellumAttention rotates whole heads and fails on them.

moec gives a layer its own RoPE base (``layers.*.attention.rope_theta``) and, where the layer types' rope_type or
scaling parameters differ (Mellum 2.1's release: YaRN on the full layers, none on the sliding ones), its own
scaling (``layers.*.attention.rope_scaling``; dynamic and longrope, which depend on the live length, refused by
name). The MTP layer the config may describe
(``num_mtp_layers``) is built by neither transformers nor moec; its ``mtp.*`` tensors are let go on load, as
transformers does. Checkpoints use transformers' common names (the base Mapper).
"""

from __future__ import annotations

from moec.hf.draft import Draft, Family, HFConfig, shown, spelt
from moec.hf.families._common import (
    aux,
    defaults,
    dense_layers_ffn,
    gqa,
    mlp_layer_types,
    moe_core,
    router,
    typed_windows,
)
from moec.hf.families._typed_rope import TypedRope, layer_rope, rope_layer_types, rope_per_type, typed_base
from moec.hf.mapper import Mapper

# fmt: off
DEFAULTS = defaults(10000.0, vocab_size=98304, hidden_size=2304, intermediate_size=7168, num_hidden_layers=28,
                    num_attention_heads=32, num_key_value_heads=4, head_dim=128, max_position_embeddings=131072,
                    rms_norm_eps=1e-6, attention_bias=False, sliding_window=1024, moe_intermediate_size=896,
                    num_experts_per_tok=8, num_local_experts=64, norm_topk_prob=True, router_aux_loss_coef=0.001,
                    layer_types=None, mlp_layer_types=None, num_nextn_predict_layers=None, mtp_layer_types=None,
                    mtp_mlp_layer_types=None)
# fmt: on

# MellumConfig.__post_init__ when rope_parameters is unset
DEFAULT_ROPE = {
    "full_attention": {"rope_type": "default", "rope_theta": 500000.0},
    "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
}
MELLUM_ROPE = TypedRope("Mellum", DEFAULT_ROPE, lambda mapping: 1.0, partial=False)


def translate(c: HFConfig, d: Draft) -> None:
    types = rope_layer_types(c, ["full_attention"])
    per_type = rope_per_type(c, types, MELLUM_ROPE)
    typed_base(c, d, per_type, types, MELLUM_ROPE)
    b = c.bool("attention_bias")
    gqa(c, d, bias=b, out_bias=b, bias_src=c.src("attention_bias") + " (q, k, v and o)", qk_norm=True)
    d.put("attention.qk_norm", True, "MellumAttention: RMSNorm(head_dim) on q and k, before the rotation")
    w = c.int("sliding_window", optional=True)
    typed_windows(c, d, w, ["full_attention"] * d.n_layers, "all full attention (MellumConfig)", null_refused=True)
    _qwen_fields_mellum_deletes(c, d)
    if per_type is not None and not c.failed("layer_types") and d.layers_known:
        layer_rope(c, d, per_type, types, MELLUM_ROPE)
    moe_core(c, d, experts_key="num_local_experts", width_key="moe_intermediate_size")
    router(d, "MellumTopKRouter (Qwen3-MoE's): softmax over all experts, top-k", score="softmax",
           softmax_after_topk=False)  # fmt: skip
    d.put("moe.router.normalize_topk", c.bool("norm_topk_prob"), c.src("norm_topk_prob"))
    aux(c, d)
    mlp_layer_types(c, d, ["sparse"] * d.n_layers, "mlp_layer_types unset: every layer sparse (MellumConfig)")
    dense_layers_ffn(c, d, bias_src="MellumMLP has no biases")
    _mtp(c, d)


def _qwen_fields_mellum_deletes(c: HFConfig, d: Draft) -> None:
    """Qwen's fields MellumConfig deletes (layer_types and mlp_layer_types decide): transformers ignores them,
    and Mellum has no other implementation that reads them, so they are named, never refused."""
    keys = ("use_sliding_window", "max_window_layers", "decoder_sparse_step", "mlp_only_layers")
    ignored = [f"{k} {spelt(c.value(k))}" for k in keys if c.given(k)]
    if ignored:
        d.put("attention.kind", "gqa", f"{', '.join(ignored)}: MellumConfig deletes them (transformers ignores them)")


def _mtp(c: HFConfig, d: Draft) -> None:
    mtp = c.int("num_nextn_predict_layers", minimum=0, maximum=1, optional=True)  # MellumConfig raises above 1
    extra = [f"{k} {shown(c.value(k))}" for k in ("mtp_layer_types", "mtp_mlp_layer_types") if c.given(k)]
    if mtp or extra:  # reported beside the layer count: transformers builds no MTP layer and drops its tensors
        what = ", ".join([f"num_mtp_layers {mtp}"] * bool(mtp) + extra)
        d.put("model.n_layers", d.n_layers, f"{c.src('num_hidden_layers')}; {what}: transformers builds none (ignored)")


class MellumMapper(Mapper):
    """transformers' common names; the MTP layer's ``mtp.*`` tensors are let go."""

    # MellumPreTrainedModel lets them go on load (_keys_to_ignore_on_load_unexpected), and so does moec,
    # whose model leaves the MTP layer out too
    dropped = ("mtp.",)


FAMILY = Family(
    "mellum",
    "MellumForCausalLM",
    DEFAULTS,
    translate,
    aliases={"num_experts": "num_local_experts", "num_mtp_layers": "num_nextn_predict_layers"},
    mapper=MellumMapper,
)
