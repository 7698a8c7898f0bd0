"""The slot sort every expert backend starts from: the T·k routing slots ordered by expert.

Routing slots are flattened to ``s = t·k + j`` (token t, slot j of ``topk_idx`` (T, k)). Sorting them by
expert, stably, gives the "sorted rows" the backends compute in: rows of one expert are contiguous and,
within it, keep token order, so results do not depend on the sort algorithm. A dropped slot (``-1``) gets
the bucket past the last expert and sorts last. Only indices move; activations are never copied into a
padded buffer. Built with torch ops and no host synchronisation (``torch.bincount`` is avoided: it reads
the maximum back to the host on CUDA), so the grouped and Triton paths stay CUDA-graph safe; the loop path
of :mod:`moec.kernels.reference` reads the counts back once, itself.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class SortedSlots:
    """The routing slots sorted by expert. Row i of the sorted order is flat slot ``order[i]`` = t·k + j."""

    order: torch.Tensor  # (T·k,) int64: sorted row → flat slot (dropped slots last)
    expert: torch.Tensor  # (T·k,) int64: expert of each sorted row; E for a dropped slot
    counts: torch.Tensor  # (E + 1,) int64: rows per expert, then the number of dropped slots
    top_k: int

    @property
    def tok(self) -> torch.Tensor:
        """(T·k,) token of each sorted row."""
        return self.order // self.top_k


def sort_slots(topk_idx: torch.Tensor, n_experts: int) -> SortedSlots:
    """Stable sort of the slots of ``topk_idx`` (T, k) by expert; ``-1`` marks a dropped slot."""
    k = topk_idx.shape[1]
    flat = topk_idx.reshape(-1).long()  # (T·k,)
    key = torch.where(flat < 0, n_experts, flat)  # dropped slots get the bucket past the last expert
    order = torch.argsort(key, stable=True)  # (T·k,)
    counts = torch.zeros(n_experts + 1, dtype=torch.long, device=flat.device)
    counts.scatter_add_(0, key, torch.ones_like(key))  # integer adds: deterministic
    return SortedSlots(order, key[order], counts, k)


def inverse_permutation(order: torch.Tensor) -> torch.Tensor:
    """(N,) flat slot → sorted row, for ``order`` (N,) sorted row → flat slot."""
    return torch.empty_like(order).scatter_(0, order, torch.arange(order.numel(), device=order.device))
