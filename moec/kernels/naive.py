"""The textbook MoE expert loop: for each expert, mask the tokens routed to it, run its FFN.

Slow by design and obviously correct; kept as the oracle every other backend is tested against.
"""

from __future__ import annotations

import torch

from moec.kernels.activations import activate


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
    out = torch.zeros_like(x)
    for e in range(w_gate_up.shape[0]):
        tok, slot = torch.where(topk_idx == e)  # tokens routed to e, and in which slot
        if tok.numel() == 0:
            continue
        h = x[tok] @ w_gate_up[e]  # (n, 2f) or (n, f)
        if b_gate_up is not None:
            h = h + b_gate_up[e]
        y = activate(h, activation, alpha=alpha, limit=limit) @ w_down[e]  # (n, d)
        if b_down is not None:
            y = y + b_down[e]
        out = out.index_add(0, tok, y * topk_w[tok, slot].unsqueeze(-1).to(y.dtype))
    return out


def lora_mix(
    x: torch.Tensor,
    topk_idx: torch.Tensor,
    topk_w: torch.Tensor,
    lora_a: torch.Tensor,
    lora_b: torch.Tensor,
    scale: float,
) -> torch.Tensor:
    out = x.new_zeros(x.shape[0], lora_b.shape[-1])
    for e in range(lora_a.shape[0]):
        tok, slot = torch.where(topk_idx == e)
        if tok.numel() == 0:
            continue
        y = (x[tok] @ lora_a[e]) @ lora_b[e]  # (n, n_out)
        out = out.index_add(0, tok, y * (scale * topk_w[tok, slot]).unsqueeze(-1).to(y.dtype))
    return out
