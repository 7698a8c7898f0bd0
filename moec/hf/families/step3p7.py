"""Step-3.7 (``model_type`` step3p7, Step3p7ForConditionalGeneration; StepFun's Step-3.7-Flash): the multimodal
wrapper; moec imports its ``text_config`` (``model_type`` step3p5: Step3p7TextModel and the LM head, the Step-3.5
text architecture) and leaves out the vision tower (Step3p7VisionModel: patch embedding, ViT blocks with layer
scales, two strided convolutions) and its projector, whose parameters the spec's notes count.

The text model: GQA with an RMSNorm(head_dim) on q and k before the rotation and a sigmoid output gate per head
(``gating`` true or "per-head"; "per-element": one per element) from its own projection ``g_proj``; the sliding
layers (``layer_types``) have their own query-head count (``per_layer_config``, else ``num_sliding_attention_heads``,
else the release's ``attention_other_setting``); rotary parameters per attention type (``rope_parameters`` per type,
or the release's per-layer ``rope_theta`` and ``partial_rotary_factors`` lists, one value per type) become each
layer's own base and rotary width. Every RMSNorm is Gemma's, 1 + w (``model.norm.unit_offset``). Dense MLPs on the
``mlp_layer_types`` "dense" layers (the release: ``moe_layers_enum``; unset, the first three), else MoE: sigmoid
scores, a selection-only ``e_score_correction_bias`` buffer, the top-k renormalised by their bare sum and scaled by
``moe_router_scaling_factor``, plus one shared MLP of ``share_expert_dim``.

Refused by name: SwiGLU clamps (``swiglu_limits``, ``swiglu_limits_shared``: silu(gate) clamped from above and up
clamped both ways, per layer, which no moec activation computes), a rope scaling on one attention type only (the
release's llama3 scaling of its full-attention layers: moec has one rope scaling per model), bidirectional
attention. The release's multi-token-prediction layers (``num_nextn_predict_layers``) are not built by transformers
and are not imported; the per-layer lists the release pads with their entries are cut to the decoder layers, as
transformers does.

Checkpoints (what save_pretrained writes: transformers' conversion mapping for step3p7, inverted) hold the text
model under ``model.``: the experts ``moe.{gate,up,down}_proj.weight`` stacked (E, f, d) and (E, d, f), the router
``moe.gate``, its selection bias ``moe.router_bias``, the shared MLP ``share_expert.``; the tower
(``vision_model.``) and projector (``vit_large_projector.``) are let go.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from moec.hf.draft import Draft, Family, HFConfig, is_int, is_number, shown
from moec.hf.families._common import (
    ROPE_TYPES,
    all_known,
    base,
    defaults,
    dense_layers_ffn,
    gqa,
    moe_core,
    reference_rope_type,
    router,
    typed_windows,
)
from moec.hf.families.hy_v3 import ignored
from moec.hf.mapper import Mapper

if TYPE_CHECKING:
    import torch

    from moec.hf.checkpoint import Checkpoint
    from moec.spec.plan import LayerPlan, MoEPlan, ResolvedModel

# Step3p7Config (the wrapper: no tie_word_embeddings field, so the head is untied unless it says otherwise),
# Step3p7TextConfig and Step3p7VisionConfig
DEFAULTS = {"default_theta": 10000.0, "tie_word_embeddings": False, "text_config": None, "vision_config": None,
            "projector_bias": False, "image_token_id": 151679}  # fmt: skip
# fmt: off
TEXT_DEFAULTS = defaults(10000.0, vocab_size=128815, hidden_size=4096, intermediate_size=11264, num_hidden_layers=45,
                         num_attention_heads=64, num_key_value_heads=8, head_dim=128, max_position_embeddings=128000,
                         rms_norm_eps=1e-5, num_experts_per_tok=8, n_routed_experts=288, moe_intermediate_size=1280,
                         share_expert_dim=1280, sliding_window=None, num_sliding_attention_heads=None,
                         attention_bias=False, query_pre_attn_scalar=None, moe_router_scaling_factor=1.0,
                         mlp_bias=False, layer_types=None, mlp_layer_types=None, swiglu_limits=None,
                         swiglu_limits_shared=None, mtp_layer_types=None, mtp_mlp_layer_types=None, gating=True,
                         use_bidirectional_attention=False, num_nextn_predict_layers=0)
VISION_DEFAULTS = {"hidden_size": 1536, "num_hidden_layers": 47, "num_channels": 3, "image_size": 728,
                   "patch_size": 14, "mlp_ratio": 8960 / 1536}
# fmt: on
# Step3p7TextConfig.attribute_map: alias → field
TEXT_ALIASES = {
    "num_local_experts": "n_routed_experts",
    "num_attention_groups": "num_key_value_heads",
    "moe_num_experts": "n_routed_experts",
    "moe_top_k": "num_experts_per_tok",
    "share_expert_dims": "share_expert_dim",
    "num_mtp_layers": "num_nextn_predict_layers",
}  # fmt: skip
# Step3p7VisionConfig.__post_init__: the release's names of its sizes
VISION_ALIASES = {"width": "hidden_size", "layers": "num_hidden_layers", "heads": "num_attention_heads"}
# the per-layer lists Step3p7TextConfig cuts to num_hidden_layers when the release pads them with MTP entries
PADDED = ("layer_types", "mlp_layer_types", "swiglu_limits", "swiglu_limits_shared", "rope_theta",
          "partial_rotary_factors")  # fmt: skip
GATES = {True: "head", "per-head": "head"}
FIRST_DENSE = 3  # Step3p7TextConfig: without mlp_layer_types or moe_layers_enum, MoE from layer 3 on


def translate(c: HFConfig, d: Draft) -> None:
    t = _text_config(c)
    n_mtp = _cut_mtp_padding(t)
    types = _layer_types(t)
    per_type = _rope_per_type(t, types)
    _base(t, d, per_type, types)
    d.put("model.tie_embeddings", c.bool("tie_word_embeddings"), c.src("tie_word_embeddings") + _text_tie_note(c, t))
    d.put("model.norm.unit_offset", True, "Step3p7RMSNorm: x/rms(x) · (1 + w), every norm (q/k too)")
    b = t.bool("attention_bias")
    gqa(t, d, bias=b, out_bias=b, bias_src=t.src("attention_bias") + " (q, k, v and o)", qk_norm=True)
    d.put("attention.qk_norm", True, "Step3p7Attention: RMSNorm(head_dim) on q and k, before the rotation")
    _gate(t, d)
    _scale(t, d)
    w = t.int("sliding_window", optional=True)
    typed_windows(t, d, w, ["full_attention"] * d.n_layers, "all full attention (Step3p7TextConfig)")
    if w is None and "sliding_attention" in types:
        t.bad("sliding_window", "null while layers slide (transformers cannot build their window)")
    _heads_per_layer(t, d, types)
    if per_type is not None and not t.failed("layer_types") and d.layers_known:
        _layer_rope(t, d, per_type, types)
    _moe(t, d)
    _mlp_layers(t, d)
    dense_layers_ffn(t, d, bias_src=t.src("mlp_bias"))
    _refused(t, d)
    _release_fields(t, d)
    c.value("image_token_id")
    c.value("projector_bias")
    for key in ("mtp_layer_types", "mtp_mlp_layer_types"):
        t.value(key)  # the MTP layers' own types: transformers builds them only for generate(use_mtp=True)
    note = d.fields["model.n_layers"][1]
    if n_mtp:
        note += f"; num_nextn_predict_layers {n_mtp}: transformers builds none (ignored)"
    tower = vision_params(c.mapping("vision_config"), c.value("projector_bias"), d.get("model.d_model"))
    left_out = "the vision tower and its projector (vision_config" + (f": {tower:,} parameters" if tower else "") + ")"
    d.put("model.n_layers", d.n_layers, f"{note}; left out: {left_out}, which act on image inputs only")


def _text_config(c: HFConfig) -> HFConfig:
    """text_config as a nested config located under ``text_config.``, its aliases under their fields' names."""
    raw = dict(c.mapping("text_config"))
    conflicts = []
    for alias, name in TEXT_ALIASES.items():
        if alias in raw:
            value = raw.pop(alias)
            if raw.setdefault(name, value) != value:
                conflicts.append((alias, name))
    t = HFConfig(raw, TEXT_DEFAULTS, prefix="text_config.")
    c.children.append(t)
    for alias, name in conflicts:
        t.bad(alias, f"disagrees with {name} ({shown(raw[name])}); one field")
    if raw.get("model_type") not in (None, "step3p5"):
        t.bad("model_type", f"{shown(raw['model_type'])}: the text model of step3p7 is step3p5")
    return t


def _cut_mtp_padding(t: HFConfig) -> int:
    """num_nextn_predict_layers, after cutting the per-layer lists padded with the MTP layers' entries to the
    decoder layers (Step3p7TextConfig.__post_init__)."""
    n_mtp = t.int("num_nextn_predict_layers", minimum=0)
    n = t.value("num_hidden_layers")
    if n_mtp and is_int(n):
        for key in PADDED:
            v = t.raw.get(key)
            if isinstance(v, list) and len(v) == n + n_mtp:
                t.raw[key] = v[:n]
    return n_mtp


def _layer_types(t: HFConfig) -> list[str]:
    """layer_types as transformers reads it: unset, all full attention; a sparse_attention_config is not built."""
    types = t.value("layer_types")
    if isinstance(types, list) and all(isinstance(x, str) for x in types):
        return types
    n = t.value("num_hidden_layers")
    return ["full_attention"] * (n if is_int(n) and n > 0 else 1)


def _rope_per_type(t: HFConfig, types: list[str]) -> dict[str, dict[str, Any]] | None:
    """The rope mapping of each attention type: rope_parameters when it holds one per used type (a saved
    config), else built as Step3p7TextConfig builds it from the release's rope_theta (one value, or one per
    layer), partial_rotary_factors (one per layer) and rope_scaling (the full-attention type's only). None once
    refused."""
    used = sorted(set(types) & set(ROPE_TYPES))
    given = t.raw.get("rope_parameters")
    if isinstance(given, dict) and used and all(isinstance(given.get(x), dict) for x in used):
        for key in ("rope_theta", "partial_rotary_factors", "rope_scaling"):
            if t.given(key):  # transformers keeps rope_parameters and lets these go: say which one runs
                t.bad(key, "given beside a rope_parameters mapping per layer type, which transformers uses: ambiguous")
        extra = sorted(set(given) - set(used))
        if extra:
            t.bad(f"rope_parameters.{extra[0]}", f"a mapping for {shown(extra[0])}, which no layer uses")
        return {x: dict(given[x]) for x in used}
    if given:
        t.bad("rope_parameters", f"{shown(given)}: expected one mapping per attention type ({', '.join(used)})")
        return None
    theta = _per_type_value(t, "rope_theta", types, float(TEXT_DEFAULTS["default_theta"]))
    factor = _per_type_value(t, "partial_rotary_factors", types, None)
    if theta in (None, False) or factor is False:
        return None
    per_type: dict[str, dict[str, Any]] = {}
    for x in used:
        per_type[x] = {"rope_type": "default", "rope_theta": theta[x]}
        if factor:
            per_type[x]["partial_rotary_factor"] = factor[x]
    scaling = t.value("rope_scaling")
    if scaling and "full_attention" in per_type:
        if not isinstance(scaling, dict):
            t.bad("rope_scaling", f"{shown(scaling)}: expected a mapping")
            return None
        per_type["full_attention"].update(scaling)
    elif scaling:
        t.bad("rope_scaling", "given, but no layer is full_attention, the only type transformers scales: ambiguous")
    return per_type


def _per_type_value(t: HFConfig, key: str, types: list[str], default: Any) -> Any:
    """A release's per-layer rope list (or one number) as one value per attention type, each type's first layer's
    (what transformers reads); a type whose layers disagree is refused (transformers would use its first
    layer's value for all). None: absent and no default; False: refused."""
    v = t.value(key)
    if v is None:
        return None if default is None else dict.fromkeys(types, default)
    values = v if isinstance(v, list) else [v] * len(types)
    if len(values) != len(types) or not all(is_number(x) and x > 0 for x in values):
        t.bad(key, f"{shown(v)}: expected one positive number per layer ({len(types)})")
        return False
    out: dict[str, Any] = {}
    for x, value in zip(types, values, strict=True):
        if out.setdefault(x, value) != value:
            t.bad(key, f"{x} layers disagree ({shown(out[x])}, {shown(value)}): transformers uses the first's")
            return False
    return out


def _base(t: HFConfig, d: Draft, per_type: dict[str, dict[str, Any]] | None, types: list[str]) -> None:
    """The common base, its rope read from the reference type's flat mapping (the others are per layer), its
    partial rotary factor the model's."""
    ref = reference_rope_type(per_type, types) if per_type is not None else None
    saved = {k: t.raw.pop(k) for k in ("rope_parameters", "rope_theta", "rope_scaling") if k in t.raw}
    if per_type is not None and ref is not None:
        t.raw["rope_parameters"] = {k: v for k, v in per_type[ref].items() if k != "partial_rotary_factor"}
    base(t, d, "Step3p7Text")
    t.raw.pop("rope_parameters", None)
    t.raw.update(saved)
    if ref is not None and "model.positions.theta" in d.fields:
        d.put(
            "model.positions.theta",
            d.get("model.positions.theta"),
            f"{ref} layers' rope_theta ({_rope_src(t, 'rope_theta')})",
        )
    factor = per_type[ref].get("partial_rotary_factor", 1.0) if per_type is not None and ref is not None else 1.0
    where = f"{ref} layers' partial_rotary_factor ({_rope_src(t, 'partial_rotary_factors')})"
    if not is_number(factor) or not 0 < factor <= 1:
        t.bad(f"rope_parameters.{ref}.partial_rotary_factor", f"{shown(factor)}: expected a number in (0, 1]")
    elif factor != 1.0:
        d.put("model.positions.partial_rotary_factor", factor, where)


def _rope_src(t: HFConfig, release_key: str) -> str:
    """Where the per-type rope comes from: a saved config's mapping per type, or the release's field."""
    return t.prefix + ("rope_parameters" if isinstance(t.raw.get("rope_parameters"), dict) else release_key)


def _layer_rope(t: HFConfig, d: Draft, per_type: dict[str, dict[str, Any]], types: list[str]) -> None:
    """Each layer's base and rotated dims from its type's mapping where they differ from the model's (the
    reference type's); the types' scalings must be one: moec has one rope scaling per model."""
    ref = reference_rope_type(per_type, types)
    if ref is None or t.failed("head_dim"):
        return
    per_layer = ("rope_theta", "partial_rotary_factor")
    scaling = {k: v for k, v in per_type[ref].items() if k not in per_layer}
    for x in sorted(set(per_type) - {ref}):
        other = {k: v for k, v in per_type[x].items() if k not in per_layer}
        if other != scaling:
            where = "rope_scaling" if t.given("rope_scaling") else f"rope_parameters.{x}"
            d.gap(
                t.prefix + where,
                t.value("rope_scaling") or other,
                f"{x} layers rotate with other rope scaling than the {ref} layers ({shown(scaling)}); moec gives a "
                "layer its own base and rotary width but one scaling per model",
                "layers.*.attention.rope_scaling: a layer's own rope scaling kind and parameters (Step-3.7-Flash: "
                "llama3 on full-attention layers, none on sliding ones). No count change",
            )
    head_dim = t.value("head_dim")

    def rotated(x: str) -> Any:
        factor = per_type[x].get("partial_rotary_factor", 1.0)
        return int(head_dim * factor) if is_number(factor) else None  # a bad factor is reported by the base

    theta, rot = float(per_type[ref]["rope_theta"]), rotated(ref)
    own_theta = [float(per_type[x]["rope_theta"]) if per_type[x]["rope_theta"] != theta else None for x in types]
    own_rot = [rotated(x) if rotated(x) != rot else None for x in types]
    note = "rope per layer type"
    if any(own_theta):
        d.layer_attention["rope_theta"] = (own_theta, f"{note}: rope_theta (a layer's own base)")
    if any(own_rot):
        d.layer_attention["rotary_dim"] = (own_rot, f"{note}: partial_rotary_factor × head_dim (a layer's own width)")


def _gate(t: HFConfig, d: Draft) -> None:
    g = t.value("gating")
    if GATES.get(g) if isinstance(g, (bool, str)) else None:
        d.put("attention.output_gate", "head", f"{t.src('gating')}: o_proj(attn · sigmoid(g_proj(x))), per head")
    else:  # false included: Step3p7Attention gates whatever gating says
        d.gap(
            t.prefix + "gating",
            g,
            "Step3p7Attention builds a gate of one value per element for anything but true or 'per-head', and its "
            "forward, which broadcasts one value per head, fails on it: no model to import",
            "none: set gating true or 'per-head' (the gate per head transformers runs)",
        )
        d.put("attention.output_gate", "head", "")
    d.put("attention.output_gate_fn", "sigmoid", "Step3p7Attention: sigmoid of g_proj")


def _scale(t: HFConfig, d: Draft) -> None:
    """query_pre_attn_scalar: the softmax scale is its -1/2 power (unset: head_dim's, the usual one)."""
    s = t.float("query_pre_attn_scalar", optional=True)
    if s is None or t.failed("head_dim") or s == t.value("head_dim"):
        return
    if s <= 0:
        t.bad("query_pre_attn_scalar", f"{shown(s)}: expected a positive number")
        return
    d.put("attention.scale", s**-0.5, t.src("query_pre_attn_scalar") + " ** -0.5")


def _heads_per_layer(t: HFConfig, d: Draft, types: list[str]) -> None:
    """The sliding layers' query heads: per_layer_config (a saved config) wins, else num_sliding_attention_heads,
    else the release's attention_other_setting.num_attention_heads, else num_attention_heads."""
    h = d.get("attention.n_heads")
    sliding, src = _sliding_heads(t, h)
    per_layer = t.value("per_layer_config")
    if per_layer is not None:
        heads = _per_layer_heads(t, d, per_layer, h)
        src = t.src("per_layer_config")
        if heads is not None and sliding is not None:
            listed = {heads[i] for i, x in enumerate(types) if x == "sliding_attention" and i < len(heads)}
            if listed - {sliding}:
                t.bad("per_layer_config", f"disagrees with {src}'s {sliding} sliding heads: ambiguous")
    else:
        heads = [sliding if x == "sliding_attention" else h for x in types]
    if heads is not None and d.fits_layers(t, "layer_types", heads) and set(heads) != {h}:
        d.layer_attention["n_heads"] = (heads, src)


def _sliding_heads(t: HFConfig, h: Any) -> tuple[Any, str]:
    other = t.mapping("attention_other_setting")
    for key, want in (("num_attention_groups", t.value("num_key_value_heads")), ("head_dim", t.value("head_dim"))):
        if key in other and other[key] != want:  # Step3p7TextConfig keeps only the head count of the setting
            t.bad(f"attention_other_setting.{key}", f"{shown(other[key])}: transformers ignores it ({shown(want)})")
    unknown = sorted(set(other) - {"num_attention_heads", "num_attention_groups", "head_dim", "attention_type"})
    if unknown:
        t.bad(f"attention_other_setting.{unknown[0]}", "a field transformers ignores")
    if other.get("attention_type", "sliding_attention") != "sliding_attention":
        t.bad("attention_other_setting.attention_type", f"{shown(other['attention_type'])}: transformers applies "
              "the setting to sliding_attention layers")  # fmt: skip
    given = t.int("num_sliding_attention_heads", optional=True)
    in_other = other.get("num_attention_heads")
    if given is not None:
        if in_other is not None and in_other != given:
            t.bad(
                "attention_other_setting.num_attention_heads", f"disagrees with num_sliding_attention_heads ({given})"
            )
        return given, t.src("num_sliding_attention_heads")
    if in_other is not None:
        if not is_int(in_other) or in_other < 1:
            t.bad("attention_other_setting.num_attention_heads", f"{shown(in_other)}: expected a positive integer")
            return h, ""
        return in_other, t.prefix + "attention_other_setting.num_attention_heads"
    return h, "num_attention_heads"


def _per_layer_heads(t: HFConfig, d: Draft, per_layer: Any, h: Any) -> list[Any] | None:
    """per_layer_config: a sparse {layer: {num_attention_heads: n}} (the only override Step3p7 writes)."""
    if not isinstance(per_layer, dict):
        t.bad("per_layer_config", f"{shown(per_layer)}: expected a mapping of layer index to overrides")
        return None
    heads = [h] * d.n_layers
    for key, over in per_layer.items():
        i = int(key) if isinstance(key, str) and key.isdigit() else key
        where = f"per_layer_config.{key}"
        if not is_int(i) or not 0 <= i < d.n_layers or not isinstance(over, dict):
            t.bad(where, f"{shown(key)}: {shown(over)}: expected a layer index below {d.n_layers} and a mapping")
            return None
        for k, v in over.items():
            if k != "num_attention_heads":
                d.gap(t.prefix + f"{where}.{k}", v, f"a per-layer {k}: moec reads a layer's head count only", k)
            elif not is_int(v) or v < 1:
                t.bad(f"{where}.{k}", f"{shown(v)}: expected a positive integer")
            else:
                heads[i] = v
    return heads


def _moe(t: HFConfig, d: Draft) -> None:
    act = t.value("hidden_act")
    if act != "silu":  # Step3p7TextConfig sets hidden_act to silu whatever the config says
        d.gap(t.prefix + "hidden_act", act, "transformers' Step3p7Text runs silu whatever hidden_act says: "
              "ambiguous", "none: remove hidden_act (what transformers runs) or set it to 'silu'")  # fmt: skip
        t.raw["hidden_act"] = "silu"
    moe_core(t, d, experts_key="n_routed_experts", width_key="moe_intermediate_size")
    router(
        d,
        "Step3p7TopKRouter: sigmoid, + e_score_correction_bias (a buffer) for selection only, top-k / their sum",
        score="sigmoid",
        softmax_after_topk=False,
        selection_bias=True,
        normalize_topk=True,
        normalize_eps=0.0,
    )
    d.put("moe.router.scale", t.float("moe_router_scaling_factor"), t.src("moe_router_scaling_factor"))
    d.section(
        "moe",
        n_shared_experts=(1, "Step3p7SparseMoeBlock: one shared Step3p7MLP, no gate, added to the routed sum"),
        d_ff_shared=(t.int("share_expert_dim"), t.src("share_expert_dim")),
    )


def _mlp_layers(t: HFConfig, d: Draft) -> None:
    """mlp_layer_types ('sparse': MoE, 'dense': Step3p7MLP(intermediate_size)); unset, the release's
    moe_layers_enum (the MoE layers' indices), else MoE from layer 3 on."""
    if t.value("mlp_layer_types") is not None:
        types = t.str_list("mlp_layer_types")
        if not d.fits_layers(t, "mlp_layer_types", types):
            return
        assert types is not None
        if not all_known(t, "mlp_layer_types", types, ("dense", "sparse")):
            return
        d.ffn, d.ffn_note = ["moe" if x == "sparse" else "dense" for x in types], "mlp_layer_types"
        t.value("moe_layers_enum")
        if t.given("moe_layers_enum"):  # transformers reads it only when mlp_layer_types is unset
            t.bad("moe_layers_enum", "given beside mlp_layer_types, which transformers uses: ambiguous")
    elif t.value("moe_layers_enum") is not None:
        moe = _moe_layers_enum(t)
        if moe is None:
            return
        d.ffn, d.ffn_note = ["moe" if i in moe else "dense" for i in range(d.n_layers)], t.src("moe_layers_enum")
    else:
        d.ffn = ["dense" if i < FIRST_DENSE else "moe" for i in range(d.n_layers)]
        d.ffn_note = f"mlp_layer_types unset: the first {FIRST_DENSE} layers dense, the rest MoE (Step3p7TextConfig)"
    ignored(t, d, "Step3p7Text", "moe_layer_freq", lambda v: v == [int(x == "moe") for x in d.ffn], "layers")


def _moe_layers_enum(t: HFConfig) -> set[int] | None:
    v = t.value("moe_layers_enum")
    items = v.split(",") if isinstance(v, str) else v
    if not isinstance(items, list) or not all(is_int(x) or (isinstance(x, str) and x.strip().isdigit()) for x in items):
        t.bad("moe_layers_enum", f"{shown(v)}: expected the MoE layers' indices, comma-separated or a list")
        return None
    return {int(x) for x in items}


def _refused(t: HFConfig, d: Draft) -> None:
    """What moec cannot express, each named."""
    for key, what in (("swiglu_limits", "routed experts"), ("swiglu_limits_shared", "shared expert and dense MLPs")):
        v = t.value(key)
        if v is not None and (not isinstance(v, list) or any(x not in (None, 0, 0.0) for x in v)):
            d.gap(
                t.prefix + key,
                v,
                f"a SwiGLU clamp on the {what}: min(silu(gate), L) · clamp(up, −L, L), per layer; moec's "
                "swiglu_clamped is gpt-oss's (another function), one limit per section",
                "an activation swiglu_limited (silu(gate) clamped from above, up both ways) with a limit per layer, "
                "apart for routed and shared experts. No count change",
            )
    if t.bool("mlp_bias"):
        d.gap(t.prefix + "mlp_bias", True, "biases on the dense and shared MLPs but none on the routed experts",
              "moe.shared_bias: biases on the shared experts alone. Count: + their biases")  # fmt: skip
    if t.value("use_bidirectional_attention") is not False:
        d.gap(t.prefix + "use_bidirectional_attention", t.value("use_bidirectional_attention"),
              "bidirectional attention (within the window on sliding layers)", "attention.causal: false. No count "
              "change")  # fmt: skip
    sparse = t.value("sparse_attention_config")
    if sparse:
        d.gap(t.prefix + "sparse_attention_config", sparse, "transformers' Step3p7Text builds no sparse-attention "
              "indexer whatever it says: ambiguous", "none: remove it (what transformers runs)")  # fmt: skip


# fields of the release's own code that transformers' Step3p7Text does not read: what each must say to agree with
# the model transformers builds, and the spec field whose note names it
RELEASE_FIELDS: dict[str, tuple[Any, str]] = {
    "use_head_wise_attn_gate": (True, "attention.output_gate"),
    "use_qk_norm": (True, "attention.qk_norm"),
    "zero_centered": (True, "model.norm.unit_offset"),
    "moe_router_activation": ("sigmoid", "moe.router.score"),
    "use_moe_router_bias": (True, "moe.router.selection_bias"),
    "norm_expert_weight": (True, "moe.router.normalize_topk"),
    "need_fp32_gate": (True, "moe.router.score"),
    "use_moe": (True, "moe.n_experts"),
    "att_impl_type": ("GQA", "attention.kind"),
    "sink": (False, "attention.kind"),
    "yarn_only_types": (["full_attention"], "model.positions.theta"),
    "use_rope_layers": ([], "model.positions.kind"),
}


def _release_fields(t: HFConfig, d: Draft) -> None:
    for key, (want, path) in RELEASE_FIELDS.items():
        if path in d.fields:
            ignored(t, d, "Step3p7Text", key, lambda v, want=want: v == want and type(v) is type(want), path)
    if t.given("max_seq_len"):  # the release's copy of max_position_embeddings
        ignored(t, d, "Step3p7Text", "max_seq_len", lambda v: v == d.get("model.max_seq_len"), "model.max_seq_len")


def _text_tie_note(c: HFConfig, t: HFConfig) -> str:
    """The text config's own tie_word_embeddings, which transformers ignores (the wrapper's decides): named where
    it agrees with the wrapper's, refused where not."""
    if not t.given("tie_word_embeddings"):
        return ""
    tie = t.value("tie_word_embeddings")
    if tie != c.value("tie_word_embeddings") or not isinstance(tie, bool):
        t.bad("tie_word_embeddings", f"{shown(tie)}: disagrees with the wrapper's tie_word_embeddings: ambiguous")
        return ""
    return f" (text_config.tie_word_embeddings {str(tie).lower()}: agrees)"


def vision_params(vision: dict[str, Any], projector_bias: Any, d_text: Any) -> int | None:
    """Parameters of Step3p7VisionModel and the projector (None where a size is not a positive integer): the
    Conv2d patch embedding (no bias), the learned position table, the pre LayerNorm, each block's two LayerNorms,
    biased q/k/v/out, a biased two-matrix MLP of int(hidden_size · mlp_ratio) and two layer scales, two biased
    3×3 convolutions (h → 2h → 4h), and the projector Linear(4h, text hidden_size)."""
    v = {**VISION_DEFAULTS, **{VISION_ALIASES.get(k, k): x for k, x in vision.items()}}
    sizes = ("hidden_size", "num_hidden_layers", "num_channels", "image_size", "patch_size")
    if not all(is_int(v[k]) and v[k] > 0 for k in sizes) or not is_number(v["mlp_ratio"]) or not is_int(d_text):
        return None
    h, inner = v["hidden_size"], int(v["hidden_size"] * v["mlp_ratio"])
    embed = v["num_channels"] * v["patch_size"] ** 2 * h + (v["image_size"] // v["patch_size"]) ** 2 * h + 2 * h
    block = 4 * h + 4 * (h * h + h) + 2 * h * inner + inner + h + 2 * h
    convs = 9 * h * 2 * h + 2 * h + 9 * 2 * h * 4 * h + 4 * h
    projector = 4 * h * d_text + (d_text if projector_bias is True else 0)
    return embed + v["num_hidden_layers"] * block + convs + projector


class Step3p7Mapper(Mapper):
    """The names save_pretrained writes (the module docstring); the MTP layers a release stores after the last
    decoder layer are let go, as transformers ignores them on load."""

    moe_blocks = ("moe.",)
    expert_biases = ("router_bias",)
    dropped = ("vision_model.", "vit_large_projector.")

    def __init__(self, ck: Checkpoint, plan: ResolvedModel):
        super().__init__(ck, plan)
        config = ck.folder / "config.json"
        raw = json.loads(config.read_text()) if config.is_file() else {}
        text = raw.get("text_config") if isinstance(raw.get("text_config"), dict) else {}
        n_mtp = next((text[k] for k in ("num_nextn_predict_layers", "num_mtp_layers") if k in text), 0)
        n = len(plan.layers)
        extra = tuple(f"model.layers.{i}." for i in range(n, n + n_mtp)) if is_int(n_mtp) else ()
        ck.used.update(name for name in ck.file_of if name.startswith(extra))

    def attention(self, p: str, lp: LayerPlan, leaf: str) -> torch.Tensor:
        if leaf.startswith("gate_proj."):
            leaf = "g_proj." + leaf.removeprefix("gate_proj.")
        return super().attention(p, lp, leaf)

    def moe(self, p: str, plan: MoEPlan, leaf: str) -> torch.Tensor:
        if leaf.startswith("shared."):  # one level up, beside the moe block
            return self.dense(p + "share_expert.", leaf.removeprefix("shared."))
        return super().moe(p, plan, leaf)

    def experts(self, blk: str, plan: MoEPlan, leaf: str) -> torch.Tensor:
        """Stacked (E, f, d) gate and up, (E, d, f) down → moec's (E, d, 2f) and (E, f, d)."""
        import torch

        if leaf == "w_gate_up":
            gate, up = self.ck.get(blk + "gate_proj.weight"), self.ck.get(blk + "up_proj.weight")
            return torch.cat((gate.transpose(1, 2), up.transpose(1, 2)), dim=2)
        if leaf == "w_down":
            return self.ck.get(blk + "down_proj.weight").transpose(1, 2)
        return super().experts(blk, plan, leaf)


FAMILY = Family("step3p7", "Step3p7ForConditionalGeneration", DEFAULTS, translate, mapper=Step3p7Mapper)
