"""Render a resolved model into one readable, standalone ``model.py`` (templates in ``templates/*.j2``).

The generated module imports torch and, for the expert computation, ``moec.kernels`` only. It defines just
the components the plan uses, specialised to the plan's choices (a softmax router has no sigmoid branch),
and ``Model.__init__`` unrolls the layers with their concrete numbers. Parameter names and shapes are
``moec.nn.MoecModel``'s, so a library state_dict loads with ``strict=True`` and gives identical logits.

Security: nothing from the spec is pasted into code as text. Every number reaching a template is checked
text from :mod:`moec.codegen.features` (which also says which plans are refused, and why), and the model's name
(the only free text that appears, inside the docstring) is re-validated against the schema's pattern. The
description is not used.
"""

from __future__ import annotations

import re

from moec.codegen.features import ACTIVATIONS, Features, checked_bool, float_text, int_text, plan_features, str_literal
from moec.spec.paths import data_dir
from moec.spec.plan import AttentionPlan, DenseFFNPlan, LayerPlan, MoEPlan, ResolvedModel

WIDTH = 120  # the generated file's line length (the project's ruff setting)
INDENT = " " * 8  # statements inside Model.__init__

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")  # the schema's pattern for `name`
SPEC_HASH = re.compile(r"^[0-9a-f]{0,64}$")
CLAMPED_ALPHA, CLAMPED_LIMIT = 1.702, 7.0  # gpt-oss's defaults when a plan leaves them unset (as moec.kernels)


# ---------------------------------------------------------------------------------------------
# the unrolled layers


def _call(func: str, args: list[str], indent: str, prefix: str = "", suffix: str = "") -> list[str]:
    """``prefix func(args)suffix`` on one line when it fits; otherwise the arguments filled across lines."""
    one = f"{indent}{prefix}{func}({', '.join(args)}){suffix}"
    if len(one) <= WIDTH:
        return [one]
    inner = indent + "    "
    lines, cur = [f"{indent}{prefix}{func}("], inner
    for arg in args:
        piece = arg + ","
        if cur != inner and len(cur) + 1 + len(piece) > WIDTH:
            lines.append(cur)
            cur = inner
        cur = cur + piece if cur == inner else f"{cur} {piece}"
    lines += [cur, f"{indent}){suffix}"]
    return lines


def _attention_args(a: AttentionPlan, f: Features) -> tuple[str, list[str]]:
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
    if a.window is not None:
        args.append(f"window={int_text(a.window, 'window')}")
    if f.rope_param and not a.rope:
        args.append("rope=False")
    if a.rope and a.rope_theta is not None:
        args.append(f"rope_theta={float_text(a.rope_theta, 'rope_theta')}")
    if f.gqa and a.clip_qkv is not None:
        args.append(f"clip_qkv={float_text(a.clip_qkv, 'clip_qkv')}")
    if a.scale is not None:
        args.append(f"scale={float_text(a.scale, 'attention.scale')}")
    return ("MLA" if f.mla else "Attention"), args


def _ffn_args(x: DenseFFNPlan | MoEPlan, d_ff: str, f: Features) -> list[str]:
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


def _ffn_lines(x: DenseFFNPlan | MoEPlan, f: Features, indent: str) -> list[str]:
    if isinstance(x, DenseFFNPlan):
        return _call("DenseFFN", ["D_MODEL", *_ffn_args(x, int_text(x.d_ff, "d_ff"), f)], indent, "ffn=", ",")
    E, d_ff = int_text(x.n_experts, "n_experts"), int_text(x.d_ff, "d_ff")
    r, inner = x.router, indent + "    "
    rf = f.router
    assert rf is not None
    router = ["D_MODEL", f"n_experts={E}", f"top_k={int_text(r.top_k, 'top_k')}"]
    if rf.scale:
        router.append(f"scale={float_text(r.scale, 'router.scale')}")
    if rf.groups:
        router += [
            f"n_groups={int_text(r.n_groups, 'n_groups')}",
            f"topk_groups={int_text(r.topk_groups, 'topk_groups')}",
        ]
    if rf.jitter:
        router.append(f"jitter={float_text(r.jitter, 'jitter')}")
    if rf.capacity:
        router.append(f"capacity_factor={float_text(x.capacity_factor, 'capacity_factor')}")
    if rf.load_balance:
        router.append(f"load_balance_coeff={float_text(x.load_balance_coeff, 'load_balance_coeff')}")
    if rf.z_loss:
        router.append(f"z_loss_coeff={float_text(x.z_loss_coeff, 'z_loss_coeff')}")
    if rf.bias_update:
        router.append(f"bias_update_rate={float_text(x.bias_update_rate, 'bias_update_rate')}")
    lines = [f"{indent}ffn=MoE("]
    lines += _call("Router", router, inner, "router=", ",")
    if f.lora:
        lora = [
            f"lora_rank={int_text(x.lora_rank, 'lora_rank')}",
            f"lora_alpha={float_text(x.lora_alpha, 'lora_alpha')}",
        ]
        experts = _ffn_args(x, d_ff, f)
        experts = [a for a in experts if a != "bias=True"]  # the adapters have no biases; the base may
        lines += _call("LoRAExperts", ["D_MODEL", f"n_experts={E}", *experts, *lora], inner, "experts=", ",")
        lines += _call("DenseFFN", ["D_MODEL", *_ffn_args(x, d_ff, f)], inner, "base=", ",")
    else:
        lines += _call("Experts", ["D_MODEL", f"n_experts={E}", *_ffn_args(x, d_ff, f)], inner, "experts=", ",")
    if f.shared:
        s, f_s = int_text(x.n_shared_experts, "n_shared_experts"), int_text(x.d_ff_shared, "d_ff_shared")
        width = f_s if s == "1" else f"{s} * {f_s}"  # s experts of width f_s run as one FFN of width s·f_s
        lines += _call("DenseFFN", ["D_MODEL", *_ffn_args(x, width, f)], inner, "shared=", ",")
    if f.shared_gate:
        lines.append(f"{inner}shared_gate=Linear(D_MODEL, 1, bias=False),")
    lines.append(f"{indent}),")
    return lines


def _block_lines(lp: LayerPlan, f: Features, open_: str, close: str) -> list[str]:
    inner = INDENT + "    "
    func, args = _attention_args(lp.attention, f)
    lines = [f"{INDENT}{open_}"]
    lines += _call(func, args, inner, "attn=", ",")
    lines += _ffn_lines(lp.ffn, f, inner)
    lines.append(f"{INDENT}{close}")
    return lines


def _layer_comment(lp: LayerPlan) -> str:
    notes = ["MoE" if isinstance(lp.ffn, MoEPlan) else "dense FFN"]
    if lp.attention.window is not None:
        notes.append(f"sliding window {int_text(lp.attention.window, 'window')}")
    return ", ".join(notes)


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
        layer_lines: list[str] = []
        for i, lp in enumerate(plan.layers):
            layer_lines.append(f"{INDENT}# layer {i}: {_layer_comment(lp)}")
            layer_lines += _block_lines(lp, f, "self.layers.append(Block(", "))")
        mtp_lines: list[str] = []
        for k, lp in enumerate(plan.mtp, start=1):
            mtp_lines.append(f"{INDENT}# MTP depth {k}: position i predicts token i+{k + 1}")
            mtp_lines += _block_lines(lp, f, "self.mtp.append(MTPModule(Block(", ")))")
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
            layer_lines=layer_lines,
            mtp_lines=mtp_lines,
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
