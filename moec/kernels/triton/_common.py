"""Pieces every MoE kernel shares: the interpreter switch, the dot helper and the activations.

The activations are written with ``tl.sigmoid``, ``tl.exp`` and ``tl.math.erf`` only (no ``tanh``): the
tanh-approximate GELU is ``0.5·h·(1 + tanh(z)) = h·sigmoid(2z)``, which keeps one code path that the
interpreter, Triton 3.6 and Triton 3.9 all compile the same way; the exact GELU is ``0.5·h·(1 + erf(h/√2))``.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from moec.kernels.triton.configs import INTERPRET

# Activation codes (constexpr): the first projection's nonlinearity. Gated variants multiply by `up`.
# gelu is the exact erf GELU, gelu_tanh its tanh approximation (moec.vocab)
ACT_SILU, ACT_GELU_TANH, ACT_RELU, ACT_GELU, ACT_RELU2 = 0, 1, 2, 3, 4
ACTIVATION_CODES: dict[str, tuple[int, bool]] = {  # name -> (code, gated)
    "swiglu": (ACT_SILU, True),
    "geglu": (ACT_GELU, True),
    "geglu_tanh": (ACT_GELU_TANH, True),
    "silu": (ACT_SILU, False),
    "gelu": (ACT_GELU, False),
    "gelu_tanh": (ACT_GELU_TANH, False),
    "relu": (ACT_RELU, False),
    "relu2": (ACT_RELU2, False),
}


def dot_flags(dtype: torch.dtype) -> tuple[bool, bool]:
    """(UPCAST, IEEE) constexprs for ``_mma``.

    UPCAST: under the interpreter, low-precision ``tl.dot`` is computed wrongly (bf16: triton issue
    11584), so operands are cast to fp32 there; on a GPU the tensor cores take bf16/fp16 directly.
    IEEE: fp32 operands use exact fp32 products, not TF32 (ScatterMoE issue 5: a global TF32 switch
    drifts fp32 results); ``MOEC_TF32=1`` opts into TF32 for speed.
    """
    upcast = INTERPRET
    ieee = INTERPRET or (dtype == torch.float32 and os.environ.get("MOEC_TF32", "0") != "1")
    return upcast, ieee


def check_device(t: torch.Tensor) -> None:
    if not t.is_cuda and not INTERPRET:
        raise RuntimeError(
            "the triton MoE backend needs CUDA tensors, or TRITON_INTERPRET=1 set before triton is imported "
            "(the interpreter is for correctness tests only); use backend 'reference' on CPU"
        )


@triton.jit
def tile_rows(tile_expert_ptr, tile_row_ptr, expert_end_ptr, n_experts, BM: tl.constexpr):
    """(expert, sorted rows (BM,) int64, row mask) of this program's M-tile (moec.kernels.triton.tiles). An
    expert ≥ n_experts marks a tile past the real tile count (the grid is a static bound): the caller returns at
    once. Its loads stay in bounds: the tile tables have one entry per program and the expert is clamped."""
    pid_m = tl.program_id(0)
    e = tl.load(tile_expert_ptr + pid_m).to(tl.int64)
    row0 = tl.load(tile_row_ptr + pid_m).to(tl.int64)
    row_end = tl.load(expert_end_ptr + tl.minimum(e, n_experts - 1)).to(tl.int64)
    rows = row0 + tl.arange(0, BM)
    return e, rows, rows < row_end


@triton.jit
def _mma(a, b, acc, UPCAST: tl.constexpr, IEEE: tl.constexpr):
    """acc += a @ b with fp32 accumulation."""
    if UPCAST:
        a = a.to(tl.float32)
        b = b.to(tl.float32)
    if IEEE:
        acc = tl.dot(a, b, acc, input_precision="ieee")
    else:
        acc = tl.dot(a, b, acc)
    return acc


@triton.jit
def _act(h, ACT: tl.constexpr):
    """act(h) for fp32 h."""
    if ACT == 0:  # silu
        out = h * tl.sigmoid(h)
    elif ACT == 1:  # gelu_tanh: h·sigmoid(2·sqrt(2/π)·(h + 0.044715·h³))
        out = h * tl.sigmoid(1.5957691216057308 * (h + 0.044715 * h * h * h))
    elif ACT == 3:  # gelu, exact: h·Φ(h) = 0.5·h·(1 + erf(h/√2))
        out = 0.5 * h * (1.0 + tl.math.erf(h * 0.7071067811865476))
    elif ACT == 4:  # relu2: relu(h)²
        r = tl.maximum(h, 0.0)
        out = r * r
    else:  # relu
        out = tl.maximum(h, 0.0)
    return out


@triton.jit
def _act_and_grad(h, ACT: tl.constexpr):
    """(act(h), act'(h)) for fp32 h; recomputed in the backward from the saved pre-activation."""
    if ACT == 0:
        s = tl.sigmoid(h)
        out = h * s
        grad = s * (1.0 + h * (1.0 - s))
    elif ACT == 1:
        s = tl.sigmoid(1.5957691216057308 * (h + 0.044715 * h * h * h))
        out = h * s
        grad = s + h * s * (1.0 - s) * 1.5957691216057308 * (1.0 + 0.134145 * h * h)
    elif ACT == 3:  # d/dh h·Φ(h) = Φ(h) + h·φ(h), φ the standard normal density
        cdf = 0.5 * (1.0 + tl.math.erf(h * 0.7071067811865476))
        out = h * cdf
        grad = cdf + h * 0.3989422804014327 * tl.exp(-0.5 * h * h)
    elif ACT == 4:  # d/dh relu(h)² = 2·relu(h)
        r = tl.maximum(h, 0.0)
        out = r * r
        grad = 2.0 * r
    else:
        out = tl.maximum(h, 0.0)
        grad = tl.where(h > 0.0, 1.0, 0.0)
    return out, grad
