"""How the generated ``model.py`` makes its rotating layers' cos and sin: the RoPE scaling's shape and the checked
text of its constants (for :mod:`moec.codegen.features`)."""

from __future__ import annotations

from dataclasses import dataclass

from moec.codegen.checks import checked_bool, checked_choice, float_text, int_text
from moec.codegen.layout import WIDTH, Call, call_lines
from moec.spec.plan import AttentionPlan, PositionsPlan, ResolvedModel, RopeScalingPlan

SCALINGS = ("linear", "dynamic", "yarn", "llama3", "ntk_alpha", "longrope")  # the RoPE scalings the templates render


@dataclass(frozen=True)
class RopeFeatures:
    """How the rotating layers' cos/sin are made (all off when no layer rotates)."""

    scaling: str | None = None
    yarn_truncate: bool = False
    yarn_attention: str = "default"  # "stated", "ratio", "default" or "one"
    mla_scale_factor: bool = False


def rope_features(
    plan: ResolvedModel, a: AttentionPlan, attns: list[AttentionPlan], c: dict[str, str | None]
) -> RopeFeatures:
    """Some layer rotates: its constants into ``c``, and the scaling's shape."""
    pos = plan.positions
    c["rope_theta"] = float_text(pos.theta, "positions.theta")
    c["rope_dim"] = int_text(plan.rope_dim, "rope dim")
    c["rope_tables"] = _tables(attns)
    sc = pos.scaling
    if sc is None:
        return RopeFeatures()
    scaling = checked_choice(sc.kind, SCALINGS, "rope scaling kind")
    mla_scale_factor = a.kind == "mla" and scaling == "yarn" and bool(sc.mscale_all_dim)
    yarn_attention = _scaling_constants(pos, plan.max_seq_len, c)
    if mla_scale_factor or yarn_attention == "ratio":
        c["rope_mscale_all_dim"] = float_text(sc.mscale_all_dim, "scaling.mscale_all_dim")
    truncate = scaling == "yarn" and checked_bool(sc.truncate, "scaling.truncate")
    return RopeFeatures(scaling, truncate, yarn_attention, mla_scale_factor)


def _tables(attns: list[AttentionPlan]) -> str:
    """ROPE_TABLES: every (base, rotated dims) a rotating layer reads, the model's first, as text."""
    keys = {("ROPE_THETA", "ROPE_DIM"): None}
    for x in attns:
        if x.rope:
            theta = "ROPE_THETA" if x.rope_theta is None else float_text(x.rope_theta, "rope_theta")
            keys[theta, "ROPE_DIM" if x.rotary_dim is None else int_text(x.rotary_dim, "rotary_dim")] = None
    one = f"({', '.join(f'({t}, {d})' for t, d in keys)}{',' if len(keys) == 1 else ''})"
    if len(f"ROPE_TABLES = {one}") <= WIDTH:
        return one
    return "(\n" + "".join(f"    ({t}, {d}),\n" for t, d in keys) + ")"  # one per line, as ruff splits it


def _scaling_constants(pos: PositionsPlan, max_seq_len: int, c: dict[str, str | None]) -> str:
    """The scaling's numbers into ``c``; returns how YaRN states its attention factor ("default" otherwise, "one"
    when it is a ratio of equal temperatures)."""
    sc = pos.scaling
    assert sc is not None
    if sc.kind == "longrope":
        _longrope_constants(sc, c)
        return "default"
    if sc.kind == "ntk_alpha":
        c["rope_ntk_alpha"] = float_text(sc.alpha, "scaling.alpha")
    else:
        c["rope_factor"] = float_text(sc.factor, "scaling.factor")
    if sc.kind in ("dynamic", "yarn", "llama3"):
        trained = sc.original_max_seq_len or (max_seq_len if sc.kind == "dynamic" else None)
        c["rope_original_max_seq_len"] = int_text(trained, "scaling.original_max_seq_len")
    if sc.kind == "llama3":
        low, high = sc.low_freq_factor, sc.high_freq_factor
        c["rope_low_freq_factor"] = float_text(1.0 if low is None else low, "scaling.low_freq_factor")
        c["rope_high_freq_factor"] = float_text(4.0 if high is None else high, "scaling.high_freq_factor")
    if sc.kind != "yarn":
        return "default"
    c["rope_beta_fast"] = float_text(sc.beta_fast or 32.0, "scaling.beta_fast")
    c["rope_beta_slow"] = float_text(sc.beta_slow or 1.0, "scaling.beta_slow")
    if sc.attention_factor is not None:
        c["rope_attention_factor"] = float_text(sc.attention_factor, "scaling.attention_factor")
        return "stated"
    if sc.mscale and sc.mscale_all_dim:
        if float_text(sc.mscale, "scaling.mscale") == float_text(sc.mscale_all_dim, "scaling.mscale_all_dim"):
            return "one"  # a ratio of equal temperatures is exactly 1: cos and sin are left as they are
        c["rope_mscale"] = float_text(sc.mscale, "scaling.mscale")
        return "ratio"
    return "default"


def _longrope_constants(sc: RopeScalingPlan, c: dict[str, str | None]) -> None:
    """LongRoPE's numbers into ``c``: the trained context, both factor tuples (laid out as ruff lays them out) and
    both factors on cos and sin."""
    c["rope_original_max_seq_len"] = int_text(sc.original_max_seq_len, "scaling.original_max_seq_len")
    for kind in ("short", "long"):
        factors = [float_text(v, f"scaling.{kind}_factor") for v in getattr(sc, f"{kind}_factor") or ()]
        if not factors:
            raise ValueError(f"LongRoPE needs scaling.{kind}_factor")
        name = f"ROPE_{kind.upper()}_FACTOR = "
        lines = call_lines(Call("", (*factors[:-1], factors[-1] + ("," if len(factors) == 1 else ""))), "", name)
        c[f"rope_{kind}_factor"] = "\n".join(lines)[len(name) :]
        c[f"rope_{kind}_mscale"] = float_text(getattr(sc, f"{kind}_mscale"), f"scaling.{kind}_mscale")
