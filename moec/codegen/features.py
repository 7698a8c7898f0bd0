"""What a resolved plan asks of the generated ``model.py``: the features its templates specialise on and the
checked text of every number they print (for ``moec.codegen.render``).

Security: nothing from the spec is pasted into code as text. Every value that reaches a template passes one of
the checks of :mod:`moec.codegen.checks` first: integers and floats are type-checked and emitted with ``repr``,
strings must be members of a fixed set, flags must be bools. (The model's name, the only free text, is checked by
the renderer.)

Every feature a plan can express is rendered except plans that no spec resolves to (layers whose attention
differs in more than window, RoPE and RoPE base, several different MoE or dense-FFN configurations in one model,
mixed attention kinds) and the features listed in :func:`_refuse_unsupported`; those raise ``ValueError`` naming
the problem rather than emitting code that would disagree with the library. Hybrid models (docs/mixers.md) are
rendered: their other token mixers come from moec.kernels.mixers (:mod:`moec.codegen.mixers`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from moec.codegen.attention_features import GQAFeatures, MLAFeatures, gqa_features, mla_features
from moec.codegen.block_features import BlockParts, block_parts
from moec.codegen.checks import checked_bool, checked_choice, float_text, int_text
from moec.codegen.mixers import class_name, used_kinds
from moec.codegen.rope_features import RopeFeatures, rope_features
from moec.codegen.router_features import RouterFeatures, router_features
from moec.spec.plan import (
    AbsentPlan,
    AttentionPlan,
    DenseFFNPlan,
    LayerPlan,
    MoEPlan,
    ResidualScalesPlan,
    ResolvedModel,
)
from moec.vocab import (
    ACTIVATIONS,
    ATTENTION_KINDS,
    EXPERT_KINDS,
    FREEZABLE_COMPONENTS,
    LIMITED,
    NORM_KINDS,
    NORM_PLACEMENTS,
    OUTPUT_GATES,
    POSITION_KINDS,
    QK_NORM_SCOPES,
)

# ---------------------------------------------------------------------------------------------
# what the plan uses


@dataclass(frozen=True)
class Features:
    norm: str
    norm_bias: bool
    pre_norm: bool
    norm_placement: str  # pre, post, after_sublayer or normed_residual
    unit_offset: bool  # RMSNorm scales by 1 + w in fp32, w starting at 0 (Qwen3-Next)
    learned_positions: bool
    rope_any: bool  # some layer rotates q and k
    rope_param: bool  # some do, some don't: Attention takes `rope`
    partial_rotary: bool  # GQA heads rotate only their first ROPE_DIM dims
    layer_rope_tables: bool  # some rotating layer has a base or rotated dims of its own: ROPE_TABLES, by (base, dims)
    scaling: str | None
    yarn_truncate: bool
    yarn_attention: str  # "stated", "ratio", "default" or "one"
    rope_attention_factor: bool  # cos and sin are multiplied by a YaRN attention factor other than 1
    yarn_mscale: bool
    mla_scale_factor: bool
    gqa: bool
    mla: bool
    window: bool
    sinks: bool
    attn_bias: bool
    attn_out_bias: bool
    qk_norm: str | None
    qk_norm_after_rope: bool  # the per-head q/k norm after the rotation (Hunyuan-A13B)
    clip_qkv: bool
    attn_scale: bool
    clamped: bool
    clamped_experts: bool
    moe: bool
    dense: bool
    ffn_types: str
    ffn_experts: bool
    lora: bool
    shared: bool
    shared_gate: bool
    router: RouterFeatures | None
    mtp: bool
    tie_embeddings: bool
    head_bias: bool
    frozen: tuple[str, ...]
    # hybrid models (docs/mixers.md): which layers have what
    attention: bool  # some layer's token mixer is attention
    output_gate: str  # attention's sigmoid output gate: none, head or element (Qwen3-Next)
    mixer_kinds: tuple[str, ...] = ()  # the other token mixers some layer has (moec.vocab.LINEAR_MIXERS)
    mixer_classes: tuple[str, ...] = ()  # their classes, from moec.kernels.mixers.<kind>
    mixer_none: bool = False  # some layer has no token mixer
    ffn_none: bool = False  # some layer has no FFN
    mla_parts: MLAFeatures = MLAFeatures()  # MLA's optional parts: the sparse-attention indexer, latent scales
    parts: BlockParts = BlockParts()  # the layers' optional parts: MoA, zero experts, pair layers, ...
    gqa_parts: GQAFeatures = GQAFeatures()  # GQA's optional parts: v_head_dim, the gate's function, per-layer heads

    @property
    def hybrid(self) -> bool:
        """Layers differ in their sublayers: a token mixer besides attention, or a layer without its mixer or FFN."""
        return bool(self.mixer_kinds) or self.mixer_none or self.ffn_none

    @property
    def sublayer_block(self) -> bool:
        """The Block is written sublayer by sublayer (each optional, each joined as the placement says): hybrids,
        and normed_residual's scaled joins."""
        return self.hybrid or self.norm_placement == "normed_residual"

    @property
    def attention_class(self) -> str:
        return "MLA" if self.mla else "MoA" if self.parts.moa else "Attention"

    @property
    def block_mixer_types(self) -> str:
        """The annotation of the hybrid Block's token mixer."""
        types = ([self.attention_class] if self.attention else []) + list(self.mixer_classes)
        return " | ".join(types + (["None"] if self.mixer_none else []))

    @property
    def block_ffn_types(self) -> str:
        return " | ".join([t for t in (self.ffn_types,) if t] + (["None"] if self.ffn_none else []))

    @property
    def token_ids(self) -> bool:
        """The blocks pass each call's token ids down to the MoE layers: a hash router routes by them."""
        return bool(self.router and self.router.kind == "hash")

    @property
    def dense_ffn(self) -> bool:
        """The file needs DenseFFN: a dense layer, the shared experts, or the frozen base of LoRA experts."""
        return self.dense or self.shared or self.lora

    @property
    def cache_refusals(self) -> bool:
        """new_cache refuses some requests besides their size: capacity, or a dynamic scaling past its length."""
        return bool(self.router and (self.router.capacity or self.router.kind == "expert_choice")) or (
            self.scaling in ("dynamic", "longrope")
        )


def _one(values: list[Any], what: str) -> Any:
    """The single configuration every layer shares (a spec has one `moe` and one `ffn` section)."""
    distinct = list(dict.fromkeys(values))
    if len(distinct) > 1:
        raise ValueError(f"codegen supports one {what} configuration per model; this plan has {len(distinct)}")
    return distinct[0] if distinct else None


def plan_features(plan: ResolvedModel, layers: list[LayerPlan]) -> tuple[Features, dict[str, str | None]]:
    """(the features the templates specialise on, the checked text of the constants they print)."""
    norm = checked_choice(plan.norm.kind, NORM_KINDS, "norm.kind")
    placement = checked_choice(plan.norm.placement, NORM_PLACEMENTS, "norm.placement")
    if not layers:
        raise ValueError("the plan has no layers")
    _refuse_unsupported(plan, layers)  # before the positions' kind: an encoder-decoder's relative_bucket is named there
    pos = checked_choice(plan.positions.kind, POSITION_KINDS, "positions.kind")
    if plan.norm.unit_offset and norm != "rmsnorm":
        raise ValueError("a unit-offset norm weight is supported on rmsnorm")

    # attention: one configuration, except the window, RoPE, RoPE base (and GQA's head counts) of each layer; the
    # layers with another token mixer (or none) still carry an attention plan, which nothing reads (a model without
    # attention layers takes the first one's shape for the constants it prints, and defines no attention)
    attns = [lp.attention for lp in layers if lp.has_attention]
    first = (attns or [layers[0].attention])[0]
    # the first layer's heads and sinks: `a` describes it
    heads = {"n_heads": first.n_heads, "n_kv_heads": first.n_kv_heads, "sinks": first.sinks}
    if first.qk_norm_kind == "l2":  # weightless: layers with and without it differ by a flag (Llama-4)
        heads["qk_norm"] = any(x.qk_norm for x in attns)
    # the tuned layers' temperature, checked by gqa_features (one per model)
    tuning = {"temperature_floor_scale": None, "temperature_scale": None, "temperature_form": "floor_log"}
    a = _one(
        [
            dataclasses.replace(
                x, window=None, rope=True, rope_theta=None, rotary_dim=None, chunk=None, **heads, **tuning
            )
            for x in attns or [first]
        ],
        "attention (besides window, chunk, rope, rope_theta, rotary_dim, head counts, sinks, temperature tuning)",
    )
    output_gate = checked_choice(a.output_gate, OUTPUT_GATES, "attention.output_gate") if attns else "none"
    kind = checked_choice(a.kind, ATTENTION_KINDS, "attention.kind")
    ropes = [checked_bool(x.rope, "attention.rope") for x in attns]
    for x in attns:
        if x.window is not None:
            int_text(x.window, "attention.window")
    if any(ropes) and pos != "rope":
        raise ValueError("a layer applies RoPE but the model's positions are not rope")
    if kind == "mla" and (a.qk_norm or a.bias or a.out_bias or a.clip_qkv is not None):
        raise ValueError("MLA has no qk_norm, clip_qkv or projection biases (DeepSeek-V2/V3 layout)")
    qk_norm = (
        checked_choice(a.qk_norm_scope, QK_NORM_SCOPES, "qk_norm_scope")
        if checked_bool(a.qk_norm, "qk_norm") and a.qk_norm_kind == "model"  # l2: weightless, no modules
        else None
    )

    c = _model_constants(plan, a)
    sc = plan.positions.scaling
    if not any(ropes) and kind == "mla" and sc is not None and sc.kind == "yarn" and sc.mscale_all_dim:
        raise ValueError("MLA with YaRN scaling but no layer applying RoPE is not supported by codegen")
    rope = rope_features(plan, a, attns, c) if any(ropes) else RopeFeatures()  # no rotation: nothing to scale

    # FFNs: one dense configuration and one MoE configuration
    # a shortcut-MoE pair layer's two dense FFNs (LongCat-Flash) are the model's dense FFN configuration
    dense = _one([x for lp in layers for x in (lp.ffn, lp.pair_ffn) if isinstance(x, DenseFFNPlan)], "dense FFN")
    moe = _one([lp.ffn for lp in layers if isinstance(lp.ffn, MoEPlan)], "MoE")
    for lp in layers:
        if not isinstance(lp.ffn, (DenseFFNPlan, MoEPlan, AbsentPlan)):
            raise ValueError(f"layer {lp.index}: unknown FFN plan {type(lp.ffn).__name__}")
    kinds = used_kinds(layers)  # checks each layer's mixer kind
    if placement == "normed_residual":
        _residual_scales(plan.residual_scales or ResidualScalesPlan(), bool(attns), bool(kinds), c)
    acts = [checked_choice(x.activation, ACTIVATIONS, "activation") for x in (dense, moe) if x is not None]
    if moe is not None and moe.shared_activation:  # the shared experts' own (HY-V4)
        acts.append(checked_choice(moe.shared_activation, ACTIVATIONS, "moe.shared_activation"))
    expert_kind = checked_choice(moe.expert_kind, EXPERT_KINDS, "expert_kind") if moe else None
    has_dense, has_moe = dense is not None, moe is not None
    frozen = tuple(checked_choice(x, FREEZABLE_COMPONENTS, "frozen component") for x in plan.frozen)

    f = Features(
        norm=norm,
        norm_bias=norm == "layernorm" and checked_bool(plan.norm.bias, "norm.bias"),
        pre_norm=placement == "pre",
        norm_placement=placement,
        unit_offset=norm == "rmsnorm" and checked_bool(plan.norm.unit_offset, "norm.unit_offset"),
        learned_positions=pos == "learned",
        rope_any=any(ropes),
        rope_param=any(ropes) and not all(ropes),
        partial_rotary=any(ropes) and kind in ("gqa", "moa") and plan.rope_dim != a.head_dim,
        # as moec.nn keys them: the tables by (base, rotated dims), Attention told both
        layer_rope_tables=any(x.rope and (x.rope_theta is not None or x.rotary_dim is not None) for x in attns),
        scaling=rope.scaling,
        yarn_truncate=rope.yarn_truncate,
        yarn_attention=rope.yarn_attention,
        rope_attention_factor=rope.scaling == "yarn" and rope.yarn_attention != "one",
        yarn_mscale=(rope.scaling == "yarn" and rope.yarn_attention in ("ratio", "default")) or rope.mla_scale_factor,
        mla_scale_factor=rope.mla_scale_factor,
        gqa=kind == "gqa",
        mla=kind == "mla",
        window=any(x.window is not None for x in attns),
        sinks=any(checked_bool(x.sinks, "sinks") for x in attns),
        attn_bias=checked_bool(a.bias, "attention.bias"),
        attn_out_bias=checked_bool(a.out_bias, "attention.out_bias"),
        qk_norm=qk_norm,
        qk_norm_after_rope=qk_norm == "head" and checked_bool(a.qk_norm_after_rope, "qk_norm_after_rope"),
        clip_qkv=a.clip_qkv is not None,
        attn_scale=a.scale is not None,
        clamped=any(act in LIMITED for act in acts),
        clamped_experts=has_moe and moe.activation in LIMITED and expert_kind == "ffn",
        moe=has_moe,
        dense=has_dense,
        ffn_types=" | ".join(t for t, on in (("DenseFFN", has_dense), ("MoE", has_moe)) if on),
        ffn_experts=expert_kind == "ffn",
        lora=expert_kind == "lora",
        shared=has_moe and int_text(moe.n_shared_experts, "n_shared_experts", minimum=0) != "0",
        shared_gate=has_moe and moe.n_shared_experts > 0 and checked_bool(moe.shared_gate, "shared_gate"),
        router=router_features(moe) if moe is not None else None,
        mtp=bool(plan.mtp),
        tie_embeddings=checked_bool(plan.tie_embeddings, "tie_embeddings"),
        head_bias=checked_bool(plan.head_bias, "head_bias"),
        frozen=frozen,
        attention=bool(attns),
        output_gate=output_gate,
        mixer_kinds=kinds,
        mixer_classes=tuple(class_name(k) for k in kinds),
        mixer_none=any(isinstance(lp.mixer, AbsentPlan) for lp in layers),
        ffn_none=any(isinstance(lp.ffn, AbsentPlan) for lp in layers),
        mla_parts=mla_features(a, any(ropes), c) if attns else MLAFeatures(),
        gqa_parts=gqa_features(a, attns, c) if attns else GQAFeatures(),
        parts=block_parts(
            a if attns else None, moe, any(lp.pair_ffn is not None for lp in layers), plan.depth_scaled_residual
        ),
    )
    return f, c


def _residual_scales(scales: ResidualScalesPlan, attention: bool, mixers: bool, c: dict[str, str | None]) -> None:
    """normed_residual's (α, β) of each sublayer kind the model has, into ``c`` (ATTENTION_ALPHA, ...)."""
    for kind, used in (("attention", attention), ("mixer", mixers), ("ffn", True)):
        if used:
            alpha, beta = getattr(scales, kind)
            c[f"{kind}_alpha"] = float_text(alpha, f"residual_scales.{kind}.alpha")
            c[f"{kind}_beta"] = float_text(beta, f"residual_scales.{kind}.beta")


def _refuse_unsupported(plan: ResolvedModel, layers: list[LayerPlan]) -> None:
    """Features the templates do not render yet: refuse rather than emit code that disagrees with the library."""
    attns = [lp.attention for lp in layers if lp.has_attention]
    sc = plan.positions.scaling
    ffns = [lp.ffn for lp in layers]
    hybrid = any(not lp.has_attention or isinstance(lp.ffn, AbsentPlan) for lp in layers)  # Block is hybrid_block.j2
    gqa = all(x.kind == "gqa" for x in attns)
    unsupported = {
        "attention.chunk (chunked attention) with MLA": not gqa and any(x.chunk is not None for x in attns),
        "attention.temperature_tuning with MLA": not gqa and any(x.temperature_floor_scale is not None for x in attns),
        "model.depth_scaled_residual in a hybrid model": hybrid and plan.depth_scaled_residual,
        "model.positions.scaling kind 'longrope' with a layer's own rotary_dim": sc is not None
        and sc.kind == "longrope"
        and any(x.rotary_dim is not None for x in attns),
        "model.norm.placement 'sandwich' or 'parallel' in a hybrid model": hybrid
        and plan.norm.placement in ("sandwich", "parallel"),
        "moe.output_norm in a hybrid model": hybrid and any(isinstance(x, MoEPlan) and x.output_norm for x in ffns),
        "per-layer attention shapes (layers.*.attention.kv_lora_rank, qk_nope_head_dim, v_head_dim; MLA's heads)": len(
            {(x.kv_lora_rank, x.qk_nope_head_dim, x.v_head_dim) for x in attns}
        )
        > 1
        or (not gqa and len({(x.n_heads, x.n_kv_heads) for x in attns}) > 1),  # GQA's Attention takes its heads
        # a shared layer has no indexer of its own: it is named by the `shared` entry, not this one
        "layers.*.attention.indexer: false": len({x.has_indexer for x in attns if not x.indexer_shared}) > 1,
        "model.hyper_connections (n residual streams)": plan.hyper_connections is not None,
        "model.norm_gate (a low-rank gate on the norms, A.X-K2)": plan.norm_gate is not None,
        # only what layers.*.moe can change: any other difference is "one MoE configuration"'s (a plan no spec makes)
        "a layer's own MoE activation or limits (layers.*.moe)": len(
            {_moe_override_fields(x) for x in ffns if isinstance(x, MoEPlan)}
        )
        > 1,
        "attention.query_gate (MLA's fused query and value gate, A.X-K2)": any(x.query_gate for x in attns),
        # Ling 3's MLA gate is a sigmoid, and mla.j2 renders that one
        "attention.output_gate_fn softplus with MLA": any(
            x.kind == "mla" and x.output_gate != "none" and x.output_gate_fn != "sigmoid" for x in attns
        ),
        "layers.*.attention.indexer: shared": any(x.indexer_shared for x in attns),
        "attention.indexer.rope_dims 'last'": any(x.has_indexer and x.indexer_rope_dims == "last" for x in attns),
        "an encoder-decoder model": bool(plan.encoder) or plan.positions.kind == "relative_bucket",
        "a layer's own rope scaling (layers.*.attention.rope_scaling)": any(x.own_rope_scaling for x in attns),
        "a layer's own attention sinks (layers.*.attention.sinks) with MLA": not gqa
        and len({x.sinks for x in attns}) > 1,
    }
    for what, used in unsupported.items():
        if used:
            raise ValueError(f"codegen does not support {what} yet; use the library model (moec.nn)")


def _moe_override_fields(f: MoEPlan) -> tuple[object, ...]:
    """The fields of a MoE plan a layer's override (layers.*.moe) may set: moec/spec/moe_override.py."""
    return (f.activation, f.activation_limit, f.shared_activation, f.shared_activation_limit)


def _model_constants(plan: ResolvedModel, a: AttentionPlan) -> dict[str, str | None]:
    """The module-level numbers every model prints, and the optional ones (None: not printed)."""
    c: dict[str, str | None] = {
        "vocab_size": int_text(plan.vocab_size, "vocab_size"),
        "d_model": int_text(plan.d_model, "d_model"),
        "max_seq_len": int_text(plan.max_seq_len, "max_seq_len"),
        "norm_eps": float_text(plan.norm.eps, "norm.eps"),
    }
    latent_eps = a.latent_norm_eps if a.kind == "mla" else None
    c["latent_norm_eps"] = None if latent_eps is None else float_text(latent_eps, "attention.latent_norm_eps")
    for key in ("embedding_multiplier", "residual_multiplier", "logits_scaling"):
        v = getattr(plan, key)
        c[key] = None if v == 1.0 else float_text(v, key)
    c["logit_softcap"] = None if plan.logit_softcap is None else float_text(plan.logit_softcap, "logit_softcap")
    return c
