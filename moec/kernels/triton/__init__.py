"""The ``triton`` backend: fused grouped-GEMM MoE kernels (forward and backward) behind the interface of
:mod:`moec.kernels` (see its docstring for shapes and layouts).

Runs on CUDA tensors; on CPU only under ``TRITON_INTERPRET=1`` (set before triton is imported), which is for
correctness tests, never for speed. Importing this package imports triton (an ImportError where it is missing,
which :func:`moec.kernels.get_backend` reads as "use the reference backend").

tiles.py    per-tile tables over the slots sorted by expert (moec.kernels.slots; torch ops, no host sync)
configs.py  block sizes: heuristic table, optional GPU autotune with a disk cache
_common.py  interpreter switch, dot helper, activations and their derivatives
grouped.py  generic grouped matmul, per-expert weight-gradient (XᵀY) kernel, deterministic combine
ffn.py      fused up-projection + activation, fused down-projection backward, fwd/bwd drivers
op.py       torch.library custom op, autograd registration, FLOP-counter formulas
lora.py     routed LoRA experts through the same grouped kernels
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from moec.kernels.triton import op as _op  # noqa: F401  (registers torch.ops.moec.triton_expert_ffn)
from moec.kernels.triton._common import check_device
from moec.kernels.triton.configs import (
    INTERPRETER_CONFIG,
    KernelConfig,
    autotune,
    autotune_enabled,
    heuristic_config,
    shape_key,
)
from moec.kernels.triton.ffn import ffn_forward
from moec.kernels.triton.lora import LoraMix
from moec.kernels.triton.tiles import SlotTiles, tile_slots
from moec.vocab import ACTIVATIONS, GATED, LIMITED

_TUNED: dict[str, KernelConfig] = {}  # in-process memo over the on-disk autotune cache


def _config(
    x: torch.Tensor,
    top_k: int,
    n_experts: int,
    d: int,
    f: int,
    activation: str,
    tune: Callable[[KernelConfig], float] | None = None,
) -> KernelConfig:
    if not x.is_cuda:
        return INTERPRETER_CONFIG
    n_rows = x.shape[0] * top_k
    if autotune_enabled() and tune is not None:
        key = shape_key(
            torch.cuda.get_device_name(x.device),
            str(x.dtype).removeprefix("torch."),
            d,
            f,
            n_experts,
            top_k,
            activation,
            n_rows,
        )
        if key not in _TUNED:
            _TUNED[key] = autotune(key, tune)
        return _TUNED[key]
    return heuristic_config(n_rows, n_experts)


def _tile_args(tiles: SlotTiles) -> tuple[torch.Tensor, ...]:
    return tiles.order, tiles.rev, tiles.expert_start, tiles.expert_end, tiles.tile_expert, tiles.tile_row


def expert_ffn(
    x: torch.Tensor,
    topk_idx: torch.Tensor,
    topk_w: torch.Tensor,
    w_gate_up: torch.Tensor,
    w_down: torch.Tensor,
    *,
    activation: str,
    b_gate_up: torch.Tensor | None = None,
    b_down: torch.Tensor | None = None,
    alpha: float | None = None,
    limit: float | None = None,
    config: KernelConfig | None = None,
) -> torch.Tensor:
    """(T, d) = Σ_j topk_w[t, j] · FFN_{topk_idx[t, j]}(x[t]); differentiable in x, topk_w, weights, biases.

    ``config`` pins the block sizes (tests); otherwise the heuristic table, or the autotune cache
    with ``MOEC_AUTOTUNE=1`` on a GPU. The clamped units (moec.vocab LIMITED: ``swiglu_clamped``, ``swiglu_limit``,
    ``swiglu_limit_after``; ``alpha``, ``limit``) have no fused epilogue yet and run on the reference backend.
    """
    if activation in LIMITED:  # none of the clamped units has a fused epilogue yet
        from moec.kernels import reference

        return reference.expert_ffn(
            x, topk_idx, topk_w, w_gate_up, w_down, activation=activation,
            b_gate_up=b_gate_up, b_down=b_down, alpha=alpha, limit=limit,
        )  # fmt: skip
    if activation not in ACTIVATIONS:
        raise ValueError(f"unknown activation {activation!r}; choose from {', '.join(ACTIVATIONS)}")
    check_device(x)
    d = x.shape[-1]
    E, _, width = w_gate_up.shape
    f = width // 2 if activation in GATED else width
    if w_down.shape != (E, f, d):
        raise ValueError(
            f"w_down has shape {tuple(w_down.shape)}; expected {(E, f, d)} for w_gate_up {tuple(w_gate_up.shape)}"
        )
    k = topk_idx.shape[-1]
    lead = x.shape[:-1]
    x2 = x.reshape(-1, d)  # (T, d)
    idx = topk_idx.reshape(-1, k).long().contiguous()  # (T, k)
    tw = topk_w.reshape(-1, k).contiguous()  # (T, k)
    # one dtype for the GEMM operands (casts are differentiable, so grads flow back in each dtype)
    w_gate_up, w_down = w_gate_up.to(x.dtype), w_down.to(x.dtype)
    b_gate_up = b_gate_up.to(x.dtype) if b_gate_up is not None else None
    b_down = b_down.to(x.dtype) if b_down is not None else None

    def tune(cfg: KernelConfig) -> float:  # forward time of one candidate (autotune only)
        import triton.testing

        r = tile_slots(idx, E, cfg.block_m)
        with torch.no_grad():
            return triton.testing.do_bench(
                lambda: ffn_forward(
                    x2, idx, tw, w_gate_up, w_down, b_gate_up, b_down, r, cfg, activation, save_h1=False
                )
            )

    cfg = config or _config(x2, k, E, d, f, activation, tune)
    tiles = tile_slots(idx, E, cfg.block_m)
    grad_wanted = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (x2, tw, w_gate_up, w_down, b_gate_up, b_down)
    )
    out, _ = torch.ops.moec.triton_expert_ffn(
        x2, idx, tw, w_gate_up, w_down, b_gate_up, b_down, *_tile_args(tiles), activation, cfg.as_list(), grad_wanted
    )
    return out.view(*lead, d)


def lora_mix(
    x: torch.Tensor,
    topk_idx: torch.Tensor,
    topk_w: torch.Tensor,
    lora_a: torch.Tensor,
    lora_b: torch.Tensor,
    scale: float,
    *,
    config: KernelConfig | None = None,
) -> torch.Tensor:
    """(T, n_out) = scale · Σ_j topk_w[t, j] · (x[t] @ lora_a[e]) @ lora_b[e]; differentiable."""
    check_device(x)
    k = topk_idx.shape[-1]
    E = lora_a.shape[0]
    idx = topk_idx.reshape(-1, k).long().contiguous()
    cfg = config or (heuristic_config(idx.numel(), E) if x.is_cuda else INTERPRETER_CONFIG)
    tiles = tile_slots(idx, E, cfg.block_m)
    return LoraMix.apply(
        x, idx, topk_w.reshape(-1, k).contiguous(), lora_a.to(x.dtype), lora_b.to(x.dtype), float(scale), tiles, cfg
    )
