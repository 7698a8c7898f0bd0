"""Spec (validated) → ResolvedModel (explicit per-layer plans)."""

from __future__ import annotations

import dataclasses
from typing import Any

from moec.errors import Problem
from moec.mixers import KINDS
from moec.spec.encdec import stack_plans
from moec.spec.hyper import plan_of as hyper_plan
from moec.spec.indexer import plan_fields as indexer_plan_fields
from moec.spec.load import LoadedSpec
from moec.spec.moa import plan_fields as moa_fields
from moec.spec.moe_override import layer_sections as moe_layer_sections
from moec.spec.norm_gate import plan as norm_gate_plan
from moec.spec.plan import (
    AbsentPlan,
    AttentionPlan,
    DenseFFNPlan,
    LayerPlan,
    MoEPlan,
    NormPlan,
    PositionsPlan,
    ResidualScalesPlan,
    ResolvedModel,
    RopeScalingPlan,
    RouterPlan,
    schema_values,
)
from moec.spec.schema import Model, MoE, ResidualScales, Select, Spec


def selected_layers(sel: Select, n_layers: int) -> list[int]:
    """The layer indices a selector names (indices ≥ n_layers are dropped; checks report them)."""
    where = _selection(sel, n_layers)
    return list(range(n_layers))[where] if isinstance(where, slice) else where


def assign_selected(per_layer: list[Any] | bytearray, sel: Select, value: Any) -> None:
    """``per_layer[i] = value`` for every layer the selector names. A range is one slice assignment, so
    a thousand overrides of a thousand layers each cost milliseconds, not seconds."""
    where = _selection(sel, len(per_layer))
    if isinstance(where, slice):
        per_layer[where] = [value] * len(range(*where.indices(len(per_layer))))
    else:
        for i in where:
            per_layer[i] = value


def ffn_kind_per_layer(spec: Spec) -> list[str]:
    """Each layer's FFN kind ("dense" or "moe"): layers.default's, unless an override (a later one winning) names
    the layer."""
    per_layer = [spec.layers.default.ffn] * spec.model.n_layers
    for ov in spec.layers.overrides:
        if ov.ffn is not None:
            assign_selected(per_layer, ov.select, ov.ffn)
    return per_layer


def mixer_kind_per_layer(spec: Spec) -> list[str]:
    """Each layer's token mixer (moec.vocab.MIXER_KINDS): layers.default's, unless an override names the layer."""
    per_layer = [spec.layers.default.mixer] * spec.model.n_layers
    for ov in spec.layers.overrides:
        if ov.mixer is not None:
            assign_selected(per_layer, ov.select, ov.mixer)
    return per_layer


def _mixer_plans(spec: Spec, kinds: list[str]) -> list[Any]:
    """Each layer's token-mixer plan: attention → None (the layer's AttentionPlan is read), none → AbsentPlan,
    a moec.mixers kind → its section's Plan, one shared by the layers unless the kind says PER_LAYER (its plan
    then depends on the layer's depth: Lightning's decays) and is planned with ``layer`` and ``n_layers``."""
    m = spec.model
    shared: dict[str, Any] = {"attention": None, "none": AbsentPlan()}
    for kind, module in KINDS.items():
        section = getattr(spec.mixers, kind)
        if section is not None and not getattr(module, "PER_LAYER", False):
            shared[kind] = module.plan(section, m.d_model, m.norm.eps)

    def planned(i: int, kind: str) -> Any:
        if kind in shared:
            return shared[kind]
        return KINDS[kind].plan(getattr(spec.mixers, kind), m.d_model, m.norm.eps, layer=i, n_layers=m.n_layers)

    return [planned(i, kind) for i, kind in enumerate(kinds)]


def attention_fields_per_layer(spec: Spec) -> dict[str, list[Any]]:
    """Each layer's value of the attention fields a layer may change besides its window and rope: the attention
    section's unless layers.default or an override (a later one winning) writes it. n_kv_heads defaults to the
    layer's n_heads where neither the section nor the layer gives it (MHA)."""
    a, n = spec.attention, spec.model.n_layers
    default_attn = spec.layers.default.attention
    section = {
        "chunk": a.chunk,
        "qk_norm": a.qk_norm,
        "temperature_tuning": a.temperature_tuning is not None,
        "rope_theta": None,  # model.positions.theta
        "n_heads": a.n_heads,
        "n_kv_heads": a.n_kv_heads,
        "rotary_dim": None,  # the model's rope_dim
        "sinks": a.sinks,
        "rope_scaling": MODEL_SCALING,  # a layer's own: a RopeScaling, or None (unscaled)
        "window": a.window,
        "kv_lora_rank": a.kv_lora_rank,  # MLA's per-layer geometry (Dots3's sliding layers)
        "qk_nope_head_dim": a.qk_nope_head_dim,
        "v_head_dim": a.v_head_dim,
        "indexer": a.indexer is not None,  # whether a layer runs attention.indexer
    }
    fields = {
        f: [getattr(default_attn, f) if f in default_attn.model_fields_set else v] * n for f, v in section.items()
    }
    for ov in spec.layers.overrides:
        written = ov.attention.model_fields_set if ov.attention is not None else set()
        for f in section:
            if f in written:
                assign_selected(fields[f], ov.select, getattr(ov.attention, f))
    fields["n_kv_heads"] = [kv or h for kv, h in zip(fields["n_kv_heads"], fields["n_heads"], strict=True)]
    return fields


# a layer that writes no rope_scaling of its own takes model.positions.scaling
MODEL_SCALING = "model"


def _layer_scaling(value: Any) -> dict[str, Any]:
    """AttentionPlan's own_rope_scaling and rope_scaling for a layer's attention_fields_per_layer value."""
    if value == MODEL_SCALING:
        return {}
    return {"own_rope_scaling": True, "rope_scaling": RopeScalingPlan(**value.model_dump()) if value else None}


def _selection(sel: Select, n_layers: int) -> slice | list[int]:
    if sel.layers is not None:
        return sorted({i for i in sel.layers if i < n_layers})
    if sel.every is not None:
        assert sel.start is not None
        stop = n_layers - 1 if sel.last is None else min(sel.last, n_layers - 1)
        return slice(sel.start, max(stop + 1, sel.start), sel.every)
    assert sel.first is not None and sel.last is not None
    return slice(sel.first, max(min(sel.last, n_layers - 1) + 1, sel.first))


# the model section's fields the plan holds as written (norm and positions are planned below)
_MODEL_AS_WRITTEN = tuple(
    f.name
    for f in dataclasses.fields(ResolvedModel)
    if f.name in Model.model_fields
    and f.name not in ("norm", "positions", "residual_scales", "hyper_connections", "norm_gate")
)
# attention fields every layer plans as the attention section writes them (and MLA's own, for MLA only)
_ATTENTION_AS_WRITTEN = (
    "bias",
    "out_bias",
    "value_scale",
    "qk_norm_scope",
    "qk_norm_kind",
    "qk_norm_after_rope",
    "clip_qkv",
    "scale",
    "output_gate",
    "output_gate_fn",
    "output_gate_bias",
)
_MLA_AS_WRITTEN = (
    "q_lora_rank",
    "kv_lora_rank",
    "qk_nope_head_dim",
    "qk_rope_head_dim",
    "v_head_dim",
    "latent_norm_eps",
    "latent_scales",
    "rope_key_norm",
    "query_gate",
)


def resolve(loaded: LoadedSpec | Spec, *, file: str = "", spec_hash: str = "") -> ResolvedModel:
    warnings: tuple[Problem, ...] = ()
    if isinstance(loaded, LoadedSpec):
        spec, file, spec_hash, warnings = loaded.spec, loaded.file, loaded.spec_hash, loaded.warnings
    else:
        spec = loaded
    m, a = spec.model, spec.attention
    n = m.n_layers

    ffn_kind = ffn_kind_per_layer(spec)
    default_attn = spec.layers.default.attention
    rope = [m.positions.kind == "rope" and default_attn.rope] * n
    attn_fields = attention_fields_per_layer(spec)
    window = attn_fields["window"]
    for ov in spec.layers.overrides:
        written = ov.attention.model_fields_set if ov.attention is not None else set()
        if "rope" in written:
            assign_selected(rope, ov.select, m.positions.kind == "rope" and ov.attention.rope)  # type: ignore[union-attr]

    dense = _dense(spec)
    moe = _moe(spec)

    def attention(window_i: int | None, rope_i: bool, i: int | None = None) -> AttentionPlan:
        """Layer i's attention (None: the attention section's own values, as MTP blocks use)."""
        chunk_i = a.chunk if i is None else attn_fields["chunk"][i]
        qk_norm_i = a.qk_norm if i is None else attn_fields["qk_norm"][i]
        tt = a.temperature_tuning if (i is None or attn_fields["temperature_tuning"][i]) else None
        planned = {
            **{f: getattr(a, f) for f in _ATTENTION_AS_WRITTEN},
            "qk_norm": qk_norm_i,
            "window": window_i,
            "rope": rope_i,
            "chunk": chunk_i,
            "temperature_floor_scale": tt.floor_scale if tt else None,
            "temperature_scale": tt.scale if tt else None,
            "temperature_form": tt.form if tt else "floor_log",
            "rope_theta": None if i is None else attn_fields["rope_theta"][i],
            "n_heads": a.n_heads if i is None else attn_fields["n_heads"][i],
            "rotary_dim": None if i is None else attn_fields["rotary_dim"][i],
            "sinks": a.sinks if i is None else attn_fields["sinks"][i],
            **_layer_scaling(MODEL_SCALING if i is None else attn_fields["rope_scaling"][i]),
        }
        if a.kind == "mla":
            mla = {f: getattr(a, f) for f in _MLA_AS_WRITTEN}
            if i is not None:  # a layer's own latent and head widths (Dots3's sliding layers)
                mla.update({f: attn_fields[f][i] for f in ("kv_lora_rank", "qk_nope_head_dim", "v_head_dim")})
            assert mla["qk_nope_head_dim"] is not None and a.qk_rope_head_dim is not None
            return AttentionPlan(
                kind="mla",
                n_kv_heads=planned["n_heads"],  # one latent for all of this layer's heads
                head_dim=mla["qk_nope_head_dim"] + a.qk_rope_head_dim,
                **mla,
                **indexer_plan_fields(a.indexer, True if i is None else attn_fields["indexer"][i]),
                **planned,
            )
        kv = (a.n_kv_heads or a.n_heads) if i is None else attn_fields["n_kv_heads"][i]
        head_dim = a.head_dim or m.d_model // a.n_heads  # the section's, also on layers with other head counts
        return AttentionPlan(
            kind=a.kind, n_kv_heads=kv, head_dim=head_dim, v_head_dim=a.v_head_dim, **moa_fields(a.experts), **planned
        )

    shared_plans: dict[tuple[Any, ...], AttentionPlan] = {}

    def layer_attention(i: int) -> AttentionPlan:
        """Layer i's attention, one frozen plan per distinct set of per-layer values: a 4096-layer model built
        from one section holds a handful, not 4096 equal copies. A value that is a section (rope_scaling) is
        keyed by identity: layers given the same section object share it."""
        values = (window[i], rope[i], *(v[i] for v in attn_fields.values()))
        key = tuple(v if v is None or isinstance(v, (bool, int, float, str)) else id(v) for v in values)
        if key not in shared_plans:
            shared_plans[key] = attention(window[i], rope[i], i)
        return shared_plans[key]

    mixers = _mixer_plans(spec, mixer_kind_per_layer(spec))
    ffns = {"dense": dense, "moe": moe, "none": AbsentPlan()}
    pair = dense if m.block == "shortcut_moe_pair" else None  # LongCat-Flash: every layer (block_checks)
    own_moe = {i: _moe(spec, e) for i, e in moe_layer_sections(spec).items()}  # layers.*.moe (Step-3.7's clamps)
    ffn_of = [own_moe.get(i) or ffns[kind] for i, kind in enumerate(ffn_kind)]
    layers = tuple(
        LayerPlan(i, layer_attention(i), ffn_of[i], mixers[i], pair)  # type: ignore[arg-type]
        for i in range(n)
    )
    layers, encoder = stack_plans(spec, layers, attention, ffns)  # decoder-only: as they are, no encoder
    mtp: tuple[LayerPlan, ...] = ()
    if spec.mtp is not None:
        mtp = tuple(
            LayerPlan(
                n + j,
                attention(a.window, m.positions.kind == "rope"),
                moe if spec.mtp.ffn == "moe" else dense,  # type: ignore[arg-type]
            )
            for j in range(spec.mtp.n_layers)
        )
    sc = m.positions.scaling
    partial = m.positions.rotary_dim is not None or m.positions.partial_rotary_factor is not None
    rotary_dim = m.positions.rotary_width(layers[0].attention.head_dim) if partial else None
    return ResolvedModel(
        **{f: getattr(m, f) for f in _MODEL_AS_WRITTEN},
        name=spec.name,
        norm=NormPlan(
            m.norm.kind,
            m.norm.eps,
            m.norm.placement,
            m.norm.bias if m.norm.kind == "layernorm" else False,
            m.norm.unit_offset,
        ),
        residual_scales=_residual_scales(m),
        positions=PositionsPlan(
            m.positions.kind,
            m.positions.theta,
            RopeScalingPlan(**sc.model_dump()) if sc is not None else None,
            rotary_dim,
            tuple(m.positions.mrope_sections) if m.positions.mrope_sections is not None else None,
            m.positions.mrope_interleaved,
            m.positions.n_buckets,
            m.positions.max_distance,
            m.positions.offset,
        ),
        layers=layers,
        encoder=encoder,
        expert_capacity=spec.encoder.expert_capacity if spec.encoder is not None else None,
        hyper_connections=hyper_plan(m.hyper_connections),
        norm_gate=norm_gate_plan(m.norm_gate),
        mtp=mtp,
        frozen=tuple(sorted(set(spec.frozen))),
        spec_hash=spec_hash,
        source_file=file,
        description=spec.description,
        extra={"warnings": warnings} if warnings else {},
    )


def _residual_scales(m: Model) -> ResidualScalesPlan | None:
    """normed_residual's factors (all 1 unless written); None for every other placement."""
    if m.norm.placement != "normed_residual":
        return None
    r = m.residual_scales or ResidualScales()
    return ResidualScalesPlan(**{k: (getattr(r, k).alpha, getattr(r, k).beta) for k in ("attention", "mixer", "ffn")})


def _dense(spec: Spec) -> DenseFFNPlan | None:
    return DenseFFNPlan(**schema_values(DenseFFNPlan, spec.ffn)) if spec.ffn is not None else None


def _moe(spec: Spec, section: MoE | None = None) -> MoEPlan | None:
    """The MoE section's plan (``section``: a layer's copy of it with its overrides): every field as written, the
    segmented sizes and the router's k resolved."""
    e = spec.moe if section is None else section
    if e is None:
        return None
    g = e.granularity
    n_experts = e.n_experts * g
    d_ff = e.d_ff // g
    top_k = n_experts if e.router.dense else (e.router.top_k or 0) * g
    return MoEPlan(
        **{
            **schema_values(MoEPlan, e),
            "n_experts": n_experts,
            "d_ff": d_ff,
            "d_ff_shared": e.d_ff_shared or d_ff,
            "router": RouterPlan(**{**schema_values(RouterPlan, e.router), "top_k": top_k}),
        }
    )
