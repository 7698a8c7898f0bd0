"""RMSNorm and LayerNorm, built from the model's :class:`NormPlan`.

RMSNorm follows Hugging Face Llama exactly (normalise in fp32, cast back, then scale) so that
imported checkpoints give the same logits in bf16 as well as fp32.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from moec.spec.plan import NormPlan


class RMSNorm(nn.Module):
    """With ``unit_offset`` the weight w starts at 0 and the scale is 1 + w, applied in fp32 before the cast
    back (Qwen3-Next's and Gemma's order); otherwise Llama's: cast back, then scale by w."""

    def __init__(self, dim: int, eps: float, *, unit_offset: bool = False, device=None, dtype=None):
        super().__init__()
        self.dim, self.eps, self.unit_offset = dim, eps, unit_offset
        self.weight = nn.Parameter(torch.empty(dim, device=device, dtype=dtype))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.zeros_(self.weight) if self.unit_offset else nn.init.ones_(self.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        xf = xf * torch.rsqrt(xf.square().mean(-1, keepdim=True) + self.eps)
        if self.unit_offset:
            return (xf * (1.0 + self.weight.float())).to(x.dtype)
        return self.weight * xf.to(x.dtype)

    def extra_repr(self) -> str:
        return f"{self.dim}, eps={self.eps}" + (", unit_offset=True" if self.unit_offset else "")


class LayerNorm(nn.Module):
    def __init__(self, dim: int, eps: float, *, bias: bool = True, device=None, dtype=None):
        super().__init__()
        self.dim, self.eps = dim, eps
        self.weight = nn.Parameter(torch.ones(dim, device=device, dtype=dtype))
        self.bias = nn.Parameter(torch.zeros(dim, device=device, dtype=dtype)) if bias else None  # DBRX: none

    def reset_parameters(self) -> None:
        nn.init.ones_(self.weight)
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, (self.dim,), self.weight, self.bias, self.eps)

    def extra_repr(self) -> str:
        return f"{self.dim}, eps={self.eps}"


def make_norm(plan: NormPlan, dim: int, *, device=None, dtype=None) -> RMSNorm | LayerNorm:
    """The model's norm kind and eps over a vector of width ``dim`` (placement is the block's business)."""
    if plan.kind == "rmsnorm":
        return RMSNorm(dim, plan.eps, unit_offset=plan.unit_offset, device=device, dtype=dtype)
    return LayerNorm(dim, plan.eps, bias=plan.bias, device=device, dtype=dtype)
