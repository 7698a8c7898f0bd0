"""Rotary parameters per attention type, as Laguna, Mellum, MiMo-V2-Flash and Step-3.5 configure them: ``rope_parameters`` maps
full_attention and sliding_attention to a mapping each, with its own ``rope_theta`` and ``partial_rotary_factor``.
moec gives the model the mapping of the used type with the largest base (:func:`reference_rope_type`) and a layer
of another type its own base and rotated width (``layers.*.attention.rope_theta``, ``rotary_dim``); where the
types' scalings (rope_type and its parameters) differ, every layer gets its type's (``layers.*.attention.
rope_scaling``), a length-dependent kind (dynamic, longrope) being refused by name. The family says what its
configuration class does when a mapping or a factor is missing (:class:`TypedRope`)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from moec.hf.draft import CannotExport, Draft, HFConfig, is_int, is_number, shown
from moec.hf.families._common import base
from moec.hf.families._export_common import export_rope
from moec.hf.rope import read_rope
from moec.spec.rope_scaling import LAYER_KINDS

if TYPE_CHECKING:
    from moec.spec.plan import ResolvedModel

ROPE_TYPES = ("full_attention", "sliding_attention")


def rope_per_type_ok(c: HFConfig, given: dict[str, dict[str, Any]], types: list[str]) -> bool:
    """A rope_parameters mapping per attention type (Laguna, Mellum): each type a layer uses has one with a
    positive rope_theta (transformers has no fallback for a missing one), and every key is a known type."""
    used = sorted(set(types) & set(ROPE_TYPES))
    missing = [t for t in used if given.get(t) is None]
    ok = not missing
    if missing:
        c.bad("rope_parameters", f"no mapping for {' and '.join(missing)}, which layers use")
    for t in used:
        p = given.get(t)
        if p is None:
            continue
        if not is_number(p.get("rope_theta")) or p["rope_theta"] <= 0:
            c.bad(f"rope_parameters.{t}.rope_theta", f"{shown(p.get('rope_theta'))}: expected a positive number")
            ok = False
    for t in given:
        if t not in ROPE_TYPES:
            c.bad(f"rope_parameters.{t}", f"{shown(t)} is not one of {', '.join(ROPE_TYPES)}")
            ok = False
    return ok


def reference_rope_type(per_type: dict[str, dict[str, Any]], types: list[str]) -> str | None:
    """The used attention type of the largest base (ties: full_attention): its mapping is the model's rope.
    None when no layer uses a type (layer_types is refused then)."""
    used = [t for t in ROPE_TYPES if t in set(types) and t in per_type]
    return max(used, key=lambda t: (per_type[t]["rope_theta"], t == "full_attention")) if used else None


# the keys of a type's mapping that moec gives a layer of its own; the rest is the model's one scaling
PER_LAYER_KEYS = ("rope_theta", "partial_rotary_factor")


@dataclass(frozen=True)
class TypedRope:
    """What one family's configuration and rotary classes do: ``name`` prefixes its classes (``Laguna``),
    ``default_rope`` is the mapping __post_init__ sets when rope_parameters is unset, ``factor_of`` a type's
    rotated fraction when its mapping gives none; ``release_scaling`` the top-level field a release without rope_parameters scales the
    reference type by (Step's rope_scaling), which the family's rope_per_type folded into the mappings: it and
    rope_theta (a list per layer there) are kept from the base's rope reader, and the reader's problems with the
    reference mapping are located at it. ``partial`` false: the attention rotates whole heads whatever width the
    rotary tables have (Mellum's apply_rotary_pos_emb has no pass-through part), so a factor other than 1 is a model
    transformers cannot run."""

    name: str
    default_rope: dict[str, dict[str, Any]]
    factor_of: Callable[[dict[str, Any]], float]
    release_scaling: str = ""
    partial: bool = True

    def factor(self, mapping: dict[str, Any]) -> Any:
        return mapping.get("partial_rotary_factor", self.factor_of(mapping))


def rope_layer_types(c: HFConfig, unset: list[str]) -> list[str]:
    """layer_types as the rotary embedding looks each layer's mapping up: the given names, the legacy ``attention``
    read as ``full_attention`` (transformers' config remaps it on load, as typed_windows does), or ``unset`` when
    the field is unset or not a list of names (typed_windows reports that)."""
    types = c.value("layer_types")
    if not (isinstance(types, list) and all(isinstance(t, str) for t in types)):
        return unset
    return ["full_attention" if t == "attention" else t for t in types]


def rope_per_type(c: HFConfig, types: list[str], fam: TypedRope) -> dict[str, dict[str, Any]] | None:
    """rope_parameters as the family's rotary embedding reads it: one mapping per attention type a layer uses,
    each with its own rope_theta (transformers has no fallback for a missing one); None once refused."""
    given = c.value("rope_parameters")
    if given is None:
        return {t: dict(p) for t, p in fam.default_rope.items()}
    if not isinstance(given, dict) or not all(isinstance(v, dict) for v in given.values()):
        c.bad("rope_parameters", f"{shown(given)}: expected a mapping per attention type ({', '.join(ROPE_TYPES)})")
        return None
    ok = rope_per_type_ok(c, given, types)
    return {t: dict(p) for t, p in given.items()} if ok else None


def typed_base(
    c: HFConfig, d: Draft, per_type: dict[str, dict[str, Any]] | None, types: list[str], fam: TypedRope
) -> None:
    """The common base, its rope read from the reference type's flat mapping (the others are per layer), and
    that type's rotated fraction as the model's. What the rope reader reports about the mapping is located at the
    field it came from (``rope_parameters.<type>``, under a wrapper's prefix such as ``text_config.``)."""
    ref = reference_rope_type(per_type, types) if per_type is not None else None
    given = isinstance(c.raw.get("rope_parameters"), dict)
    set_aside = ("rope_parameters", "rope_theta", fam.release_scaling) if fam.release_scaling else ("rope_parameters",)
    saved = {k: c.raw.pop(k) for k in set_aside if k in c.raw}
    if per_type is not None and ref is not None:  # else refused already: the rest is read with the default rope
        # the partial factor is read below (moec's generic rope reader knows no per-type one)
        c.raw["rope_parameters"] = {k: v for k, v in per_type[ref].items() if k != "partial_rotary_factor"}
    issues, gaps = len(c.issues), len(d.gaps)
    base(c, d, fam.name)
    c.raw.pop("rope_parameters", None)
    c.raw.update(saved)
    if ref is None:
        return
    at = f"rope_parameters.{ref}" if given or not fam.release_scaling else fam.release_scaling
    relocate(c, d, issues, gaps, at)
    src = _source(c, fam, ref, given)
    for path, (value, note) in list(d.fields.items()):  # the reader named the flat mapping: name the type's
        if path.startswith("model.positions.") and note.startswith("rope_parameters."):
            key, space, rest = note.removeprefix("rope_parameters.").partition(" ")
            d.fields[path] = (value, src(key) + space + rest)
    assert per_type is not None
    for t in sorted(set(types) & set(per_type)):  # every used type's: a layer's own width comes from it
        factor = fam.factor(per_type[t])
        where = f"rope_parameters.{t}.partial_rotary_factor" if given or not fam.release_scaling else ""
        if not is_number(factor) or not 0 < factor <= 1:
            c.bad(where or "partial_rotary_factors", f"{shown(factor)}: expected a number in (0, 1]")
        elif factor != 1.0 and not fam.partial:
            c.bad(where, f"{shown(factor)}: {fam.name}Attention rotates whole heads (transformers cannot run a part)")
        elif t == ref and factor != 1.0:
            d.put("model.positions.partial_rotary_factor", factor, src("partial_rotary_factor"))


def _source(c: HFConfig, fam: TypedRope, ref: str, given: bool) -> Callable[[str], str]:
    """How a comment names the field a key of the reference type's mapping came from."""
    if given:
        return lambda key: f"{c.prefix}rope_parameters.{ref}.{key}"
    if fam.release_scaling:  # the scaling's keys are the release field's, the base and width its per-layer lists'
        built = f"({fam.name}Config's mapping, built from the release's fields)"
        per_layer = ("rope_theta", "partial_rotary_factor")
        return lambda key: (
            f"{ref} layers' {key} {built}" if key in per_layer else f"{c.prefix}{fam.release_scaling}.{key}"
        )
    return lambda key: f"{c.prefix}rope_parameters.{ref}.{key} ({fam.name}Config default)"


def relocate(c: HFConfig, d: Draft, issues: int, gaps: int, at: str) -> None:
    """The problems reported since ``c.issues[issues]`` and ``d.gaps[gaps]`` about the flat ``rope_parameters`` a
    reader was given in place of one type's mapping, moved to the field ``at`` that mapping came from, under the
    config's prefix (a wrapper's ``text_config.``: the config's issues carry it already, a draft's gaps do not)."""

    def moved(field: str, head: str) -> str:
        return c.prefix + at + field.removeprefix(head) if field == head or field.startswith(head + ".") else field

    c.issues[issues:] = [(moved(f, c.prefix + "rope_parameters"), m) for f, m in c.issues[issues:]]
    d.gaps[gaps:] = [dataclasses.replace(g, field=moved(g.field, "rope_parameters")) for g in d.gaps[gaps:]]


def layer_rope(c: HFConfig, d: Draft, per_type: dict[str, dict[str, Any]], types: list[str], fam: TypedRope) -> None:
    """Each layer's base, rotated dims and scaling from its type's mapping where they differ from the model's (the
    reference type's)."""
    ref = reference_rope_type(per_type, types)
    if ref is None or any(t not in per_type for t in types):
        return
    layer_scalings(c, d, per_type, types, ref)
    head_dim = d.get("attention.head_dim")  # head_dim, or hidden_size / heads where null, as the rotary reads it
    if c.failed("head_dim") or not is_int(head_dim):
        return

    def rotated(t: str) -> Any:
        factor = fam.factor(per_type[t])
        return int(head_dim * factor) if is_number(factor) else None  # a bad factor is reported by the base

    model_theta, model_rot = float(per_type[ref]["rope_theta"]), rotated(ref)
    own_theta = [float(per_type[t]["rope_theta"]) if per_type[t]["rope_theta"] != model_theta else None for t in types]
    own_rot = [rotated(t) if rotated(t) != model_rot else None for t in types]
    note = f"{c.prefix}rope_parameters.<layer type>"
    if any(own_theta):
        d.layer_attention["rope_theta"] = (own_theta, f"{note}.rope_theta (a layer's own base)")
    if any(own_rot):
        d.layer_attention["rotary_dim"] = (own_rot, f"{note}.partial_rotary_factor × head_dim (a layer's own width)")


class Scaling(dict):
    """A layer's own scaling as the spec writes it (a mapping), hashable so that the draft can group the layers
    that share one."""

    def __hash__(self) -> int:  # type: ignore[override]
        return hash(tuple(sorted((k, repr(v)) for k, v in self.items())))


def scaling_of(c: HFConfig, d: Draft, t: str, mapping: dict[str, Any]) -> Scaling | None:
    """Type ``t``'s rope mapping, its base and rotated fraction left out, as moec's scaling (None: the default
    rope, unscaled), read as the model's is (moec.hf.rope); what it notes or refuses is located under
    ``rope_parameters.<t>``."""
    scratch = Draft(d.model_type)
    given, saved = "rope_parameters" in c.raw, c.raw.get("rope_parameters")
    c.raw["rope_parameters"] = {k: v for k, v in mapping.items() if k not in PER_LAYER_KEYS}
    issues = len(c.issues)
    read_rope(c, scratch)
    if given:
        c.raw["rope_parameters"] = saved
    else:
        del c.raw["rope_parameters"]
    gaps = len(d.gaps)
    d.gaps += scratch.gaps
    relocate(c, d, issues, gaps, f"rope_parameters.{t}")
    prefix = "model.positions.scaling."
    fields = {k.removeprefix(prefix): v for k, (v, _) in scratch.fields.items() if k.startswith(prefix)}
    return Scaling(fields) if fields else None


def layer_scalings(c: HFConfig, d: Draft, per_type: dict[str, dict[str, Any]], types: list[str], ref: str) -> None:
    """Where the used types scale differently, each layer its own scaling (layers.*.attention.rope_scaling: the
    reference type's is the model's too, as the base read it), written out on every layer; kinds that depend on the
    live length cannot be a layer's own and are refused by name."""

    def flat(t: str) -> dict[str, Any]:
        return {k: v for k, v in per_type[t].items() if k not in PER_LAYER_KEYS}

    prefix = "model.positions.scaling."
    model = Scaling({k.removeprefix(prefix): v for k, (v, _) in d.fields.items() if k.startswith(prefix)}) or None
    own = {t: model if flat(t) == flat(ref) else scaling_of(c, d, t, per_type[t]) for t in sorted(set(types))}
    if len(set(own.values())) == 1:
        return
    for t, sc in own.items():
        if sc is not None and sc.get("kind") not in LAYER_KINDS:
            d.gap(
                f"{c.prefix}rope_parameters.{t}",
                dict(sc),
                f"{t} layers scale rope by {sc.get('kind')}, unlike the others, and a layer's own scaling is one of "
                f"{', '.join(LAYER_KINDS)} (the others depend on the live sequence length)",
                "layers.*.attention.rope_scaling of a length-dependent kind (dynamic, longrope)",
            )
            return
    note = f"{c.prefix}rope_parameters.<layer type>: each type's own scaling (null: none)"
    d.layer_attention["rope_scaling"] = ([own[t] for t in types], note)


def export_typed_rope(m: ResolvedModel, types: list[str], base_rope: dict[str, Any] | None) -> dict[str, Any]:
    """rope_parameters per layer type: each type's one base and rotated width (refused where layers of a type
    differ), the model's scaling on every type."""
    head_dim = m.layers[0].attention.head_dim
    out: dict[str, Any] = {}
    for lp, t in zip(m.layers, types, strict=True):
        a = lp.attention
        theta = m.positions.theta if a.rope_theta is None else a.rope_theta
        factor = _factor(a.rotary_dim or m.rope_dim, head_dim)
        scaling = base_rope
        if a.own_rope_scaling:  # the layer's own, spelt as the model's would be
            scaling = export_rope(
                dataclasses.replace(m, positions=dataclasses.replace(m.positions, scaling=a.rope_scaling))
            )
        mapping = {"rope_type": "default", **(scaling or {}), "rope_theta": theta, "partial_rotary_factor": factor}
        if out.setdefault(t, mapping) != mapping:
            raise CannotExport(f"gives every {t} layer one rope base and rotary width")
    return out


def _factor(rotated: int, head_dim: int) -> float:
    """A partial_rotary_factor from which transformers' int(head_dim × factor) gives back ``rotated``: their
    ratio where the product rounds back to it (0.5 for 64 of 128), else half a dim more (44 × 30/44 < 30)."""
    ratio = rotated / head_dim
    return ratio if int(head_dim * ratio) == rotated else (rotated + 0.5) / head_dim
