"""The MoE section's cross-field checks: DeepSeekMoE segmentation, the router and its algorithms (GShard,
expert choice, hash), group-limited routing and the experts. Run by :func:`moec.spec.checks.check_spec`, each problem
reported with its location."""

from __future__ import annotations

from moec.spec.block_checks import Bad
from moec.spec.schema import Spec
from moec.spec.segmentation import segmentation_problems
from moec.spec.yamlio import Located


def check_moe(spec: Spec, loc: Located, bad: Bad) -> None:
    """Every MoE check; the router and expert checks only when the segmentation resolved (they would see its
    stand-in counts otherwise)."""
    segmentation = _check_segmentation(spec, loc, bad)
    if spec.moe is not None and not segmentation:
        _check_router(spec, bad)
        _check_routing_algorithm(spec, bad)
        _check_groups(spec, bad)
        _check_experts(spec, bad)


def _check_segmentation(spec: Spec, loc: Located, bad: Bad) -> bool:
    """DeepSeekMoE's segmentation that the schema could not resolve; whether there was any problem (the other
    expert checks would only see its stand-in counts then)."""
    if spec.moe is None or spec.moe.segmentation is None:
        return False
    problems = segmentation_problems(spec.moe.segmentation, loc.value["moe"])
    for path, msg in problems:
        bad(("moe", *path), msg)
    return bool(problems)


def _check_router(spec: Spec, bad: Bad) -> None:
    e = spec.moe
    assert e is not None
    r, g = e.router, e.granularity
    if r.dense:
        if r.top_k is not None and r.top_k * g != e.n_experts * g:
            bad(
                ("moe", "router", "top_k"),
                f"dense routing gives every expert a weight; top_k must be omitted or equal n_experts ({e.n_experts})",
            )
        if e.capacity_factor is not None:
            bad(("moe", "capacity_factor"), "dense routing drops no tokens; remove capacity_factor")
        if r.n_groups is not None:
            bad(("moe", "router", "n_groups"), "group-limited routing does not apply to dense routing")
    elif r.top_k is None:
        bad(("moe", "router"), "router.top_k is required (or set router.dense: true)")
    elif r.top_k > e.n_experts:
        bad(("moe", "router", "top_k"), f"{r.top_k} exceeds moe.n_experts ({e.n_experts})")
    if r.kind == "sparsemixer":
        if r.top_k != 2 or r.dense:
            bad(("moe", "router", "kind"), "SparseMixer routes exactly top_k: 2")
        wrong = [f for f in ("softmax_after_topk", "normalize_topk", "selection_bias") if getattr(r, f)]
        if r.score != "softmax" or r.n_groups is not None or wrong:
            bad(
                ("moe", "router", "kind"),
                "SparseMixer weighs by its own masked softmax: it takes score softmax and no "
                "softmax_after_topk, normalize_topk, selection_bias or groups",
            )
    elif r.sparsemixer_eps:
        bad(("moe", "router", "sparsemixer_eps"), "only meaningful with kind: sparsemixer")
    if r.softmax_after_topk and r.score != "softmax":
        bad(("moe", "router", "softmax_after_topk"), "only meaningful with score: softmax")


# what each routing algorithm of docs/routing.md decides for itself, so a spec may not also write it
_GSHARD_OWNS = ("softmax_after_topk", "normalize_topk", "selection_bias", "dense")
_EXPERT_CHOICE_OWNS = ("softmax_after_topk", "normalize_topk", "selection_bias", "dense")
_HASH_OWNS = ("softmax_after_topk", "normalize_topk", "selection_bias", "bias", "dense", "mlp_hidden")


def _check_routing_algorithm(spec: Spec, bad: Bad) -> None:
    """GShard top-2, expert choice and hash routing (docs/routing.md): the fields each one fixes itself."""
    e = spec.moe
    assert e is not None
    r = e.router
    owns = {"gshard": _GSHARD_OWNS, "expert_choice": _EXPERT_CHOICE_OWNS, "hash": _HASH_OWNS}.get(r.kind, ())
    for field in owns:
        if getattr(r, field):  # located at the line to remove, one error each
            bad(("moe", "router", field), f"remove {field}: {r.kind} routing decides it itself")
    if r.kind != "topk" and r.kind != "sparsemixer" and r.n_groups is not None:
        bad(("moe", "router", "n_groups"), f"group-limited routing does not apply to {r.kind} routing")
    if r.kind == "gshard":
        _check_gshard(spec, bad)
    elif r.kind == "expert_choice":
        _check_expert_choice(spec, bad)
    elif r.kind == "hash":
        _check_hash(spec, bad)
    if e.capacity_group_size is not None:
        if e.capacity_factor is None:
            bad(("moe", "capacity_group_size"), "a capacity group needs capacity_factor (dropless routing has none)")
        if r.kind in ("expert_choice", "hash"):
            bad(("moe", "capacity_group_size"), f"capacity groups apply to token-choice routing, not {r.kind}")


def _check_gshard(spec: Spec, bad: Bad) -> None:
    e = spec.moe
    assert e is not None
    r = e.router
    if r.top_k is not None and r.top_k * e.granularity != 2:
        bad(("moe", "router", "top_k"), "GShard routing is top-2: top_k must be 2 (after granularity)")
    if r.score != "softmax":
        bad(("moe", "router", "score"), "GShard's gates are a softmax over the experts: score must be softmax")
    if e.capacity_factor is not None and e.drop_policy != "position":
        bad(
            ("moe", "drop_policy"),
            "GShard fills each expert's capacity in token order, first choices before second: drop_policy position",
        )


def _check_expert_choice(spec: Spec, bad: Bad) -> None:
    e = spec.moe
    assert e is not None
    if e.capacity_factor is not None:
        bad(
            ("moe", "capacity_factor"),
            "expert choice's capacity is top_k·T/E tokens per expert by construction (top_k: the average "
            "experts per token); remove capacity_factor",
        )
    if e.balance.load_balance_coeff:
        bad(("moe", "balance", "load_balance_coeff"), "expert choice is balanced by construction; set it to 0")
    if e.balance.bias_update_rate is not None:
        bad(("moe", "balance", "bias_update_rate"), "expert choice is balanced by construction; remove it")


def _check_hash(spec: Spec, bad: Bad) -> None:
    e = spec.moe
    assert e is not None
    r, b = e.router, e.balance
    for f in ("load_balance_coeff", "z_loss_coeff"):
        if getattr(b, f):
            bad(("moe", "balance", f), "hash routing has no learned router to balance; set it to 0")
    if b.bias_update_rate is not None:
        bad(("moe", "balance", "bias_update_rate"), "hash routing has no learned router to balance; remove it")
    if r.jitter:
        bad(("moe", "router", "jitter"), "hash routing reads token ids, not the hidden state: remove jitter")
    if r.score != "softmax":
        bad(("moe", "router", "score"), "hash routing scores nothing: leave score unset")
    if r.apply_to != "output":
        bad(("moe", "router", "apply_to"), "hash routing weighs each chosen expert 1/k on the output only")


def _check_groups(spec: Spec, bad: Bad) -> None:
    """Group-limited routing (DeepSeek-V3): groups divide the experts and can reach top_k of them."""
    e = spec.moe
    assert e is not None
    r, g = e.router, e.granularity
    n_experts = e.n_experts * g
    if (r.n_groups is None) != (r.topk_groups is None):
        bad(
            ("moe", "router", "n_groups" if r.n_groups is None else "topk_groups"),
            "n_groups and topk_groups go together",
        )
        return
    if r.n_groups is None or r.topk_groups is None:
        return
    if n_experts % r.n_groups:
        bad(("moe", "router", "n_groups"), f"{r.n_groups} does not divide the number of experts ({n_experts})")
    elif r.topk_groups > r.n_groups:
        bad(("moe", "router", "topk_groups"), f"{r.topk_groups} exceeds n_groups ({r.n_groups})")
    else:
        per_group = n_experts // r.n_groups
        if r.top_k is not None and r.top_k * g > r.topk_groups * per_group:
            bad(
                ("moe", "router", "top_k"),
                f"{r.top_k * g} experts cannot be reached within {r.topk_groups} groups of {per_group}",
            )
        if r.group_score == "top2_sum" and per_group < 2:
            bad(("moe", "router", "group_score"), "top2_sum needs at least 2 experts per group")


def _check_experts(spec: Spec, bad: Bad) -> None:
    e = spec.moe
    assert e is not None
    r, g = e.router, e.granularity
    if e.d_ff % g:
        bad(("moe", "granularity"), f"moe.d_ff ({e.d_ff}) is not divisible by granularity ({g})")
    if e.balance.bias_update_rate is not None and not r.selection_bias:
        bad(
            ("moe", "balance", "bias_update_rate"),
            "aux-loss-free balancing updates router.selection_bias; set it to true",
        )
    if r.selection_bias_on != "scores" and not r.selection_bias:
        bad(("moe", "router", "selection_bias_on"), "needs router.selection_bias: true (the bias it places)")
    if r.selection_bias_parameter and not r.selection_bias:
        bad(("moe", "router", "selection_bias_parameter"), "needs router.selection_bias: true (the bias it stores)")
    if e.d_ff_shared is not None and e.n_shared_experts == 0:
        bad(("moe", "d_ff_shared"), "given but n_shared_experts is 0")
    if e.shared_gate and e.n_shared_experts == 0:
        bad(("moe", "shared_gate"), "needs n_shared_experts > 0")
    if e.expert_kind == "lora" and e.output_bias:
        bad(("moe", "output_bias"), "not supported with lora experts")
    if e.expert_kind == "lora" and e.lora is None:
        bad(("moe", "expert_kind"), "lora experts need a moe.lora section (rank, alpha)")
    if e.expert_kind != "lora" and e.lora is not None:
        bad(("moe", "lora"), "only meaningful with expert_kind: lora")
    if r.apply_to == "input" and e.expert_kind == "lora":
        bad(("moe", "router", "apply_to"), "input gating is not supported with lora experts")
    if e.expert_kind == "lora" and (e.n_shared_experts or g != 1):
        bad(("moe", "expert_kind"), "lora experts cannot be combined with shared experts or granularity")
