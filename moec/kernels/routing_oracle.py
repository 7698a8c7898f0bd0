"""The routers written out token by token (and expert by expert), from the papers' definitions: the oracle
:class:`moec.nn.router.Router` is tested against in float64, values and gradients (tests/routing/).

Slow by design. Every decision is made with plain Python comparisons over one token's (or one expert's)
scores; the weights stay torch scalars so that autograd gives the gradients to compare. The result is the
combine matrix C (T, E): C[t, e] is token t's weight on expert e (0 where e does not process t).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from moec.spec.plan import MoEPlan


def _num(v: torch.Tensor) -> float:
    """A score as a plain number, for the comparisons that decide (they carry no gradient)."""
    return float(v.detach())


def combine_matrix(
    x: torch.Tensor,
    plan: MoEPlan,
    weight: torch.Tensor | None,
    *,
    bias: torch.Tensor | None = None,
    hidden: torch.Tensor | None = None,
    uniform: torch.Tensor | None = None,
    token_ids: torch.Tensor | None = None,
) -> torch.Tensor:
    """C (T, E) for x (T, d). ``weight`` (E, d or h) and ``hidden`` (h, d): the router's matrices (None for
    hash routing); ``uniform`` (T,): GShard's draws; ``token_ids`` (T,): hash routing's ids."""
    r, E = plan.router, plan.n_experts
    T = x.shape[0]
    scores = [_token_scores(x[t], plan, weight, bias, hidden) for t in range(T)]
    if r.kind == "expert_choice":
        rows = _expert_choice(scores, r.top_k, E)
    else:
        rows = [_token_choice(t, scores[t], plan, uniform, token_ids) for t in range(T)]
    if plan.capacity_factor is not None:
        rows = _apply_capacity(rows, plan)
    zero = x.new_zeros(())
    return torch.stack([torch.stack([row.get(e, zero) for e in range(E)]) for row in rows]) if T else x.new_zeros(0, E)


def _token_scores(
    xt: torch.Tensor, plan: MoEPlan, weight: torch.Tensor | None, bias: torch.Tensor | None, hidden: torch.Tensor | None
) -> list[torch.Tensor]:
    """One token's E scores (uniform 1/E for hash routing, which has no router)."""
    r, E = plan.router, plan.n_experts
    if weight is None:
        return [xt.new_tensor(1.0 / E) for _ in range(E)]
    h = xt
    if hidden is not None:  # router MLP: gelu(W_in·x), one hidden unit at a time
        h = torch.stack([F.gelu((hidden[j] * xt).sum()) for j in range(hidden.shape[0])])
    logits = [(weight[e] * h).sum() + (bias[e] if bias is not None else 0.0) for e in range(E)]
    if r.score == "softmax":
        top = max(_num(v) for v in logits)
        ex = [torch.exp(v - top) for v in logits]
        total = sum(ex)
        return [v / total for v in ex]
    if r.score == "sigmoid":
        return [1 / (1 + torch.exp(-v)) for v in logits]
    return [torch.sqrt(torch.log1p(torch.exp(v))) for v in logits]  # sqrt(softplus)


def _token_choice(
    t: int,
    s: list[torch.Tensor],
    plan: MoEPlan,
    uniform: torch.Tensor | None,
    token_ids: torch.Tensor | None,
) -> dict[int, torch.Tensor]:
    """Token t's experts and weights (before capacity), in choice order (dicts keep insertion order)."""
    r, E = plan.router, plan.n_experts
    by_score = sorted(range(E), key=lambda e: (-_num(s[e]), e))
    if r.kind == "hash":
        assert token_ids is not None
        h = (int(token_ids[t]) * 2654435761) % 2**32
        first = h * E // 2**32
        return {(first + j) % E: s[0].new_tensor(r.scale / r.top_k) for j in range(r.top_k)}
    if r.kind == "gshard":
        assert uniform is not None
        e1, e2 = by_score[:2]
        g1, g2 = s[e1] / (s[e1] + s[e2]), s[e2] / (s[e1] + s[e2])
        out = {e1: g1 * r.scale}
        if float(uniform[t]) < 2 * _num(g2):
            out[e2] = g2 * r.scale
        return out
    chosen = by_score[: r.top_k]
    w = [s[e] for e in chosen]
    if r.normalize_topk:
        total = sum(w)
        w = [v / total for v in w]
    return {e: v * r.scale for e, v in zip(chosen, w, strict=True)}


def _expert_choice(scores: list[list[torch.Tensor]], top_k: int, E: int) -> list[dict[int, torch.Tensor]]:
    """Each expert in turn takes the ceil(k·T/E) tokens with its highest scores."""
    T = len(scores)
    capacity = min(T, math.ceil(top_k * T / E))
    rows: list[dict[int, torch.Tensor]] = [{} for _ in range(T)]
    for e in range(E):
        best = sorted(range(T), key=lambda t: (-_num(scores[t][e]), t))[:capacity]
        for t in best:
            rows[t][e] = scores[t][e]
    return [dict(sorted(row.items())) for row in rows]


def _apply_capacity(rows: list[dict[int, torch.Tensor]], plan: MoEPlan) -> list[dict[int, torch.Tensor]]:
    """Each local group of capacity_group_size tokens keeps at most ceil(cf·G·k/E) slots per expert: by
    position (all first choices in token order, then all second choices) or by weight (highest first)."""
    T, E, k = len(rows), plan.n_experts, plan.router.top_k
    G = plan.capacity_group_size or T
    kept: list[dict[int, torch.Tensor]] = [{} for _ in range(T)]
    for start in range(0, T, G):
        capacity = math.ceil(plan.capacity_factor * G * k / E)
        slots = [(j, t, e) for t in range(start, start + G) for j, e in enumerate(rows[t])]  # (choice, token, e)
        if plan.drop_policy == "position":
            slots.sort(key=lambda s: (s[0], s[1]))
        else:
            slots.sort(key=lambda s: (-_num(rows[s[1]][s[2]]), s[0], s[1]))
        used = [0] * E
        for _, t, e in slots:
            if used[e] < capacity:
                used[e] += 1
                kept[t][e] = rows[t][e]
    return kept
