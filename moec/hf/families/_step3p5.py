"""The Step-3.5 text model's attention layout as its configs spell it (transformers' Step3p7TextConfig, the text
model of step3p7): rotary parameters per attention type, from a saved config's ``rope_parameters`` mapping per type
or from the release's per-layer ``rope_theta`` and ``partial_rotary_factors`` lists and its ``rope_scaling`` (the
full-attention type's only), given to each layer as its own base, rotary width and scaling; and the sliding
layers' own query-head count (``per_layer_config``, ``num_sliding_attention_heads`` or the release's
``attention_other_setting``). The family module, step3p7.py, composes these with the rest."""

from __future__ import annotations

from typing import Any

from moec.hf.draft import Draft, HFConfig, is_int, is_number, shown
from moec.hf.families._typed_rope import ROPE_TYPES, TypedRope, reference_rope_type
from moec.hf.families._typed_rope import layer_rope as typed_layer_rope
from moec.hf.families._typed_rope import rope_per_type as typed_rope_per_type

DEFAULT_THETA = 10000.0  # Step3p7TextConfig.default_theta: rope_theta unset
STEP_ROPE = TypedRope(
    "Step3p7Text",
    {"full_attention": {"rope_type": "default", "rope_theta": DEFAULT_THETA}},  # rope_per_type builds its own
    lambda mapping: 1.0,  # Step3p7RotaryEmbedding: a type without partial_rotary_factor rotates whole heads
    release_scaling="rope_scaling",  # the release's llama3 scaling, the full-attention type's (rope_per_type)
)


def rope_per_type(t: HFConfig, types: list[str]) -> dict[str, dict[str, Any]] | None:
    """The rope mapping of each attention type: rope_parameters when it holds one per used type (a saved
    config), else built as Step3p7TextConfig builds it from the release's rope_theta (one value, or one per
    layer), partial_rotary_factors (one per layer) and rope_scaling (the full-attention type's only). None once
    refused."""
    if not types:  # the layer count or types are refused: nothing per layer to judge (nor to report as unread)
        for key in ("rope_parameters", "rope_theta", "partial_rotary_factors", "rope_scaling"):
            t.value(key)
        return None
    used = sorted(set(types) & set(ROPE_TYPES))
    given = t.raw.get("rope_parameters")
    if isinstance(given, dict) and used and all(isinstance(given.get(x), dict) for x in used):
        for key in ("rope_theta", "partial_rotary_factors", "rope_scaling"):
            if t.given(key):  # transformers keeps rope_parameters and lets these go: say which one runs
                t.bad(key, "given beside a rope_parameters mapping per layer type, which transformers uses: ambiguous")
        extra = sorted(set(given) & set(ROPE_TYPES) - set(used))  # another key: refused by the typed reader
        if extra:
            t.bad(f"rope_parameters.{extra[0]}", f"a mapping for {shown(extra[0])}, which no layer uses")
        per_type = typed_rope_per_type(t, types, STEP_ROPE)  # each used type's base checked, as Laguna's are
        return None if per_type is None or extra else {x: per_type[x] for x in used}
    if given:
        t.bad("rope_parameters", f"{shown(given)}: expected one mapping per attention type ({', '.join(used)})")
        return None
    theta = _per_type_value(t, "rope_theta", types, DEFAULT_THETA)
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


def layer_rope(t: HFConfig, d: Draft, per_type: dict[str, dict[str, Any]], types: list[str]) -> None:
    """Each layer's base, rotated dims and scaling from its type's mapping where they differ from the model's (the
    reference type's; _typed_rope.layer_rope): the release's llama3 scaling (rope_scaling, the full-attention
    type's only) stays on its full-attention layers, the sliding ones rotate unscaled."""
    if reference_rope_type(per_type, types) is None or t.failed("head_dim"):
        return
    # the release's rope_theta list and rope_scaling are in per_type already: the scaling reader sees the mappings
    release = {k: t.raw.pop(k) for k in ("rope_theta", "rope_scaling") if k in t.raw}
    typed_layer_rope(t, d, per_type, types, STEP_ROPE)
    t.raw.update(release)


def heads_per_layer(t: HFConfig, d: Draft, types: list[str]) -> None:
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
    if heads is not None and types and d.fits_layers(t, "layer_types", heads) and set(heads) != {h}:
        d.layer_attention["n_heads"] = (heads, src)


def _sliding_heads(t: HFConfig, h: Any) -> tuple[Any, str]:
    other = t.mapping("attention_other_setting")
    for key, field in (("num_attention_groups", "num_key_value_heads"), ("head_dim", "head_dim")):
        want = t.value(field)  # a refused field (said by its reader) leaves nothing to compare with
        if key in other and other[key] != want and not t.failed(field):  # the config keeps only the head count
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
                d.gap(
                    t.prefix + f"{where}.{k}",
                    v,
                    f"a per-layer {k}: moec reads a layer's head count only",
                    f"layers.*.attention.{k}, where the schema has no per-layer field of that name",
                )
            elif not is_int(v) or v < 1:
                t.bad(f"{where}.{k}", f"{shown(v)}: expected a positive integer")
            else:
                heads[i] = v
    return heads
