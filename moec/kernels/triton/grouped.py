"""Generic grouped kernels over expert-sorted rows, each beside its launcher.

* ``grouped_matmul``: out[r] = s[r] · (A[row(r)] @ W[e(r)]) + b[e(r)] for every routed row r, where
  A is either gathered from the unsorted token matrix (row(r) = order[r] // k, no copy) or already in
  sorted rows. Used for the down projection, for dX and for LoRA.
* ``grouped_xty``: dW[e] = A_eᵀ · B_e (+ column sums of B_e for the bias grad). One program per
  (expert, output tile) loops over that expert's rows (ScatterMoE's groupXtY pattern): no atomics, a
  fixed summation order, and an expert with no rows writes exact zeros.
* ``combine``: out[t] = Σ_j w[t, j] · Y[rev[t·k + j]] over the token's live slots, in fp32, cast once.
  A gather-sum per token, so it is deterministic where a scatter-add with atomics would not be.

Pointer arithmetic: every row index (loaded from ``order``/``tile_row``) and every expert index is
int64 before it is multiplied by a stride; int32 products here are the classic MoE overflow (vLLM
5938/19770, SGLang 4856, Liger 1246/1296). In-expert offsets (column × stride) stay int32: one expert
matrix would need 2³¹ elements to overflow them.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from moec.kernels.triton._common import INTERPRET, _mma, dot_flags, tile_rows
from moec.kernels.triton.configs import KernelConfig
from moec.kernels.triton.tiles import SlotTiles


def _empty_arg(like: torch.Tensor) -> torch.Tensor:
    """A placeholder pointer for an absent optional operand (its constexpr flag is False)."""
    return like.new_empty(1)


# ------------------------------------------------------------------------------------------ matmul
@triton.jit
def _grouped_matmul_kernel(
    a_ptr, w_ptr, b_ptr, s_ptr, out_ptr,
    order_ptr, tile_expert_ptr, tile_row_ptr, expert_end_ptr,
    N, K, n_experts, top_k,
    stride_am, stride_ak, stride_we, stride_wk, stride_wn, stride_be, stride_om, stride_on,
    GATHER_A: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_SCALE: tl.constexpr,
    BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, UPCAST: tl.constexpr, IEEE: tl.constexpr,
):  # fmt: skip
    e, rows, rmask = tile_rows(tile_expert_ptr, tile_row_ptr, expert_end_ptr, n_experts, BM)  # (BM,) sorted rows
    if e >= n_experts:  # a tile past the real tile count (static grid bound): nothing to do
        return
    pid_n = tl.program_id(1)
    if GATHER_A or HAS_SCALE:
        slot = tl.load(order_ptr + rows, mask=rmask, other=0).to(tl.int64)  # flat t·k + j
    if GATHER_A:
        arow = slot // top_k  # the token: A is read from the unsorted matrix, no gathered copy
    else:
        arow = rows
    cols = pid_n * BN + tl.arange(0, BN)
    cmask = cols < N
    ks = tl.arange(0, BK)
    a_ptrs = a_ptr + arow[:, None] * stride_am + ks[None, :] * stride_ak  # (BM, BK)
    w_ptrs = w_ptr + e * stride_we + ks[:, None] * stride_wk + cols[None, :] * stride_wn  # (BK, BN)
    acc = tl.zeros((BM, BN), dtype=tl.float32)
    for k0 in range(0, K, BK):
        kmask = (k0 + ks) < K
        a = tl.load(a_ptrs, mask=rmask[:, None] & kmask[None, :], other=0.0)
        w = tl.load(w_ptrs, mask=kmask[:, None] & cmask[None, :], other=0.0)
        acc = _mma(a, w, acc, UPCAST, IEEE)
        a_ptrs += BK * stride_ak
        w_ptrs += BK * stride_wk
    if HAS_SCALE:
        acc = acc * tl.load(s_ptr + slot, mask=rmask, other=0.0).to(tl.float32)[:, None]
    if HAS_BIAS:
        acc += tl.load(b_ptr + e * stride_be + cols, mask=cmask, other=0.0).to(tl.float32)[None, :]
    o_ptrs = out_ptr + rows[:, None] * stride_om + cols[None, :] * stride_on
    tl.store(o_ptrs, acc.to(out_ptr.dtype.element_ty), mask=rmask[:, None] & cmask[None, :])


def grouped_matmul(
    a: torch.Tensor,
    w: torch.Tensor,
    tiles: SlotTiles,
    cfg: KernelConfig,
    *,
    gather: bool,
    transpose_w: bool = False,
    bias: torch.Tensor | None = None,
    row_scale: torch.Tensor | None = None,
    out_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Per routed row r (sorted order): ``row_scale[slot] · A[row] @ W[e] + bias[e]``.

    a: (T, K) token rows when ``gather`` (row = slot // k), else (TK, K) sorted rows.
    w: (E, K, N), or (E, N, K) used as its transpose when ``transpose_w`` (dX = dH · Wᵀ, no copy).
    row_scale: (TK,) per flat slot, optional.  Returns (TK, N) in sorted rows; rows of dropped
    slots (past the last expert's end) are left unwritten.
    """
    n_rows = tiles.order.shape[0]
    if transpose_w:
        N, K = w.shape[1], w.shape[2]
        s_we, s_wk, s_wn = w.stride(0), w.stride(2), w.stride(1)
    else:
        K, N = w.shape[1], w.shape[2]
        s_we, s_wk, s_wn = w.stride(0), w.stride(1), w.stride(2)
    out = a.new_empty(n_rows, N, dtype=out_dtype or a.dtype)
    if n_rows == 0 or tiles.max_tiles == 0 or N == 0:
        return out
    upcast, ieee = dot_flags(a.dtype)
    grid = (tiles.max_tiles, triton.cdiv(N, cfg.block_n))
    _grouped_matmul_kernel[grid](
        a, w, bias if bias is not None else _empty_arg(a), row_scale if row_scale is not None else _empty_arg(a), out,
        tiles.order, tiles.tile_expert, tiles.tile_row, tiles.expert_end,
        N, K, tiles.n_experts, tiles.top_k,
        a.stride(0), a.stride(1), s_we, s_wk, s_wn, bias.stride(0) if bias is not None else 0, out.stride(0), out.stride(1),
        GATHER_A=gather, HAS_BIAS=bias is not None, HAS_SCALE=row_scale is not None,
        BM=tiles.block_m, BN=cfg.block_n, BK=cfg.block_k, UPCAST=upcast, IEEE=ieee,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )  # fmt: skip
    return out


# --------------------------------------------------------------------------------- weight gradient
@triton.jit
def _grouped_xty_kernel(
    a_ptr, b_ptr, s_ptr, out_ptr, colsum_ptr,
    order_ptr, expert_start_ptr, expert_end_ptr,
    KA, NB, top_k,
    stride_am, stride_ak, stride_bm, stride_bn, stride_oe, stride_ok, stride_on, stride_ce,
    GATHER_A: tl.constexpr, GATHER_B: tl.constexpr, HAS_SCALE: tl.constexpr, HAS_COLSUM: tl.constexpr,
    BA: tl.constexpr, BB: tl.constexpr, BR: tl.constexpr, UPCAST: tl.constexpr, IEEE: tl.constexpr,
):  # fmt: skip
    e = tl.program_id(0).to(tl.int64)
    pid_a = tl.program_id(1)
    pid_b = tl.program_id(2)
    start = tl.load(expert_start_ptr + e).to(tl.int64)
    end = tl.load(expert_end_ptr + e).to(tl.int64)
    acols = pid_a * BA + tl.arange(0, BA)
    bcols = pid_b * BB + tl.arange(0, BB)
    amask = acols < KA
    bmask = bcols < NB
    acc = tl.zeros((BA, BB), dtype=tl.float32)
    csum = tl.zeros((BB,), dtype=tl.float32)
    for r0 in range(start, end, BR):  # this expert's rows only: an empty expert skips the loop
        rows = r0 + tl.arange(0, BR)  # int64
        rmask = rows < end
        if GATHER_A or GATHER_B or HAS_SCALE:
            slot = tl.load(order_ptr + rows, mask=rmask, other=0).to(tl.int64)
        if GATHER_A:
            arow = slot // top_k
        else:
            arow = rows
        if GATHER_B:
            brow = slot // top_k
        else:
            brow = rows
        # Aᵀ tile loaded directly transposed: (BA, BR)
        at = tl.load(
            a_ptr + arow[None, :] * stride_am + acols[:, None] * stride_ak,
            mask=amask[:, None] & rmask[None, :],
            other=0.0,
        )
        b = tl.load(
            b_ptr + brow[:, None] * stride_bm + bcols[None, :] * stride_bn,
            mask=rmask[:, None] & bmask[None, :],
            other=0.0,
        )
        if HAS_SCALE:
            s = tl.load(s_ptr + slot, mask=rmask, other=0.0).to(tl.float32)
            b = (b.to(tl.float32) * s[:, None]).to(b_ptr.dtype.element_ty)
        acc = _mma(at, b, acc, UPCAST, IEEE)
        if HAS_COLSUM:
            csum += tl.sum(b.to(tl.float32), axis=0)
    o_ptrs = out_ptr + e * stride_oe + acols[:, None] * stride_ok + bcols[None, :] * stride_on
    tl.store(o_ptrs, acc.to(out_ptr.dtype.element_ty), mask=amask[:, None] & bmask[None, :])
    if HAS_COLSUM:
        if pid_a == 0:
            tl.store(colsum_ptr + e * stride_ce + bcols, csum.to(colsum_ptr.dtype.element_ty), mask=bmask)


def grouped_xty(
    a: torch.Tensor,
    b: torch.Tensor,
    tiles: SlotTiles,
    cfg: KernelConfig,
    *,
    gather_a: bool,
    gather_b: bool,
    b_row_scale: torch.Tensor | None = None,
    colsum: bool = False,
    out_dtype: torch.dtype | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Per expert e: ``out[e] = A_eᵀ · (s ⊙ B_e)`` over e's routed rows, and optionally ``Σ_rows s ⊙ B_e``.

    a: (T, KA) token rows when ``gather_a`` else (TK, KA) sorted rows; b likewise with NB columns.
    b_row_scale: (TK,) per flat slot.  Returns out (E, KA, NB) and colsum (E, NB) or None.
    """
    E = tiles.n_experts
    KA, NB = a.shape[1], b.shape[1]
    dtype = out_dtype or a.dtype
    out = a.new_empty(E, KA, NB, dtype=dtype)
    sums = a.new_empty(E, NB, dtype=dtype) if colsum else None
    if E == 0 or KA == 0 or NB == 0:
        return out, sums
    upcast, ieee = dot_flags(a.dtype)
    ba = bb = cfg.dw_n
    br = max(cfg.block_k, 16)
    grid = (E, triton.cdiv(KA, ba), triton.cdiv(NB, bb))
    _grouped_xty_kernel[grid](
        a, b, b_row_scale if b_row_scale is not None else _empty_arg(a), out, sums if sums is not None else _empty_arg(out),
        tiles.order, tiles.expert_start, tiles.expert_end,
        KA, NB, tiles.top_k,
        a.stride(0), a.stride(1), b.stride(0), b.stride(1), out.stride(0), out.stride(1), out.stride(2),
        sums.stride(0) if sums is not None else 0,
        GATHER_A=gather_a, GATHER_B=gather_b, HAS_SCALE=b_row_scale is not None, HAS_COLSUM=colsum,
        BA=ba, BB=bb, BR=br, UPCAST=upcast, IEEE=ieee, num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )  # fmt: skip
    return out, sums


# ---------------------------------------------------------------------------------------- combine
@triton.jit
def _combine_kernel(
    y_ptr, w_ptr, idx_ptr, rev_ptr, out_ptr,
    T, N,
    stride_ym, stride_yn, stride_ot, stride_on,
    TOP_K: tl.constexpr, HAS_W: tl.constexpr, BT: tl.constexpr, BN: tl.constexpr,
):  # fmt: skip
    toks = tl.program_id(0) * BT + tl.arange(0, BT).to(tl.int64)
    cols = tl.program_id(1) * BN + tl.arange(0, BN)
    tmask = toks < T
    cmask = cols < N
    acc = tl.zeros((BT, BN), dtype=tl.float32)
    for j in tl.static_range(TOP_K):  # k ≤ 8 sequential reads per token, in slot order: deterministic
        slot = toks * TOP_K + j
        live = tmask & (tl.load(idx_ptr + slot, mask=tmask, other=-1) >= 0)  # -1 = dropped slot
        row = tl.load(rev_ptr + slot, mask=live, other=0).to(tl.int64)
        y = tl.load(
            y_ptr + row[:, None] * stride_ym + cols[None, :] * stride_yn, mask=live[:, None] & cmask[None, :], other=0.0
        )
        if HAS_W:
            wj = tl.load(w_ptr + slot, mask=live, other=0.0).to(tl.float32)
            acc += wj[:, None] * y.to(tl.float32)
        else:
            acc += y.to(tl.float32)
    o_ptrs = out_ptr + toks[:, None] * stride_ot + cols[None, :] * stride_on
    tl.store(o_ptrs, acc.to(out_ptr.dtype.element_ty), mask=tmask[:, None] & cmask[None, :])


def combine(
    y: torch.Tensor,
    tiles: SlotTiles,
    topk_idx: torch.Tensor,
    weights: torch.Tensor | None = None,
    *,
    out_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """out[t] = Σ_j weights[t, j] · y[rev[t·k+j]] over live slots (weights omitted: plain sum).

    y: (TK, N) sorted rows; topk_idx: (T, k) contiguous; weights: (T, k) contiguous or None.
    """
    T, k = topk_idx.shape
    N = y.shape[1]
    out = y.new_empty(T, N, dtype=out_dtype or y.dtype)
    if T == 0 or N == 0:
        return out
    bt, bn = (64, 64) if INTERPRET else (16, 128)
    grid = (triton.cdiv(T, bt), triton.cdiv(N, bn))
    _combine_kernel[grid](
        y, weights if weights is not None else _empty_arg(y), topk_idx, tiles.rev, out,
        T, N, y.stride(0), y.stride(1), out.stride(0), out.stride(1),
        TOP_K=k, HAS_W=weights is not None, BT=bt, BN=bn, num_warps=4,
    )  # fmt: skip
    return out
