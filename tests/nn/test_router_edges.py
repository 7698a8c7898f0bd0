"""The router at its edges: where its tensors live, their dtypes and what is saved; the initial weights;
one token, one-token sequences, scores that underflow; loads summed over steps; and capacity dropping on
inputs full of ties, against a per-slot Python reference."""

from __future__ import annotations

import math

import pytest
import torch

from moec.nn.router import Router
from tests.nn.test_router import make_plan, router_with_logits

VARIANTS = {
    "topk": {},
    "dense": {"dense": True, "k": 8},
    "position": {"capacity_factor": 1.0, "drop_policy": "position"},
    "probs": {"capacity_factor": 1.0, "drop_policy": "probs"},
    "sequence": {"load_balance_granularity": "sequence"},
    "groups": {"score": "sigmoid", "n_groups": 4, "topk_groups": 2, "group_score": "top2_sum"},
    "biases": {"bias": True, "selection_bias": True, "bias_update_rate": 0.1},
    "bias-parameter": {"selection_bias": True, "selection_bias_parameter": True, "bias_update_rate": 0.1},
}


@pytest.mark.parametrize("variant", VARIANTS)
def test_a_meta_router_keeps_every_tensor_on_meta(variant: str):
    """Every tensor the router makes follows the device it was given (a CPU default would break a GPU run)."""
    router = Router(make_plan(**VARIANTS[variant]), 8, device="meta").train()
    assert {t.device.type for t in (*router.parameters(), *router.buffers())} == {"meta"}
    out = router(torch.empty(6, 8, device="meta"), seq_len=3)
    for name in ("topk_idx", "topk_w", "probs", "logits", "tokens_per_expert", "dropped", "load_balance", "aux_loss"):
        assert getattr(out, name).device.type == "meta", name


def test_parameters_take_the_model_dtype_and_balancing_state_stays_fp32():
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)  # buffers must not follow the default either
    try:
        plan = make_plan(bias=True, selection_bias=True, bias_update_rate=0.1)
        router = Router(plan, 8, dtype=torch.bfloat16)
        as_parameter = Router(
            make_plan(bias=True, selection_bias=True, selection_bias_parameter=True), 8, dtype=torch.bfloat16
        )
    finally:
        torch.set_default_dtype(default)
    assert router.weight.dtype == router.bias.dtype == torch.bfloat16
    assert router.expert_bias.dtype == router.expert_load.dtype == torch.float32
    assert as_parameter.expert_bias.dtype == torch.float32  # ERNIE-4.5 keeps it in fp32 too
    # the selection bias is state to keep with a checkpoint; the load counter is per step
    assert set(router.state_dict()) == {"weight", "bias", "expert_bias"}
    assert set(as_parameter.state_dict()) == {"weight", "bias", "expert_bias"}


def test_initial_weights_are_small_and_biases_zero():
    """N(0, 0.02²): routing starts near uniform. 64·512 draws: the sample std is within 2% of 0.02."""
    torch.manual_seed(0)
    router = Router(make_plan(E=64, bias=True), 512)
    assert router.weight.std().item() == pytest.approx(0.02, rel=0.02)
    assert abs(router.weight.mean().item()) < 1e-3
    assert torch.equal(router.bias, torch.zeros(64))


def test_one_token_z_loss_is_its_logsumexp_squared():
    router, x = router_with_logits(make_plan(E=4, k=1), [[1.0, 2.0, 0.5, -1.0]])
    lse = math.log(sum(math.exp(v) for v in (1.0, 2.0, 0.5, -1.0)))
    assert router(x).z_loss.item() == pytest.approx(lse**2, rel=1e-6)


def test_sequences_of_one_token_each_score_their_own_balance():
    """seq_len 1: each token is a sequence; top-1 gives f = its one-hot choice, so its loss is E·p_chosen."""
    rows = [[2.0, 0.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0]]
    router, x = router_with_logits(make_plan(E=4, k=1, load_balance_granularity="sequence"), rows)
    p = [math.exp(2) / (math.exp(2) + 3), math.e / (math.e + 3)]
    assert router(x, seq_len=1).load_balance.item() == pytest.approx(4 * (p[0] + p[1]) / 2, rel=1e-6)


def test_batch_granularity_ignores_sequence_boundaries():
    """Two sequences, each on its own expert: balanced over the batch (E/2 = 2), whatever seq_len says."""
    rows = [[20.0, 0, 0, 0]] * 4 + [[0, 20.0, 0, 0]] * 4
    router, x = router_with_logits(make_plan(E=4, k=1, load_balance_granularity="batch"), rows)
    assert router(x, seq_len=4).load_balance.item() == pytest.approx(2.0, rel=1e-6)


def test_sigmoid_scores_that_underflow_give_zero_weights_not_nan():
    """sigmoid(-200) is 0 in fp32: normalizing two zero weights must give zeros (the 1e-20 guard)."""
    router, x = router_with_logits(make_plan(E=4, k=2, score="sigmoid", normalize_topk=True), [[-200.0] * 4])
    w = router(x).topk_w
    assert torch.equal(w, torch.zeros(1, 2))


def test_expert_loads_add_up_over_steps_until_the_bias_update():
    plan = make_plan(E=4, k=1, score="sigmoid", selection_bias=True, bias_update_rate=0.01)
    router, x = router_with_logits(plan, [[3.0, 0, 0, 0]] * 3 + [[0, 3.0, 0, 0]])
    router.train()
    router(x)
    router(x)
    assert router.expert_load.tolist() == [6.0, 2.0, 0.0, 0.0]


def _capacity_reference(choice: list[int], weight: list[float], E: int, capacity: int, policy: str) -> list[int]:
    """Top-1: which tokens keep their slot. ``position``: each expert's earliest tokens; ``probs``: its
    highest weights, equal weights in token order."""
    keep = [False] * len(choice)
    for e in range(E):
        mine = [t for t in range(len(choice)) if choice[t] == e]
        if policy == "probs":
            mine.sort(key=lambda t: -weight[t])  # sorted() is stable: ties stay in token order
        for t in mine[:capacity]:
            keep[t] = True
    return [choice[t] if keep[t] else -1 for t in range(len(choice))]


@pytest.mark.parametrize("policy", ["position", "probs"])
def test_capacity_on_many_ties_keeps_the_documented_slots(policy: str):
    """3,000 tokens drawn from 6 distinct logit rows: three experts are over their capacity of 375 (1046,
    493 and 1461 tokens choose them) and every weight is tied with hundreds of others, so only a stable
    order keeps the slots the policy names."""
    g = torch.Generator().manual_seed(0)
    rows = (torch.randn(6, 4, generator=g) * 2).tolist()
    pick = torch.randint(6, (3000,), generator=g).tolist()
    router, x = router_with_logits(
        make_plan(E=4, k=1, capacity_factor=0.5, drop_policy=policy), [rows[i] for i in pick]
    )
    out = router(x)
    probs = out.probs.tolist()
    choice = [max(range(4), key=lambda e: p[e]) for p in probs]
    want = _capacity_reference(choice, [p[c] for p, c in zip(probs, choice, strict=True)], 4, 375, policy)
    assert out.topk_idx[:, 0].tolist() == want  # capacity ceil(0.5·3000·1/4) = 375


def test_tiny_sigmoid_weights_are_normalized_with_deepseeks_guard():
    """DeepSeek-V3 (and transformers' port) divide by Σw + 1e-20. With sigmoid(-50) ≈ 1.9e-22 per expert the
    guard dominates: each weight is s / (2s + 1e-20) ≈ 0.0186, not 0.5, and never negative."""
    router, x = router_with_logits(make_plan(E=4, k=2, score="sigmoid", normalize_topk=True), [[-50.0] * 4])
    s = 1 / (1 + math.exp(50.0))
    assert router(x).topk_w[0].tolist() == pytest.approx([s / (2 * s + 1e-20)] * 2, rel=1e-5)
