"""Render a resolved model into one readable, standalone ``model.py`` (templates in ``templates/*.j2``).

The generated module imports torch and, for the expert computation, ``moec.kernels`` only. It defines just
the components the plan uses, specialised to the plan's choices (a softmax router has no sigmoid branch),
and ``Model.__init__`` unrolls the layers with their concrete numbers. Parameter names and shapes are
``moec.nn.MoecModel``'s, so a library state_dict loads with ``strict=True`` and gives identical logits.

Security: nothing from the spec is pasted into code as text. Every value that reaches a template passes
one of the checks below first: integers and floats are type-checked and emitted with ``repr``, strings
must be members of a fixed set, flags must be bools, and the model's name (the only free text that
appears, inside the docstring) is re-validated against the schema's pattern. The description is not used.

Every feature a plan can express is rendered except plans that no spec resolves to (layers whose
attention differs in more than window and RoPE, several different MoE or dense-FFN configurations in one
model, mixed attention kinds); those raise ``ValueError`` naming the problem rather than emitting code
that would disagree with the library.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass
from typing import Any

from moec.spec.paths import data_dir
from moec.spec.plan import AttentionPlan, DenseFFNPlan, LayerPlan, MoEPlan, ResolvedModel

WIDTH = 120  # the generated file's line length (the project's ruff setting)
INDENT = " " * 8  # statements inside Model.__init__

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")  # the schema's pattern for `name`
SPEC_HASH = re.compile(r"^[0-9a-f]{0,64}$")
ACTIVATIONS = ("swiglu", "geglu", "gelu", "relu", "silu", "swiglu_clamped")
CLAMPED_ALPHA, CLAMPED_LIMIT = 1.702, 7.0  # gpt-oss's defaults when a plan leaves them unset (as moec.kernels)
COMPONENTS = ("embedding", "attention", "norms", "head", "dense_ffn", "router", "routed_experts", "shared_experts")


# ---------------------------------------------------------------------------------------------
# the only ways a plan value becomes text


def _int(v: Any, what: str, *, minimum: int = 1) -> str:
    if type(v) is not int or v < minimum:
        raise ValueError(f"{what} must be an integer ≥ {minimum}; got {v!r}")
    return repr(v)


def _float(v: Any, what: str) -> str:
    if type(v) not in (int, float) or not math.isfinite(v):
        raise ValueError(f"{what} must be a finite number; got {v!r}")
    return repr(float(v))


def _bool(v: Any, what: str) -> bool:
    if type(v) is not bool:
        raise ValueError(f"{what} must be true or false; got {v!r}")
    return v


def _choice(v: Any, allowed: tuple[str, ...], what: str) -> str:
    if type(v) is not str or v not in allowed:
        raise ValueError(f"{what} must be one of {', '.join(allowed)}; got {v!r}")
    return v


def _str(v: Any, allowed: tuple[str, ...], what: str) -> str:
    """A string literal for the generated code (a member of a fixed set, so repr is plain)."""
    return repr(_choice(v, allowed, what)).replace("'", '"')


# ---------------------------------------------------------------------------------------------
# what the plan uses


@dataclass(frozen=True)
class RouterFeatures:
    score: str
    softmax_after_topk: bool
    normalize: bool
    scale: bool
    bias: bool
    selection_bias: bool
    selection_bias_parameter: bool
    groups: bool
    group_score: str
    dense: bool
    jitter: bool
    capacity: bool
    drop_policy: str
    load_balance: bool
    sequence: bool  # load balance per sequence
    z_loss: bool
    bias_update: bool

    @property
    def summary(self) -> str:
        """One docstring line naming this model's routing (fixed words only)."""
        parts = ["sigmoid scores" if self.score == "sigmoid" else "softmax scores"]
        if self.dense:
            parts.append("dense (every expert, weighted by its score)")
        else:
            if self.selection_bias:
                parts.append("a selection bias")
            if self.groups:
                parts.append(f"group-limited choice ({self.group_score})")
            parts.append("top-k, softmax over the k chosen logits" if self.softmax_after_topk else "top-k")
        if self.normalize:
            parts.append("weights renormalized")
        if self.scale:
            parts.append("scaled")
        if self.capacity:
            parts.append(f"capacity-limited (drop by {self.drop_policy})")
        return "This model routes with " + ", ".join(parts) + "."


@dataclass(frozen=True)
class Features:
    norm: str
    norm_bias: bool
    pre_norm: bool
    norm_placement: str  # pre, post or after_sublayer
    learned_positions: bool
    rope_any: bool  # some layer rotates q and k
    rope_param: bool  # some do, some don't: Attention takes `rope`
    partial_rotary: bool  # GQA heads rotate only their first ROPE_DIM dims
    layer_rope_theta: bool  # some rotating layer has a RoPE base of its own: Attention takes `rope_theta`
    scaling: str | None
    yarn_truncate: bool
    yarn_attention: str  # "stated", "ratio" or "default"
    yarn_mscale: bool
    mla_scale_factor: bool
    gqa: bool
    mla: bool
    window: bool
    sinks: bool
    attn_bias: bool
    attn_out_bias: bool
    qk_norm: str | None
    clip_qkv: bool
    attn_scale: bool
    activations: tuple[str, ...]
    clamped: bool
    clamped_experts: bool
    moe: bool
    dense: bool
    ffn_types: str
    ffn_experts: bool
    lora: bool
    shared: bool
    shared_gate: bool
    router: RouterFeatures | None
    mtp: bool
    tie_embeddings: bool
    head_bias: bool
    frozen: tuple[str, ...]

    @property
    def rope(self) -> bool:
        return self.rope_any


def _one(values: list[Any], what: str) -> Any:
    """The single configuration every layer shares (a spec has one `moe` and one `ffn` section)."""
    distinct = list(dict.fromkeys(values))
    if len(distinct) > 1:
        raise ValueError(f"codegen supports one {what} configuration per model; this plan has {len(distinct)}")
    return distinct[0] if distinct else None


def _features(plan: ResolvedModel, layers: list[LayerPlan]) -> tuple[Features, dict[str, str | None]]:
    norm = _choice(plan.norm.kind, ("rmsnorm", "layernorm"), "norm.kind")
    placement = _choice(plan.norm.placement, ("pre", "post", "after_sublayer"), "norm.placement")
    pos = _choice(plan.positions.kind, ("rope", "learned", "none"), "positions.kind")
    if not layers:
        raise ValueError("the plan has no layers")

    # features the templates do not render yet: refuse rather than emit code that disagrees with the library
    attns = [lp.attention for lp in layers]
    unsupported = {
        "attention.chunk (chunked attention)": any(x.chunk is not None for x in attns),
        "attention.qk_norm_kind 'l2'": any(x.qk_norm and x.qk_norm_kind == "l2" for x in attns),
        "attention.temperature_tuning": any(x.temperature_floor_scale is not None for x in attns),
        "model.positions.scaling kind 'longrope'": bool(
            plan.positions.scaling is not None and plan.positions.scaling.kind == "longrope"
        ),
        "moe.router.kind 'sparsemixer'": any(
            isinstance(lp.ffn, MoEPlan) and lp.ffn.router.kind == "sparsemixer" for lp in layers
        ),
        "moe.router.apply_to 'input'": any(
            isinstance(lp.ffn, MoEPlan) and lp.ffn.router.apply_to == "input" for lp in layers
        ),
    }
    for what, used in unsupported.items():
        if used:
            raise ValueError(f"codegen does not support {what} yet; use the library model (moec.nn)")

    # attention: one configuration, except the window and RoPE of each layer
    a = _one(
        [dataclasses.replace(x, window=None, rope=True, rope_theta=None) for x in attns],
        "attention (besides window, rope and rope_theta)",
    )
    kind = _choice(a.kind, ("gqa", "mla"), "attention.kind")
    ropes = [_bool(x.rope, "attention.rope") for x in attns]
    for x in attns:
        if x.window is not None:
            _int(x.window, "attention.window")
    if any(ropes) and pos != "rope":
        raise ValueError("a layer applies RoPE but the model's positions are not rope")
    if kind == "mla" and (a.qk_norm or a.bias or a.out_bias or a.clip_qkv is not None):
        raise ValueError("MLA has no qk_norm, clip_qkv or projection biases (DeepSeek-V2/V3 layout)")
    qk_norm = _choice(a.qk_norm_scope, ("head", "projection"), "qk_norm_scope") if _bool(a.qk_norm, "qk_norm") else None

    c: dict[str, str | None] = {
        "vocab_size": _int(plan.vocab_size, "vocab_size"),
        "d_model": _int(plan.d_model, "d_model"),
        "max_seq_len": _int(plan.max_seq_len, "max_seq_len"),
        "norm_eps": _float(plan.norm.eps, "norm.eps"),
    }
    latent_eps = a.latent_norm_eps if kind == "mla" else None
    c["latent_norm_eps"] = None if latent_eps is None else _float(latent_eps, "attention.latent_norm_eps")
    for key in ("embedding_multiplier", "residual_multiplier", "logits_scaling"):
        v = getattr(plan, key)
        c[key] = None if v == 1.0 else _float(v, key)
    c["logit_softcap"] = None if plan.logit_softcap is None else _float(plan.logit_softcap, "logit_softcap")

    # rotary positions and their scaling
    sc = plan.positions.scaling if pos == "rope" else None
    scaling = (
        _choice(sc.kind, ("linear", "dynamic", "yarn", "llama3", "ntk_alpha"), "rope scaling kind") if sc else None
    )
    yarn_attention = "default"
    mla_scale_factor = kind == "mla" and scaling == "yarn" and bool(sc.mscale_all_dim)
    if mla_scale_factor and not any(ropes):
        raise ValueError("MLA with YaRN scaling but no layer applying RoPE is not supported by codegen")
    if any(ropes):
        c["rope_theta"] = _float(plan.positions.theta, "positions.theta")
        c["rope_dim"] = _int(plan.rope_dim, "rope dim")
        thetas = [plan.positions.theta] + [x.rope_theta for x in attns if x.rope and x.rope_theta is not None]
        bases = [_float(t, "rope_theta") for t in dict.fromkeys(thetas)]
        c["rope_thetas"] = f"({', '.join(bases)}{',' if len(bases) == 1 else ''})"
    if sc is not None and any(ropes):
        if scaling == "ntk_alpha":
            c["rope_ntk_alpha"] = _float(sc.alpha, "scaling.alpha")
        else:
            c["rope_factor"] = _float(sc.factor, "scaling.factor")
        if scaling in ("dynamic", "yarn", "llama3"):
            trained = sc.original_max_seq_len or (plan.max_seq_len if scaling == "dynamic" else None)
            c["rope_original_max_seq_len"] = _int(trained, "scaling.original_max_seq_len")
        if scaling == "yarn":
            c["rope_beta_fast"] = _float(sc.beta_fast or 32.0, "scaling.beta_fast")
            c["rope_beta_slow"] = _float(sc.beta_slow or 1.0, "scaling.beta_slow")
            if sc.attention_factor is not None:
                yarn_attention = "stated"
                c["rope_attention_factor"] = _float(sc.attention_factor, "scaling.attention_factor")
            elif sc.mscale and sc.mscale_all_dim:
                yarn_attention = "ratio"
                c["rope_mscale"] = _float(sc.mscale, "scaling.mscale")
        if scaling == "llama3":
            low, high = sc.low_freq_factor, sc.high_freq_factor
            c["rope_low_freq_factor"] = _float(1.0 if low is None else low, "scaling.low_freq_factor")
            c["rope_high_freq_factor"] = _float(4.0 if high is None else high, "scaling.high_freq_factor")
        if mla_scale_factor or yarn_attention == "ratio":
            c["rope_mscale_all_dim"] = _float(sc.mscale_all_dim, "scaling.mscale_all_dim")
    elif sc is not None:
        scaling = None  # no layer rotates: the scaling has nothing to act on

    # FFNs: one dense configuration and one MoE configuration
    dense = _one([lp.ffn for lp in layers if isinstance(lp.ffn, DenseFFNPlan)], "dense FFN")
    moe = _one([lp.ffn for lp in layers if isinstance(lp.ffn, MoEPlan)], "MoE")
    for lp in layers:
        if not isinstance(lp.ffn, (DenseFFNPlan, MoEPlan)):
            raise ValueError(f"layer {lp.index}: unknown FFN plan {type(lp.ffn).__name__}")
    acts = [_choice(x.activation, ACTIVATIONS, "activation") for x in (dense, moe) if x is not None]
    router = None
    if moe is not None:
        r = moe.router
        load_balance = moe.load_balance_coeff > 0
        router = RouterFeatures(
            score=_choice(r.score, ("softmax", "sigmoid"), "router.score"),
            softmax_after_topk=_bool(r.softmax_after_topk, "router.softmax_after_topk"),
            normalize=_bool(r.normalize_topk, "router.normalize_topk"),
            scale=r.scale != 1.0,
            bias=_bool(r.bias, "router.bias"),
            selection_bias=_bool(r.selection_bias, "router.selection_bias"),
            selection_bias_parameter=bool(r.selection_bias)
            and _bool(r.selection_bias_parameter, "router.selection_bias_parameter"),
            groups=r.n_groups is not None and r.topk_groups is not None and r.topk_groups < r.n_groups,
            group_score=_choice(r.group_score, ("max", "top2_sum"), "router.group_score"),
            dense=_bool(r.dense, "router.dense"),
            jitter=r.jitter > 0,
            capacity=moe.capacity_factor is not None,
            drop_policy=_choice(moe.drop_policy, ("probs", "position"), "drop_policy"),
            load_balance=load_balance,
            sequence=load_balance
            and _choice(moe.load_balance_granularity, ("batch", "sequence"), "load_balance_granularity") == "sequence",
            z_loss=moe.z_loss_coeff > 0,
            # the update moves the selection bias; without one it has nothing to move (as in moec.nn)
            bias_update=moe.bias_update_rate is not None and bool(r.selection_bias),
        )
    expert_kind = _choice(moe.expert_kind, ("ffn", "lora"), "expert_kind") if moe else None
    has_dense, has_moe = dense is not None, moe is not None
    frozen = tuple(_choice(x, COMPONENTS, "frozen component") for x in plan.frozen)

    f = Features(
        norm=norm,
        norm_bias=norm == "layernorm" and _bool(plan.norm.bias, "norm.bias"),
        pre_norm=placement == "pre",
        norm_placement=placement,
        learned_positions=pos == "learned",
        rope_any=any(ropes),
        rope_param=any(ropes) and not all(ropes),
        partial_rotary=any(ropes) and kind == "gqa" and plan.rope_dim != a.head_dim,
        layer_rope_theta=any(x.rope and x.rope_theta is not None for x in attns),
        scaling=scaling,
        yarn_truncate=scaling == "yarn" and _bool(sc.truncate, "scaling.truncate"),
        yarn_attention=yarn_attention,
        yarn_mscale=(scaling == "yarn" and yarn_attention != "stated") or mla_scale_factor,
        mla_scale_factor=mla_scale_factor,
        gqa=kind == "gqa",
        mla=kind == "mla",
        window=any(x.window is not None for x in attns),
        sinks=_bool(a.sinks, "sinks"),
        attn_bias=_bool(a.bias, "attention.bias"),
        attn_out_bias=_bool(a.out_bias, "attention.out_bias"),
        qk_norm=qk_norm,
        clip_qkv=a.clip_qkv is not None,
        attn_scale=a.scale is not None,
        activations=tuple(dict.fromkeys(acts)),
        clamped="swiglu_clamped" in acts,
        clamped_experts=has_moe and moe.activation == "swiglu_clamped" and expert_kind == "ffn",
        moe=has_moe,
        dense=has_dense,
        ffn_types=" | ".join(t for t, on in (("DenseFFN", has_dense), ("MoE", has_moe)) if on),
        ffn_experts=expert_kind == "ffn",
        lora=expert_kind == "lora",
        shared=has_moe and _int(moe.n_shared_experts, "n_shared_experts", minimum=0) != "0",
        shared_gate=has_moe and moe.n_shared_experts > 0 and _bool(moe.shared_gate, "shared_gate"),
        router=router,
        mtp=bool(plan.mtp),
        tie_embeddings=_bool(plan.tie_embeddings, "tie_embeddings"),
        head_bias=_bool(plan.head_bias, "head_bias"),
        frozen=frozen,
    )
    return f, c


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
            f"n_heads={_int(a.n_heads, 'n_heads')}",
            f"kv_lora_rank={_int(a.kv_lora_rank, 'kv_lora_rank')}",
            f"qk_nope_head_dim={_int(a.qk_nope_head_dim, 'qk_nope_head_dim')}",
            f"qk_rope_head_dim={_int(a.qk_rope_head_dim, 'qk_rope_head_dim', minimum=0)}",
            f"v_head_dim={_int(a.v_head_dim, 'v_head_dim')}",
        ]
        if a.q_lora_rank:
            args.append(f"q_lora_rank={_int(a.q_lora_rank, 'q_lora_rank')}")
    else:
        args = [
            "D_MODEL",
            f"n_heads={_int(a.n_heads, 'n_heads')}",
            f"n_kv_heads={_int(a.n_kv_heads, 'n_kv_heads')}",
            f"head_dim={_int(a.head_dim, 'head_dim')}",
        ]
    if a.window is not None:
        args.append(f"window={_int(a.window, 'window')}")
    if f.rope_param and not a.rope:
        args.append("rope=False")
    if a.rope and a.rope_theta is not None:
        args.append(f"rope_theta={_float(a.rope_theta, 'rope_theta')}")
    if f.gqa and a.clip_qkv is not None:
        args.append(f"clip_qkv={_float(a.clip_qkv, 'clip_qkv')}")
    if a.scale is not None:
        args.append(f"scale={_float(a.scale, 'attention.scale')}")
    return ("MLA" if f.mla else "Attention"), args


def _ffn_args(x: DenseFFNPlan | MoEPlan, d_ff: str, f: Features) -> list[str]:
    """The arguments an FFN-shaped module (DenseFFN, Experts, LoRAExperts) shares."""
    args = [f"d_ff={d_ff}", f"activation={_str(x.activation, ACTIVATIONS, 'activation')}"]
    if _bool(x.bias, "ffn.bias"):
        args.append("bias=True")
    if x.activation == "swiglu_clamped":
        alpha = CLAMPED_ALPHA if x.activation_alpha is None else x.activation_alpha
        limit = CLAMPED_LIMIT if x.activation_limit is None else x.activation_limit
        args += [f"activation_alpha={_float(alpha, 'activation_alpha')}",
                 f"activation_limit={_float(limit, 'activation_limit')}"]  # fmt: skip
    return args


def _ffn_lines(x: DenseFFNPlan | MoEPlan, f: Features, indent: str) -> list[str]:
    if isinstance(x, DenseFFNPlan):
        return _call("DenseFFN", ["D_MODEL", *_ffn_args(x, _int(x.d_ff, "d_ff"), f)], indent, "ffn=", ",")
    E, d_ff = _int(x.n_experts, "n_experts"), _int(x.d_ff, "d_ff")
    r, inner = x.router, indent + "    "
    rf = f.router
    assert rf is not None
    router = ["D_MODEL", f"n_experts={E}", f"top_k={_int(r.top_k, 'top_k')}"]
    if rf.scale:
        router.append(f"scale={_float(r.scale, 'router.scale')}")
    if rf.groups:
        router += [f"n_groups={_int(r.n_groups, 'n_groups')}", f"topk_groups={_int(r.topk_groups, 'topk_groups')}"]
    if rf.jitter:
        router.append(f"jitter={_float(r.jitter, 'jitter')}")
    if rf.capacity:
        router.append(f"capacity_factor={_float(x.capacity_factor, 'capacity_factor')}")
    if rf.load_balance:
        router.append(f"load_balance_coeff={_float(x.load_balance_coeff, 'load_balance_coeff')}")
    if rf.z_loss:
        router.append(f"z_loss_coeff={_float(x.z_loss_coeff, 'z_loss_coeff')}")
    if rf.bias_update:
        router.append(f"bias_update_rate={_float(x.bias_update_rate, 'bias_update_rate')}")
    lines = [f"{indent}ffn=MoE("]
    lines += _call("Router", router, inner, "router=", ",")
    if f.lora:
        lora = [f"lora_rank={_int(x.lora_rank, 'lora_rank')}", f"lora_alpha={_float(x.lora_alpha, 'lora_alpha')}"]
        experts = _ffn_args(x, d_ff, f)
        experts = [a for a in experts if a != "bias=True"]  # the adapters have no biases; the base may
        lines += _call("LoRAExperts", ["D_MODEL", f"n_experts={E}", *experts, *lora], inner, "experts=", ",")
        lines += _call("DenseFFN", ["D_MODEL", *_ffn_args(x, d_ff, f)], inner, "base=", ",")
    else:
        lines += _call("Experts", ["D_MODEL", f"n_experts={E}", *_ffn_args(x, d_ff, f)], inner, "experts=", ",")
    if f.shared:
        s, f_s = _int(x.n_shared_experts, "n_shared_experts"), _int(x.d_ff_shared, "d_ff_shared")
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
        notes.append(f"sliding window {_int(lp.attention.window, 'window')}")
    return ", ".join(notes)


def _summary(plan: ResolvedModel, f: Features) -> str:
    n_moe = sum(isinstance(lp.ffn, MoEPlan) for lp in plan.layers)
    kind = "Mixture-of-Experts" if n_moe else "dense"
    parts = [f"{_int(plan.n_layers, 'n_layers')} layers"]
    if n_moe:
        parts.append(f"{n_moe} of them MoE")
    parts.append(f"d_model {_int(plan.d_model, 'd_model')}")
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
        f, c = _features(plan, [*plan.layers, *plan.mtp])
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
