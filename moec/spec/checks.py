"""Semantic (cross-field) checks. Each returns problems with locations; none stops at the first.

``check_spec`` runs a list of small named steps (attention, positions, layers, FFN sections, router,
experts); each reports through the same ``bad(path, message)``, which locates the path in the YAML.
"""

from __future__ import annotations

from moec.errors import Problem
from moec.spec.beam_options import problems as beam_option_problems
from moec.spec.block_checks import Bad, check_block, check_zero_experts
from moec.spec.encdec import problems as encdec_problems
from moec.spec.gate_rotary import problems as gate_rotary_problems
from moec.spec.hyper import problems as hyper_problems
from moec.spec.indexer import problems as indexer_problems
from moec.spec.mixer_checks import check_mixers
from moec.spec.moa import NOT_TAKEN as MOA_NOT_TAKEN
from moec.spec.moa import problems as moa_problems
from moec.spec.moe_checks import check_moe
from moec.spec.moe_override import problems as moe_override_problems
from moec.spec.norm_gate import problems as norm_gate_problems
from moec.spec.rope_scaling import layer_problems as layer_scaling_problems
from moec.spec.schema import Override, RopeScaling, Spec
from moec.spec.shared_activation import problems as shared_activation_problems
from moec.spec.yamlio import Located, Path, dotted


def check_spec(spec: Spec, loc: Located) -> list[Problem]:
    out: list[Problem] = []
    moa = moa_problems(spec)
    # a field a mixture of attention heads does not take is one error, moa's: no other check's word on its value
    not_taken = {dotted(path) for path, message in moa if message == MOA_NOT_TAKEN}

    def bad(path: Path, msg: str) -> None:
        if dotted(path) in not_taken and msg != MOA_NOT_TAKEN:
            return
        m = loc.mark_for(path)
        out.append(Problem(m.file, m.line, m.column, dotted(path), msg))

    if spec.attention.kind in ("gqa", "moa"):  # a mixture of attention heads' heads and KV heads are GQA's
        _check_gqa(spec, bad)
    else:
        _check_mla(spec, bad)
    _check_mla_options(spec, bad)
    _check_attention_features(spec, bad)
    _check_partial_rotary(spec, bad)
    _check_mrope(spec, bad)
    _check_rope_scaling(spec, bad)
    _check_layers(spec, loc, bad)
    _check_ffn_sections(spec, bad)
    check_mixers(spec, bad)
    for path, message in (
        *indexer_problems(spec),
        *moa,
        *encdec_problems(spec),
        *gate_rotary_problems(spec),
        *layer_scaling_problems(spec),
        *beam_option_problems(spec),
        *hyper_problems(spec),
        *norm_gate_problems(spec),
        *shared_activation_problems(spec),
        *moe_override_problems(spec, moe_activation_inherited=("moe", "activation") not in loc.marks),
    ):
        bad(path, message)
    check_block(spec, bad)
    check_zero_experts(spec, bad)
    check_moe(spec, loc, bad)
    return out


# --- attention ---------------------------------------------------------------------------------


def _check_gqa(spec: Spec, bad: Bad) -> None:
    m, a = spec.model, spec.attention
    kv = a.n_kv_heads or a.n_heads
    if a.n_heads % kv:
        bad(("attention", "n_kv_heads"), f"n_heads ({a.n_heads}) is not divisible by n_kv_heads ({kv})")
    if a.head_dim is None and m.d_model % a.n_heads:
        bad(
            ("attention", "n_heads"),
            f"d_model ({m.d_model}) is not divisible by n_heads ({a.n_heads}); give attention.head_dim",
        )
    hd = a.head_dim or m.d_model // a.n_heads
    partial = m.positions.rotary_dim is not None or m.positions.partial_rotary_factor is not None
    if m.positions.kind == "rope" and hd % 2 and not partial:
        bad(("attention", "head_dim"), f"rotary positions need an even head_dim, got {hd}")
    for f in ("q_lora_rank", "kv_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim", "latent_norm_eps"):
        if getattr(a, f) is not None:
            bad(("attention", f), "only meaningful with attention.kind: mla")
    for path, section in spec.layers.attention_sections():
        for f in ("kv_lora_rank", "qk_nope_head_dim", "v_head_dim"):
            if f in section.model_fields_set:
                bad((*path, f), "only meaningful with attention.kind: mla")


def _check_mla(spec: Spec, bad: Bad) -> None:
    m, a = spec.model, spec.attention
    for f in ("kv_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim"):
        if getattr(a, f) is None:
            bad(("attention",), f"attention.kind mla needs {f}")
    if a.n_kv_heads is not None and a.n_kv_heads != a.n_heads:
        bad(("attention", "n_kv_heads"), "MLA has no separate KV heads (leave n_kv_heads unset)")
    if a.head_dim is not None:
        bad(("attention", "head_dim"), "MLA head dims are qk_nope_head_dim + qk_rope_head_dim and v_head_dim")
    if a.bias or a.out_bias:
        bad(("attention", "bias"), "biases are not supported with MLA")
    if m.positions.kind == "rope" and a.qk_rope_head_dim is not None and a.qk_rope_head_dim % 2:
        bad(
            ("attention", "qk_rope_head_dim"),
            f"rotary positions need an even qk_rope_head_dim, got {a.qk_rope_head_dim}",
        )
    if m.positions.kind == "rope" and a.qk_rope_head_dim == 0:
        bad(("attention", "qk_rope_head_dim"), "MLA with rope positions needs qk_rope_head_dim > 0")
    for f in ("chunk", "temperature_tuning"):
        if getattr(a, f) is not None or _written_anywhere(spec, f):
            bad(("attention", f), "not supported with MLA")
    if a.value_scale is not None:
        bad(("attention", "value_scale"), "not supported with MLA (a GQA option: MiMo-V2-Flash)")
    if a.qk_norm or _written_anywhere(spec, "qk_norm", value=True):
        bad(("attention", "qk_norm"), "MLA normalises its latents (q_a/kv_a norms); qk_norm is not supported")


# MLA's own options: what each is (for the refusal on other kinds) and what it needs of the MLA section
_MLA_OPTIONS = {
    "latent_scales": "it scales MLA's latents",
    "rope_key_norm": "it norms MLA's rotary key",
    "query_gate": "it replaces MLA's q_b_proj",
}


def _check_mla_options(spec: Spec, bad: Bad) -> None:
    """LongCat-Flash's latent_scales, Dots3's rope_key_norm and A.X-K2's query_gate: MLA only, each refused by name
    on the other kinds, and what each needs of the MLA section."""
    a = spec.attention
    if a.kind != "mla":
        for f, what in _MLA_OPTIONS.items():
            if getattr(a, f):
                bad(("attention", f), f"only meaningful with attention.kind: mla ({what})")
        return
    if a.latent_scales and a.q_lora_rank is None:
        bad(("attention", "latent_scales"), "needs q_lora_rank (the query latent it scales)")
    if a.rope_key_norm and not a.qk_rope_head_dim:
        bad(("attention", "rope_key_norm"), "needs a rotary key to norm (qk_rope_head_dim > 0)")
    if a.query_gate and (a.q_lora_rank is None or a.output_gate != "none"):
        bad(("attention", "query_gate"), "needs q_lora_rank (it reads the query latent) and no attention.output_gate")


def _check_attention_features(spec: Spec, bad: Bad) -> None:
    m, a = spec.model, spec.attention
    if a.qk_norm_scope != "head" and not a.qk_norm:
        bad(("attention", "qk_norm_scope"), "only meaningful with qk_norm: true")
    for f in ("window", "chunk"):
        v = getattr(a, f)
        if v is not None and v > m.max_seq_len:
            bad(("attention", f), f"{v} exceeds model.max_seq_len ({m.max_seq_len})")
    if a.qk_norm_after_rope and (a.qk_norm_kind != "model" or a.qk_norm_scope != "head"):
        bad(("attention", "qk_norm_after_rope"), "needs the learned per-head qk-norm (qk_norm_kind model, scope head)")
    if a.qk_norm_after_rope and not a.qk_norm and not _written_anywhere(spec, "qk_norm", value=True):
        bad(("attention", "qk_norm_after_rope"), "only meaningful with qk_norm: true (here or in layers.*.attention)")
    if a.qk_norm_kind == "l2" and a.qk_norm_scope != "head":
        bad(("attention", "qk_norm_kind"), "the weightless l2 norm is per head: needs qk_norm_scope head")
    if a.qk_norm_kind != "model" and not a.qk_norm and not _written_anywhere(spec, "qk_norm"):
        bad(("attention", "qk_norm_kind"), "only meaningful with qk_norm: true (here or in layers.*.attention)")
    if m.positions.kind != "rope" and _written_anywhere(spec, "rope_theta"):
        bad(_where_written(spec, "rope_theta"), "a layer's rope_theta needs model.positions.kind: rope")
    if a.temperature_tuning is None and _written_anywhere(spec, "temperature_tuning", value=True):
        bad(("attention", "temperature_tuning"), "layers turn temperature_tuning on but attention has none")


def _check_partial_rotary(spec: Spec, bad: Bad) -> None:
    m, a = spec.model, spec.attention
    pos = m.positions
    given = [f for f in ("rotary_dim", "partial_rotary_factor") if getattr(pos, f) is not None]
    if not given:
        return
    here: Path = ("model", "positions", given[-1])
    if len(given) == 2:
        bad(here, "give rotary_dim or partial_rotary_factor, not both")
    if pos.kind != "rope":
        bad(here, "only meaningful with kind: rope")
    if a.kind == "mla":
        bad(here, "MLA rotates its own qk_rope_head_dim dims; set that instead")
        return
    hd = a.head_dim or m.d_model // a.n_heads
    rot = pos.rotary_width(hd)
    if rot > hd:
        bad(here, f"{rot} rotated dims exceed the head dim ({hd})")
    elif rot < 2 or rot % 2:
        how = (
            f"head_dim {hd} × {pos.partial_rotary_factor} gives {rot}"
            if given[-1] == "partial_rotary_factor"
            else f"got {rot}"
        )
        bad(here, f"rotary positions need an even number (≥ 2) of rotated dims; {how}")


def _check_mrope(spec: Spec, bad: Bad) -> None:
    pos = spec.model.positions
    here: Path = ("model", "positions")
    if pos.mrope_sections is None:
        if pos.mrope_interleaved:
            bad(here + ("mrope_interleaved",), "only meaningful with mrope_sections")
        return
    if pos.kind != "rope":
        bad(here + ("mrope_sections",), "only meaningful with kind: rope")
        return
    rot = _rotated_dims(spec)
    if rot and sum(pos.mrope_sections) != rot // 2:
        bad(
            here + ("mrope_sections",),
            f"the sections share the {rot // 2} rotary frequencies (rotated dims / 2); they sum to "
            f"{sum(pos.mrope_sections)}",
        )


def _rotated_dims(spec: Spec) -> int | None:
    """The rotated dims per q/k head (None when MLA leaves qk_rope_head_dim unset: reported elsewhere)."""
    m, a = spec.model, spec.attention
    if a.kind == "mla":
        return a.qk_rope_head_dim
    return m.positions.rotary_width(a.head_dim or m.d_model // a.n_heads)


def _check_rope_scaling(spec: Spec, bad: Bad) -> None:
    """The model's scaling and each layer's own (layers.*.attention.rope_scaling), alike, each against the rotated
    dims of the layers it scales (a layer's own rotary_dim, else the model's); that a layer's own needs rope
    positions is moec.spec.rope_scaling's check (a layer's null needs them too)."""
    from moec.spec.resolve import MODEL_SCALING, attention_fields_per_layer  # resolve reads the checked sections

    model_scaling = spec.model.positions.scaling
    if model_scaling is not None and spec.model.positions.kind != "rope":
        bad(("model", "positions", "scaling"), "scaling applies to rope positions only")
    own = [((*path, "rope_scaling"), a.rope_scaling, a.rope_scaling) for path, a in spec.layers.attention_sections()]
    fields, model_rot = attention_fields_per_layer(spec), _rotated_dims(spec)
    layer_rots = [r or model_rot for r in fields["rotary_dim"]]

    def rotated_by(scaling: object) -> set[int | None]:
        """The rotated dims of the layers whose scaling is ``scaling`` (a section's, by identity), or the model's;
        the model's scaling also reaches the MTP blocks, which rotate the model's dims."""
        rots = {r for r, sc in zip(layer_rots, fields["rope_scaling"], strict=True) if sc is scaling}
        return rots | {model_rot} if not rots or (scaling is MODEL_SCALING and spec.mtp is not None) else rots

    for here, sc, key in [(("model", "positions", "scaling"), model_scaling, MODEL_SCALING), *own]:
        if sc is not None:
            _check_scaling(sc, rotated_by(key), here, bad)


def _check_scaling(sc: RopeScaling, rots: set[int | None], here: Path, bad: Bad) -> None:
    if sc.kind in ("dynamic", "ntk_alpha") and 2 in rots:
        # NTK's base stretch has the exponent dim / (dim - 2)
        bad(here + ("kind",), f"{sc.kind} scaling needs more than 2 rotated dims per head")
    _check_factor_or_alpha(sc, here, bad)
    if sc.kind == "longrope":
        for f in ("short_factor", "long_factor"):
            v = getattr(sc, f)
            wrong = sorted(r for r in rots if r and len(v or ()) != r // 2)
            if v is None:
                bad(here, f"longrope scaling needs {f}")
            elif wrong:
                bad(here + (f,), f"needs rotary dim / 2 = {wrong[0] // 2} values, got {len(v)}")
        for f in ("short_mscale", "long_mscale"):
            if getattr(sc, f) is None:
                bad(here, f"longrope scaling needs {f}")
    else:
        for f in ("short_factor", "long_factor", "short_mscale", "long_mscale"):
            if getattr(sc, f) is not None:
                bad(here + (f,), "only meaningful with kind: longrope")
    if sc.kind in ("yarn", "llama3", "longrope") and sc.original_max_seq_len is None:
        bad(here + ("original_max_seq_len",), f"{sc.kind} scaling needs original_max_seq_len")


def _check_factor_or_alpha(sc: RopeScaling, here: Path, bad: Bad) -> None:
    """ntk_alpha stretches the base by alpha; every other kind scales by factor."""
    if sc.kind == "ntk_alpha":
        if sc.alpha is None:
            bad(here, "ntk_alpha scaling needs alpha")
        if sc.factor is not None:
            bad(here + ("factor",), "ntk_alpha stretches the base by alpha; it takes no factor")
        return
    if sc.factor is None:
        bad(here, f"{sc.kind} scaling needs factor")
    if sc.alpha is not None:
        bad(here + ("alpha",), "only meaningful with kind: ntk_alpha")


# --- layers ------------------------------------------------------------------------------------


def _check_layers(spec: Spec, loc: Located, bad: Bad) -> None:
    max_seq = spec.model.max_seq_len
    for f in ("window", "chunk"):
        d_v = getattr(spec.layers.default.attention, f)
        if d_v is not None and d_v > max_seq:
            bad(("layers", "default", "attention", f), f"{d_v} exceeds model.max_seq_len ({max_seq})")
    for j, ov in enumerate(spec.layers.overrides):
        _check_override(j, ov, spec.model.n_layers, max_seq, loc, bad)


def _check_override(j: int, ov: Override, n: int, max_seq: int, loc: Located, bad: Bad) -> None:
    base: Path = ("layers", "overrides", j, "select")
    s = ov.select
    if s.layers is not None:
        # `select: [..]` is shorthand for `select: {layers: [..]}`; point at whichever was written
        written_as_list = (base + (0,)) in loc.marks
        for i, idx in enumerate(s.layers):
            if idx >= n:
                bad(
                    base + ((i,) if written_as_list else ("layers", i)),
                    f"layer {idx} does not exist (model.n_layers is {n})",
                )
    for f in ("first", "last", "start"):
        v = getattr(s, f)
        if v is not None and v >= n:
            bad(base + (f,), f"layer {v} does not exist (model.n_layers is {n})")
    if s.first is not None and s.last is not None and s.last < s.first:
        bad(base + ("last",), f"last ({s.last}) is before first ({s.first})")
    for f in ("window", "chunk"):
        v = getattr(ov.attention, f) if ov.attention is not None else None
        if v is not None and v > max_seq:
            bad(("layers", "overrides", j, "attention", f), f"{v} exceeds model.max_seq_len ({max_seq})")


def _check_ffn_sections(spec: Spec, bad: Bad) -> None:
    """Every FFN kind some layer (or MTP block) uses has its section."""
    from moec.spec.traps import ffn_kinds_used

    kinds = ffn_kinds_used(spec)
    if "dense" in kinds and spec.ffn is None:
        bad((), "some layers use a dense FFN but the spec has no ffn section")
    if "moe" in kinds and spec.moe is None:
        bad((), "some layers use an MoE FFN but the spec has no moe section")


def _where_written(spec: Spec, field: str) -> Path:
    """The first place layers.default or an override writes attention.<field>."""
    return next((*path, field) for path, a in spec.layers.attention_sections() if field in a.model_fields_set)


def _written_anywhere(spec: Spec, field: str, value: bool | None = None) -> bool:
    """Whether layers.default or an override writes attention.<field> (with ``value``, if given)."""
    written = [a for _, a in spec.layers.attention_sections()]
    return any(field in a.model_fields_set and (value is None or getattr(a, field) == value) for a in written)
