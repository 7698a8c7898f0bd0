"""The training loss: next-token cross-entropy plus the MoE aux losses, so no loop can forget them.

    total = CE(logits[:, :-1], tokens[:, 1:]) + aux.loss  [+ mtp_weight · mean_k CE_k]

``aux.loss`` is already weighted by each layer's coefficients (load-balance, z-loss). MTP depth k predicts
token i+1+k at position i (DeepSeek-V3: L = L_main + λ/D·Σ_k L_k, λ = 0.3 early in training, then 0.1).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from moec.nn.model import ModelAux


@dataclass
class LossParts:
    """Detached, for logging: backpropagate ``total``."""

    ce: torch.Tensor  # () next-token cross-entropy
    aux: torch.Tensor  # () Σ weighted MoE aux losses
    mtp: torch.Tensor | None = None  # () mean MTP cross-entropy over depths (None without MTP)


def lm_loss(
    logits: torch.Tensor, tokens: torch.Tensor, aux: ModelAux, *, mtp_weight: float = 0.3
) -> tuple[torch.Tensor, LossParts]:
    """logits (B, S, V), tokens (B, S) → (total (), parts). CE is computed in fp32."""
    if logits.dim() != 3 or tokens.dim() != 2 or logits.shape[:2] != tokens.shape:
        raise ValueError(
            f"logits {tuple(logits.shape)} and tokens {tuple(tokens.shape)} do not match as (B, S, V), (B, S)"
        )
    ce = _shifted_ce(logits, tokens, 1)
    total = ce + aux.loss
    mtp = None
    S = tokens.shape[1]
    depths = [(k, lg) for k, lg in enumerate(aux.mtp_logits, start=1) if S > k + 1]
    if depths:
        mtp = torch.stack([_shifted_ce(lg, tokens, k + 1) for k, lg in depths]).mean()
        if mtp_weight:
            total = total + mtp_weight * mtp
    return total, LossParts(ce.detach(), aux.loss.detach(), None if mtp is None else mtp.detach())


def _shifted_ce(logits: torch.Tensor, tokens: torch.Tensor, shift: int) -> torch.Tensor:
    """Position i predicts token i + shift."""
    V = logits.shape[-1]
    pred = logits[:, :-shift].reshape(-1, V).float()  # (B·(S-shift), V)
    return F.cross_entropy(pred, tokens[:, shift:].reshape(-1).long())
