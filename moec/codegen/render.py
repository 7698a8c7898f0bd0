"""Render a resolved model into one readable, standalone ``model.py`` (templates in ``templates/*.j2``).

The generated module imports torch and ``moec.kernels`` only: the expert computation, the activations, and the
runtime pieces it shares with moec.nn (``moec.kernels.runtime``: the KV cache, MoEAux, ModelAux). It defines just
the components the plan uses, specialised to the plan's choices (a softmax router has no sigmoid branch).
One function, ``make_block``, builds a layer with the plan's numbers; what tells layers apart (their FFN, window,
rotation, RoPE base) are its parameters, and a ``LAYERS`` table holds each layer's values of them. Parameter
names and shapes are ``moec.nn.MoecModel``'s, so a library state_dict loads with ``strict=True`` and gives
identical logits; ``Model.forward`` returns moec.nn's ``(logits, ModelAux)`` (each MoE layer's ``MoEAux``), and
``new_cache`` with ``model(tokens, cache=, start=)`` is moec.nn's KV-cache decode, on the same cache classes. The
output is laid out as ``ruff format`` would lay it out (``call_lines``, ``table_lines``, ``import_lines``),
and passes ``ruff check`` (tests/codegen).

Security: nothing from the spec is pasted into code as text. Every number reaching a template is checked
text from :mod:`moec.codegen.features` (which also says which plans are refused, and why), and the model's name
(the only free text that appears, inside the docstring) is re-validated against the schema's pattern. The
description is not used.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

from moec.codegen.features import (
    Features,
    RouterFeatures,
    checked_bool,
    float_text,
    int_text,
    plan_features,
    str_literal,
)
from moec.spec.paths import data_dir
from moec.spec.plan import AttentionPlan, DenseFFNPlan, LayerPlan, MoEPlan, ResolvedModel
from moec.vocab import ACTIVATIONS, CLAMPED_ALPHA, CLAMPED_LIMIT  # gpt-oss's defaults when a plan leaves them unset

WIDTH = 120  # the generated file's line length (the project's ruff setting)
INDENT = " " * 8  # statements inside Model.__init__
OPERAND = 50  # the longest operand of a layer table (table_lines)

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")  # the schema's pattern for `name`
SPEC_HASH = re.compile(r"^[0-9a-f]{0,64}$")


# ---------------------------------------------------------------------------------------------
# calls and tables, laid out as `ruff format` lays them out (so the generated file is stable under it)


@dataclass(frozen=True)
class Call:
    """``keyword=func(args)`` to print; each argument is checked text or a nested call."""

    func: str
    args: tuple[str | Call, ...]
    keyword: str = ""

    def flat(self) -> str:
        inner = ", ".join(a if isinstance(a, str) else a.flat() for a in self.args)
        return f"{self.keyword}{self.func}({inner})"


def call_lines(call: Call, indent: str, prefix: str = "", suffix: str = "") -> list[str]:
    """The call on one line when it fits; else its arguments on one indented line when they fit; else one
    argument per line with a trailing comma, nested calls laid out the same way (ruff's order of attempts)."""
    one = f"{indent}{prefix}{call.flat()}{suffix}"
    if len(one) <= WIDTH:
        return [one]
    inner = indent + "    "
    head, tail = f"{indent}{prefix}{call.keyword}{call.func}(", f"{indent}){suffix}"
    hugged = inner + ", ".join(a if isinstance(a, str) else a.flat() for a in call.args)
    if len(hugged) <= WIDTH:
        return [head, hugged, tail]
    lines = [head]
    for a in call.args:
        lines += [f"{inner}{a},"] if isinstance(a, str) else call_lines(a, inner, suffix=",")
    return [*lines, tail]


def import_lines(module: str, names: list[str], comment: str = "") -> list[str]:
    """``from module import names``, the names in ruff's order (constants, classes, then the rest, each
    alphabetically regardless of case), on one line when it fits, else one per line (ruff format's layout)."""
    names = sorted(names, key=lambda n: (0 if n.isupper() else 1 if n[0].isupper() else 2, n.lower(), n))
    one = f"from {module} import {', '.join(names)}{comment}"
    if len(one) <= WIDTH:
        return [one]
    return [f"from {module} import ({comment}", *(f"    {n}," for n in names), ")"]


def runtime_imports(f: Features) -> list[str]:
    """What the file takes from moec.kernels: the runtime pieces it shares with moec.nn (moec.kernels.runtime),
    and, when it has a dense FFN or gated experts, the activations."""
    first = "  # (isort order: moec is a third-party package to this file)"
    lines = []
    if f.dense_ffn or f.ffn_experts:
        lines += import_lines("moec.kernels", ["GATED"], first)
        first = ""
    if f.dense_ffn:
        lines += import_lines("moec.kernels.activations", ["activate"])
    names = ["KVCache", "LayerCache", "ModelAux", "check_cache_call", "empty_layer_cache", "refuse_cache_request"]
    names += ["with_cache"]
    if f.moe:
        names += ["MoEAux", "kernels_for"]
    if f.token_ids:
        names.append("hash_experts")
    if f.router and f.router.kind == "gshard":
        names.append("gshard_top2")
    if f.router and f.router.kind == "expert_choice":
        names += ["expert_choice", "expert_choice_refusal"]
    if f.router and f.router.capacity:
        names.append("capacity_refusal")
    if f.scaling == "dynamic":
        names.append("rope_scaling_refusal")
    return lines + import_lines("moec.kernels.runtime", names, first)


def runs(items: list[str], longest: int = 8, fewest: int = 4) -> list[tuple[int, list[str]]]:
    """``items`` as (repeats, block) pairs: at each point the block of up to ``longest`` items that repeats over
    the most items (the shortest on a tie), if it repeats 3 times or over ``fewest`` items; the other items are
    gathered into blocks of 1 repeat (``[a, b, b]`` reads better than ``[a] + 2 * [b]``)."""
    out: list[tuple[int, list[str]]] = []
    i = 0
    while i < len(items):
        repeats, size = 1, 1
        for n in range(1, min(longest, len(items) - i) + 1):
            r = 1
            while items[i + r * n : i + (r + 1) * n] == items[i : i + n]:
                r += 1
            if r > 1 and (r > 2 or r * n >= fewest) and r * n > repeats * size:
                repeats, size = r, n
        if repeats == 1 and out and out[-1][0] == 1:
            out[-1][1].append(items[i])
        else:
            out.append((repeats, items[i : i + size]))
        i += repeats * size
    return out


def table_lines(name: str, items: list[str]) -> list[str]:
    """``NAME = 3 * [a] + 58 * [b]``: a per-layer list written as its repeats. Each operand is kept under
    ``OPERAND`` characters (a longer repeat is listed item by item), so a table too long for one line has three
    operands or more, which ruff lays out one per line inside parentheses (it splits two differently)."""
    operands: list[str] = []
    for repeats, block in runs(items):
        listed = f"{repeats} * [{', '.join(block)}]" if repeats > 1 else f"[{', '.join(block)}]"
        if len(listed) <= OPERAND:
            operands.append(listed)
            continue
        for item in block * repeats:
            if operands and operands[-1].startswith("[") and len(operands[-1]) + len(item) + 2 <= OPERAND:
                operands[-1] = f"{operands[-1][:-1]}, {item}]"
            else:
                operands.append(f"[{item}]")
    one = f"{name} = {' + '.join(operands)}"
    if len(one) <= WIDTH:
        return [one]
    if len("    " + " + ".join(operands)) <= WIDTH:
        return [f"{name} = (", "    " + " + ".join(operands), ")"]
    return [f"{name} = (", *(f"    {'+ ' if i else ''}{op}" for i, op in enumerate(operands)), ")"]


# ---------------------------------------------------------------------------------------------
# the layers: one factory, and a table of what tells the layers apart


def _attention_call(a: AttentionPlan, f: Features, per_layer: dict[str, str]) -> Call:
    """The attention module; ``per_layer`` holds the arguments that tell layers apart (window, rope, rope_theta)
    as text: a name when they vary (the factory's parameter), a number when every layer shares one."""
    if f.mla:
        args = [
            "D_MODEL",
            f"n_heads={int_text(a.n_heads, 'n_heads')}",
            f"kv_lora_rank={int_text(a.kv_lora_rank, 'kv_lora_rank')}",
            f"qk_nope_head_dim={int_text(a.qk_nope_head_dim, 'qk_nope_head_dim')}",
            f"qk_rope_head_dim={int_text(a.qk_rope_head_dim, 'qk_rope_head_dim', minimum=0)}",
            f"v_head_dim={int_text(a.v_head_dim, 'v_head_dim')}",
        ]
        if a.q_lora_rank:
            args.append(f"q_lora_rank={int_text(a.q_lora_rank, 'q_lora_rank')}")
    else:
        args = [
            "D_MODEL",
            f"n_heads={int_text(a.n_heads, 'n_heads')}",
            f"n_kv_heads={int_text(a.n_kv_heads, 'n_kv_heads')}",
            f"head_dim={int_text(a.head_dim, 'head_dim')}",
        ]
    args += [f"{key}={value}" for key, value in per_layer.items()]
    if f.gqa and a.clip_qkv is not None:
        args.append(f"clip_qkv={float_text(a.clip_qkv, 'clip_qkv')}")
    if a.scale is not None:
        args.append(f"scale={float_text(a.scale, 'attention.scale')}")
    return Call("MLA" if f.mla else "Attention", tuple(args), "attn=")


def _ffn_args(x: DenseFFNPlan | MoEPlan, d_ff: str) -> list[str]:
    """The arguments an FFN-shaped module (DenseFFN, Experts, LoRAExperts) shares."""
    args = [f"d_ff={d_ff}", f"activation={str_literal(x.activation, ACTIVATIONS, 'activation')}"]
    if checked_bool(x.bias, "ffn.bias"):
        args.append("bias=True")
    if x.activation == "swiglu_clamped":
        alpha = CLAMPED_ALPHA if x.activation_alpha is None else x.activation_alpha
        limit = CLAMPED_LIMIT if x.activation_limit is None else x.activation_limit
        args += [f"activation_alpha={float_text(alpha, 'activation_alpha')}",
                 f"activation_limit={float_text(limit, 'activation_limit')}"]  # fmt: skip
    return args


def _router_call(x: MoEPlan, rf: RouterFeatures) -> Call:
    r = x.router
    args = [f"n_experts={int_text(x.n_experts, 'n_experts')}", f"top_k={int_text(r.top_k, 'top_k')}"]
    if rf.learned:  # a hash router reads token ids, not the hidden state
        args.insert(0, "D_MODEL")
    if rf.mlp:
        args.append(f"mlp_hidden={int_text(r.mlp_hidden, 'router.mlp_hidden')}")
    if rf.capacity_groups:
        args.append(f"capacity_group_size={int_text(x.capacity_group_size, 'capacity_group_size')}")
    if rf.scale:
        args.append(f"scale={float_text(r.scale, 'router.scale')}")
    if rf.groups:
        args += [
            f"n_groups={int_text(r.n_groups, 'n_groups')}",
            f"topk_groups={int_text(r.topk_groups, 'topk_groups')}",
        ]
    if rf.jitter:
        args.append(f"jitter={float_text(r.jitter, 'jitter')}")
    if rf.capacity:
        args.append(f"capacity_factor={float_text(x.capacity_factor, 'capacity_factor')}")
    if rf.load_balance:
        args.append(f"load_balance_coeff={float_text(x.load_balance_coeff, 'load_balance_coeff')}")
    if rf.z_loss:
        args.append(f"z_loss_coeff={float_text(x.z_loss_coeff, 'z_loss_coeff')}")
    if rf.bias_update:
        args.append(f"bias_update_rate={float_text(x.bias_update_rate, 'bias_update_rate')}")
    return Call("Router", tuple(args), "router=")


def _ffn_call(x: DenseFFNPlan | MoEPlan, f: Features) -> Call:
    if isinstance(x, DenseFFNPlan):
        return Call("DenseFFN", ("D_MODEL", *_ffn_args(x, int_text(x.d_ff, "d_ff"))), "ffn=")
    assert f.router is not None
    E, d_ff = int_text(x.n_experts, "n_experts"), int_text(x.d_ff, "d_ff")
    parts: list[str | Call] = [_router_call(x, f.router)]
    if f.lora:
        lora = [
            f"lora_rank={int_text(x.lora_rank, 'lora_rank')}",
            f"lora_alpha={float_text(x.lora_alpha, 'lora_alpha')}",
        ]
        experts = [a for a in _ffn_args(x, d_ff) if a != "bias=True"]  # the adapters have no biases; the base may
        parts.append(Call("LoRAExperts", ("D_MODEL", f"n_experts={E}", *experts, *lora), "experts="))
        parts.append(Call("DenseFFN", ("D_MODEL", *_ffn_args(x, d_ff)), "base="))
    else:
        parts.append(Call("Experts", ("D_MODEL", f"n_experts={E}", *_ffn_args(x, d_ff)), "experts="))
    if f.shared:
        s, f_s = int_text(x.n_shared_experts, "n_shared_experts"), int_text(x.d_ff_shared, "d_ff_shared")
        width = f_s if s == "1" else f"{s} * {f_s}"  # s experts of width f_s run as one FFN of width s·f_s
        parts.append(Call("DenseFFN", ("D_MODEL", *_ffn_args(x, width)), "shared="))
    if f.shared_gate:
        parts.append("shared_gate=Linear(D_MODEL, 1, bias=False)")
    parts.append("backend=backend")
    return Call("MoE", tuple(parts), "ffn=")


# What tells one layer from another, in the order of the factory's parameters: (name, type, the text that means
# "as the attention module's default", what the docstring says of it).
COLUMNS = (
    ("ffn", "str", None, '"dense" or "moe"'),
    ("window", "int | None", "None", "the sliding window in tokens (None: the whole causal context)"),
    ("rope", "bool", "True", "whether the layer rotates q and k"),
    ("rope_theta", "float", "ROPE_THETA", "its RoPE base"),
)


def _layer_row(lp: LayerPlan, f: Features) -> dict[str, str]:
    """The checked text of each column for one layer."""
    a = lp.attention
    rotates = checked_bool(a.rope, "attention.rope")
    own_base = f.layer_rope_theta and rotates and a.rope_theta is not None
    return {
        "ffn": '"moe"' if isinstance(lp.ffn, MoEPlan) else '"dense"',
        "window": "None" if a.window is None else int_text(a.window, "window"),
        "rope": repr(rotates) if f.rope_param else "True",  # Attention takes `rope` only when some layer does not
        "rope_theta": float_text(a.rope_theta, "rope_theta") if own_base else "ROPE_THETA",
    }


@dataclass(frozen=True)
class LayerSource:
    """The generated code that builds the layers."""

    factory: list[str]  # the table (or N_LAYERS) and ``def make_block``
    layers: Call  # the ModuleList of Model.__init__
    mtp: Call | None  # the MTP blocks' ModuleList


def layer_source(plan: ResolvedModel, f: Features) -> LayerSource:
    """One ``make_block`` taking what varies between layers, and a table holding each layer's values of it."""
    rows = [_layer_row(lp, f) for lp in (*plan.layers, *plan.mtp)]
    varying = [c for c in COLUMNS if len({row[c[0]] for row in rows}) > 1]
    names = [c[0] for c in varying]
    arguments = ", ".join(names + (["backend"] if f.moe else []))
    if names:
        items = [", ".join(row[n] for n in names) for row in rows[: len(plan.layers)]]
        items = [f"({item})" if len(names) > 1 else item for item in items]
        listed = names[0] if len(names) == 1 else f"({', '.join(names)})"
        said = f"argument: {listed}" if len(names) == 1 else f"arguments: {listed}"
        header = [f"# each decoder layer's make_block {said}", *table_lines("LAYERS", items)]
        loop = f"for {', '.join(names)} in LAYERS"
    else:
        header = [f"N_LAYERS = {int_text(plan.n_layers, 'n_layers')}  # all alike"]
        loop = "for _ in range(N_LAYERS)"
    return LayerSource(
        factory=[*header, "", "", *_make_block(plan, f, rows[0], varying)],
        layers=Call("nn.ModuleList", (f"make_block({arguments}) {loop}",)),
        mtp=_mtp_expression(rows[len(plan.layers) :], names, f) if plan.mtp else None,
    )


def _make_block(
    plan: ResolvedModel, f: Features, first: dict[str, str], varying: list[tuple[str, str, str | None, str]]
) -> list[str]:
    """``def make_block``: the numbers every layer shares written in, the varying columns as parameters."""
    names = [c[0] for c in varying]
    per_layer = {  # the attention's per-layer arguments: a parameter, or the value all layers share if not default
        name: name if name in names else first[name]
        for name, _, default, _ in COLUMNS[1:]
        if name in names or first[name] != default
    }
    attn = _attention_call(plan.layers[0].attention, f, per_layer)
    ffns = {type(lp.ffn): lp.ffn for lp in (*plan.layers, *plan.mtp)}  # one configuration of each kind
    params = [f"{name}: {kind}" for name, kind, _, _ in varying] + (["backend: str"] if f.moe else [])
    if varying:
        words = "; ".join(f"{name}: {words}" for name, _, _, words in varying)
        doc = _wrapped_docstring(f"One decoder layer, from its entry in LAYERS. {words}.", "    ")
    else:
        doc = ['    """One decoder layer (the model\'s layers are alike)."""']
    lines = [f"def make_block({', '.join(params)}) -> Block:", *doc]
    if "ffn" not in names:
        (ffn,) = ffns.values()
        return lines + call_lines(Call("Block", (attn, _ffn_call(ffn, f))), "    ", "return ")
    lines += call_lines(Call(attn.func, attn.args), "    ", "attn = ")
    lines += ['    if ffn == "dense":']
    lines += call_lines(Call("Block", ("attn=attn", _ffn_call(ffns[DenseFFNPlan], f))), "        ", "return ")
    return lines + call_lines(Call("Block", ("attn=attn", _ffn_call(ffns[MoEPlan], f))), "    ", "return ")


def _wrapped_docstring(text: str, indent: str) -> list[str]:
    import textwrap

    lines = textwrap.wrap(f'"""{text}"""', WIDTH - len(indent), break_long_words=False, break_on_hyphens=False)
    return [indent + line for line in lines]


def _mtp_expression(rows: list[dict[str, str]], names: list[str], f: Features) -> Call:
    """The MTP blocks: the same factory, with the MTP layers' values of the columns."""
    arguments = [", ".join([*(row[n] for n in names), *(["backend"] if f.moe else [])]) for row in rows]
    if len(set(arguments)) == 1:
        return Call("nn.ModuleList", (f"MTPModule(make_block({arguments[0]})) for _ in range({len(rows)})",))
    return Call("nn.ModuleList", (f"[{', '.join(f'MTPModule(make_block({a}))' for a in arguments)}]",))


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
