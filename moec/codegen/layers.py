"""The generated code that builds the layers: one factory, ``make_block``, taking what tells layers apart (their FFN,
token mixer, window, rotation, RoPE base, a mixer keyword that changes with depth) as parameters, and a ``LAYERS``
table holding each layer's values of them (or ``N_LAYERS`` when the layers are alike)."""

from __future__ import annotations

import ast
import dataclasses
from dataclasses import dataclass

from moec.codegen.checks import checked_bool, float_text, int_text, str_literal
from moec.codegen.features import Features, RouterFeatures
from moec.codegen.layout import WIDTH, Call, call_lines, table_lines
from moec.codegen.mixers import mixer_kind, mixer_literal, module_kwargs_text
from moec.spec.plan import AbsentPlan, AttentionPlan, DenseFFNPlan, LayerPlan, MoEPlan, ResolvedModel
from moec.vocab import (
    ACTIVATIONS,
    CLAMPED_ALPHA,
    CLAMPED_LIMIT,
    LIMITED,
)  # gpt-oss's defaults when a plan leaves them unset

# ---------------------------------------------------------------------------------------------
# the modules


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
        heads = {key: per_layer.get(key) or int_text(getattr(a, key), key) for key in ("n_heads", "n_kv_heads")}
        args = [
            "D_MODEL",
            *(f"{key}={value}" for key, value in heads.items()),
            f"head_dim={int_text(a.head_dim, 'head_dim')}",
        ]
        if f.gqa_parts.v_head_dim:
            args.append(f"v_head_dim={int_text(a.v_dim, 'v_head_dim')}")
        if f.parts.moa:
            args += [
                f"n_experts={int_text(a.moa_n_experts, 'attention.experts.n_experts')}",
                f"top_k={int_text(a.moa_top_k, 'attention.experts.top_k')}",
            ]
    late = ("n_heads", "n_kv_heads", "sinks", "qk_norm", "temperature_tuning")  # placed by hand
    args += [f"{key}={value}" for key, value in per_layer.items() if key not in late]
    if f.gqa_parts.value_scale:
        args.append(f"value_scale={float_text(a.value_scale, 'attention.value_scale')}")
    if f.gqa and a.clip_qkv is not None:
        args.append(f"clip_qkv={float_text(a.clip_qkv, 'clip_qkv')}")
    if a.scale is not None:
        args.append(f"scale={float_text(a.scale, 'attention.scale')}")
    args += [f"{key}={per_layer[key]}" for key in ("sinks", "qk_norm", "temperature_tuning") if key in per_layer]
    return Call(f.attention_class, tuple(args), "attn=")


def _ffn_args(x: DenseFFNPlan | MoEPlan, d_ff: str, *, shared: bool = False) -> list[str]:
    """The arguments an FFN-shaped module (DenseFFN, Experts, LoRAExperts) shares; ``shared``: the MoE's shared
    experts, with their own activation and limit where the plan gives them (moe.shared_activation, HY-V4;
    moe.shared_activation_limit, Step-3.7)."""
    activation, limit = x.activation, x.activation_limit
    if shared and isinstance(x, MoEPlan):
        activation = x.shared_activation or activation
        limit = limit if x.shared_activation_limit is None else x.shared_activation_limit
    args = [f"d_ff={d_ff}", f"activation={str_literal(activation, ACTIVATIONS, 'activation')}"]
    if checked_bool(x.bias, "ffn.bias"):
        args.append("bias=True")
    if activation == "swiglu_clamped":  # gpt-oss's alpha and limit
        alpha = CLAMPED_ALPHA if x.activation_alpha is None else x.activation_alpha
        args.append(f"activation_alpha={float_text(alpha, 'activation_alpha')}")
    if activation in LIMITED:  # the clamp limit of every clamped SwiGLU
        limit = CLAMPED_LIMIT if limit is None else limit
        args.append(f"activation_limit={float_text(limit, 'activation_limit')}")
    return args


def _router_call(x: MoEPlan, rf: RouterFeatures) -> Call:
    r = x.router
    E = int_text(x.n_experts, "n_experts")
    if x.n_zero_experts:  # scored and chosen like the others: the router's logits cover both
        E = f"{E} + {int_text(x.n_zero_experts, 'n_zero_experts')}"
    args = [f"n_experts={E}", f"top_k={int_text(r.top_k, 'top_k')}"]
    if rf.learned:  # a hash router reads token ids, not the hidden state
        args.insert(0, "D_MODEL")
    if rf.kind == "sparsemixer" and r.sparsemixer_eps:
        args.append(f"sparsemixer_eps={float_text(r.sparsemixer_eps, 'router.sparsemixer_eps')}")
    if rf.logit_softcap:
        args.append(f"logit_softcap={float_text(r.logit_softcap, 'router.logit_softcap')}")
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


def ffn_call(x: DenseFFNPlan | MoEPlan, f: Features) -> Call:
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
        parts.append(Call("DenseFFN", ("D_MODEL", *_ffn_args(x, width, shared=True)), "shared="))
    if f.shared_gate:
        parts.append("shared_gate=Linear(D_MODEL, 1, bias=False)")
    if f.parts.zero_experts:
        parts.append(f"n_zero_experts={int_text(x.n_zero_experts, 'n_zero_experts')}")
    parts.append("backend=backend")
    return Call("MoE", tuple(parts), "ffn=")


# ---------------------------------------------------------------------------------------------
# the table


@dataclass(frozen=True)
class Column:
    """Something that tells one layer from another: a parameter of make_block and a column of LAYERS."""

    name: str
    type: str
    default: str | None  # the text that means "as the attention module's default" (None: not an attention keyword)
    words: str  # what the docstring says of it
    kind: str = ""  # a mixer keyword's column: the kind whose keyword it is
    key: str = ""  # and the keyword


ATTENTION_COLUMNS = (
    Column("window", "int | None", "None", "the sliding window in tokens (None: the whole causal context)"),
    Column("chunk", "int | None", "None", "its attention chunk in tokens (None: not chunked)"),
    Column("rope", "bool", "True", "whether the layer rotates q and k"),
    Column("rope_theta", "float", "ROPE_THETA", "its RoPE base"),
    Column("rotary_dim", "int", "ROPE_DIM", "its rotated dims"),
)
# GQA layers of their own head counts (MiMo-V2-Flash): columns only when they differ, None in a layer without attention
HEAD_COLUMNS = (
    Column("n_heads", "int", "None", "its query heads"),
    Column("n_kv_heads", "int", "None", "its KV heads"),
)
SINK_COLUMN = Column("sinks", "bool", "None", "whether it has attention sinks")  # some GQA layers have them
# Llama-4's per-layer flags: the weightless L2 qk-norm, the NoPE layers' temperature tuning
FLAG_COLUMNS = {
    "l2_norm": Column("qk_norm", "bool", "None", "whether it L2-normalises q and k"),
    "temperature": Column("temperature_tuning", "bool", "None", "whether it tunes its queries' temperature"),
}
FFN_ORDER = ('"dense"', '"moe"', '"none"')  # the values of the ffn column, in the order the docstring lists them


def _choices(values: list[str]) -> str:
    return values[0] if len(values) == 1 else f"{', '.join(values[:-1])} or {values[-1]}"


def _attention_row(lp: LayerPlan, f: Features) -> dict[str, str]:
    """The checked text of each attention column for one attention layer."""
    a = lp.attention
    rotates = checked_bool(a.rope, "attention.rope")
    own_base = f.layer_rope_tables and rotates and a.rope_theta is not None
    row = {
        "window": "None" if a.window is None else int_text(a.window, "window"),
        "chunk": "None" if a.chunk is None else int_text(a.chunk, "chunk"),
        "rope": repr(rotates) if f.rope_param else "True",  # Attention takes `rope` only when some layer does not
        "rope_theta": float_text(a.rope_theta, "rope_theta") if own_base else "ROPE_THETA",
        "rotary_dim": int_text(a.rotary_dim, "rotary_dim") if rotates and a.rotary_dim is not None else "ROPE_DIM",
    }
    if f.gqa_parts.layer_heads:
        row |= {"n_heads": int_text(a.n_heads, "n_heads"), "n_kv_heads": int_text(a.n_kv_heads, "n_kv_heads")}
    if f.gqa_parts.layer_sinks:
        row["sinks"] = repr(checked_bool(a.sinks, "attention.sinks"))
    if f.gqa_parts.l2_norm == "some":
        row["qk_norm"] = repr(checked_bool(a.qk_norm, "attention.qk_norm"))
    if f.gqa_parts.temperature == "some":
        row["temperature_tuning"] = repr(a.temperature_floor_scale is not None and a.temperature_scale is not None)
    return row


def _ffn_literal(lp: LayerPlan) -> str:
    return '"moe"' if isinstance(lp.ffn, MoEPlan) else '"none"' if isinstance(lp.ffn, AbsentPlan) else '"dense"'


def _rows(layers: list[LayerPlan], f: Features) -> tuple[list[dict[str, str]], list[Column]]:
    """Each layer's checked text of every column, and the columns. A layer without attention has no attention to
    tell apart: its attention columns add no variation; a mixer keyword's column holds its kind's layers' values and
    None in the others."""
    attention_rows = [_attention_row(lp, f) for lp in layers if lp.has_attention]
    # a layer without attention: the value every attention layer shares, else the attention module's default
    attention_columns = ATTENTION_COLUMNS + (HEAD_COLUMNS if f.gqa_parts.layer_heads else ())
    attention_columns += (SINK_COLUMN,) if f.gqa_parts.layer_sinks else ()
    attention_columns += tuple(c for key, c in FLAG_COLUMNS.items() if getattr(f.gqa_parts, key) == "some")
    shared = {c.name: str(c.default) for c in attention_columns}
    for c in attention_columns:
        if len({row[c.name] for row in attention_rows}) == 1:
            shared[c.name] = attention_rows[0][c.name]
    rows = []
    for lp in layers:
        row = {"ffn": _ffn_literal(lp), "mixer": mixer_literal(mixer_kind(lp))}
        rows.append(row | (_attention_row(lp, f) if lp.has_attention else shared))
    ffns = [v for v in FFN_ORDER if any(row["ffn"] == v for row in rows)]
    used = {row["mixer"] for row in rows}
    mixers = [text for text in map(mixer_literal, ("attention", *f.mixer_kinds, "none")) if text in used]
    columns = [
        Column("ffn", "str", None, _choices(ffns)),
        Column("mixer", "str", None, _choices(mixers)),
        *attention_columns,
    ]
    for kind in f.mixer_kinds:
        texts = {i: module_kwargs_text(lp) for i, lp in enumerate(layers) if mixer_kind(lp) == kind}
        if len({tuple(t) for t in texts.values()}) > 1:
            raise ValueError(f"codegen: the {kind} layers differ in the keywords their module takes")
        for key in next(iter(texts.values())):
            if len({t[key] for t in texts.values()}) == 1:
                continue  # one value in every layer of the kind: written into make_block
            name = key if all(key != c.name for c in columns) and key != "backend" else f"{kind}_{key}"
            for i, row in enumerate(rows):
                row[name] = texts[i][key] if i in texts else "None"
            kind_type = type(ast.literal_eval(next(iter(texts.values()))[key])).__name__
            others = len(texts) < len(layers)
            words = f"the {kind} layers' {key}" + (" (None in the others)" if others else "")
            columns.append(Column(name, kind_type + (" | None" if others else ""), None, words, kind, key))
    return rows, columns


@dataclass(frozen=True)
class LayerSource:
    """The generated code that builds the layers."""

    factory: list[str]  # the table (or N_LAYERS) and ``def make_block``
    layers: Call  # the ModuleList of Model.__init__
    mtp: Call | None  # the MTP blocks' ModuleList


def layer_source(plan: ResolvedModel, f: Features) -> LayerSource:
    """One ``make_block`` taking what varies between layers, and a table holding each layer's values of it."""
    rows, columns = _rows([*plan.layers, *plan.mtp], f)
    varying = [c for c in columns if len({row[c.name] for row in rows}) > 1]
    names = [c.name for c in varying]
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
    make_block = _hybrid_make_block if f.sublayer_block else _make_block
    return LayerSource(
        factory=[*header, "", "", *make_block(plan, f, rows, varying)],
        layers=Call("nn.ModuleList", (f"make_block({arguments}) {loop}",)),
        mtp=_mtp_expression(rows[len(plan.layers) :], names, f) if plan.mtp else None,
    )


def _signature(f: Features, varying: list[Column]) -> list[str]:
    """``def make_block(...)`` and its docstring."""
    params = [f"{c.name}: {c.type}" for c in varying] + (["backend: str"] if f.moe else [])
    if varying:
        words = "; ".join(f"{c.name}: {c.words}" for c in varying)
        doc = _wrapped_docstring(f"One decoder layer, from its entry in LAYERS. {words}.", "    ")
    else:
        doc = ['    """One decoder layer (the model\'s layers are alike)."""']
    block = "PairBlock" if f.parts.pair else "Block"
    return [f"def make_block({', '.join(params)}) -> {block}:", *doc]


def _attention_of(plan: ResolvedModel, f: Features, rows: list[dict[str, str]], names: list[str]) -> Call:
    """The attention module of make_block: its per-layer arguments a parameter, or the value all layers share if not
    the default."""
    layers = [*plan.layers, *plan.mtp]
    first = next(i for i, lp in enumerate(layers) if lp.has_attention)
    per_layer = {
        c.name: c.name if c.name in names else rows[first][c.name]
        for c in ATTENTION_COLUMNS
        if c.name in names or rows[first][c.name] != c.default
    }
    # the heads: else _attention_call prints the plan's; sinks: a column whenever some layer has them and some not
    per_layer |= {c.name: c.name for c in (*HEAD_COLUMNS, SINK_COLUMN, *FLAG_COLUMNS.values()) if c.name in names}
    return _attention_call(layers[first].attention, f, per_layer)


def _make_block(plan: ResolvedModel, f: Features, rows: list[dict[str, str]], varying: list[Column]) -> list[str]:
    """``def make_block`` of a model whose every layer is attention and an FFN: the numbers every layer shares
    written in, the varying columns as parameters."""
    names = [c.name for c in varying]
    attn = _attention_of(plan, f, rows, names)
    ffns = {type(lp.ffn): lp.ffn for lp in (*plan.layers, *plan.mtp)}  # one configuration of each kind
    lines = _signature(f, varying)
    if f.parts.pair:
        return lines + _pair_block_body(plan, attn, ffns[MoEPlan], f)
    if "ffn" not in names:
        (ffn,) = ffns.values()
        return lines + call_lines(Call("Block", (attn, ffn_call(ffn, f))), "    ", "return ")
    lines += call_lines(Call(attn.func, attn.args), "    ", "attn = ")
    lines += ['    if ffn == "dense":']
    lines += call_lines(Call("Block", ("attn=attn", ffn_call(ffns[DenseFFNPlan], f))), "        ", "return ")
    return lines + call_lines(Call("Block", ("attn=attn", ffn_call(ffns[MoEPlan], f))), "    ", "return ")


def _pair_block_body(plan: ResolvedModel, attn: Call, moe: MoEPlan, f: Features) -> list[str]:
    """make_block's body for shortcut-MoE pair layers: two attentions and two dense FFNs alike, and the MoE."""
    pair = plan.layers[0].pair_ffn
    assert isinstance(pair, DenseFFNPlan)
    dense = Call("DenseFFN", ("D_MODEL", *_ffn_args(pair, int_text(pair.d_ff, "pair d_ff"))))
    lines = _two(Call(attn.func, attn.args), "attn") + _two(dense, "pair_ffn")
    return lines + call_lines(Call("PairBlock", ("attn", "pair_ffn", ffn_call(moe, f))), "    ", "return ")


def _two(call: Call, name: str) -> list[str]:
    """``name = [call for _ in range(2)]``, laid out as ruff lays out a comprehension too long for one line."""
    one = f"    {name} = [{call.flat()} for _ in range(2)]"
    if len(one) <= WIDTH:
        return [one]
    return [f"    {name} = [", *call_lines(call, " " * 8), "        for _ in range(2)", "    ]"]


def _mixer_call(lp: LayerPlan, f: Features, varying: list[Column]) -> Call:
    """A token mixer besides attention: its kind's class from moec.kernels.mixers, built from module_kwargs (a
    keyword that changes with the layer is make_block's parameter)."""
    kind = mixer_kind(lp)
    cls = f.mixer_classes[f.mixer_kinds.index(kind)]
    by_key = {c.key: c.name for c in varying if c.kind == kind}
    args = [f"{key}={by_key.get(key, text)}" for key, text in module_kwargs_text(lp).items()]
    return Call(cls, ("D_MODEL", *args), "mixer=")


def _hybrid_make_block(
    plan: ResolvedModel, f: Features, rows: list[dict[str, str]], varying: list[Column]
) -> list[str]:
    """``def make_block`` of a hybrid: the layer's token mixer (attention, another kind, or none) by its ``mixer``
    name, its FFN (dense, MoE or none) by its ``ffn`` name; one construction of each."""
    names = [c.name for c in varying]
    layers = [*plan.layers, *plan.mtp]
    mixers: dict[str, Call | None] = {}  # by kind, in the docstring's order
    for kind in ("attention", *f.mixer_kinds, "none"):
        lp = next((lp for lp in layers if mixer_kind(lp) == kind), None)
        if lp is None:
            continue
        if kind == "attention":
            mixers[kind] = dataclasses.replace(_attention_of(plan, f, rows, names), keyword="mixer=")
        else:
            mixers[kind] = None if kind == "none" else _mixer_call(lp, f, varying)
    ffns = {_ffn_literal(lp): lp.ffn for lp in layers}
    lines = _signature(f, varying)
    if "mixer" in names:
        for i, (kind, call) in enumerate(mixers.items()):
            test = "else:" if i == len(mixers) - 1 else f"{'elif' if i else 'if'} mixer == {mixer_literal(kind)}:"
            lines.append(f"    {test}" + (f"  # {mixer_literal(kind)}" if test == "else:" else ""))
            lines += (
                call_lines(Call(call.func, call.args), " " * 8, "token_mixer = ")
                if call
                else ["        token_mixer = None"]
            )
        mixer: str | Call = "mixer=token_mixer"
    else:
        (only,) = mixers.values()
        mixer = only or "mixer=None"
        if "ffn" in names and only is not None:
            lines += call_lines(Call(only.func, only.args), "    ", "token_mixer = ")
            mixer = "mixer=token_mixer"
    order = [v for v in ('"dense"', '"none"', '"moe"') if v in ffns]  # the MoE, the longest, last
    for i, key in enumerate(order):
        ffn = "ffn=None" if key == '"none"' else ffn_call(ffns[key], f)
        last = i == len(order) - 1
        if not last:
            lines.append(f"    if ffn == {key}:")
        lines += call_lines(Call("Block", (mixer, ffn)), "    " if last else " " * 8, "return ")
    return lines


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
