"""The expert activations, in torch: the one definition every torch backend, module and the oracle applies.

The Triton kernels compute the same functions in their epilogues (:mod:`moec.kernels.triton._common`) and are
tested against these.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from moec.vocab import CLAMPED_ALPHA, CLAMPED_LIMIT, GATED, LIMITED


def activate(
    h: torch.Tensor, activation: str, *, alpha: float | None = None, limit: float | None = None
) -> torch.Tensor:
    """Apply the expert activation to the first projection's output h (gated: h = [gate | up])."""
    if activation in LIMITED:
        return _limited(h, activation, alpha, limit)
    if activation in GATED:
        gate, up = h.chunk(2, dim=-1)
        return _NONLINEARITY[_GATE_NONLINEARITY[activation]](gate) * up
    if activation in _NONLINEARITY:
        return _NONLINEARITY[activation](h)
    raise ValueError(f"unknown activation {activation!r}")


def _limited(h: torch.Tensor, activation: str, alpha: float | None, limit: float | None) -> torch.Tensor:
    """The clamped SwiGLUs (moec.vocab LIMITED) of h = [gate | up]: up clamped to ±limit in each, and the gate
    clamped from above by the limit, before its nonlinearity (gpt-oss, DeepSeek-V4, HY-V4) or after (Step-3.7)."""
    gate, up = h.chunk(2, dim=-1)
    lim = CLAMPED_LIMIT if limit is None else limit
    up = up.clamp(min=-lim, max=lim)
    if activation == "swiglu_clamped":  # gpt-oss: sigmoid(alpha·g)·g of the clamped gate, and (up + 1)
        a = CLAMPED_ALPHA if alpha is None else alpha
        gate = gate.clamp(max=lim)
        return (up + 1) * (gate * torch.sigmoid(a * gate))
    if activation == "swiglu_limit":  # the silu of the clamped gate
        return F.silu(gate.clamp(max=lim)) * up
    return F.silu(gate).clamp(max=lim) * up  # swiglu_limit_after: the silu, then the clamp


# gelu is the exact erf GELU (nn.GELU()); gelu_tanh its tanh approximation (moec.vocab)
_NONLINEARITY = {
    "gelu": F.gelu,
    "gelu_tanh": lambda h: F.gelu(h, approximate="tanh"),
    "relu": F.relu,
    "silu": F.silu,
    "relu2": lambda h: F.relu(h).square(),
}
# each gated activation's nonlinearity on the gate column
_GATE_NONLINEARITY = {"swiglu": "silu", "geglu": "gelu", "geglu_tanh": "gelu_tanh"}
