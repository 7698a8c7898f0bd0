"""The pure-PyTorch expert computation: sort routing slots by expert once, run each expert on a
contiguous slice of rows, weight and un-permute.

Two ways to run the per-expert matmuls over the sorted rows (docs/kernels.md,
"Grouped matmul on CPU"):

- **loop** (CPU, and any case the grouped kernel cannot take): one host sync for the per-expert row
  counts, then a Python loop over ``w.unbind(0)``. Selecting ``W[e]`` under autograd would make the
  backward allocate E full-size weight gradients; ``unbind`` yields views whose gradients are stacked
  once. On a 2-core CPU this measured fastest for fwd and fwd+bwd at E ≤ 64 (docs/kernels.md,
  "Grouped matmul on CPU").
  Dropped slots (-1) sort last and are sliced off, so every row is real.
- **grouped** (CUDA bf16, SM ≥ 80, 16-byte aligned rows): ``grouped_mm`` with int32 cumulative ``offs``;
  no host sync, so the row count stays T·k and the dropped slots stay at the tail. ``grouped_mm``
  leaves rows past ``offs[-1]`` uninitialised in its outputs *and* in its input gradient, so the tail is
  masked with ``torch.where`` (not a multiply: the garbage may be NaN) on the gathered input and on the
  output. Un-permuting by gathering with the inverse permutation keeps the result deterministic (no
  atomics; index_add_ on CUDA is not).

On CPU, bf16/fp16 matmuls run ~100x slower than fp32, so low-precision inputs are computed in fp32
and the result is cast back (docs/kernels.md, "Low precision on CPU").
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from moec.kernels.activations import activate
from moec.kernels.slots import inverse_permutation, sort_slots

_grouped_mm = getattr(F, "grouped_mm", None) or getattr(torch, "_grouped_mm", None)


@dataclass(frozen=True)
class Dispatch:
    """Routing slots sorted by expert. Row i of the sorted order is slot ``order[i]`` = t·k + j."""

    order: torch.Tensor  # (N,) flat slot index of each sorted row
    tok: torch.Tensor  # (N,) token of each sorted row
    counts: list[int] | None  # rows per expert (loop); None on the grouped path
    offs: torch.Tensor | None  # (E,) int32 cumulative row ends (grouped)
    expert: torch.Tensor | None  # (N,) expert of each row, dropped rows clamped to E-1 (grouped)
    valid: torch.Tensor | None  # (N, 1) bool, False for the dropped tail rows (grouped)


def dispatch(topk_idx: torch.Tensor, n_experts: int, *, grouped: bool) -> Dispatch:
    """The slots sorted by expert (:func:`moec.kernels.slots.sort_slots`), laid out for the grouped path or
    the loop; dropped slots (-1) go last."""
    T, k = topk_idx.shape
    s = sort_slots(topk_idx, n_experts)
    if grouped:
        return Dispatch(
            order=s.order,
            tok=s.tok,
            counts=None,
            offs=s.counts[:n_experts].cumsum(0).to(torch.int32),
            expert=s.expert.clamp(max=n_experts - 1),
            valid=(s.expert < n_experts).unsqueeze(-1),
        )
    c = s.counts.tolist()  # the one host sync
    order = s.order[: T * k - c[n_experts]]  # (N,) kept slots only
    return Dispatch(order=order, tok=order // k, counts=c[:n_experts], offs=None, expert=None, valid=None)


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    if x.device.type == "cpu" and x.dtype in (torch.bfloat16, torch.float16):
        return torch.float32
    return x.dtype


def _can_group(x: torch.Tensor, *widths: int) -> bool:
    """grouped_mm where it is documented to run: bf16 on CUDA SM ≥ 80, every row 16-byte aligned."""
    if _grouped_mm is None or not x.is_cuda or x.dtype != torch.bfloat16:
        return False
    if torch.cuda.get_device_capability(x.device) < (8, 0):
        return False
    return all((w * x.element_size()) % 16 == 0 for w in widths)


def _check(x: torch.Tensor, topk_idx: torch.Tensor, topk_w: torch.Tensor, w_in: torch.Tensor, w_out: torch.Tensor):
    if x.dim() != 2 or topk_idx.dim() != 2 or topk_idx.shape != topk_w.shape or topk_idx.shape[0] != x.shape[0]:
        raise ValueError(
            f"expected x (T, d) and topk_idx, topk_w (T, k); got x {tuple(x.shape)}, "
            f"topk_idx {tuple(topk_idx.shape)}, topk_w {tuple(topk_w.shape)}"
        )
    if w_in.dim() != 3 or w_out.dim() != 3 or w_in.shape[1] != x.shape[1] or w_out.shape[0] != w_in.shape[0]:
        raise ValueError(
            f"expected weights (E, {x.shape[1]}, ·) and (E, ·, ·); got {tuple(w_in.shape)} and {tuple(w_out.shape)}"
        )


def _gather_rows(x: torch.Tensor, disp: Dispatch, k: int) -> torch.Tensor:
    """x rows in sorted order: (N, d)."""
    if disp.valid is None:
        return x.index_select(0, disp.tok)  # backward is index_add_, deterministic on CPU
    T, d = x.shape
    # Expanding then permuting keeps the backward free of atomics: the permutation's scatter hits each
    # row once and the expand's backward is a plain sum over k.
    xs = x.unsqueeze(1).expand(T, k, d).reshape(T * k, d)[disp.order]  # (T·k, d)
    return torch.where(disp.valid, xs, 0)  # masks the uninitialised tail of grouped_mm's input grad


def _combine(y: torch.Tensor, topk_w: torch.Tensor, disp: Dispatch, T: int) -> torch.Tensor:
    """Σ_j topk_w[t, j] · y[row of (t, j)]: (N, n) sorted rows → (T, n)."""
    k = topk_w.shape[1]
    if disp.valid is None:
        w = topk_w.reshape(-1)[disp.order].unsqueeze(-1)  # (N, 1)
        return y.new_zeros(T, y.shape[1]).index_add_(0, disp.tok, y * w)
    y = torch.where(disp.valid, y, 0)  # rows past offs[-1] are uninitialised
    per_slot = y[inverse_permutation(disp.order)].view(T, k, y.shape[1])  # (T, k, n), back in slot order
    return torch.bmm(topk_w.unsqueeze(1), per_slot).squeeze(1)  # (T, n)


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
) -> torch.Tensor:
    """(T, d) = Σ_j topk_w[t, j] · FFN_{topk_idx[t, j]}(x[t]); see :mod:`moec.kernels` for layouts.
    ``alpha``, ``limit``: parameters of ``swiglu_clamped`` (gpt-oss)."""
    _check(x, topk_idx, topk_w, w_gate_up, w_down)
    out_dtype, cdt = x.dtype, _compute_dtype(x)
    x, topk_w, w_gate_up, w_down = (t.to(cdt) for t in (x, topk_w, w_gate_up, w_down))
    b_gate_up = b_gate_up.to(cdt) if b_gate_up is not None else None
    b_down = b_down.to(cdt) if b_down is not None else None
    T, k = topk_idx.shape
    E, d, f = w_down.shape[0], x.shape[1], w_down.shape[1]
    grouped = T > 0 and _can_group(x, d, f, w_gate_up.shape[-1])
    disp = dispatch(topk_idx, E, grouped=grouped)
    xs = _gather_rows(x, disp, k)  # (N, d)

    if grouped:
        h = _grouped_mm(xs, w_gate_up, offs=disp.offs)  # (N, 2f) or (N, f)
        if b_gate_up is not None:
            # masked so the tail rows' uninitialised gradient cannot reach expert E-1's bias
            h = h + torch.where(disp.valid, b_gate_up[disp.expert], 0)
        y = _grouped_mm(activate(h, activation, alpha=alpha, limit=limit), w_down, offs=disp.offs)  # (N, d)
        if b_down is not None:
            y = y + b_down[disp.expert]
    else:
        # The whole FFN per expert inside the loop: its (n_e, 2f) hidden rows stay in cache and only
        # the (N, d) outputs are concatenated.
        b1 = b_gate_up.unbind(0) if b_gate_up is not None else [None] * E
        b2 = b_down.unbind(0) if b_down is not None else [None] * E
        ys = []
        for xe, w1, w2, c1, c2 in zip(
            xs.split(disp.counts), w_gate_up.unbind(0), w_down.unbind(0), b1, b2, strict=True
        ):
            h = xe @ w1  # (n_e, 2f) or (n_e, f)
            if c1 is not None:
                h = h + c1
            ye = activate(h, activation, alpha=alpha, limit=limit) @ w2  # (n_e, d)
            ys.append(ye if c2 is None else ye + c2)
        y = torch.cat(ys)  # (N, d)
    return _combine(y, topk_w, disp, T).to(out_dtype)


def slot_linear(rows: torch.Tensor, expert: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """(N, out): each row through its own expert's matrix, ``rows[i] @ weights[expert[i]]`` (``weights`` (E, in,
    out), ``expert`` (N,) with no dropped slot), neither weighted nor summed: the mixture of attention heads'
    per-slot query and output projections. The rows are sorted by expert once (:func:`dispatch`): grouped_mm
    with no host sync where it runs, else the loop with its one sync; gathered back in row order."""
    if rows.dim() != 2 or expert.shape != rows.shape[:1] or weights.dim() != 3 or weights.shape[1] != rows.shape[1]:
        raise ValueError(
            f"expected rows (N, in), expert (N,) and weights (E, in, out); got {tuple(rows.shape)}, "
            f"{tuple(expert.shape)} and {tuple(weights.shape)}"
        )
    out_dtype, cdt = rows.dtype, _compute_dtype(rows)
    rows, weights = rows.to(cdt), weights.to(cdt)
    E = weights.shape[0]
    grouped = rows.shape[0] > 0 and _can_group(rows, rows.shape[1], weights.shape[2])
    disp = dispatch(expert.unsqueeze(1), E, grouped=grouped)
    xs = _gather_rows(rows, disp, 1)  # (N, in) sorted by expert
    if grouped:
        y = torch.where(disp.valid, _grouped_mm(xs, weights, offs=disp.offs), 0)  # (N, out)
    else:
        y = torch.cat([xe @ w for xe, w in zip(xs.split(disp.counts), weights.unbind(0), strict=True)])
    return y[inverse_permutation(disp.order)].to(out_dtype)


def lora_mix(
    x: torch.Tensor,
    topk_idx: torch.Tensor,
    topk_w: torch.Tensor,
    lora_a: torch.Tensor,
    lora_b: torch.Tensor,
    scale: float,
) -> torch.Tensor:
    """(T, n_out) = scale · Σ_j topk_w[t, j] · (x[t] @ lora_a[e]) @ lora_b[e], e = topk_idx[t, j]."""
    _check(x, topk_idx, topk_w, lora_a, lora_b)
    out_dtype, cdt = x.dtype, _compute_dtype(x)
    x, topk_w, lora_a, lora_b = (t.to(cdt) for t in (x, topk_w, lora_a, lora_b))
    T, k = topk_idx.shape
    E, r, n_out = lora_b.shape
    grouped = T > 0 and _can_group(x, x.shape[1], r, n_out)
    disp = dispatch(topk_idx, E, grouped=grouped)
    xs = _gather_rows(x, disp, k)  # (N, n_in)
    if grouped:
        y = _grouped_mm(_grouped_mm(xs, lora_a, offs=disp.offs), lora_b, offs=disp.offs)  # (N, n_out)
    else:
        ys = [(xe @ a) @ b for xe, a, b in zip(xs.split(disp.counts), lora_a.unbind(0), lora_b.unbind(0), strict=True)]
        y = torch.cat(ys)  # (N, n_out)
    return _combine(y, topk_w * scale, disp, T).to(out_dtype)
