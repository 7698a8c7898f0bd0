"""Hyper-connections: n residual streams in place of one (moec/spec/hyper.py says the math; docs/hyper-connections.md
the model). ``HyperConnection`` wraps one sublayer (a token mixer or an FFN): it reads the streams (B, S, n, d),
hands the sublayer one input of (B, S, d) and writes its output back into every stream. ``HyperHead`` merges the
streams before the final norm. The coefficients are computed in float32 whatever the model's dtype (DeepSeek-V4
and HY-V4 keep these modules in float32: their sigmoids, softmax and Sinkhorn sums are sensitive to rounding).

What FLOPs they cost follows docs/conventions.md, "Hyper-connections": the projections are ``F.linear`` and the
Sinkhorn mix a ``matmul`` (counted), the collapse and the expansion weighted elementwise sums (not counted).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from moec.spec.hyper import HyperConnectionsPlan

INIT_STD = 0.02  # the projections' init (DeepSeek-V4's initializer_range); biases 0 and factors 1 (its init too)


def expand_streams(x: torch.Tensor, n: int) -> torch.Tensor:
    """The embedding (B, S, d) copied into n streams (B, S, n, d)."""
    return x.unsqueeze(2).expand(-1, -1, n, -1).contiguous()


def _wide(x: torch.Tensor) -> torch.dtype:
    """The dtype the coefficients are computed in: float32, or the model's if wider (float64)."""
    return torch.promote_types(x.dtype, torch.float32)


def _coefficient_logits(x: torch.Tensor, fn: torch.Tensor, norm_eps: float) -> torch.Tensor:
    """fn (M, n·d) times the streams (B, S, n, d) flattened and RMS-normalised without a weight: (B, S, M), in
    float32 (or wider)."""
    flat = x.flatten(2).to(_wide(x))
    normed = flat * torch.rsqrt(flat.square().mean(-1, keepdim=True) + norm_eps)
    return F.linear(normed, fn.to(flat.dtype))


def _collapse(x: torch.Tensor, pre_logits: torch.Tensor, eps: float) -> torch.Tensor:
    """Σ_j pre_j·x_j (B, S, d) in x's dtype, with pre = σ(pre_logits (B, S, n)) + eps: a sublayer's input, or the
    dynamic head's merge."""
    pre = torch.sigmoid(pre_logits) + eps
    return (pre.unsqueeze(-1) * x).sum(dim=2).to(x.dtype)


def sinkhorn(m: torch.Tensor, iters: int, eps: float) -> torch.Tensor:
    """Sinkhorn-Knopp towards a doubly stochastic matrix (..., n, n), as DeepSeek-V4 runs it: one column
    normalisation, then iters − 1 (row, column) pairs, each denominator + eps."""
    m = m / (m.sum(dim=-2, keepdim=True) + eps)
    for _ in range(iters - 1):
        m = m / (m.sum(dim=-1, keepdim=True) + eps)
        m = m / (m.sum(dim=-2, keepdim=True) + eps)
    return m


class HyperConnection(nn.Module):
    """One sublayer's connection: ``fn`` (M, n·d) projects the normed streams to pre (n), post (n) and, with the
    Sinkhorn residual, comb (n·n); ``base`` (M) adds to them and ``scale`` (one per group) multiplies them."""

    def __init__(self, plan: HyperConnectionsPlan, d_model: int, norm_eps: float, *, device=None, dtype=None) -> None:
        super().__init__()
        self.plan, self.norm_eps = plan, norm_eps
        n, m = plan.n_streams, plan.n_coefficients
        kw = {"device": device, "dtype": dtype}
        self.fn = nn.Parameter(torch.empty(m, n * d_model, **kw))
        self.base = nn.Parameter(torch.empty(m, **kw))
        self.scale = nn.Parameter(torch.empty(plan.n_scales, **kw))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        if self.fn.is_meta:
            return
        nn.init.normal_(self.fn, std=INIT_STD)
        nn.init.zeros_(self.base)
        nn.init.ones_(self.scale)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """x (B, S, n, d) → (the sublayer's input Σ_j pre_j·x_j (B, S, d), post (B, S, n), comb (B, S, n, n) or
        None), the coefficients in float32 (or wider)."""
        p, n = self.plan, self.plan.n_streams
        logits = _coefficient_logits(x, self.fn, self.norm_eps)  # (B, S, M)
        base, scale = self.base.to(logits.dtype), self.scale.to(logits.dtype)
        collapsed = _collapse(x, logits[..., :n] * scale[0] + base[:n], p.eps)  # (B, S, d)
        post = p.post_scale * torch.sigmoid(logits[..., n : 2 * n] * scale[1] + base[n : 2 * n])
        post = post + p.eps if p.post_eps else post
        comb = None
        if p.residual == "sinkhorn":
            raw = logits[..., 2 * n :].unflatten(-1, (n, n)) * scale[2] + base[2 * n :].view(n, n)  # (B, S, n, n)
            comb = sinkhorn(torch.softmax(raw, dim=-1) + p.eps, p.sinkhorn_iters, p.eps)
        return collapsed, post, comb

    def around(self, x: torch.Tensor, sublayer: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """The streams after ``sublayer`` (of (B, S, d) → (B, S, d)): post ⊗ sublayer(collapsed) + combᵀ·x (x
        itself with the identity residual)."""
        collapsed, post, comb = self(x)
        y = sublayer(collapsed)  # (B, S, d)
        # stream k carries Σ_j comb[j, k]·x_j: comb is read transposed (DeepSeek-V4's orientation)
        carried = x if comb is None else torch.matmul(comb.transpose(-1, -2).to(x.dtype), x)  # (B, S, n, d)
        return post.to(x.dtype).unsqueeze(-1) * y.unsqueeze(-2) + carried


class HyperHead(nn.Module):
    """The streams' merge before the final norm: ``dynamic``, Σ_j pre_j·x_j with pre = σ(scale·(fn·x̂) + base) + eps
    from a projection of its own (fn (n, n·d), base (n), scale (1)); ``mean``, their mean (no parameters)."""

    def __init__(self, plan: HyperConnectionsPlan, d_model: int, norm_eps: float, *, device=None, dtype=None) -> None:
        super().__init__()
        self.plan, self.norm_eps = plan, norm_eps
        n = plan.n_streams
        kw = {"device": device, "dtype": dtype}
        dynamic = plan.head == "dynamic"
        self.fn = nn.Parameter(torch.empty(n, n * d_model, **kw)) if dynamic else None
        self.base = nn.Parameter(torch.empty(n, **kw)) if dynamic else None
        self.scale = nn.Parameter(torch.empty(1, **kw)) if dynamic else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        if self.fn is None or self.fn.is_meta:
            return
        nn.init.normal_(self.fn, std=INIT_STD)
        nn.init.zeros_(self.base)  # type: ignore[arg-type]
        nn.init.ones_(self.scale)  # type: ignore[arg-type]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, S, n, d) → (B, S, d)."""
        if self.fn is None:
            return x.mean(dim=2)
        assert self.base is not None and self.scale is not None
        logits = _coefficient_logits(x, self.fn, self.norm_eps)  # (B, S, n)
        return _collapse(x, logits * self.scale.to(logits.dtype) + self.base.to(logits.dtype), self.plan.eps)
