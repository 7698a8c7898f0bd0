"""``layers.overrides[].moe``: a layer's own MoE activation and clamp limits, where the layers of one model clamp
differently (Step-3.7-Flash clamps the SwiGLU of its routed experts and of its shared MLP on two layers only, each
with its own limit). Each field applies only where written (unwritten: the moe section's); a later override wins.

The activations must stay gated exactly when the section's are, so a layer keeps the section's matrices and no
count changes; the limits need an activation that takes one (moec.vocab's LIMITED: swiglu_clamped, swiglu_limit,
swiglu_limit_after) on the layer, after its overrides.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

from pydantic import Field

from moec.spec.ffn_schema import Activation
from moec.strict import Strict
from moec.vocab import GATED, LIMITED

if TYPE_CHECKING:
    from moec.spec.schema import MoE, Spec

MAX_LIMIT = 1e4  # as moe.activation_limit's bound
Limit = Annotated[float, Field(gt=0, le=MAX_LIMIT)]


class MoEOverride(Strict):
    """The selected layers' own MoE activation and limits; each applies only when written."""

    activation: Activation | None = None
    """The routed experts' activation on these layers, gated exactly when moe.activation is."""
    activation_limit: Limit | None = None
    """The routed experts' clamp limit on these layers (an activation that takes one)."""
    shared_activation: Activation | None = None
    """The shared experts' activation on these layers (null: the layers' activation)."""
    shared_activation_limit: Limit | None = None
    """The shared experts' clamp limit on these layers (null: the layers' activation_limit)."""


# written as null, these would leave the layer without a value: leaving the field out keeps the section's
_NOT_NULL = ("activation", "activation_limit")


def layer_sections(spec: Spec) -> dict[int, MoE]:
    """The MoE section of each MoE layer an override's ``moe`` names, with the written fields applied (a later
    override winning); layers no override names are left out (they plan the section itself)."""
    if spec.moe is None:
        return {}
    moe = spec.moe
    return {
        i: moe.model_copy(update={f: getattr(spec.layers.overrides[j].moe, f) for f, j in by_field.items()})
        for i, by_field in _writers(spec).items()
    }


def _writers(spec: Spec) -> dict[int, dict[str, int]]:
    """MoE layer → {field: the index of the last override writing it there}."""
    from moec.spec.resolve import ffn_kind_per_layer, selected_layers

    kinds = ffn_kind_per_layer(spec)
    out: dict[int, dict[str, int]] = {}
    for j, ov in enumerate(spec.layers.overrides):
        if ov.moe is None:
            continue
        for i in selected_layers(ov.select, spec.model.n_layers):
            if kinds[i] == "moe":
                out.setdefault(i, {}).update(dict.fromkeys(ov.moe.model_fields_set, j))
    return out


def problems(spec: Spec, moe_activation_inherited: bool = False) -> list[tuple[tuple[str | int, ...], str]]:
    """Every problem of moe.shared_activation_limit and of the overrides' ``moe`` sections: (path, message).
    ``moe_activation_inherited``: the moe section writes no activation and takes the ffn section's (and its limit,
    where written), so a limit missing there is the ffn section's problem, reported once, there."""
    from moec.spec.resolve import ffn_kind_per_layer, selected_layers

    e = spec.moe
    out = _unwritten_limits(spec, moe_activation_inherited)
    if e is not None and e.shared_activation_limit is not None:
        out += _limit_problems(("moe", "shared_activation_limit"), e.shared_activation or e.activation, e)
    kinds = ffn_kind_per_layer(spec)
    for j, ov in enumerate(spec.layers.overrides):
        if ov.moe is None:
            continue
        here: tuple[str | int, ...] = ("layers", "overrides", j, "moe")
        if e is None:
            out.append((here, "needs a moe section"))
            continue
        dense = [i for i in selected_layers(ov.select, spec.model.n_layers) if kinds[i] != "moe"]
        if dense:
            out.append((here, f"selects layers that are not MoE layers ({_listed(dense)})"))
        out += [(here + (f,), "null: leave the field out to keep the moe section's") for f in _NOT_NULL
                if f in ov.moe.model_fields_set and getattr(ov.moe, f) is None]  # fmt: skip
    if e is not None:
        sections = layer_sections(spec)
        for i, by_field in _writers(spec).items():
            out += _layer_problems(e, sections[i], by_field)
    return list(dict.fromkeys(out))  # layers planned alike report a problem once


# the limited activations without a shared default limit: activation_limit's default (7) is gpt-oss's, whose
# swiglu_clamped keeps it; the limit of these differs by release (DeepSeek-V4 and HY-V4: 10, Step-3.7: 7 and 16)
NO_DEFAULT_LIMIT = ("swiglu_limit", "swiglu_limit_after")


def _unwritten_limits(spec: Spec, moe_activation_inherited: bool) -> list[tuple[tuple[str | int, ...], str]]:
    """A section (ffn, moe) or override whose activation is one of NO_DEFAULT_LIMIT without its limit written
    there or in the section it overrides (a shared activation's limit: shared_activation_limit or activation_limit)."""
    out: list[tuple[tuple[str | int, ...], str]] = []
    for name, section in (("ffn", spec.ffn), ("moe", spec.moe)):
        for f in _unlimited(section, section.model_fields_set if section is not None else set()):
            if (name, f) == ("moe", "activation") and moe_activation_inherited:
                continue  # the ffn section's activation, and its missing limit, reported there
            out.append(((name, f), f"{getattr(section, f)} has no default clamp limit: write {name}.activation_limit"))
    if spec.moe is None:
        return out
    sections = layer_sections(spec)
    for i, by_field in _writers(spec).items():  # a layer's activation and its limit may come from two overrides
        for f in _unlimited(sections[i], set(by_field) | spec.moe.model_fields_set):
            if f in by_field:  # else the section's own, reported above
                message = f"{getattr(sections[i], f)} has no default clamp limit: write its limit for these layers"
                out.append((("layers", "overrides", by_field[f], "moe", f), message))
    return out


_LIMITS_OF = {"activation": ("activation_limit",), "shared_activation": ("shared_activation_limit", "activation_limit")}


def _unlimited(section: object, written: set[str]) -> list[str]:
    """The activation fields of ``section`` naming a NO_DEFAULT_LIMIT activation whose limit is not in ``written``."""
    if section is None:
        return []
    return [
        f
        for f, limits in _LIMITS_OF.items()
        if getattr(section, f, None) in NO_DEFAULT_LIMIT and not any(x in written for x in limits)
    ]


def _layer_problems(section: MoE, e: MoE, by_field: dict[str, int]) -> list[tuple[tuple[str | int, ...], str]]:
    """One MoE layer's section after its overrides (``e``): its activations gated as the section's, a limit only
    with an activation that takes one, shared fields only with shared experts; located at the last override that
    writes the field on the layer."""
    out: list[tuple[tuple[str | int, ...], str]] = []

    def where(f: str) -> tuple[str | int, ...]:
        return ("layers", "overrides", by_field[f], "moe", f)

    for f in ("activation", "shared_activation"):
        activation = getattr(e, f)
        if f in by_field and activation is not None and (activation in GATED) != (section.activation in GATED):
            kind = "gated" if section.activation in GATED else "ungated"
            out.append((where(f), f"must be {kind} as moe.activation ({section.activation}) is: the layer keeps "
                        "the section's matrices"))  # fmt: skip
    if "activation_limit" in by_field:
        out += _limit_problems(where("activation_limit"), e.activation, None)
    if "shared_activation_limit" in by_field:
        out += _limit_problems(where("shared_activation_limit"), e.shared_activation or e.activation, e)
    if "shared_activation" in by_field and not e.n_shared_experts:
        out.append((where("shared_activation"), "only meaningful with moe.n_shared_experts"))
    return out


def _limit_problems(
    here: tuple[str | int, ...], activation: str | None, shared: MoE | None
) -> list[tuple[tuple[str | int, ...], str]]:
    """A limit needs an activation that takes one; a shared experts' limit (``shared``: the section) shared
    experts. The message names no layer, so that the layers of one override that share a problem report it once."""
    out = []
    if activation not in LIMITED:
        whose = "the shared experts'" if shared is not None else "the routed experts'"
        out.append((here, f"{whose} activation ({activation}) takes no limit ({', '.join(LIMITED)} do)"))
    if shared is not None and not shared.n_shared_experts:
        out.append((here, "only meaningful with moe.n_shared_experts"))
    return out


def _listed(layers: list[int]) -> str:
    shown = ", ".join(map(str, layers[:8]))
    return shown + (f", … {len(layers)} in all" if len(layers) > 8 else "")
