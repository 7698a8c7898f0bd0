"""The plain causal GQA the attention-feature tests of moec.nn compare against (Beam's, Laguna's and MiMo-V2-Flash's
options), for their spec's shape: 4 query heads over 2 key/value heads of 8 dims, no rotation unless given one; and
their model in float64 with every weight moved away from its init (gate biases and sinks start at 0)."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from moec.nn import build_model

H, KV, HD = 4, 2, 8


def perturbed(plan):  # type: ignore[no-untyped-def]
    """The plan's model in float64 (seed 0), every parameter plus 0.3·N(0, 1) noise, so that every weight matters."""
    m = build_model(plan, dtype=torch.float64, seed=0)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.3 * torch.randn_like(p, generator=torch.Generator().manual_seed(1)))
    return m


def naive_gqa(
    att,  # type: ignore[no-untyped-def]
    x: torch.Tensor,
    *,
    rotate: Callable[[torch.Tensor], torch.Tensor] | None = None,
    q_scale: torch.Tensor | None = None,
    value_scale: float = 1.0,
    sinks: torch.Tensor | None = None,
) -> torch.Tensor:
    """The heads' outputs (B, S, h, hd) before o_proj: exp(q·kᵀ/√hd) over the keys at or before each query, divided
    by their sum (plus exp of the head's sink logit with ``sinks`` (h,): mass that carries no value), times v.
    ``rotate`` maps q and k (B, S, h, hd) to their rotated selves; ``q_scale`` (S,) multiplies the queries after it,
    ``value_scale`` the values."""
    B, S, _ = x.shape
    q = att.q_proj(x).view(B, S, H, HD)
    k = att.k_proj(x).view(B, S, KV, HD).repeat_interleave(H // KV, dim=2)
    v = att.v_proj(x).view(B, S, KV, HD).repeat_interleave(H // KV, dim=2) * value_scale
    if rotate is not None:
        q, k = rotate(q), rotate(k)
    if q_scale is not None:
        q = q * q_scale[None, :, None, None]
    scores = torch.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(HD)
    e = scores.exp().masked_fill(torch.ones(S, S, dtype=torch.bool).triu(1), 0.0)  # (B, h, S, S)
    denominator = e.sum(-1, keepdim=True)
    if sinks is not None:
        denominator = denominator + sinks.exp().view(1, H, 1, 1)
    return torch.einsum("bhqk,bkhd->bqhd", e / denominator, v)


def through_o_proj(att, y: torch.Tensor) -> torch.Tensor:  # type: ignore[no-untyped-def]
    """The heads' outputs y (B, S, h, hd) concatenated and projected: (B, S, d)."""
    return y.flatten(2) @ att.o_proj.weight.T
