"""A linear or state-space mixer's decode state: what it keeps of a sequence instead of a KV cache.

Named tensors, allocated zeroed once and updated in place, so that a decode step has the same shapes every
call. Their size does not depend on the context: a state mixer reads its tokens strictly in order, so a
cached call must continue where the last one stopped (position 0 after :meth:`MixerState.reset`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass
class MixerState:
    """One layer's state for ``batch`` sequences: ``tensors`` by name (``conv``, ``ssm``, …)."""

    tensors: dict[str, torch.Tensor]

    def __getitem__(self, name: str) -> torch.Tensor:
        return self.tensors[name]

    def reset(self) -> None:
        """Forget every sequence."""
        for t in self.tensors.values():
            t.zero_()

    def nbytes(self) -> int:
        return sum(t.nbytes for t in self.tensors.values())


def state_dtype(dtype: torch.dtype) -> torch.dtype:
    """The precision of a state that accumulates over the whole sequence (a scan's, a delta rule's): the model's,
    but never below float32 (float64 stays float64), as transformers keeps it; the analyzer counts such parts at
    4 bytes or more (a kind's ``FP32_STATE``)."""
    return torch.promote_types(dtype, torch.float32)


# Mamba's initialisation of the step size Δ: log-uniform in [0.001, 0.1], floored at 1e-4, stored through the
# inverse softplus so that softplus(bias) is that step (Gu & Dao, arXiv 2312.00752, section 3.6).
STEP_INIT_MIN, STEP_INIT_MAX, STEP_INIT_FLOOR = 1e-3, 1e-1, 1e-4


def initial_step_bias(n: int, device: torch.device | None = None) -> torch.Tensor:
    """(n,) float32 biases whose softplus is Mamba's initial step Δ, drawn log-uniform in [0.001, 0.1] and floored
    at 1e-4 (mamba's dt_proj.bias, mamba2's dt_bias)."""
    span = math.log(STEP_INIT_MAX) - math.log(STEP_INIT_MIN)
    step = torch.rand(n, device=device).mul(span).add(math.log(STEP_INIT_MIN)).exp().clamp(min=STEP_INIT_FLOOR)
    return step + torch.log(-torch.expm1(-step))  # softplus⁻¹(Δ)


def rms_normalize(x: torch.Tensor, eps: float) -> torch.Tensor:
    """Weightless x / rms(x) over the last dim, in :func:`state_dtype` (float32 at least) and returned in it: the
    core the mixers' RMS norms share; each applies its own weight, gate and cast around it."""
    xw = x.to(state_dtype(x.dtype))
    return xw * torch.rsqrt(xw.pow(2).mean(-1, keepdim=True) + eps)


def conv_window_step(
    past: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """One token of a causal depthwise convolution from an explicit window, the recurrent oracles' form of
    :func:`causal_conv_with_state`: past (B, C, K−1) the inputs before x (B, C), oldest first; weight (C, K).
    Returns the output (B, C), before any activation, and the new past (B, C, K−1)."""
    window = torch.cat([past, x.unsqueeze(-1).to(past.dtype)], dim=-1)  # (B, C, K), oldest first
    y = (window * weight).sum(-1)
    return (y if bias is None else y + bias), window[:, :, 1:]


def causal_conv_with_state(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, state: torch.Tensor | None
) -> torch.Tensor:
    """A causal depthwise convolution over time. x (B, C, S), weight (C, K), state (B, C, K−1): the K−1 inputs
    before x (zeros for a fresh sequence), overwritten with the last K−1 inputs of ``[state, x]``. Without
    ``state`` the sequence starts from zeros. Returns (B, C, S), before any activation."""
    K = weight.shape[-1]
    past = state if state is not None else x.new_zeros(x.shape[0], x.shape[1], K - 1)
    full = torch.cat([past.to(x.dtype), x], dim=-1)  # (B, C, K−1+S)
    if state is not None:
        state.copy_(full[:, :, full.shape[-1] - (K - 1) :])
    if state is None:  # a whole sequence: one convolution, which FLOP counters see (analyze --verify)
        return torch.nn.functional.conv1d(full, weight.unsqueeze(1), bias, groups=x.shape[1])  # (B, C, S)
    # a cached call, most often one decode token: K shifted multiply-adds, as torch's CPU depthwise convolution
    # (mkldnn) has a fixed cost per call far above a one-token window's work, which a decode pays at every token
    S = x.shape[-1]
    y = full[:, :, :S] * weight[:, :1]
    for k in range(1, K):
        y = y + full[:, :, k : k + S] * weight[:, k : k + 1]
    return y if bias is None else y + bias[:, None]  # (B, C, S): the valid outputs of the padded input
