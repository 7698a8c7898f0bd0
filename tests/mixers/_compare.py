"""What the mixer tests share: the relative difference they bound between two forms of the same computation."""

from __future__ import annotations

import torch


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    """The largest difference relative to the largest of b (0 when both are all zeros; b's all zeros against any
    other a is huge or inf, never a pass)."""
    a, b = a.detach(), b.detach()
    return ((a - b).abs().max() / b.abs().max().clamp_min(torch.finfo(b.dtype).tiny)).item()
