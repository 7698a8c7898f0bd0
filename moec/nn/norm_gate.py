"""A low-rank sigmoid gate on a norm's output (``model.norm_gate``, moec/spec/norm_gate.py; GatedNorm, arXiv
2601.22966; A.X-K2's AXK2GatedRMSNorm):

    y = norm(x);   y · sigmoid(fc2(silu(fc1(y))))        fc1: d → rank, fc2: rank → d, no biases

Names are transformers' (``norm``, ``mlp.fc1``, ``mlp.fc2``), so that A.X-K2's checkpoints map one to one. The
sigmoid is taken in float32 at least (float64 stays float64) and the product cast back to the norm's dtype, as
transformers does.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from moec.nn.attention import Linear, sigmoid_gated
from moec.spec.norm_gate import NormGatePlan


class GateMLP(nn.Module):
    def __init__(
        self, d: int, rank: int, *, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ):
        super().__init__()
        self.fc1 = Linear(d, rank, bias=False, device=device, dtype=dtype)
        self.fc2 = Linear(rank, d, bias=False, device=device, dtype=dtype)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.silu(self.fc1(y)))  # (..., d): the gate's logits


class GatedNorm(nn.Module):
    def __init__(
        self,
        norm: nn.Module,
        d: int,
        rank: int,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ):
        super().__init__()
        self.norm = norm
        self.mlp = GateMLP(d, rank, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.norm(x)
        return sigmoid_gated(y, self.mlp(y))

    def extra_repr(self) -> str:
        return f"rank={self.mlp.fc1.out_features}"


def gate_norm(
    norm: nn.Module,
    gate: NormGatePlan | None,
    site: str,
    d: int,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> nn.Module:
    """``norm`` behind its gate when the plan gates ``site`` (mixer, dense_ffn or moe_ffn), else ``norm`` itself."""
    if gate is None or site not in gate.sites:
        return norm
    return GatedNorm(norm, d, gate.rank, device=device, dtype=dtype)
