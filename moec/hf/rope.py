"""Rotary positions as every Hugging Face family spells them: ``rope_parameters`` (transformers 5) or the
legacy ``rope_theta`` + ``rope_scaling``, with transformers' precedence (``rope_scaling``, if given, wins),
read into ``model.positions`` of a draft. Each step is one small function; each value is type-checked
before it is used (a wrong one is an issue on the config, located at its key)."""

from __future__ import annotations

from typing import Any

from moec.hf.draft import MAX_LIST, Draft, HFConfig, is_int, is_number, shown

# The parameters each rope_type defines (transformers 5.23 modeling_rope_utils); they keep their names in
# model.positions.scaling except original_max_position_embeddings (original_max_seq_len).
ROPE_KEYS = {
    "linear": {"factor"},
    "dynamic": {"factor"},
    "yarn": {
        "factor",
        "original_max_position_embeddings",
        "beta_fast",
        "beta_slow",
        "mscale",
        "mscale_all_dim",
        "attention_factor",
        "truncate",
    },
    "llama3": {"factor", "original_max_position_embeddings", "low_freq_factor", "high_freq_factor"},
    "longrope": {
        "factor",
        "original_max_position_embeddings",
        "short_factor",
        "long_factor",
        "short_mscale",
        "long_mscale",
    },
}
_WITH_ORIGINAL_LENGTH = ("yarn", "llama3", "longrope")


def read_rope(c: HFConfig, d: Draft, theta_fallback: Any = None) -> None:
    """``model.positions.theta`` and ``model.positions.scaling`` from the config's rope fields."""
    where, params = _rope_parameters(c)
    _theta(c, d, params, where, theta_fallback)
    kind = _rope_type(c, params, where)
    if c.given("original_max_position_embeddings"):
        c.value("original_max_position_embeddings")  # Phi-3 spells the pre-scaling length at the top level
    _partial_rotary(c, d, params)
    if kind is None or not _known_kind(d, params, where, kind):
        return
    if kind in _WITH_ORIGINAL_LENGTH:
        # HF: a top-level original_max_position_embeddings wins (Phi-3), else the dict's, else max_position
        if c.given("original_max_position_embeddings"):
            params["original_max_position_embeddings"] = c.value("original_max_position_embeddings")
        else:
            params.setdefault("original_max_position_embeddings", c.value("max_position_embeddings"))
    if kind == "longrope" and params.get("factor") is None:
        # transformers: max_position_embeddings / original_max_position_embeddings (informational here: the
        # per-frequency factors and mscales carry LongRoPE)
        original = params["original_max_position_embeddings"]
        if is_int(original) and original > 0:
            params["factor"] = c.int("max_position_embeddings") / original
    d.put("model.positions.scaling.kind", kind, f"{where}.rope_type")
    for k, v in params.items():
        _scaling_field(c, d, f"{where}.{k}", kind, k, v)


def rope_field(c: HFConfig) -> str:
    """The field that holds the rope mapping: a non-empty legacy rope_scaling wins over rope_parameters."""
    return "rope_scaling" if c.value("rope_scaling") else "rope_parameters"


def _rope_parameters(c: HFConfig) -> tuple[str, dict[str, Any]]:
    """(the field they come from, a copy of the flat rope-parameter mapping)."""
    params, scaling = c.value("rope_parameters"), c.value("rope_scaling")
    where = rope_field(c)
    given = scaling or params or {}
    if not given and c.defaults.get("default_rope_parameters"):
        # gpt-oss: a config without rope parameters gets the family's YaRN (GptOssConfig.__post_init__)
        given = dict(c.defaults["default_rope_parameters"])
        where = "rope_parameters (transformers default)"
    if not isinstance(given, dict) or any(isinstance(v, dict) for v in given.values()):
        c.bad(where, "expected one flat mapping of rope parameters")
        given = {}
    return where, dict(given)


def _theta(c: HFConfig, d: Draft, params: dict[str, Any], where: str, theta_fallback: Any) -> None:
    theta = params.pop("rope_theta", None)
    theta_src = f"{where}.rope_theta"
    top = c.value("rope_theta")
    if theta is not None and top is not None and top != theta:
        c.bad("rope_theta", f"{shown(top)} disagrees with {where}.rope_theta ({shown(theta)}), which transformers uses")
    if theta is None:
        theta, theta_src = top, c.src("rope_theta")
        if theta is None and theta_fallback is not None:
            # DBRX: its own code (and the released config) put the base in attn_config; transformers 5.23
            # reads only rope_parameters and would fall back to default_theta, which is not the model
            theta, theta_src = theta_fallback, "attn_config.rope_theta (transformers 5.23 ignores it)"
        if theta is None:
            theta, theta_src = c.defaults["default_theta"], "rope_theta (transformers default_theta)"
    if not is_number(theta) or theta <= 0:
        c.bad(theta_src.split(" ")[0], f"{shown(theta)}: expected a positive number")
        theta = 10000.0
    if theta_fallback is not None and theta != theta_fallback:
        c.bad(
            "rope_theta",
            f"{shown(theta)} ({theta_src}, which transformers uses) disagrees with attn_config.rope_theta "
            f"({shown(theta_fallback)}, which DBRX's own code uses): ambiguous",
        )
    d.put("model.positions.theta", float(theta), theta_src)


def _rope_type(c: HFConfig, params: dict[str, Any], where: str) -> str | None:
    """The rope_type (legacy spelling: type); None if it is not a string (reported)."""
    key = "rope_type" if params.get("rope_type") else "type"
    kind = params.pop("rope_type", None) or params.pop("type", None) or "default"
    params.pop("type", None)
    if not isinstance(kind, str):
        c.bad(f"{where}.{key}", f"{shown(kind)}: expected a rope type name")
        return None
    return kind


def _partial_rotary(c: HFConfig, d: Draft, params: dict[str, Any]) -> None:
    key = "partial_rotary_factor"
    factor = params.pop(key, None) or c.value(key)
    if factor is None:
        return
    if not is_number(factor):
        c.bad(key, f"{shown(factor)}: expected a number")
    elif factor != 1.0:
        d.gap(key, factor, "rotary on part of the head dim only", "rope_extra")


def _known_kind(d: Draft, params: dict[str, Any], where: str, kind: str) -> bool:
    """Whether moec has this rope_type's scaling (a gap, otherwise); the default type takes no parameters."""
    if kind == "default":
        for k, v in params.items():
            d.gap(f"{where}.{k}", v, "a rope parameter moec does not read", "rope_extra")
        return False
    if kind not in ROPE_KEYS:
        d.gap(f"{where}.rope_type", kind, f"rope_type {shown(kind)} has no moec equivalent", "rope_extra")
        return False
    if kind == "longrope" and d.model_type != "phimoe":
        # moec's longrope is Phi-MoE's (cos/sin times short/long_mscale); Llama/Phi-3 scale by attention_factor
        d.gap(f"{where}.rope_type", kind, "LongRoPE outside Phi-MoE (attention_factor scaling)", "longrope")
        return False
    return True


def _scaling_field(c: HFConfig, d: Draft, field: str, kind: str, k: str, v: Any) -> None:
    """One rope parameter → model.positions.scaling, checked for its type."""
    if k not in ROPE_KEYS[kind]:
        d.gap(field, v, f"a {kind} rope parameter moec does not read", "rope_extra")
        return
    if v is None:
        return
    if k == "original_max_position_embeddings":
        ok, name, value = is_int(v), "original_max_seq_len", v
    elif k == "truncate":  # gpt-oss keeps the yarn correction range unrounded
        ok, name, value = isinstance(v, bool), k, v
    elif k in ("short_factor", "long_factor"):
        ok = isinstance(v, list) and len(v) <= MAX_LIST and all(is_number(x) for x in v)
        name, value = k, [float(x) for x in v] if ok else None
    else:
        ok, name, value = is_number(v), k, float(v) if is_number(v) else None
    if ok:
        d.put(f"model.positions.scaling.{name}", value, field)
    else:
        c.bad(field, f"{shown(v)}: {_EXPECTED.get(k, 'expected a number')}")


_EXPECTED = {
    "original_max_position_embeddings": "expected an integer",
    "truncate": "expected true or false",
    "short_factor": f"expected a list of at most {MAX_LIST} numbers",
    "long_factor": f"expected a list of at most {MAX_LIST} numbers",
}
