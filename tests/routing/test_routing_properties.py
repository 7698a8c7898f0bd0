"""What each routing algorithm promises (docs/routing.md): GShard's random second choice is seeded and has the
expected slot counts of its formula; expert choice fills every expert exactly to capacity; hash routing is a
fixed function of the token id with no router parameters."""

from __future__ import annotations

import math
from fractions import Fraction

import pytest
import torch

from moec.analyze.counts import expert_choice_flops_per_token, ffn_parts
from moec.kernels.routing_oracle import combine_matrix
from moec.nn.moe import MoE
from moec.nn.router import Router
from moec.spec.plan import MoEPlan
from tests.tiny_specs import TINY_MOE, tiny_plan


def moe_plan(*sets: str) -> MoEPlan:
    plan = tiny_plan(TINY_MOE, *sets).layers[0].ffn
    assert isinstance(plan, MoEPlan)
    return plan


GSHARD = ("moe.router.kind=gshard", "moe.router.normalize_topk=false")
EXPERT_CHOICE = ("moe.router.kind=expert_choice", "moe.router.normalize_topk=false")
HASH = ("moe.router.kind=hash", "moe.router.normalize_topk=false")


def gshard_router(seed: int) -> Router:
    torch.manual_seed(0)
    router = Router(moe_plan(*GSHARD), 32)
    with torch.no_grad():
        router.weight.mul_(40)  # spread the gates over (0, 1/2], not all near 1/2
    router.generator = torch.Generator().manual_seed(seed)
    return router


def test_gshard_dispatch_is_reproducible_from_its_seed_and_changes_with_it():
    x = torch.randn(500, 32)
    a, b, c = (gshard_router(s)(x).topk_idx for s in (7, 7, 8))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_gshard_slot_counts_match_the_formula_within_three_standard_deviations():
    """Expert e's slots: its first choices, plus a Bernoulli(2·g2) for each token whose second choice it is.
    Over 10,000 tokens the count must lie within 3 standard deviations of Σ 2·g2 (formula from the gates)."""
    router = gshard_router(3)
    x = torch.randn(10_000, 32)
    r = router(x)
    top, idx = r.probs.topk(2, dim=-1)
    g2 = top[:, 1] / top.sum(-1)  # the second gate, renormalised
    p = (2 * g2).detach().double()
    for e in range(4):
        first = int((idx[:, 0] == e).sum())
        mine = idx[:, 1] == e
        mean = first + float(p[mine].sum())
        sd = math.sqrt(float((p[mine] * (1 - p[mine])).sum()))
        got = int(r.tokens_per_expert[e])
        assert sd > 5, "the test needs real randomness"
        assert abs(got - mean) <= 3 * sd, (e, got, mean, sd)
    assert 0.2 < float(p.mean()) < 0.9  # a second choice neither always nor never sent


@pytest.mark.parametrize(("batch", "seq", "k"), [(1, 8, 1), (2, 6, 2), (3, 5, 1), (4, 7, 3)])
def test_expert_choice_fills_every_expert_exactly_to_capacity_on_every_batch(batch: int, seq: int, k: int):
    plan = moe_plan(*EXPERT_CHOICE, f"moe.router.top_k={k}")
    torch.manual_seed(batch)
    moe = MoE(plan, 32)
    T = batch * seq
    want = math.ceil(k * T / 4)  # ceil(k·T/E), by hand
    for step in range(5):
        x = torch.randn(batch, seq, 32) * (step + 1)
        _, aux = moe(x)
        assert aux.tokens_per_expert.tolist() == [want] * 4
        # tokens no expert took: the rows the expert-by-expert oracle leaves empty
        taken = combine_matrix(x.reshape(T, 32).double(), plan, moe.router.weight.double()).ne(0).any(-1)
        assert int(aux.dropped) == int((~taken).sum())


def test_expert_choice_may_give_a_token_no_expert_or_several():
    # sigmoid scores: each expert's score rises with x[0] on its own (a softmax would share it out)
    plan = moe_plan(*EXPERT_CHOICE, "moe.router.top_k=1", "moe.router.score=sigmoid")
    router = Router(plan, 32)
    with torch.no_grad():
        router.weight.zero_()
        router.weight[:, 0] = torch.tensor([0.4, 0.3, 0.2, 0.1])  # every expert prefers large x[0]
    x = torch.zeros(8, 32)
    x[:, 0] = torch.arange(8.0)  # token 7 is everyone's favourite
    r = router(x)
    per_token = (r.topk_idx >= 0).sum(-1)
    assert per_token[7] == 4 and per_token[0] == 0
    assert int(r.dropped) == int((per_token == 0).sum())


def test_hash_routing_is_a_fixed_function_of_the_token_id():
    plan = moe_plan(*HASH)
    router = Router(plan, 32)
    assert sum(p.numel() for p in router.parameters()) == 0
    ids = torch.tensor([5, 9, 5, 63, 9])
    a = router(torch.randn(5, 32), token_ids=ids).topk_idx
    b = router(torch.randn(5, 32), token_ids=ids).topk_idx
    assert torch.equal(a, b) and torch.equal(a[0], a[2]) and torch.equal(a[1], a[4])
    # expert 1 = floor(((id·2654435761) mod 2^32)·E / 2^32), by hand for id 5: 13272178805 mod 2^32 = 387276917
    assert a[0].tolist() == [387276917 * 4 // 2**32, (387276917 * 4 // 2**32 + 1) % 4]


def test_hash_routing_without_token_ids_is_a_clear_error():
    router = Router(moe_plan(*HASH), 32)
    with pytest.raises(ValueError, match="hash routing needs the token ids"):
        router(torch.randn(3, 32))


@pytest.mark.parametrize(
    ("sets", "router_params"),
    [
        ((), 32 * 4),  # d·E
        (HASH, 0),
        (("moe.router.mlp_hidden=6",), 32 * 6 + 6 * 4),  # d·h + h·E
        (("moe.router.mlp_hidden=6", "moe.router.bias=true"), 32 * 6 + 6 * 4 + 4),
    ],
)
def test_router_parameters_counted_equal_built(sets: tuple[str, ...], router_params: int):
    plan = moe_plan(*sets)
    part = ffn_parts(plan, 32)["router"]
    built = sum(p.numel() for p in MoE(plan, 32, device="meta").router.parameters())
    assert part.params == built == router_params
    assert part.flops == 2 * (router_params - (4 if plan.router.bias else 0))


def test_gshard_in_eval_sends_every_second_choice():
    router = gshard_router(5).eval()
    r = router(torch.randn(200, 32))
    assert bool((r.topk_idx >= 0).all())
    top = r.probs.topk(2, dim=-1).values
    torch.testing.assert_close(r.topk_w, top / top.sum(-1, keepdim=True))


@pytest.mark.parametrize(("tokens", "experts_per_token"), [(8, 1), (6, Fraction(4, 3)), (5, Fraction(8, 5))])
def test_expert_choice_flops_follow_the_capacity(tokens: int, experts_per_token: Fraction):
    """E = 4, k = 1: ceil(T/4) tokens per expert, so E·ceil(T/4)/T experts per token on average (by hand:
    8 → 1, 6 → 4·2/6, 5 → 4·2/5); each expert costs 2·3·d·f FLOPs per token (gated, d 32, f 16)."""
    plan = moe_plan(*EXPERT_CHOICE, "moe.router.top_k=1")
    assert expert_choice_flops_per_token(plan, 32, tokens) == experts_per_token * 2 * 3 * 32 * 16


def test_decode_refuses_expert_choice_by_name_and_decodes_hash_routing():
    from moec.nn.router import routing_decode_refusals

    assert routing_decode_refusals(tiny_plan(TINY_MOE)) == []
    (ec,) = routing_decode_refusals(tiny_plan(TINY_MOE, *EXPERT_CHOICE))
    assert ec.startswith("moe.router.kind expert_choice (layers 0, 1):") and "leaks the future" in ec
    assert routing_decode_refusals(tiny_plan(TINY_MOE, *HASH)) == []  # a token's experts: its own id alone


def hashed_by_hand(token_id: int, n_experts: int, top_k: int) -> list[int]:
    """The formula of docs/routing.md, in plain integers: expert 1 = ⌊((id·2654435761) mod 2^32)·E / 2^32⌋,
    the next k−1 following it cyclically."""
    first = (token_id * 2654435761) % 2**32 * n_experts // 2**32
    return [(first + j) % n_experts for j in range(top_k)]


def test_a_whole_hash_routed_model_routes_each_token_by_its_own_id_in_every_layer_and_in_decode():
    from moec.nn import build_model

    torch.manual_seed(0)
    model = build_model(tiny_plan(TINY_MOE, *HASH)).eval()
    tokens = torch.randint(0, 64, (2, 12))
    logits, aux = model(tokens)
    expected = torch.zeros(4, dtype=torch.int64)
    for t in tokens.flatten().tolist():
        for e in hashed_by_hand(t, 4, 2):
            expected[e] += 1
    assert [a.tokens_per_expert.tolist() for a in aux.layers] == [expected.tolist()] * 2
    # the cached decode passes the ids too, so prefill then single steps give the full forward's logits
    cache = model.new_cache(2, 12)
    steps = [model(tokens[:, :5], cache=cache, start=0)[0]]
    steps += [model(tokens[:, i : i + 1], cache=cache, start=i)[0] for i in range(5, 12)]
    torch.testing.assert_close(torch.cat(steps, dim=1), logits, rtol=0, atol=1e-5)
