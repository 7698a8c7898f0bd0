"""Warnings: a valid spec whose defaults or settings probably do not do what its author meant.

Unlike ``checks.py`` these never refuse a spec: ``moec validate`` and ``moec analyze`` print them to stderr,
one located line each, and still exit 0. Each trap is one small named step reporting through ``warn(path,
message)``; what each one means is in docs/conventions.md ("Warnings").
"""

from __future__ import annotations

import math
from collections.abc import Callable

from moec.errors import Problem
from moec.spec.schema import MoE, Spec
from moec.spec.yamlio import Located, Path, dotted

Warn = Callable[[Path, str], None]

# routing that needs a balancing term: a learned router choosing k of E (dense, hash and expert-choice
# routing cannot collapse: every expert gets a weight, the hash is fixed, each expert fills its own capacity)
_NEEDS_BALANCING = ("topk", "sparsemixer", "gshard")


def spec_warnings(spec: Spec, loc: Located) -> list[Problem]:
    """Every warning for a loaded (valid) spec, located in its YAML."""
    out: list[Problem] = []

    def warn(path: Path, msg: str) -> None:
        m = loc.mark_for(path, key=True)
        out.append(Problem(m.file, m.line, m.column, dotted(path), msg))

    kinds = ffn_kinds_used(spec)
    # a section a base spec (extends) brings along is that spec's business: textbook-moe keeps
    # textbook-dense's ffn section without using it
    if spec.moe is not None and "moe" not in kinds and _written_here(loc, ("moe",)):
        warn(("moe",), "no layer uses this moe section (layers.default.ffn and the overrides are all dense)")
    pairs = spec.model.block == "shortcut_moe_pair"  # its pairs' dense FFNs read the ffn section
    if spec.ffn is not None and "dense" not in kinds and not pairs and _written_here(loc, ("ffn",)):
        inherited = spec.moe is not None and ("moe", "activation") not in loc.marks
        inherited = inherited and ("ffn", "activation") in loc.marks
        why = "; it still gives the experts its activation, since moe.activation is unset" if inherited else ""
        warn(("ffn",), f"no layer uses this ffn section (every layer is an MoE layer){why}")
    _no_token_mixing(spec, warn)
    _scales_of_absent_sublayers(spec, warn)
    if spec.moe is not None and "moe" in kinds:
        _no_balancing(spec.moe, loc, warn)
        _capacity_must_drop(spec.moe, warn)
        _constant_top1_weight(spec.moe, warn)
    return out


def _no_token_mixing(spec: Spec, warn: Warn) -> None:
    """Every layer's mixer ``none``: no position ever sees another, so the model predicts each token from itself."""
    from moec.spec.resolve import mixer_kind_per_layer

    if set(mixer_kind_per_layer(spec)) == {"none"}:
        warn(("layers",), "no layer has a token mixer (every layers.*.mixer is none): no position sees another")


def _scales_of_absent_sublayers(spec: Spec, warn: Warn) -> None:
    """model.residual_scales written for a sublayer kind no layer has: its factors apply to nothing."""
    from moec.spec.resolve import ffn_kind_per_layer, mixer_kind_per_layer

    scales = spec.model.residual_scales
    if scales is None or spec.model.norm.placement != "normed_residual":
        return  # the checks refuse residual_scales without normed_residual
    mixers = set(mixer_kind_per_layer(spec))
    has = {
        "attention": "attention" in mixers,
        "mixer": bool(mixers - {"attention", "none"}),
        "ffn": set(ffn_kind_per_layer(spec)) != {"none"},
    }
    names = {"attention": "attention", "mixer": "a token mixer besides attention", "ffn": "an FFN"}
    for sublayer in sorted(scales.model_fields_set):
        if not has[sublayer]:
            warn(("model", "residual_scales", sublayer), f"no layer has {names[sublayer]}: these factors apply to none")


def _written_here(loc: Located, path: Path) -> bool:
    """Whether the spec's own file (not a base it extends) writes ``path``."""
    return path in loc.marks and loc.marks[path].file == loc.mark_for(()).file


def ffn_kinds_used(spec: Spec) -> set[str]:
    """The FFN kinds ("dense", "moe") some layer, encoder layer or MTP block of the spec uses."""
    from moec.spec.encdec import encoder_ffn_kinds
    from moec.spec.resolve import ffn_kind_per_layer

    encoder = set(encoder_ffn_kinds(spec.encoder)) if spec.encoder is not None else set()
    return set(ffn_kind_per_layer(spec)) | encoder | ({spec.mtp.ffn} if spec.mtp is not None else set())


def _no_balancing(moe: MoE, loc: Located, warn: Warn) -> None:
    """A learned top-k router with neither an auxiliary loss nor aux-loss-free bias updates, left so by
    default: nothing pushes back when a few experts take most tokens. Writing load_balance_coeff: 0 says it
    is meant (an inference-only import, a balancing study) and silences this."""
    r, b = moe.router, moe.balance
    if r.dense or r.kind not in _NEEDS_BALANCING:
        return
    if b.load_balance_coeff or b.bias_update_rate is not None:
        return
    if ("moe", "balance", "load_balance_coeff") in loc.marks:
        return
    warn(
        ("moe", "balance") if ("moe", "balance") in loc.marks else ("moe",),
        "no load balancing: load_balance_coeff is 0 by default and there is no bias_update_rate, so routing "
        "can collapse onto a few experts; set moe.balance.load_balance_coeff (0.01 is common), or write it "
        "as 0 to say none is meant",
    )


MAX_DROP_SEARCH = 1 << 16  # tokens; a capacity factor just below 1 puts the bound at billions


def forced_drop_tokens(capacity_factor: float, n_experts: int, top_k: int) -> int | None:
    """The fewest tokens T at which the capacity ceil(cf·T·k/E) per expert holds fewer than the T·k
    assignments even when every expert gets an equal share, so some must drop; None if no T does (cf ≥ 1).

    Dropping is forced at T exactly when E·ceil(cf·T·k/E) < T·k. For cf ≥ 1 the left side is at least T·k.
    For cf < 1 it holds for every T ≥ E / (k·(1 − cf)), since ceil(c·x) < c·x + 1 ≤ x there (x = T·k/E);
    the smallest T can be below that bound (ceil rounds up to whole slots), so it is searched for, up to
    MAX_DROP_SEARCH tokens (past that, the bound is returned: dropping is certain there)."""
    if capacity_factor >= 1:
        return None
    bound = math.ceil(n_experts / (top_k * (1 - capacity_factor)))
    for tokens in range(1, min(bound, MAX_DROP_SEARCH) + 1):
        if n_experts * math.ceil(capacity_factor * tokens * top_k / n_experts) < tokens * top_k:
            return tokens
    return bound  # not reached: the bound itself always drops


def _capacity_must_drop(moe: MoE, warn: Warn) -> None:
    cf = moe.capacity_factor
    if cf is None or moe.router.dense or moe.router.kind in ("expert_choice", "hash"):
        return
    n_experts, top_k = moe.n_experts * moe.granularity, (moe.router.top_k or 0) * moe.granularity
    first = forced_drop_tokens(cf, n_experts, top_k)
    if first is None:
        return
    group = moe.capacity_group_size
    if group is not None:
        c = math.ceil(cf * group * top_k / n_experts)
        dropped = group * top_k - n_experts * c
        if dropped > 0:
            warn(
                ("moe", "capacity_factor"),
                f"capacity_factor {cf} < 1 drops tokens on every batch: each group of {group} tokens makes "
                f"{group * top_k} expert assignments but the {n_experts} experts hold {c} each, so at least "
                f"{dropped} ({dropped / (group * top_k):.0%}) drop even when routing is perfectly balanced",
            )
        return
    warn(
        ("moe", "capacity_factor"),
        f"capacity_factor {cf} < 1 must drop tokens: with T tokens the {n_experts} experts hold "
        f"ceil({cf}·T·{top_k}/{n_experts}) slots each, fewer than the T·{top_k} assignments at T = {first} "
        f"and at every T ≥ {math.ceil(n_experts / (top_k * (1 - cf)))}: about {(1 - cf) * 100:.2g}% of them drop "
        "even when routing is perfectly balanced",
    )


def _constant_top1_weight(moe: MoE, warn: Warn) -> None:
    """One expert per token with its weight renormalised over the chosen one (normalize_topk, or a softmax over
    the k chosen logits): the weight is always 1 (times router.scale), so the task loss gives the router no
    gradient and it learns from the balancing terms alone (Switch keeps the unnormalised probability)."""
    r = moe.router
    if r.dense or r.kind != "topk" or (r.top_k or 0) * moe.granularity != 1:
        return
    field = "normalize_topk" if r.normalize_topk else "softmax_after_topk" if r.softmax_after_topk else None
    if field is not None:
        warn(
            ("moe", "router", field),
            f"top-1 routing with {field}: the one weight is always {r.scale:g}, so the router gets no gradient "
            "from the loss and learns only from the balancing terms; Switch Transformer keeps the softmax "
            "probability (drop this field)",
        )
