"""Render a resolved model into one readable, standalone ``model.py`` (templates in ``templates/*.j2``).

The generated module imports torch and ``moec.kernels`` only: the expert computation, the activations, the
runtime pieces it shares with moec.nn (``moec.kernels.runtime``: the KV cache, MoEAux, ModelAux), and a hybrid's
token mixers besides attention (``moec.kernels.mixers.<kind>``, :mod:`moec.codegen.mixers`). It defines just
the components the plan uses, specialised to the plan's choices (a softmax router has no sigmoid branch).
One function, ``make_block``, builds a layer with the plan's numbers; what tells layers apart (their FFN, token
mixer, window, rotation, RoPE base) are its parameters, and a ``LAYERS`` table holds each layer's values of them
(:mod:`moec.codegen.layers`). Parameter
names and shapes are ``moec.nn.MoecModel``'s, so a library state_dict loads with ``strict=True`` and gives
identical logits; ``Model.forward`` returns moec.nn's ``(logits, ModelAux)`` (each MoE layer's ``MoEAux``), and
``new_cache`` with ``model(tokens, cache=, start=)`` is moec.nn's KV-cache decode, on the same cache classes. The
output is laid out as ``ruff format`` would lay it out (:mod:`moec.codegen.layout`), and passes ``ruff check`` (tests/codegen).

Security: nothing from the spec is pasted into code as text. Every number reaching a template is checked
text from :mod:`moec.codegen.checks` through :mod:`moec.codegen.features` (which also says which plans are refused, and why), and the model's name
(the only free text that appears, inside the docstring) is re-validated against the schema's pattern. The
description is not used.
"""

from __future__ import annotations

import functools
import re

from moec.codegen.checks import int_text
from moec.codegen.features import Features, plan_features
from moec.codegen.layers import layer_source
from moec.codegen.layout import INDENT, call_lines, import_lines
from moec.codegen.mixers import mixer_kind
from moec.spec.paths import data_dir
from moec.spec.plan import MoEPlan, ResolvedModel

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")  # the schema's pattern for `name`
SPEC_HASH = re.compile(r"^[0-9a-f]{0,64}$")


def runtime_imports(f: Features, runtime_names: list[str] | None = None) -> list[str]:
    """What the file takes from moec.kernels: the runtime pieces it shares with moec.nn (moec.kernels.runtime:
    ``runtime_names``, by default a decoder-only model's), when it has a dense FFN or gated experts the
    activations, and the token mixers besides attention (moec.kernels.mixers.<kind>)."""
    first = "  # (isort order: moec is a third-party package to this file)"
    lines = []
    if f.dense_ffn or f.ffn_experts:
        lines += import_lines("moec.kernels", ["GATED"], first)
        first = ""
    if f.dense_ffn:
        lines += import_lines("moec.kernels.activations", ["activate"])
    for kind, cls in zip(f.mixer_kinds, f.mixer_classes, strict=True):
        lines += import_lines(f"moec.kernels.mixers.{kind}", [cls], first)
        first = ""
    names = _decoder_runtime_names(f) if runtime_names is None else runtime_names
    return lines + import_lines("moec.kernels.runtime", names, first)


# the routing algorithm each router kind calls (docs/routing.md): moec.kernels.runtime's, the one copy moec.nn calls too
ROUTING_ALGORITHMS = {
    "hash": "hash_experts",
    "gshard": "gshard_top2",
    "expert_choice": "expert_choice",
    "sparsemixer": "sparsemixer",
}


def moe_runtime_names(f: Features) -> list[str]:
    """The MoE's pieces of moec.kernels.runtime, in a decoder-only file or an encoder-decoder one: its aux record, the
    experts' kernels and the routing algorithm its Router calls."""
    if f.router is None:
        return []
    algorithm = ROUTING_ALGORITHMS.get(f.router.kind)
    return ["MoEAux", "kernels_for"] + ([algorithm] if algorithm else [])


def _decoder_runtime_names(f: Features) -> list[str]:
    """The runtime pieces a decoder-only model.py uses: its cache, aux records and the routers' helpers."""
    names = ["KVCache", "ModelAux", "check_cache_call", "refuse_cache_request", *moe_runtime_names(f)]
    if f.attention:  # attention's KV slots
        names += ["LayerCache", "empty_layer_cache", "with_cache"]
    if f.parts.moa:  # each slot through its expert's matrix, rows sorted by expert once (as moec.nn's MoA)
        names.append("slot_linear")
    if f.router and f.router.kind == "expert_choice":
        names.append("expert_choice_refusal")
    if f.router and f.router.capacity:
        names.append("capacity_refusal")
    if f.scaling in ("dynamic", "longrope"):
        names.append("rope_scaling_refusal")
    return names


def _summary(plan: ResolvedModel, f: Features) -> str:
    n_moe = sum(isinstance(lp.ffn, MoEPlan) for lp in plan.layers)
    kind = "Mixture-of-Experts" if n_moe else "dense"
    parts = [f"{int_text(plan.n_layers, 'n_layers')} layers"]
    if n_moe:
        parts.append(f"{n_moe} of them MoE")
    parts.append(f"d_model {int_text(plan.d_model, 'd_model')}")
    if f.mtp:
        parts.append(f"{len(plan.mtp)} MTP block{'s' if len(plan.mtp) != 1 else ''}")
    return f"a {kind} decoder ({', '.join(parts)})"


def _mixers_summary(plan: ResolvedModel, f: Features) -> str:
    """A hybrid's token mixers by their layer counts, "36 gated_deltanet layers, 12 attention" (empty otherwise)."""
    if not f.hybrid:
        return ""
    kinds = [mixer_kind(lp) for lp in plan.layers]
    counts = [f"{kinds.count(k)} {k}" for k in dict.fromkeys(kinds)]
    return f"Token mixers (moec's docs/mixers.md): {counts[0]} layers{''.join(', ' + c for c in counts[1:])}."


# ---------------------------------------------------------------------------------------------


@functools.cache  # one environment: it compiles each template once (a tenth of a second per model otherwise)
def _environment():  # -> jinja2.Environment
    import jinja2

    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(data_dir("templates"))),
        undefined=jinja2.StrictUndefined,  # a misspelt feature is an error, not an empty string
        autoescape=False,  # Python source, not HTML: every value is validated above instead
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )


def render_model_source(plan: ResolvedModel) -> str:
    """The generated ``model.py`` for ``plan``. Raises ValueError for a plan codegen cannot express exactly."""
    if not isinstance(plan, ResolvedModel):
        raise TypeError(f"render_model_source takes a ResolvedModel, not {type(plan).__name__}")
    if type(plan.name) is not str or not NAME.match(plan.name):
        raise ValueError(f"model name {plan.name!r} does not match {NAME.pattern}")
    spec_hash = plan.spec_hash if type(plan.spec_hash) is str and SPEC_HASH.match(plan.spec_hash) else ""
    if len(plan.layers) != plan.n_layers:
        raise ValueError(f"the plan lists {len(plan.layers)} layers but n_layers is {plan.n_layers!r}")
    if plan.encoder:  # an encoder-decoder model: its own classes and template (moec.codegen.encdec)
        from moec.codegen.encdec import render_encdec_source

        return _tidy(render_encdec_source(plan, name=plan.name, spec_hash=spec_hash, environment=_environment()))

    try:
        f, c = plan_features(plan, [*plan.layers, *plan.mtp])
        layers = layer_source(plan, f)
    except (TypeError, AttributeError) as e:  # a hand-built plan with a value of the wrong type
        raise ValueError(f"the plan holds a value codegen cannot use: {e}") from None

    src = (
        _environment()
        .get_template("model.py.j2")
        .render(
            name=plan.name,
            spec_hash=spec_hash,
            summary=_summary(plan, f),
            mixers_summary=_mixers_summary(plan, f),
            tie_embeddings=f.tie_embeddings,
            f=f,
            c=c,
            factory=layers.factory,
            layer_lines=call_lines(layers.layers, INDENT, "self.layers = "),
            mtp_lines=call_lines(layers.mtp, INDENT, "self.mtp = ") if layers.mtp else [],
            imports=runtime_imports(f),
        )
    )
    return _tidy(src)


def _tidy(src: str) -> str:
    """PEP 8 spacing whatever the templates' conditionals left: no trailing spaces, two blank lines before a
    top-level definition or after an indented block, at most two anywhere, one newline at the end."""
    lines = [line.rstrip() for line in src.splitlines()]
    # the module docstring has unindented lines of its own: start after it
    start = next((i + 1 for i in range(1, len(lines)) if '"""' in lines[i]), 0) if lines[0].startswith('"""') else 0
    out: list[str] = lines[:start]
    for line in lines[start:]:
        if not line:
            if len(out) < 2 or out[-1] or out[-2]:
                out.append(line)
            continue
        if line[0].isalpha() or line[0] in "_#@":  # a top-level statement (not a closing bracket)
            prev = next((p for p in reversed(out) if p), "")
            definition = line.startswith(("class ", "def ", "@")) and not prev.startswith(("@", "#"))
            if definition or prev[:1].isspace():
                while out and not out[-1]:
                    out.pop()
                out += ["", ""]
        out.append(line)
    while out and not out[-1]:
        out.pop()
    return "\n".join(out) + "\n"
