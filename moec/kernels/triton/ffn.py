"""The fused expert-FFN kernels, forward and backward, and the drivers that chain them.

Forward (three launches after the routing sort):
  1. ``_up_act_kernel``: gathers token rows straight from the unsorted x, computes gate and up with
     two fp32 accumulators, adds the bias, applies the activation in the epilogue. Stores the
     pre-activation h1 (TK, 2f) for the backward and a = act(gate)·up (TK, f).
  2. ``grouped_matmul``: Y = a @ W_down[e] + b_down[e] into sorted rows (TK, d).
  3. ``combine``: out[t] = Σ_j w[t,j] · Y[rev[t·k+j]], deterministic gather-sum.

Backward (Y is never cached; the router gradient comes from values the backward needs anyway):
  1. ``_down_bwd_kernel``: dA' = dO[token] @ W_down[e]ᵀ (gathering dO on load), then in the epilogue
     recompute a from h1, the gate-weight grad dS = <dA', a> + <dO, b_down[e]> (= <dO, Y>, the
     SonicMoE/Liger identity) written per N-tile to a partial buffer (no atomics), and the activation
     backward dH1 = act'(h1) ⊙ (w · dA'). Also stores the recomputed a for dW_down.
  2. dX: grouped_matmul(dH1, W_gate_upᵀ) in sorted rows, then combine with unit weights.
  3. dW_gate_up[e] = x_eᵀ dH1_e and dW_down[e] = a_eᵀ (w ⊙ dO)_e with ``grouped_xty`` (bias grads are
     the column sums of the same tiles); skipped when no weight needs a gradient (frozen experts).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from moec.kernels.triton._common import ACTIVATION_CODES, _act, _act_and_grad, _mma, dot_flags, tile_rows
from moec.kernels.triton.configs import KernelConfig
from moec.kernels.triton.grouped import _empty_arg, combine, grouped_matmul, grouped_xty
from moec.kernels.triton.tiles import SlotTiles


@triton.jit
def _column_tile(F, BN: tl.constexpr):
    """This program's BN columns of an F-wide output (grid axis 1) and their mask, (BN,) each."""
    cols = tl.program_id(1) * BN + tl.arange(0, BN)
    return cols, cols < F


# ------------------------------------------------------------------ GEMM1: gather + gate/up + act
@triton.jit
def _up_act_kernel(
    x_ptr, w_ptr, b_ptr, h1_ptr, a_ptr,
    order_ptr, tile_expert_ptr, tile_row_ptr, expert_end_ptr,
    F, D, n_experts, top_k,
    stride_xt, stride_xd, stride_we, stride_wd, stride_wn, stride_be,
    stride_hm, stride_hn, stride_am, stride_an,
    ACT: tl.constexpr, GATED: tl.constexpr, HAS_BIAS: tl.constexpr, SAVE_H1: tl.constexpr,
    BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, UPCAST: tl.constexpr, IEEE: tl.constexpr,
):  # fmt: skip
    e, rows, rmask = tile_rows(tile_expert_ptr, tile_row_ptr, expert_end_ptr, n_experts, BM)  # (BM,) sorted rows
    if e >= n_experts:
        return
    tok = tl.load(order_ptr + rows, mask=rmask, other=0).to(tl.int64) // top_k  # (BM,) token of each row
    cols, cmask = _column_tile(F, BN)  # gate columns n; the up column is n + F
    ks = tl.arange(0, BK)
    # 1-D bases (int64 row offsets) + in-loop int32 column offsets: loop-carried 2-D int64 pointer
    # tiles would cost two registers per element and spill on the GPU
    x_rows = x_ptr + tok * stride_xt  # (BM,) pointers to the gathered token rows
    w_e = w_ptr + e * stride_we  # this expert's (D, W) matrix
    acc_g = tl.zeros((BM, BN), dtype=tl.float32)
    acc_u = tl.zeros((BM, BN), dtype=tl.float32)
    for k0 in range(0, D, BK):
        kk = k0 + ks
        kmask = kk < D
        xt = tl.load(x_rows[:, None] + kk[None, :] * stride_xd, mask=rmask[:, None] & kmask[None, :], other=0.0)
        w_off = kk[:, None] * stride_wd + cols[None, :] * stride_wn  # (BK, BN)
        wmask = kmask[:, None] & cmask[None, :]
        acc_g = _mma(xt, tl.load(w_e + w_off, mask=wmask, other=0.0), acc_g, UPCAST, IEEE)
        if GATED:
            acc_u = _mma(xt, tl.load(w_e + F * stride_wn + w_off, mask=wmask, other=0.0), acc_u, UPCAST, IEEE)
    if HAS_BIAS:
        acc_g += tl.load(b_ptr + e * stride_be + cols, mask=cmask, other=0.0).to(tl.float32)[None, :]
        if GATED:
            acc_u += tl.load(b_ptr + e * stride_be + F + cols, mask=cmask, other=0.0).to(tl.float32)[None, :]
    omask = rmask[:, None] & cmask[None, :]
    if SAVE_H1:
        h_rows = h1_ptr + rows * stride_hm  # (BM,)
        tl.store(h_rows[:, None] + cols[None, :] * stride_hn, acc_g.to(h1_ptr.dtype.element_ty), mask=omask)
        if GATED:
            tl.store(h_rows[:, None] + (F + cols[None, :]) * stride_hn, acc_u.to(h1_ptr.dtype.element_ty), mask=omask)
    a = _act(acc_g, ACT)
    if GATED:
        a = a * acc_u
    tl.store(a_ptr + rows[:, None] * stride_am + cols[None, :] * stride_an, a.to(a_ptr.dtype.element_ty), mask=omask)


def up_act(
    x: torch.Tensor, w_gate_up: torch.Tensor, b_gate_up: torch.Tensor | None,
    tiles: SlotTiles, cfg: KernelConfig, activation: str, *, save_h1: bool,
) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """(h1 (TK, 2f|f) pre-activation or an empty tensor, a (TK, f)) in sorted rows."""
    code, gated = ACTIVATION_CODES[activation]
    n_rows = tiles.order.shape[0]
    W = w_gate_up.shape[2]
    f = W // 2 if gated else W
    h1 = x.new_empty(n_rows, W) if save_h1 else x.new_empty(0, W)
    a = x.new_empty(n_rows, f)
    if n_rows == 0 or tiles.max_tiles == 0:
        return h1, a
    upcast, ieee = dot_flags(x.dtype)
    bn = cfg.fused_n  # narrower than a plain GEMM tile: two accumulators (gate, up)
    grid = (tiles.max_tiles, triton.cdiv(f, bn))
    _up_act_kernel[grid](
        x, w_gate_up, b_gate_up if b_gate_up is not None else _empty_arg(x), h1 if save_h1 else _empty_arg(x), a,
        tiles.order, tiles.tile_expert, tiles.tile_row, tiles.expert_end,
        f, x.shape[1], tiles.n_experts, tiles.top_k,
        x.stride(0), x.stride(1), w_gate_up.stride(0), w_gate_up.stride(1), w_gate_up.stride(2),
        b_gate_up.stride(0) if b_gate_up is not None else 0,
        h1.stride(0) if save_h1 else 0, h1.stride(1) if save_h1 else 0, a.stride(0), a.stride(1),
        ACT=code, GATED=gated, HAS_BIAS=b_gate_up is not None, SAVE_H1=save_h1,
        BM=tiles.block_m, BN=bn, BK=cfg.block_k, UPCAST=upcast, IEEE=ieee,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )  # fmt: skip
    return h1, a


# ------------------------------------------------ backward of the down projection and activation
@triton.jit
def _down_bwd_kernel(
    do_ptr, wd_ptr, bd_ptr, h1_ptr, tw_ptr, dh1_ptr, a_ptr, ds_ptr,
    order_ptr, tile_expert_ptr, tile_row_ptr, expert_end_ptr,
    F, D, n_experts, top_k,
    stride_ot, stride_od, stride_we, stride_wf, stride_wd, stride_be,
    stride_hm, stride_hn, stride_gm, stride_gn, stride_am, stride_an, stride_sm,
    ACT: tl.constexpr, GATED: tl.constexpr, HAS_BIAS: tl.constexpr,
    BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, UPCAST: tl.constexpr, IEEE: tl.constexpr,
):  # fmt: skip
    e, rows, rmask = tile_rows(tile_expert_ptr, tile_row_ptr, expert_end_ptr, n_experts, BM)  # (BM,) sorted rows
    if e >= n_experts:
        return
    pid_n = tl.program_id(1)
    slot = tl.load(order_ptr + rows, mask=rmask, other=0).to(tl.int64)
    tok = slot // top_k
    cols, cmask = _column_tile(F, BN)  # columns of f
    ks = tl.arange(0, BK)  # over d
    do_rows = do_ptr + tok * stride_ot  # (BM,) gathered dO rows (1-D int64 bases, see _up_act_kernel)
    w_e = wd_ptr + e * stride_we
    acc = tl.zeros((BM, BN), dtype=tl.float32)  # dA' = dO · W_downᵀ, before the gate weight
    bias_dot = tl.zeros((BM,), dtype=tl.float32)  # <dO, b_down[e]>: the bias part of <dO, Y>
    for k0 in range(0, D, BK):
        kk = k0 + ks
        kmask = kk < D
        dot_ = tl.load(do_rows[:, None] + kk[None, :] * stride_od, mask=rmask[:, None] & kmask[None, :], other=0.0)
        wt = tl.load(
            w_e + kk[:, None] * stride_wd + cols[None, :] * stride_wf, mask=kmask[:, None] & cmask[None, :], other=0.0
        )
        acc = _mma(dot_, wt, acc, UPCAST, IEEE)  # W_downᵀ tile (BK, BN)
        if HAS_BIAS:
            bd = tl.load(bd_ptr + e * stride_be + kk, mask=kmask, other=0.0).to(tl.float32)
            bias_dot += tl.sum(dot_.to(tl.float32) * bd[None, :], axis=1)
    omask = rmask[:, None] & cmask[None, :]
    h_rows = h1_ptr + rows * stride_hm  # (BM,)
    g = tl.load(h_rows[:, None] + cols[None, :] * stride_hn, mask=omask, other=0.0).to(tl.float32)
    act_g, dact_g = _act_and_grad(g, ACT)
    if GATED:
        u = tl.load(h_rows[:, None] + (F + cols[None, :]) * stride_hn, mask=omask, other=0.0).to(tl.float32)
        a = act_g * u
    else:
        a = act_g
    # masked rows/columns have acc == 0 and a == act(0)·0 or act(0) = 0, so they add nothing here
    ds = tl.sum(acc * a, axis=1)
    if HAS_BIAS:
        ds += tl.where(pid_n == 0, bias_dot, 0.0)  # counted once, by the first N-tile
    tl.store(ds_ptr + rows * stride_sm + pid_n, ds, mask=rmask)
    tw = tl.load(tw_ptr + slot, mask=rmask, other=0.0).to(tl.float32)
    da = acc * tw[:, None]  # dA = w · dA'
    tl.store(a_ptr + (rows * stride_am)[:, None] + cols[None, :] * stride_an, a.to(a_ptr.dtype.element_ty), mask=omask)
    g_rows = dh1_ptr + rows * stride_gm  # (BM,)
    if GATED:
        tl.store(
            g_rows[:, None] + cols[None, :] * stride_gn, (da * u * dact_g).to(dh1_ptr.dtype.element_ty), mask=omask
        )
        tl.store(
            g_rows[:, None] + (F + cols[None, :]) * stride_gn, (da * act_g).to(dh1_ptr.dtype.element_ty), mask=omask
        )
    else:
        tl.store(g_rows[:, None] + cols[None, :] * stride_gn, (da * dact_g).to(dh1_ptr.dtype.element_ty), mask=omask)


def down_backward(
    grad_out: torch.Tensor,
    w_down: torch.Tensor,
    b_down: torch.Tensor | None,
    h1: torch.Tensor,
    topk_w: torch.Tensor,
    tiles: SlotTiles,
    cfg: KernelConfig,
    activation: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dH1 (TK, 2f|f), a (TK, f), dS (TK,) fp32 per sorted row, 0 for dropped slots' rows)."""
    code, gated = ACTIVATION_CODES[activation]
    n_rows = tiles.order.shape[0]
    f, d = w_down.shape[1], w_down.shape[2]
    bn = cfg.fused_n  # the epilogue holds g, u, act, act' and dA for the whole tile
    n_tiles = triton.cdiv(f, bn)
    dh1 = h1.new_empty(n_rows, h1.shape[1])
    a = h1.new_empty(n_rows, f)
    # zeros: rows of dropped slots are never written and must read back as dS = 0
    ds = torch.zeros(n_rows, max(n_tiles, 1), dtype=torch.float32, device=h1.device)
    if n_rows == 0 or tiles.max_tiles == 0 or f == 0:
        return dh1, a, ds.sum(1)
    upcast, ieee = dot_flags(h1.dtype)
    _down_bwd_kernel[(tiles.max_tiles, n_tiles)](
        grad_out, w_down, b_down if b_down is not None else _empty_arg(h1), h1, topk_w, dh1, a, ds,
        tiles.order, tiles.tile_expert, tiles.tile_row, tiles.expert_end,
        f, d, tiles.n_experts, tiles.top_k,
        grad_out.stride(0), grad_out.stride(1), w_down.stride(0), w_down.stride(1), w_down.stride(2),
        b_down.stride(0) if b_down is not None else 0,
        h1.stride(0), h1.stride(1), dh1.stride(0), dh1.stride(1), a.stride(0), a.stride(1), ds.stride(0),
        ACT=code, GATED=gated, HAS_BIAS=b_down is not None,
        BM=tiles.block_m, BN=bn, BK=cfg.block_k, UPCAST=upcast, IEEE=ieee,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )  # fmt: skip
    return dh1, a, ds.sum(1)  # fixed-order reduction over N-tiles: deterministic


# ------------------------------------------------------------------------------------ drivers
def ffn_forward(
    x: torch.Tensor, topk_idx: torch.Tensor, topk_w: torch.Tensor,
    w_gate_up: torch.Tensor, w_down: torch.Tensor, b_gate_up: torch.Tensor | None, b_down: torch.Tensor | None,
    tiles: SlotTiles, cfg: KernelConfig, activation: str, *, save_h1: bool,
) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """(out (T, d), h1 (TK, 2f|f) or empty). topk_idx/topk_w must be contiguous (T, k)."""
    h1, a = up_act(x, w_gate_up, b_gate_up, tiles, cfg, activation, save_h1=save_h1)
    y = grouped_matmul(a, w_down, tiles, cfg, gather=False, bias=b_down)  # (TK, d) sorted rows
    return combine(y, tiles, topk_idx, topk_w, out_dtype=x.dtype), h1


def ffn_backward(
    grad_out: torch.Tensor,
    x: torch.Tensor,
    topk_idx: torch.Tensor,
    topk_w: torch.Tensor,
    w_gate_up: torch.Tensor,
    w_down: torch.Tensor,
    b_down: torch.Tensor | None,
    h1: torch.Tensor,
    tiles: SlotTiles,
    cfg: KernelConfig,
    activation: str,
    *,
    weight_grads: bool,
    bias_grads: bool,
) -> tuple[
    torch.Tensor, torch.Tensor | None, torch.Tensor | None, torch.Tensor | None, torch.Tensor | None, torch.Tensor
]:
    """(dx, dW_gate_up, dW_down, db_gate_up, db_down, d_topk_w); weight/bias grads None when not asked."""
    dh1, a, ds_rows = down_backward(grad_out, w_down, b_down, h1, topk_w, tiles, cfg, activation)
    dxs = grouped_matmul(dh1, w_gate_up, tiles, cfg, gather=False, transpose_w=True)  # (TK, d) sorted rows
    dx = combine(dxs, tiles, topk_idx, None, out_dtype=x.dtype)
    d_topk_w = ds_rows.index_select(0, tiles.rev).view(topk_w.shape).to(topk_w.dtype)
    dw1 = dw2 = db1 = db2 = None
    if weight_grads or bias_grads:
        dw1, db1 = grouped_xty(
            x, dh1, tiles, cfg, gather_a=True, gather_b=False, colsum=bias_grads, out_dtype=w_gate_up.dtype
        )
        dw2, db2 = grouped_xty(
            a,
            grad_out,
            tiles,
            cfg,
            gather_a=False,
            gather_b=True,
            b_row_scale=topk_w.reshape(-1),
            colsum=bias_grads,
            out_dtype=w_down.dtype,
        )
    return dx, dw1, dw2, db1, db2, d_topk_w
