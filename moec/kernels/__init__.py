"""The expert computation behind one small interface, with interchangeable backends.

Every backend implements the same two functions (the fast path beside its oracle;
docs/kernels.md, "Backends and the interface"):

``expert_ffn(x, topk_idx, topk_w, w_gate_up, w_down, *, activation, b_gate_up=None, b_down=None,
alpha=None, limit=None)``
    x          (T, d)        token activations
    topk_idx   (T, k) int64  expert of each routing slot; -1 marks a dropped slot (contributes zero)
    topk_w     (T, k)        gate weight of each slot (differentiable)
    w_gate_up  (E, d, 2f) for gated activations (swiglu, geglu: columns [gate | up]),
               (E, d, f) otherwise (gelu, relu, silu)
    w_down     (E, f, d)
    b_gate_up  (E, 2f) or (E, f), optional;  b_down (E, d), optional
    alpha, limit   parameters of ``swiglu_clamped`` (gpt-oss); None = gpt-oss's 1.702 and 7.0
    returns    (T, d) = Σ_j topk_w[t, j] · FFN_{topk_idx[t, j]}(x[t])

``lora_mix(x, topk_idx, topk_w, lora_a, lora_b, scale)``
    the routed low-rank update of one matrix of a LoRA-MoE FFN:
    x (T, n_in), lora_a (E, n_in, r), lora_b (E, r, n_out) → (T, n_out)
    = scale · Σ_j topk_w[t, j] · (x[t] @ lora_a[e]) @ lora_b[e],  e = topk_idx[t, j]

Backends: ``naive`` (the textbook per-expert mask loop; the test oracle), ``reference`` (sort tokens
by expert, grouped matmul over contiguous slices; the CPU path), ``triton`` (the package of fused GPU
kernels). Beside them: ``activations`` (the torch activations all of them apply) and ``slots`` (the sort
of routing slots by expert that the reference and triton backends, and expert parallelism, start from), and
``runtime`` (the aux records, KV cache and cache checks that moec.nn and every generated model.py share).
"""

from __future__ import annotations

import importlib
from types import ModuleType

from moec.vocab import ACTIVATIONS, GATED

__all__ = ["ACTIVATIONS", "BACKENDS", "GATED", "get_backend"]

BACKENDS = ("naive", "reference", "triton")


def get_backend(name: str = "auto", *, device: str | None = None) -> ModuleType:
    """The module implementing ``expert_ffn`` and ``lora_mix`` for ``name``.

    ``auto`` picks ``triton`` on CUDA when Triton imports, else ``reference``.
    """
    if name == "auto":
        name = "reference"
        if device is not None and str(device).startswith("cuda"):
            try:
                importlib.import_module("moec.kernels.triton")
                name = "triton"
            except ImportError:
                pass
    if name not in BACKENDS:
        raise ValueError(f"unknown kernel backend {name!r}; choose from auto, {', '.join(BACKENDS)}")
    return importlib.import_module(f"moec.kernels.{name}")
