"""The mixture of attention heads (moec/nn/moa.py) against a float64 oracle that loops over tokens, chosen experts
and heads from the definition (docs/conventions.md, "Mixture of attention heads"); its cached decode against its
full forward; its parameters against the analyzer's formula; its router's options."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from moec.analyze.counts import attention_part
from moec.nn.moa import MoA
from moec.spec.plan import AttentionPlan

pytestmark = pytest.mark.usefixtures("one_torch_thread")

D, S, HD = 24, 9, 8


def plan(*, heads=4, kv=2, experts=5, top_k=2, score="softmax", after=True, normalize=False, window=None, bias=True):
    return AttentionPlan(
        "moa", heads, kv, HD, False, False, bias, False, window, True,
        moa_n_experts=experts, moa_top_k=top_k, moa_score=score, moa_softmax_after_topk=after,
        moa_normalize_topk=normalize,
    )  # fmt: skip


def randomized(mod: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in mod.named_parameters():
            scale = 1.0 if name.startswith("router") else (0.3 if p.dim() > 1 else 1.0)
            p.copy_(torch.randn(p.shape, generator=g) * scale)
    return mod.double()


def rotated(x: torch.Tensor, pos: int) -> torch.Tensor:
    """One head's vector (HD,) at position pos, its pairs (i, i + HD/2) rotated by pos·10000^(−2i/HD)."""
    half = HD // 2
    out = x.clone()
    for i in range(half):
        a = pos * 10000.0 ** (-2 * i / HD)
        c, s = math.cos(a), math.sin(a)
        out[i], out[i + half] = x[i] * c - x[i + half] * s, x[i] * s + x[i + half] * c
    return out


def gates(logits: torch.Tensor, p: AttentionPlan) -> tuple[list[int], list[float]]:
    """One token's chosen experts and their weights, from the definition of each router option."""
    order = sorted(range(len(logits)), key=lambda e: -float(logits[e]))[: p.moa_top_k]
    if p.moa_softmax_after_topk:
        z = [math.exp(float(logits[e])) for e in order]
        return order, [v / sum(z) for v in z]
    if p.moa_score == "sigmoid":
        scores = [1 / (1 + math.exp(-float(v))) for v in logits]
    else:
        scores = [math.exp(float(v)) / sum(math.exp(float(u)) for u in logits) for v in logits]
    w = [scores[e] for e in order]
    return order, [v / sum(w) for v in w] if p.moa_normalize_topk else w


def oracle(mod: MoA, x: torch.Tensor, p: AttentionPlan) -> torch.Tensor:
    """Token by token, chosen expert by chosen expert, head by head, in float64."""
    B, T, _ = x.shape
    h, kv, r = p.n_heads, p.n_kv_heads, p.n_heads // p.n_kv_heads
    out = torch.zeros(B, T, D, dtype=torch.float64)
    Wk, Wv = mod.k_proj.weight, mod.v_proj.weight
    for b in range(B):
        keys = [[rotated(Wk[g * HD : (g + 1) * HD] @ x[b, s], s) for g in range(kv)] for s in range(T)]
        vals = [[Wv[g * HD : (g + 1) * HD] @ x[b, s] for g in range(kv)] for s in range(T)]
        for t in range(T):
            chosen, w = gates(mod.router.weight @ x[b, t], p)
            seen = [s for s in range(t + 1) if p.window is None or s > t - p.window]
            for e, g_e in zip(chosen, w, strict=True):
                heads = []
                for j in range(h):
                    q = rotated(mod.q_experts[e, j * HD : (j + 1) * HD] @ x[b, t], t)
                    sc = torch.stack([q @ keys[s][j // r] / math.sqrt(HD) for s in seen]).softmax(0)
                    heads.append(sum(sc[i] * vals[s][j // r] for i, s in enumerate(seen)))
                out[b, t] += g_e * (mod.o_experts[e] @ torch.cat(heads))
            if mod.out_bias is not None:
                out[b, t] += mod.out_bias
    return out


def rope_tables(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(cos, sin) (n, HD) in float64, the angles of :func:`rotated` (moec's RotaryEmbedding computes them in fp32)."""
    inv = torch.tensor([10000.0 ** (-2 * i / HD) for i in range(HD // 2)], dtype=torch.float64)
    angles = torch.arange(n, dtype=torch.float64)[:, None] * inv[None, :]
    emb = torch.cat((angles, angles), dim=-1)
    return emb.cos(), emb.sin()


CASES = {
    "jetmoe_router_gqa": {},  # JetMoE's router (softmax over the k best logits), two query heads per KV head
    "jetmoe": {"heads": 2, "kv": 2},  # JetMoE: one query head per KV head
    "softmax_then_topk": {"after": False},
    "normalized_sigmoid": {"score": "sigmoid", "after": False, "normalize": True, "top_k": 3},
    "window_no_bias": {"window": 4, "bias": False},
}


@pytest.mark.parametrize("case", list(CASES))
def test_forward_equals_the_token_by_token_oracle(case):
    p = plan(**CASES[case])
    mod = randomized(MoA(p, D))
    x = torch.randn(2, S, D, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    with torch.no_grad():
        got = mod(x, rope_tables(S))
        want = oracle(mod, x, p)
    torch.testing.assert_close(got, want, atol=1e-10, rtol=1e-10)
    idx = mod.route(x)[0].reshape(-1, p.moa_top_k).sort(-1)[0]
    assert len(set(map(tuple, idx.tolist()))) > 2  # the tokens chose varied experts


@pytest.mark.parametrize("case", ["jetmoe", "window_no_bias"])
def test_cached_decode_equals_the_full_forward(case):
    p = plan(**CASES[case])
    mod = randomized(MoA(p, D))
    x = torch.randn(2, S, D, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    cos, sin = rope_tables(S)
    cache = mod.new_cache(2, S, device=torch.device("cpu"), dtype=torch.float64)
    with torch.no_grad():
        full = mod(x, (cos, sin))
        outs = [mod(x[:, :3], (cos[:3], sin[:3]), cache, torch.arange(3))]
        for t in range(3, S):
            outs.append(mod(x[:, t : t + 1], (cos[t : t + 1], sin[t : t + 1]), cache, torch.tensor([t])))
    torch.testing.assert_close(torch.cat(outs, dim=1), full, atol=1e-10, rtol=1e-10)


def test_parameters_are_the_analyzers_count():
    for case in CASES.values():
        p = plan(**case)
        built = sum(t.numel() for t in MoA(p, D, device="meta").parameters())
        by_hand = p.moa_n_experts * 2 * D * p.n_heads * HD + 2 * D * p.n_kv_heads * HD + D * p.moa_n_experts
        by_hand += D if p.out_bias else 0
        assert built == attention_part(p, D, 1).params == by_hand


def test_a_plan_that_is_not_moa_is_refused():
    with pytest.raises(ValueError, match="attention.kind moa"):
        MoA(dataclasses.replace(plan(), kind="gqa"), D)
