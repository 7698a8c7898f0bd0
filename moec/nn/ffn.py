"""The dense FFN (also the shape of every expert): x → act(x·W_gate_up) → ·W_down.

Weights are stored input-major, ``[in, out]``, the same layout as a stacked expert ``[E, in, out]``,
so that one expert and the dense FFN are the same computation and the grouped kernels need no
transposes. Gated activations keep ``[gate | up]`` side by side in one ``(d, 2·f)`` matrix.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from moec.kernels.activations import activate
from moec.vocab import GATED


class DenseFFN(nn.Module):
    def __init__(
        self,
        d_model: int,
        d_ff: int,
        activation: str,
        *,
        bias: bool = False,
        alpha: float | None = None,
        limit: float | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ):
        super().__init__()
        self.d_model, self.d_ff, self.activation = d_model, d_ff, activation
        self.alpha, self.limit = alpha, limit  # alpha: swiglu_clamped; limit: the LIMITED activations
        width = 2 * d_ff if activation in GATED else d_ff
        kw = {"device": device, "dtype": dtype}
        self.w_gate_up = nn.Parameter(torch.empty(d_model, width, **kw))  # (d, 2f) or (d, f)
        self.w_down = nn.Parameter(torch.empty(d_ff, d_model, **kw))  # (f, d)
        self.b_gate_up = nn.Parameter(torch.empty(width, **kw)) if bias else None
        self.b_down = nn.Parameter(torch.empty(d_model, **kw)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        if self.w_gate_up.is_meta:
            return
        nn.init.normal_(self.w_gate_up, std=1 / math.sqrt(self.d_model))
        nn.init.normal_(self.w_down, std=1 / math.sqrt(self.d_ff))
        for b in (self.b_gate_up, self.b_down):
            if b is not None:
                nn.init.zeros_(b)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x @ self.w_gate_up  # (..., 2f) or (..., f)
        if self.b_gate_up is not None:
            h = h + self.b_gate_up
        y = activate(h, self.activation, alpha=self.alpha, limit=self.limit) @ self.w_down  # (..., d)
        if self.b_down is not None:
            y = y + self.b_down
        return y
