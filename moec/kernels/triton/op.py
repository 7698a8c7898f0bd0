"""The expert FFN as a torch.library custom op with autograd and FLOP-counter formulas.

Why a custom op rather than a bare ``autograd.Function``: ``torch.compile`` treats the op as one
opaque node (its fake implementation gives the output shapes), so it traces models that use this
backend without graph breaks; and ``FlopCounterMode`` looks the op up in its formula registry, so
the kernels report the model FLOPs of the analyzer's convention (2 FLOPs per multiply-add):

    forward   2 · T·k · d · (W + f)       W = 2f gated, f otherwise   (= T·k·6·d·f for SwiGLU)
    backward  the same for dX (dA' = dO·W_downᵀ and dH1·W_gate_upᵀ), and the same again for the
              weight gradients when any weight needs one (training = 3 × forward; frozen = 2 ×).

The slot tiles are computed outside the op (plain torch ops, traceable) and passed in, so the
forward and backward share one sort.
"""

from __future__ import annotations

import torch
from torch.utils.flop_counter import register_flop_formula

from moec.kernels.triton.configs import KernelConfig
from moec.kernels.triton.ffn import ffn_backward, ffn_forward
from moec.kernels.triton.tiles import SlotTiles

_ROUTE = "Tensor order, Tensor rev, Tensor expert_start, Tensor expert_end, Tensor tile_expert, Tensor tile_row"
_FWD_SCHEMA = (
    "(Tensor x, Tensor topk_idx, Tensor topk_w, Tensor w_gate_up, Tensor w_down, Tensor? b_gate_up, Tensor? b_down, "
    f"{_ROUTE}, str activation, int[] config, bool save_h1) -> (Tensor, Tensor)"
)
_BWD_SCHEMA = (
    "(Tensor grad_out, Tensor x, Tensor topk_idx, Tensor topk_w, Tensor w_gate_up, Tensor w_down, Tensor? b_down, "
    f"Tensor h1, {_ROUTE}, str activation, int[] config, bool weight_grads, bool bias_grads) "
    "-> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)"
)


def _slot_tiles(topk_idx: torch.Tensor, n_experts: int, config: list[int], *tables: torch.Tensor) -> SlotTiles:
    order, rev, start, end, tile_expert, tile_row = tables
    return SlotTiles(order, rev, start, end, tile_expert, tile_row, config[0], n_experts, topk_idx.shape[1])


@torch.library.custom_op("moec::triton_expert_ffn", mutates_args=(), schema=_FWD_SCHEMA)
def triton_expert_ffn(
    x, topk_idx, topk_w, w_gate_up, w_down, b_gate_up, b_down,
    order, rev, expert_start, expert_end, tile_expert, tile_row,  # the SlotTiles tensors
    activation, config, save_h1,
):  # type: ignore[no-untyped-def]  # fmt: skip
    tiles = _slot_tiles(
        topk_idx, w_gate_up.shape[0], config, order, rev, expert_start, expert_end, tile_expert, tile_row
    )
    cfg = KernelConfig.from_list(config)
    return ffn_forward(
        x, topk_idx, topk_w, w_gate_up, w_down, b_gate_up, b_down, tiles, cfg, activation, save_h1=save_h1
    )


# The fake implementations take the ops' arguments in schema order and read only the few that shape the outputs.
@triton_expert_ffn.register_fake
def _(x, topk_idx, topk_w, w_gate_up, w_down, *args):  # type: ignore[no-untyped-def]
    save_h1 = args[-1]
    n_rows = topk_idx.shape[0] * topk_idx.shape[1] if save_h1 else 0
    return x.new_empty(x.shape[0], w_down.shape[2]), x.new_empty(n_rows, w_gate_up.shape[2])


@torch.library.custom_op("moec::triton_expert_ffn_backward", mutates_args=(), schema=_BWD_SCHEMA)
def triton_expert_ffn_backward(
    grad_out, x, topk_idx, topk_w, w_gate_up, w_down, b_down, h1,
    order, rev, expert_start, expert_end, tile_expert, tile_row,  # the SlotTiles tensors
    activation, config, weight_grads, bias_grads,
):  # type: ignore[no-untyped-def]  # fmt: skip
    tiles = _slot_tiles(
        topk_idx, w_gate_up.shape[0], config, order, rev, expert_start, expert_end, tile_expert, tile_row
    )
    grads = ffn_backward(
        grad_out, x, topk_idx, topk_w, w_gate_up, w_down, b_down, h1, tiles, KernelConfig.from_list(config), activation,
        weight_grads=weight_grads, bias_grads=bias_grads,
    )  # fmt: skip
    # a custom op cannot return None: absent gradients come back as empty tensors
    return tuple(g if g is not None else x.new_empty(0) for g in grads)


@triton_expert_ffn_backward.register_fake
def _(grad_out, x, topk_idx, topk_w, w_gate_up, w_down, *args):  # type: ignore[no-untyped-def]
    weight_grads, bias_grads = args[-2:]
    any_w = weight_grads or bias_grads
    E, d, W = w_gate_up.shape
    f = w_down.shape[1]
    return (
        torch.empty_like(x),
        w_gate_up.new_empty(E, d, W) if any_w else x.new_empty(0),
        w_down.new_empty(E, f, d) if any_w else x.new_empty(0),
        w_gate_up.new_empty(E, W) if bias_grads else x.new_empty(0),
        w_down.new_empty(E, d) if bias_grads else x.new_empty(0),
        torch.empty_like(topk_w),
    )


# -------------------------------------------------------------------------------------- autograd
_X, _IDX, _TW, _W1, _W2, _B1, _B2 = range(7)  # input positions of the forward op


def _setup_context(ctx, inputs, output) -> None:  # type: ignore[no-untyped-def]
    x, topk_idx, topk_w, w_gate_up, w_down, b_gate_up, b_down, *tables = inputs[:13]
    ctx.activation, ctx.config = inputs[13], list(inputs[14])
    ctx.has_b1, ctx.has_b2 = b_gate_up is not None, b_down is not None
    ctx.save_for_backward(x, topk_idx, topk_w, w_gate_up, w_down, b_down, output[1], *tables)


def _backward(ctx, grad_out, grad_h1):  # type: ignore[no-untyped-def]
    x, topk_idx, topk_w, w_gate_up, w_down, b_down, h1, *tables = ctx.saved_tensors
    need = ctx.needs_input_grad
    weight_grads = bool(need[_W1] or need[_W2])
    bias_grads = bool((ctx.has_b1 and need[_B1]) or (ctx.has_b2 and need[_B2]))
    dx, dw1, dw2, db1, db2, dtw = torch.ops.moec.triton_expert_ffn_backward(
        grad_out,
        x,
        topk_idx,
        topk_w,
        w_gate_up,
        w_down,
        b_down,
        h1,
        *tables,
        ctx.activation,
        ctx.config,
        weight_grads,
        bias_grads,
    )
    return (
        dx if need[_X] else None,
        None,
        dtw if need[_TW] else None,
        dw1 if need[_W1] else None,
        dw2 if need[_W2] else None,
        db1 if ctx.has_b1 and need[_B1] else None,
        db2 if ctx.has_b2 and need[_B2] else None,
        *([None] * 9),  # the SlotTiles tensors, activation, config, save_h1
    )


torch.library.register_autograd("moec::triton_expert_ffn", _backward, setup_context=_setup_context)


# ----------------------------------------------------------------------------------- FLOP counts
def expert_ffn_flops(n_rows: int, d: int, width: int, f: int) -> int:
    """2 FLOPs per multiply-add over the two expert GEMMs of ``n_rows`` routed rows."""
    return 2 * n_rows * d * (width + f)


@register_flop_formula(torch.ops.moec.triton_expert_ffn)
def _fwd_flops(x, topk_idx, topk_w, w_gate_up, w_down, *args, out_shape=None, **kwargs) -> int:  # type: ignore[no-untyped-def]
    # arguments arrive as shapes; T·k counts every routing slot, as the analyzer does
    return expert_ffn_flops(topk_idx[0] * topk_idx[1], x[1], w_gate_up[2], w_down[1])


@register_flop_formula(torch.ops.moec.triton_expert_ffn_backward)
def _bwd_flops(grad_out, x, topk_idx, topk_w, w_gate_up, w_down, *args, out_shape=None, **kwargs) -> int:  # type: ignore[no-untyped-def]
    weight_grads, bias_grads = args[-2], args[-1]
    per_pass = expert_ffn_flops(topk_idx[0] * topk_idx[1], x[1], w_gate_up[2], w_down[1])
    return per_pass * (2 if (weight_grads or bias_grads) else 1)
