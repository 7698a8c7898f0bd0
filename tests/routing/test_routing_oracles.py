"""Every routing algorithm of docs/routing.md against the token-by-token (expert-by-expert) oracle in
moec/kernels/routing_oracle.py, in float64: the combine weights and their gradients with respect to the input
and every router parameter; and the MoE layer's output against the naive expert loop."""

from __future__ import annotations

import pytest
import torch

from moec.kernels import naive
from moec.kernels.routing_oracle import combine_matrix
from moec.nn.moe import MoE
from moec.nn.router import Router
from moec.spec.plan import MoEPlan
from tests.tiny_specs import TINY_MOE, tiny_plan

# each variant: --set overrides of tiny-moe (4 experts, top-2, d 32)
VARIANTS = {
    "topk_sqrt_softplus": ("moe.router.score=sqrt_softplus",),
    "topk_sqrt_softplus_normalized": ("moe.router.score=sqrt_softplus", "moe.router.scale=1.5"),
    "router_mlp": ("moe.router.mlp_hidden=6", "moe.router.bias=true"),
    "router_mlp_sigmoid": ("moe.router.mlp_hidden=5", "moe.router.score=sigmoid"),
    "gshard": ("moe.router.kind=gshard", "moe.router.normalize_topk=false"),
    "gshard_grouped_capacity": (
        "moe.router.kind=gshard",
        "moe.router.normalize_topk=false",
        "moe.capacity_factor=1.0",
        "moe.drop_policy=position",
        "moe.capacity_group_size=6",
    ),
    "topk_grouped_capacity_probs": ("moe.capacity_factor=0.75", "moe.capacity_group_size=4"),
    "expert_choice": ("moe.router.kind=expert_choice", "moe.router.normalize_topk=false"),
    "expert_choice_k1_sqrt_softplus": (
        "moe.router.kind=expert_choice",
        "moe.router.normalize_topk=false",
        "moe.router.top_k=1",
        "moe.router.score=sqrt_softplus",
    ),
    "hash": ("moe.router.kind=hash", "moe.router.normalize_topk=false"),
    "hash_k1": ("moe.router.kind=hash", "moe.router.normalize_topk=false", "moe.router.top_k=1"),
}


def moe_plan(*sets: str) -> MoEPlan:
    plan = tiny_plan(TINY_MOE, *sets).layers[0].ffn
    assert isinstance(plan, MoEPlan)
    return plan


def routed(plan: MoEPlan, T: int = 12, seed: int = 0):
    """A float64 router with random weights, its input, GShard draws and token ids."""
    torch.manual_seed(seed)
    router = Router(plan, 32, dtype=torch.float64)
    with torch.no_grad():
        for p in router.parameters():
            p.normal_()  # larger than the init, so that the scores are far apart
    x = torch.randn(T, 32, dtype=torch.float64, requires_grad=True)
    ids = torch.randint(0, 64, (T,))
    router.generator = torch.Generator().manual_seed(seed)
    uniform = torch.rand(T, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return router, x, ids, uniform


def combine_of(idx: torch.Tensor, w: torch.Tensor, E: int) -> torch.Tensor:
    """(T, E) from the router's token-major slots (-1: none)."""
    C = w.new_zeros(idx.shape[0], E)
    return C.index_put((torch.arange(idx.shape[0])[:, None].expand_as(idx)[idx >= 0], idx[idx >= 0]), w[idx >= 0])


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_router_equals_its_oracle_in_values_and_gradients(variant: str):
    plan = moe_plan(*VARIANTS[variant])
    router, x, ids, uniform = routed(plan)
    r = router(x, token_ids=ids)
    got = combine_of(r.topk_idx, r.topk_w, plan.n_experts)
    hidden = router.hidden.weight if router.hidden is not None else None
    want = combine_matrix(x, plan, router.weight, bias=router.bias, hidden=hidden, uniform=uniform, token_ids=ids)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    assert got.ne(0).sum() > 0
    if plan.router.kind == "hash":  # fixed weights 1/k: nothing to differentiate
        assert not got.requires_grad and not want.requires_grad
        return
    probe = torch.randn_like(got)
    params = [x, *[p for p in router.parameters() if p.requires_grad]]
    g_got = torch.autograd.grad((got * probe).sum(), params, allow_unused=True)
    g_want = torch.autograd.grad((want * probe).sum(), params, allow_unused=True)
    for a, b in zip(g_got, g_want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("variant", ["gshard_grouped_capacity", "expert_choice", "hash", "router_mlp"])
def test_moe_layer_equals_the_naive_expert_loop_over_the_oracle_weights(variant: str):
    plan = moe_plan(*VARIANTS[variant])
    torch.manual_seed(1)
    moe = MoE(plan, 32, backend="reference", dtype=torch.float64)
    moe.router.generator = torch.Generator().manual_seed(1)
    x = torch.randn(2, 6, 32, dtype=torch.float64, requires_grad=True)
    ids = torch.randint(0, 64, (2, 6))
    y, _ = moe(x, token_ids=ids)
    xt = x.reshape(-1, 32)
    hidden = moe.router.hidden.weight if moe.router.hidden is not None else None
    uniform = torch.rand(12, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    C = combine_matrix(
        xt, plan, moe.router.weight, bias=moe.router.bias, hidden=hidden, uniform=uniform, token_ids=ids.reshape(-1)
    )
    E = plan.n_experts
    every = torch.arange(E).expand(12, E)
    want = naive.expert_ffn(xt, every, C, moe.experts.w_gate_up, moe.experts.w_down, activation=plan.activation)
    torch.testing.assert_close(y.reshape(-1, 32), want, rtol=1e-10, atol=1e-12)
    probe = torch.randn_like(want)
    g_got = torch.autograd.grad((y.reshape(-1, 32) * probe).sum(), [x, moe.experts.w_down])
    g_want = torch.autograd.grad((want * probe).sum(), [x, moe.experts.w_down])
    for a, b in zip(g_got, g_want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
