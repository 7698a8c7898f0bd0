"""The token mixers besides attention in the generated ``model.py`` (docs/mixers.md, "Generated code").

They are not templated: the file imports each kind's class from ``moec.kernels.mixers.<kind>`` (the module moec.nn
builds too) and constructs it as ``Class(D_MODEL, keyword=value, ...)`` from its kind's ``module_kwargs(plan)``
(the moec.mixers contract), each value printed through the checks of :mod:`moec.codegen.features`.
"""

from __future__ import annotations

import re
from typing import Any

from moec.codegen.checks import checked_bool, checked_choice, float_text, int_text
from moec.mixers import kind_module
from moec.spec.plan import AbsentPlan, LayerPlan
from moec.vocab import LINEAR_MIXERS, MIXER_KINDS

# module_kwargs' strings name one of a kind's fixed choices (kda's decay, lightning's activation). moec.mixers gives
# no list of them to check against, so a string is printed only when it is a lower-case identifier: nothing but
# letters, digits and underscores can reach the code, inside double quotes.
IDENTIFIER = re.compile(r"^[a-z_][a-z0-9_]*$")
CLASS_NAME = re.compile(r"^[A-Z][A-Za-z0-9]*$")  # a kind's MODULE, the class imported from moec.kernels.mixers


def mixer_kind(lp: LayerPlan) -> str:
    """The layer's token mixer: attention, a moec.mixers kind, or none (checked)."""
    if lp.mixer is None:
        return "attention"
    if isinstance(lp.mixer, AbsentPlan):
        return "none"
    return checked_choice(lp.mixer.kind, LINEAR_MIXERS, f"layer {lp.index}: mixer kind")


def used_kinds(layers: list[LayerPlan]) -> tuple[str, ...]:
    """The kinds besides attention and none that some layer has, in moec.vocab.MIXER_KINDS' order."""
    kinds = {mixer_kind(lp) for lp in layers}
    return tuple(k for k in LINEAR_MIXERS if k in kinds)


def class_name(kind: str) -> str:
    """The class ``moec.kernels.mixers.<kind>`` defines (the kind module's MODULE), checked."""
    name = kind_module(checked_choice(kind, LINEAR_MIXERS, "mixer kind")).MODULE
    if type(name) is not str or not CLASS_NAME.match(name):
        raise ValueError(f"mixer kind {kind}: MODULE must be a class name; got {name!r}")
    return name


def value_text(v: Any, what: str) -> str:
    """One module_kwargs value as code: a bool, an int (≥ 0), a finite float or an identifier string; a tuple of
    numbers element by element."""
    if type(v) is bool:
        return repr(checked_bool(v, what))
    if type(v) is int:
        return int_text(v, what, minimum=0)
    if type(v) is float:
        return float_text(v, what)
    if type(v) is str:
        if not IDENTIFIER.match(v):
            raise ValueError(f"{what} must be a lower-case identifier; got {v!r}")
        return f'"{v}"'
    if type(v) is tuple and v and all(type(x) in (int, float) for x in v):
        items = [value_text(x, f"{what}[{i}]") for i, x in enumerate(v)]
        return f"({', '.join(items)}{',' if len(items) == 1 else ''})"
    raise ValueError(f"{what} must be a bool, number, identifier or tuple of numbers; got {v!r}")


def module_kwargs_text(lp: LayerPlan) -> dict[str, str]:
    """The checked text of each keyword the layer's mixer class takes besides d_model."""
    kind = kind_module(mixer_kind(lp))
    kwargs = kind.module_kwargs(lp.mixer)
    if type(kwargs) is not dict:
        raise ValueError(f"mixer kind {kind.KIND}: module_kwargs must give a dict")
    out = {}
    for key, v in kwargs.items():
        if type(key) is not str or not IDENTIFIER.match(key):
            raise ValueError(f"mixer kind {kind.KIND}: keyword {key!r} is not an identifier")
        out[key] = value_text(v, f"mixers.{kind.KIND}.{key}")
    return out


def mixer_literal(kind: str) -> str:
    """The LAYERS table's text for a layer's mixer: a member of moec.vocab.MIXER_KINDS, quoted."""
    return f'"{checked_choice(kind, MIXER_KINDS, "mixer kind")}"'
