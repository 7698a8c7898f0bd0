"""Routed LoRA experts: low-rank grouped GEMMs over the same slot tiles as the expert FFN.

    out[t] = scale · Σ_j w[t,j] · (x[t] @ A[e]) @ B[e],   e = topk_idx[t, j]

Built from the generic grouped kernels (not one fused kernel: the rank r is small, so the two thin
GEMMs are bandwidth-bound and fusing them buys little). Unlike the expert FFN this is a plain
``autograd.Function``, not a torch.library op: eager only, and ``torch.compile`` graph-breaks on it.

Backward, with H = x·A (TK, r) saved in sorted rows and dO the output grad:
    dHu = dO[token] · Bᵀ                      (unscaled)
    d w[t,j] = scale · <dHu, H>               (= scale · <dO, H·B>, no cached output)
    dH  = (scale · w) ⊙ dHu
    dA[e] = x_eᵀ dH_e,   dB[e] = H_eᵀ (scale·w ⊙ dO)_e,   dx = Σ_j dH · Aᵀ
"""

from __future__ import annotations

import torch

from moec.kernels.triton.configs import KernelConfig
from moec.kernels.triton.grouped import combine, grouped_matmul, grouped_xty
from moec.kernels.triton.tiles import SlotTiles


class LoraMix(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, topk_idx, topk_w, lora_a, lora_b, scale, tiles, cfg):  # type: ignore[no-untyped-def, override]
        h = grouped_matmul(x, lora_a, tiles, cfg, gather=True)  # (TK, r) sorted rows
        z = grouped_matmul(h, lora_b, tiles, cfg, gather=False)  # (TK, n_out)
        sw = (topk_w * scale).contiguous()  # (T, k) gate weight times the LoRA scale
        out = combine(z, tiles, topk_idx, sw, out_dtype=x.dtype)
        ctx.save_for_backward(x, topk_idx, topk_w, lora_a, lora_b, h)
        ctx.scale, ctx.tiles, ctx.cfg = scale, tiles, cfg
        return out

    @staticmethod
    def backward(ctx, grad_out):  # type: ignore[no-untyped-def, override]
        x, topk_idx, topk_w, lora_a, lora_b, h = ctx.saved_tensors
        tiles: SlotTiles = ctx.tiles
        cfg: KernelConfig = ctx.cfg
        scale = ctx.scale
        sw_flat = (topk_w * scale).reshape(-1).contiguous()  # (TK,) per flat slot
        dhu = grouped_matmul(grad_out, lora_b, tiles, cfg, gather=True, transpose_w=True)  # (TK, r)
        live_rows = torch.arange(h.shape[0], device=h.device) < tiles.expert_end[-1]  # rows past it are unwritten
        ds_rows = torch.where(live_rows, (dhu.float() * h.float()).sum(1), 0.0)  # (TK,) sorted rows
        d_topk_w = (scale * ds_rows.index_select(0, tiles.rev)).view(topk_w.shape).to(topk_w.dtype)
        dh = (dhu.float() * sw_flat.index_select(0, tiles.order).float()[:, None]).to(h.dtype)
        dx = combine(
            grouped_matmul(dh, lora_a, tiles, cfg, gather=False, transpose_w=True),
            tiles,
            topk_idx,
            None,
            out_dtype=x.dtype,
        )
        da, _ = grouped_xty(x, dh, tiles, cfg, gather_a=True, gather_b=False, out_dtype=lora_a.dtype)
        db, _ = grouped_xty(
            h, grad_out, tiles, cfg, gather_a=False, gather_b=True, b_row_scale=sw_flat, out_dtype=lora_b.dtype
        )
        return dx, None, d_topk_w, da, db, None, None, None
