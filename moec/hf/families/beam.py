"""Beam (``model_type`` beam, BeamForCausalLM; Reflection AI's Beam-1.0): GQA with RMSNorm(head_dim) on q and k and
a sigmoid output gate per element whose bias is one per head (``gate_proj`` without a bias, ``gate_bias`` (h,):
``attention.output_gate: element``, ``output_gate_bias: head``); sliding-window and full layers by ``layer_types``
(unset: full on every sixth layer and the last), each type rotating with its own ``rope_parameters`` entry or, where
that entry is null (the full layers by default), without positions and with the queries scaled by
``(1 + (pos + 1)/2048)^0.1`` (``attention.temperature_tuning.form: power``); sandwich norms, four RMSNorms a layer,
whose residual adds are depth-scaled (the n-th add, the embedding being the first, is x·√((n−1)/n) + f/√n:
``model.depth_scaled_residual``); dense SwiGLU MLPs on the ``mlp_layer_types`` "dense" layers (unset: the first
three), MoE on the "sparse" ones: sigmoid scores, a selection-only ``e_score_correction_bias``, groups ranked by
their best two, the top-k weights renormalised (sum + 1e-20) when ``norm_topk_prob`` and scaled by
``routed_scaling_factor``; the logits soft-capped at ``final_logit_softcapping``.

Checkpoints keep transformers' names: ``post_attention_layernorm`` is the norm after attention,
``pre_feedforward_layernorm`` / ``post_feedforward_layernorm`` those around the MLP, ``self_attn.gate_bias`` the
gate's per-head bias (moec's ``attn.gate_bias``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from moec.hf.draft import CannotExport, Draft, Family, HFConfig, is_int, is_number, shown
from moec.hf.families._common import (
    all_known,
    defaults,
    dense_layers_ffn,
    mlp_layer_types,
    moe_core,
    router,
    typed_windows,
)
from moec.hf.families._export_common import dense_plan, layer_types, moe_plan
from moec.hf.families._typed_rope import TypedRope, typed_base
from moec.hf.families.afmoe import SandwichMapper, export_placed, gated_attention
from moec.strict import MAX_LAYERS

if TYPE_CHECKING:
    from moec.spec.plan import ResolvedModel

# fmt: off
DEFAULTS = defaults(10000.0, vocab_size=151936, hidden_size=5120, intermediate_size=20480, num_hidden_layers=52,
                    num_attention_heads=48, num_key_value_heads=8, hidden_act="silu", max_position_embeddings=8192,
                    rms_norm_eps=1e-6, tie_word_embeddings=False, rope_parameters=None, attention_bias=False,
                    sliding_window=512, attention_dropout=0.0, moe_intermediate_size=2560, num_experts_per_tok=8,
                    num_experts=256, norm_topk_prob=True, head_dim=128, layer_types=None, mlp_layer_types=None,
                    n_group=8, topk_group=4, routed_scaling_factor=2.5, final_logit_softcapping=30.0)
# fmt: on

SLIDING, FULL = "sliding_attention", "full_attention"
# BeamRotaryEmbedding: the default rope of a type's entry, whole heads (its unset entries _rope_per_type fills in)
BEAM_ROPE = TypedRope("Beam", {}, lambda mapping: 1.0)
# compute_attention_scaling (modeling_beam.py): the NoPE layers' queries times (1 + (pos + 1)/2048)^0.1, in code
NOPE_QUERY_LENGTH, NOPE_QUERY_POWER = 2048.0, 0.1


def default_layer_types(n: int) -> list[str]:
    """BeamConfig.__post_init__: full attention on every sixth layer and on the last, sliding elsewhere."""
    types = [SLIDING if (i + 1) % 6 else FULL for i in range(n)]
    return [*types[:-1], FULL] if types else types


def translate(c: HFConfig, d: Draft) -> None:
    types = _layer_types(c)
    per_type = _rope_per_type(c, types)
    _base(c, d, per_type, types)
    d.put("model.norm.placement", "sandwich", "BeamDecoderLayer: x + post_norm(f(pre_norm(x))) for attention and MLP")
    d.put("model.depth_scaled_residual", True, "BeamDecoderLayer: depth_scaled_residual_add, add 2(i+1) and 2(i+1)+1")
    _attention(c, d)
    if types is not None and d.fits_layers(c, "layer_types", types) and per_type is not None:
        _typed_layers(c, d, types, per_type)
    else:  # the layer types or their rope were refused (reported): the window they place is not another problem
        c.value("sliding_window")
    moe_core(c, d, experts_key="num_experts", width_key="moe_intermediate_size")
    router(
        d,
        "BeamTopKRouter: sigmoid, + e_score_correction_bias for selection, groups by top-2 sum",
        score="sigmoid",
        softmax_after_topk=False,
        selection_bias=True,
        group_score="top2_sum",
    )
    d.put("moe.router.normalize_topk", c.bool("norm_topk_prob"), c.src("norm_topk_prob") + " (sum + 1e-20)")
    d.put("moe.router.n_groups", c.int("n_group"), c.src("n_group"))
    d.put("moe.router.topk_groups", c.int("topk_group"), c.src("topk_group"))
    d.put("moe.router.scale", c.float("routed_scaling_factor"), c.src("routed_scaling_factor") + " (BeamMoE output)")
    _mlp_layers(c, d)
    dense_layers_ffn(c, d, bias_src="BeamMLP has no biases")
    cap = c.float("final_logit_softcapping", optional=True)
    if cap is not None and cap <= 0:
        c.bad("final_logit_softcapping", f"{shown(cap)}: expected null (off) or a positive cap")
    elif cap is not None:
        d.put("model.logit_softcap", cap, c.src("final_logit_softcapping"))


def _layer_types(c: HFConfig) -> list[str] | None:
    """layer_types as given (each full_attention or sliding_attention), or BeamConfig's default; None if refused."""
    if c.value("layer_types") is None:
        n = c.value("num_hidden_layers")
        return default_layer_types(n) if is_int(n) and 0 < n <= MAX_LAYERS else None  # else refused by base
    types = c.str_list("layer_types")
    if types is None or not all_known(c, "layer_types", types, (FULL, SLIDING)):
        return None
    return types


def _rope_per_type(c: HFConfig, types: list[str] | None) -> dict[str, dict[str, Any] | None] | None:
    """rope_parameters as BeamRotaryEmbedding reads it: per attention type a layer uses, a mapping of the default
    rope_type with its rope_theta, or null (that type runs without positions). None once refused."""
    given = c.value("rope_parameters")
    if given is None:
        return {SLIDING: {"rope_type": "default", "rope_theta": c.defaults["default_theta"]}, FULL: None}
    if not isinstance(given, dict):
        c.bad("rope_parameters", f"{shown(given)}: expected a mapping per attention type ({FULL}, {SLIDING})")
        return None
    ok = True
    for t in sorted(set(types or ()) | set(given)):
        if t not in (FULL, SLIDING):
            c.bad(f"rope_parameters.{t}", f"{shown(t)} is not one of {FULL}, {SLIDING}")
            ok = False
        elif t not in given:
            c.bad("rope_parameters", f"no entry for {t}, which layers use (null: no positions)")
            ok = False
        elif given[t] is not None:
            ok = _default_rope_ok(c, t, given[t]) and ok
    return dict(given) if ok else None


def _default_rope_ok(c: HFConfig, t: str, p: Any) -> bool:
    """One type's mapping: rope_type default and a positive rope_theta, nothing else (compute_default_rope_parameters
    reads nothing else, and a key it ignores would be a silent difference)."""
    where = f"rope_parameters.{t}"
    if not isinstance(p, dict):
        c.bad(where, f"{shown(p)}: expected a mapping or null")
        return False
    ok = True
    if p.get("rope_type", "default") != "default":
        c.bad(f"{where}.rope_type", f"{shown(p.get('rope_type'))}: moec reads Beam's default rope type only")
        ok = False
    theta = p.get("rope_theta")
    if not is_number(theta) or theta <= 0:
        c.bad(f"{where}.rope_theta", f"{shown(theta)}: expected a positive number")
        ok = False
    for k in sorted(set(p) - {"rope_type", "rope_theta"}):
        c.bad(f"{where}.{k}", "BeamRotaryEmbedding's default rope ignores it: ambiguous")
        ok = False
    return ok


def _base(c: HFConfig, d: Draft, per_type: dict[str, Any] | None, types: list[str] | None) -> None:
    """The common fields, the model's rope from a rotating type's entry as every per-type rope family reads it
    (_typed_rope.typed_base: the used type of the largest base); the NoPE types have none to offer."""
    rotating = {t: p for t, p in per_type.items() if p is not None} if per_type is not None else None
    typed_base(c, d, rotating, types or [], BEAM_ROPE)


def _attention(c: HFConfig, d: Draft) -> None:
    gated_attention(c, d, "Beam", "o_proj(attn · sigmoid(gate_proj(x) + gate_bias))")
    d.put("attention.output_gate_bias", "head", "BeamAttention.gate_bias: one per head, gate_proj has no bias")


def _typed_layers(c: HFConfig, d: Draft, types: list[str], per_type: dict[str, Any]) -> None:
    """Each type's window (sliding_window on the sliding layers), rotation or NoPE query scale, and own base."""
    why = "full every sixth and last"
    typed_windows(c, d, c.int("sliding_window", optional=True), types, why, null_refused=True)
    src = "layer_types" if c.value("layer_types") is not None else f"layer_types unset: {why}"
    d.rope = [per_type[t] is not None for t in types]
    d.rope_note = f"{src}: a type rotates by its rope_parameters entry, null: none"
    if not all(d.rope):
        d.section(
            "attention.temperature_tuning",
            floor_scale=(NOPE_QUERY_LENGTH, "compute_attention_scaling: q · (1 + (pos + 1)/2048)^0.1"),
            scale=(NOPE_QUERY_POWER, ""),
            form=("power", ""),
        )
    d.layer_attention["temperature_tuning"] = ([not r for r in d.rope], f"{src}: on the layers without rope")
    model_theta = d.get("model.positions.theta")
    own = [float(per_type[t]["rope_theta"]) if per_type[t] and per_type[t]["rope_theta"] != model_theta else None
           for t in types]  # fmt: skip
    if any(x is not None for x in own):
        d.layer_attention["rope_theta"] = (own, "rope_parameters.<layer type>.rope_theta (a layer's own base)")


def _mlp_layers(c: HFConfig, d: Draft) -> None:
    """mlp_layer_types: 'sparse' is BeamMoE, 'dense' BeamMLP(intermediate_size); unset, the first three dense."""
    k = min(3, d.n_layers)
    unset = ["dense"] * k + ["sparse"] * (d.n_layers - k)
    mlp_layer_types(c, d, unset, "mlp_layer_types unset: the first three layers dense, the rest sparse (BeamConfig)")


def _export_rope(m: ResolvedModel, types: list[str]) -> dict[str, dict[str, Any] | None]:
    """rope_parameters per layer type: each type's one base, or null where its layers have no positions."""
    out: dict[str, dict[str, Any] | None] = {}
    for t in sorted(set(types)):
        attns = {(lp.attention.rope, lp.attention.rope_theta) for lp, u in zip(m.layers, types, strict=True) if u == t}
        if len(attns) > 1:
            raise CannotExport(f"rotates every {t} layer alike (one rope_parameters entry a type)")
        ((rope, theta),) = attns
        out[t] = {"rope_type": "default", "rope_theta": theta or m.positions.theta} if rope else None
    return out


def export(m: ResolvedModel) -> dict[str, Any]:
    """The plan as a beam config.json: sandwich norms with depth-scaled adds, the element gate with its per-head
    bias, a rope entry or NoPE per layer type, dense and sparse layers by mlp_layer_types, the grouped sigmoid router
    (the rest comes back changed from the re-import and is refused)."""
    if not m.depth_scaled_residual:
        raise CannotExport("scales every residual add by its depth (model.depth_scaled_residual)")
    cfg = export_placed(m, FAMILY, "sandwich", nope=True)
    a = m.layers[0].attention
    if (a.output_gate, a.output_gate_bias) != ("element", "head"):
        raise CannotExport("gates each attention output element, with one bias per head")
    if cfg.pop("rope_scaling") is not None:
        raise CannotExport("has no rope scaling")
    del cfg["rope_theta"]
    window, types = layer_types(m)
    e, f = moe_plan(m), dense_plan(m)
    cfg.update(
        layer_types=types,
        sliding_window=window,
        rope_parameters=_export_rope(m, types),
        attention_bias=a.bias,
        mlp_layer_types=["sparse" if lp.ffn.kind == "moe" else "dense" for lp in m.layers],
        intermediate_size=f.d_ff if f else e.d_ff,
        moe_intermediate_size=e.d_ff,
        num_experts=e.n_experts,
        num_experts_per_tok=e.router.top_k,
        norm_topk_prob=e.router.normalize_topk,
        n_group=e.router.n_groups,
        topk_group=e.router.topk_groups,
        routed_scaling_factor=e.router.scale,
        final_logit_softcapping=m.logit_softcap,
    )
    return cfg


class BeamMapper(SandwichMapper):
    """Beam's names: ``pre_feedforward_layernorm`` before the MLP, ``post_feedforward_layernorm`` after it."""

    ffn_norm = "pre_feedforward_layernorm."
    ffn_post_norms = ("post_feedforward_layernorm.",)


FAMILY = Family("beam", "BeamForCausalLM", DEFAULTS, translate, export=export, export_rank=348, mapper=BeamMapper)
