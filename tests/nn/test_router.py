"""The router against a per-token pure-Python reference written from the papers' definitions, and
its aux losses against values derived by hand."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from moec.nn.router import Router
from moec.spec.plan import MoEPlan, RouterPlan


def make_plan(E: int = 8, k: int = 2, **kw) -> MoEPlan:
    router_fields = {f.name for f in dataclasses.fields(RouterPlan)}
    r = RouterPlan(
        top_k=k, score="softmax", softmax_after_topk=False, normalize_topk=False, scale=1.0,
        selection_bias=False, bias=False, n_groups=None, topk_groups=None, group_score="max",
        dense=False, jitter=0.0,
    )  # fmt: skip
    r = dataclasses.replace(r, **{n: v for n, v in kw.items() if n in router_fields})
    p = MoEPlan(
        n_experts=E, d_ff=8, activation="swiglu", bias=False, n_shared_experts=0, d_ff_shared=8,
        shared_gate=False, granularity=1, router=r, capacity_factor=None, drop_policy="probs",
        load_balance_coeff=0.0, load_balance_granularity="batch", z_loss_coeff=0.0, bias_update_rate=None,
        expert_kind="ffn", lora_rank=None, lora_alpha=None,
    )  # fmt: skip
    return dataclasses.replace(p, **{n: v for n, v in kw.items() if n not in router_fields})


def router_with_logits(plan: MoEPlan, logits: list[list[float]]) -> tuple[Router, torch.Tensor]:
    """A router whose logits are exactly ``logits``: weight = identity (d = E), x = the logits."""
    E = plan.n_experts
    r = Router(plan, E)
    with torch.no_grad():
        r.weight.copy_(torch.eye(E))
        if r.bias is not None:
            r.bias.zero_()
    return r.eval(), torch.tensor(logits, dtype=torch.float32)


def by_hand(logits: list[float], plan: MoEPlan, expert_bias: list[float] | None = None):
    """One token routed from the definitions, in plain Python: (chosen experts, their weights)."""
    r, E = plan.router, plan.n_experts
    if r.score == "softmax":
        z = sum(math.exp(v) for v in logits)
        probs = [math.exp(v) / z for v in logits]
    else:
        probs = [1 / (1 + math.exp(-v)) for v in logits]
    sel = [p + (expert_bias[e] if expert_bias else 0.0) for e, p in enumerate(probs)]
    allowed = list(range(E))
    if r.n_groups:
        n = E // r.n_groups
        groups = [sel[g * n : (g + 1) * n] for g in range(r.n_groups)]
        gscore = [max(g) if r.group_score == "max" else sum(sorted(g, reverse=True)[:2]) for g in groups]
        best = sorted(range(r.n_groups), key=lambda g: -gscore[g])[: r.topk_groups]
        allowed = [e for e in range(E) if e // n in best]
    chosen = list(range(E)) if r.dense else sorted(allowed, key=lambda e: -sel[e])[: r.top_k]
    if r.softmax_after_topk:
        z = sum(math.exp(logits[e]) for e in chosen)
        w = [math.exp(logits[e]) / z for e in chosen]
    else:
        w = [probs[e] for e in chosen]
    if r.normalize_topk:
        s = sum(w) + (1e-20 if r.score == "sigmoid" else 0.0)
        w = [v / s for v in w]
    return chosen, [v * r.scale for v in w]


LOGITS = torch.Generator().manual_seed(0)
TOKENS = (torch.randn(5, 8, generator=LOGITS) * 2).tolist()  # 5 tokens, 8 experts, no ties

VARIANTS = {
    "softmax_then_topk": {},
    "topk_then_softmax": {"softmax_after_topk": True},
    "normalized": {"normalize_topk": True},
    "scaled": {"normalize_topk": True, "scale": 2.5},
    "sigmoid": {"score": "sigmoid", "normalize_topk": True, "scale": 2.5},
    "top1": {"k": 1},
    "group_max": {"n_groups": 4, "topk_groups": 2},
    "group_top2_sum": {"score": "sigmoid", "n_groups": 4, "topk_groups": 2, "group_score": "top2_sum"},
    "dense": {"dense": True, "k": 8},
}


@pytest.mark.parametrize("variant", VARIANTS)
def test_router_matches_per_token_reference(variant: str):
    plan = make_plan(**VARIANTS[variant])
    router, x = router_with_logits(plan, TOKENS)
    out = router(x)
    for t, row in enumerate(TOKENS):
        chosen, w = by_hand(row, plan)
        assert out.topk_idx[t].tolist() == chosen
        assert out.topk_w[t].tolist() == pytest.approx(w, rel=1e-5, abs=1e-7)
    assert out.topk_idx.dtype == torch.int64 and out.probs.dtype == torch.float32
    assert out.tokens_per_expert.tolist() == [sum(e in by_hand(r, plan)[0] for r in TOKENS) for e in range(8)]
    assert int(out.dropped) == 0


def test_selection_bias_changes_the_choice_but_not_the_weights():
    plan = make_plan(score="sigmoid", selection_bias=True, normalize_topk=True, k=2)
    router, x = router_with_logits(plan, [[3.0, 2.0, 1.0, 0.0, -1.0, -2.0, -3.0, -4.0]])
    assert router(x).topk_idx.tolist() == [[0, 1]]
    bias = [0.0] * 8
    bias[7] = 2.0  # expert 7's sigmoid score is 0.018; the bias makes it the first choice
    router.expert_bias.copy_(torch.tensor(bias))
    out = router(x)
    chosen, w = by_hand(x[0].tolist(), plan, bias)
    assert out.topk_idx.tolist() == [chosen] == [[7, 0]]
    s7, s0 = 1 / (1 + math.exp(4.0)), 1 / (1 + math.exp(-3.0))  # weights from scores without the bias
    assert out.topk_w[0].tolist() == pytest.approx([s7 / (s7 + s0), s0 / (s7 + s0)], rel=1e-6)
    assert "expert_bias" not in dict(router.named_parameters())  # a buffer: no gradient, not counted


def test_group_limited_routing_can_prune_the_best_expert():
    """Expert 0 has the top score, but its group (0, 1) scores lowest by top-2 sum and is pruned."""
    plan = make_plan(score="sigmoid", n_groups=4, topk_groups=2, group_score="top2_sum", k=2)
    row = [5.0, -5.0, 3.0, 2.9, 2.5, 2.4, 0.0, 0.1]  # top-2 sums: 1.0, 1.90, 1.84, 1.02
    router, x = router_with_logits(plan, [row])
    assert router(x).topk_idx.tolist() == [by_hand(row, plan)[0]] == [[2, 3]]
    plan_max = dataclasses.replace(plan, router=dataclasses.replace(plan.router, group_score="max"))
    router, x = router_with_logits(plan_max, [row])
    assert router(x).topk_idx[0, 0].item() == 0  # by max, group 0 survives


def test_router_bias_is_added_to_the_logits():
    plan = make_plan(bias=True, softmax_after_topk=True)
    router, x = router_with_logits(plan, TOKENS)
    b = torch.linspace(-1, 1, 8)
    router.bias.data.copy_(b)
    out = router(x)
    torch.testing.assert_close(out.logits, x + b)
    for t, row in enumerate(TOKENS):
        chosen, w = by_hand([v + bv for v, bv in zip(row, b.tolist(), strict=True)], plan)
        assert out.topk_idx[t].tolist() == chosen
        assert out.topk_w[t].tolist() == pytest.approx(w, rel=1e-5)


# ---- capacity ---------------------------------------------------------------------------------------


def test_position_policy_keeps_first_choices_before_second_choices():
    """E = 2, k = 2, T = 4, capacity = ceil(0.5·4·2/2) = 2 per expert. Priority is every first choice
    in token order, then every second choice. Expert 0 is the first choice of t0, t1, t2: it keeps
    t0, t1. Expert 1 is t3's first choice, so t3 goes before the second choices of t0, t1, t2 and
    expert 1 keeps t3 and t0 (a token-order priority would keep t0, t1 and drop t3 entirely)."""
    plan = make_plan(E=2, k=2, capacity_factor=0.5, drop_policy="position")
    router, x = router_with_logits(plan, [[1.0, 0.0]] * 3 + [[0.0, 1.0]])
    out = router(x)
    assert out.topk_idx.tolist() == [[0, 1], [0, -1], [-1, -1], [1, -1]]
    assert out.topk_w[1, 1].item() == out.topk_w[2, 0].item() == out.topk_w[3, 1].item() == 0
    assert out.tokens_per_expert.tolist() == [2, 2] and int(out.dropped) == 4


def test_probs_policy_keeps_each_experts_highest_weight_slots():
    """Top-1, E = 2, T = 6, capacity = ceil(1.0·6·1/2) = 3. Five tokens choose expert 0 with
    probabilities rising in the order t3 < t0 < t4 < t1 < t2: t2, t1, t4 stay; t0, t3 are dropped."""
    plan = make_plan(E=2, k=1, capacity_factor=1.0, drop_policy="probs")
    margins = [1.0, 3.0, 4.0, 0.5, 2.0, -1.0]  # logit of expert 0 minus expert 1; t5 goes to expert 1
    router, x = router_with_logits(plan, [[m, 0.0] for m in margins])
    out = router(x)
    assert out.topk_idx[:, 0].tolist() == [-1, 0, 0, -1, 0, 1]
    assert out.tokens_per_expert.tolist() == [3, 1] and int(out.dropped) == 2
    position = make_plan(E=2, k=1, capacity_factor=1.0, drop_policy="position")
    router, x = router_with_logits(position, [[m, 0.0] for m in margins])
    assert router(x).topk_idx[:, 0].tolist() == [0, 0, 0, -1, -1, 1]  # the earliest three instead


@pytest.mark.parametrize(
    ("T", "cf", "kept"),
    [(5, 1.0, 3), (7, 0.5, 2), (3, 1.0, 2), (4, 1.0, 2)],  # cf·T·k/E = 2.5, 1.75, 1.5, and 2 (whole)
)
def test_capacity_rounds_up_a_fractional_slot_count(T: int, cf: float, kept: int):
    """Top-1 over E = 2, every token prefers expert 0: expert 0 keeps ceil(cf·T/2) slots, the earliest
    ones, and the rest are dropped (GShard rounds the capacity up, so a fractional slot is a whole one)."""
    plan = make_plan(E=2, k=1, capacity_factor=cf, drop_policy="position")
    router, x = router_with_logits(plan, [[1.0, 0.0]] * T)
    out = router(x)
    assert out.topk_idx[:, 0].tolist() == [0] * kept + [-1] * (T - kept)
    assert out.tokens_per_expert.tolist() == [kept, 0] and int(out.dropped) == T - kept


# ---- aux losses -------------------------------------------------------------------------------------


def test_uniform_routing_gives_switch_loss_exactly_one():
    """T = E tokens, token t prefers expert t with the same margin: f_i = 1/E and, since each token's
    probabilities sum to 1, P_i = 1/E; E·Σ_i (1/E)(1/E) = 1."""
    E = 8
    plan = make_plan(E=E, k=1, load_balance_coeff=0.5)
    router, x = router_with_logits(plan, (torch.eye(E) * 3).tolist())
    out = router(x)
    assert out.load_balance.item() == pytest.approx(1.0, abs=1e-6)
    assert out.aux_loss.item() == pytest.approx(0.5, abs=1e-6)


def test_collapsed_router_has_larger_load_balance_loss_than_uniform():
    E, T = 8, 16
    plan = make_plan(E=E, k=2)
    collapsed, x = router_with_logits(plan, [[6.0, 5.0] + [0.0] * (E - 2)] * T)
    uniform, xu = router_with_logits(
        plan, [[3.0 if e in (t % E, (t + 1) % E) else 0.0 for e in range(E)] for t in range(T)]
    )
    lb_collapsed, lb_uniform = collapsed(x).load_balance.item(), uniform(xu).load_balance.item()
    assert lb_uniform == pytest.approx(1.0, abs=1e-6)
    assert lb_collapsed > 3.0 > lb_uniform  # ≈ E·(½·p0 + ½·p1) with p0 + p1 ≈ 0.99


def test_sequence_level_loss_averages_per_sequence_losses():
    """Two sequences of 4 tokens, each collapsed on its own expert (p ≈ 1): each sequence scores ≈ E,
    while the batch as a whole looks balanced over those two experts (≈ E/2)."""
    E = 4
    rows = [[20.0, 0, 0, 0]] * 4 + [[0, 20.0, 0, 0]] * 4
    seq = make_plan(E=E, k=1, load_balance_granularity="sequence")
    router, x = router_with_logits(seq, rows)
    assert router(x, seq_len=4).load_balance.item() == pytest.approx(E, rel=1e-6)
    batch = make_plan(E=E, k=1)
    router, x = router_with_logits(batch, rows)
    assert router(x).load_balance.item() == pytest.approx(E / 2, rel=1e-6)


def test_sigmoid_scores_are_normalized_for_the_balance_loss():
    plan = make_plan(E=4, k=1, score="sigmoid")
    row = [2.0, 0.0, -1.0, 1.0]
    router, x = router_with_logits(plan, [row])
    s = [1 / (1 + math.exp(-v)) for v in row]
    # one token, top-1 = expert 0: f = (1, 0, 0, 0), P = s / Σs
    assert router(x).load_balance.item() == pytest.approx(4 * s[0] / sum(s), rel=1e-6)
    # two tokens: each token's scores are normalized on their own before the mean
    other = [-1.0, 3.0, 0.5, 0.0]
    router, x = router_with_logits(plan, [row, other])
    o = [1 / (1 + math.exp(-v)) for v in other]
    P = [(s[e] / sum(s) + o[e] / sum(o)) / 2 for e in range(4)]
    assert router(x).load_balance.item() == pytest.approx(4 * (0.5 * P[0] + 0.5 * P[1]), rel=1e-6)


def test_z_loss_matches_hand_computation():
    plan = make_plan(z_loss_coeff=0.1, load_balance_coeff=0.01)
    router, x = router_with_logits(plan, TOKENS)
    out = router(x)
    z = sum(math.log(sum(math.exp(v) for v in row)) ** 2 for row in TOKENS) / len(TOKENS)
    assert out.z_loss.item() == pytest.approx(z, rel=1e-6)
    assert out.aux_loss.item() == pytest.approx(0.1 * z + 0.01 * out.load_balance.item(), rel=1e-6)


@pytest.mark.parametrize("variant", ["softmax_then_topk", "topk_then_softmax", "sigmoid", "dense"])
def test_gate_weight_gradient_matches_float64_formula(variant: str):
    """The gate weights are differentiable in the router weight (the chosen ids are not): compare with
    autograd of the closed-form weights in float64 at the same chosen ids."""
    plan = make_plan(**VARIANTS[variant])
    r = plan.router
    router = Router(plan, 6)
    x = torch.randn(5, 6)
    out = router(x)
    c = torch.randn(out.topk_w.shape)
    (g,) = torch.autograd.grad((out.topk_w * c).sum(), router.weight)
    w64 = router.weight.detach().double().requires_grad_()
    logits = x.double() @ w64.t()
    idx = out.topk_idx
    if r.softmax_after_topk:
        w = logits.gather(1, idx).softmax(-1)
    else:
        w = (logits.softmax(-1) if r.score == "softmax" else logits.sigmoid()).gather(1, idx)
    if r.normalize_topk:
        w = w / w.sum(-1, keepdim=True)
    (g64,) = torch.autograd.grad((w * r.scale * c.double()).sum(), w64)
    torch.testing.assert_close(g.double(), g64, rtol=1e-4, atol=1e-6)


def test_aux_loss_gradient_reaches_router_weight():
    plan = make_plan(load_balance_coeff=1.0, z_loss_coeff=1.0)
    router = Router(plan, 8)
    router(torch.randn(6, 8)).aux_loss.backward()
    assert router.weight.grad is not None and router.weight.grad.abs().sum() > 0


def test_bias_update_moves_bias_toward_underloaded_experts():
    plan = make_plan(E=4, k=1, score="sigmoid", selection_bias=True, bias_update_rate=0.01)
    router, x = router_with_logits(plan, [[3.0, 0, 0, 0]] * 5 + [[0, 3.0, 0, 0]] * 3)
    router.eval()(x)
    assert router.expert_load.sum().item() == 0  # eval mode does not count
    router.train()(x)  # loads (5, 3, 0, 0), mean 2
    router.update_bias()
    assert router.expert_bias.tolist() == pytest.approx([-0.01, -0.01, 0.01, 0.01])
    assert router.expert_load.sum().item() == 0  # reset for the next step


def test_bias_update_is_a_no_op_without_a_rate():
    plan = make_plan(E=4, k=1, score="sigmoid", selection_bias=True)
    router, x = router_with_logits(plan, [[3.0, 0, 0, 0]] * 4)
    router.train()(x)
    router.update_bias()
    assert router.expert_bias.tolist() == [0.0] * 4


def test_jitter_perturbs_only_in_training():
    plan = make_plan(jitter=0.1)
    router, x = router_with_logits(plan, TOKENS)
    torch.testing.assert_close(router.eval()(x).logits, x)
    noisy = router.train()(x).logits
    ratio = noisy / x  # with W = I each logit is x·u, u ~ U(1-ε, 1+ε): 40 draws fall on both sides of 1
    assert ((ratio >= 0.9 - 1e-6) & (ratio <= 1.1 + 1e-6)).all()
    assert ratio.min() < 0.98 and ratio.max() > 1.02
    router, x = router_with_logits(make_plan(jitter=0.0), TOKENS)
    state = torch.get_rng_state()
    assert torch.equal(router.train()(x).logits, x)
    assert torch.equal(torch.get_rng_state(), state)  # no jitter, no draw from the global generator


def test_routing_is_computed_in_fp32_for_bf16_inputs():
    router = Router(make_plan(), 8, dtype=torch.bfloat16)
    out = router(torch.randn(4, 8, dtype=torch.bfloat16))
    assert out.logits.dtype == out.topk_w.dtype == torch.float32


def test_zero_tokens_give_finite_zero_losses():
    plan = make_plan(load_balance_coeff=1.0, z_loss_coeff=1.0, capacity_factor=1.0)
    out = Router(plan, 8)(torch.randn(0, 8))
    assert out.topk_idx.shape == (0, 2) and out.aux_loss.item() == 0.0 and int(out.dropped) == 0


@pytest.mark.parametrize(
    ("x", "message"),
    [
        (torch.randn(2, 3, 8), r"^router input must be \(tokens, d_model\); got shape \(2, 3, 8\)$"),
        (torch.randn(4, 7), r"^router input has d_model 7, expected 8$"),
        (torch.ones(4, 8, dtype=torch.long), r"^router input must be a floating-point tensor; got torch\.int64$"),
    ],
)
def test_bad_inputs_raise_value_error(x: torch.Tensor, message: str):
    with pytest.raises(ValueError, match=message):
        Router(make_plan(), 8)(x)


def test_seq_len_must_divide_tokens():
    with pytest.raises(ValueError, match=r"^seq_len 4 does not divide the 6 tokens$"):
        Router(make_plan(load_balance_granularity="sequence"), 8)(torch.randn(6, 8), seq_len=4)
    with pytest.raises(ValueError, match=r"^seq_len 0 does not divide the 6 tokens$"):
        Router(make_plan(load_balance_granularity="sequence"), 8)(torch.randn(6, 8), seq_len=0)


@pytest.mark.parametrize("eps", [0.0, 0.01, 0.3, 0.9])
def test_sparsemixer_equals_transformers_phimoe_at_inference(eps):
    """Expert 1 the best logit, expert 2 the best of the rest, each weighted by a softmax over the
    logits within its eps band: against transformers' own ``sparsemixer`` (training off)."""
    modeling = pytest.importorskip("transformers.models.phimoe.modeling_phimoe")
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(64, 8, generator=g) * 2
    want_w, want_idx = modeling.sparsemixer(logits, jitter_eps=eps, training=False, top_k=2)
    router, x = router_with_logits(make_plan(8, 2, kind="sparsemixer", sparsemixer_eps=eps), logits.tolist())
    out = router(x)
    assert torch.equal(out.topk_idx, want_idx)
    torch.testing.assert_close(out.topk_w, want_w)
    if eps in (0.0, 0.3):  # the band matters: eps 0 keeps one logit (weight 1), a wide one several
        assert torch.all(out.topk_w == 1.0) if eps == 0.0 else bool((out.topk_w < 0.99).any())
