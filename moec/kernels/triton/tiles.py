"""The per-tile tables of the grouped kernels, over the slots sorted by expert (:mod:`moec.kernels.slots`).

The sorted rows ``[expert_start[e], expert_end[e])`` belong to expert e. The GEMM grids are launched over a
*static upper bound* of M-tiles (vLLM's trick): each tile belongs to exactly one expert, and tiles past the real
count carry ``tile_expert == E`` and exit at once. So nothing here calls ``.item()``, ``.cpu()``, ``.tolist()``
or ``nonzero`` (CUDA-graph safe).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from moec.kernels.slots import inverse_permutation, sort_slots


@dataclass(frozen=True)
class SlotTiles:
    """The sorted slots of one call and the M-tile each grouped-kernel program works on."""

    order: torch.Tensor  # (TK,) int64: sorted row -> flat slot t·k+j (dropped slots sort last)
    rev: torch.Tensor  # (TK,) int64: flat slot -> sorted row
    expert_start: torch.Tensor  # (E,) int64: first sorted row of each expert
    expert_end: torch.Tensor  # (E,) int64: one past its last row
    tile_expert: torch.Tensor  # (max_tiles,) int64: expert of each M-tile, E for unused tiles
    tile_row: torch.Tensor  # (max_tiles,) int64: first sorted row of each M-tile
    block_m: int
    n_experts: int
    top_k: int

    @property
    def max_tiles(self) -> int:
        return self.tile_expert.shape[0]


def max_tiles(n_rows: int, n_experts: int, block_m: int) -> int:
    """Static bound on Σ_e ceil(n_e / BM) given Σ_e n_e ≤ n_rows.

    Each non-empty expert wastes at most one partial tile: Σ ceil(n_e/BM) ≤ floor(n_rows/BM) + #non-empty,
    and #non-empty ≤ min(E, n_rows); a tile also holds at least one row, so the count is ≤ n_rows.
    """
    return min(n_rows, n_rows // block_m + min(n_experts, n_rows))


def tile_slots(topk_idx: torch.Tensor, n_experts: int, block_m: int) -> SlotTiles:
    """Sort the routing slots of ``topk_idx`` (T, k) by expert (``-1``: dropped) and tile each expert's rows."""
    s = sort_slots(topk_idx, n_experts)
    n_rows, dev = s.order.numel(), s.order.device
    counts = s.counts[:n_experts]  # (E,)
    expert_end = torch.cumsum(counts, 0)
    expert_start = expert_end - counts

    tiles = (counts + block_m - 1) // block_m  # (E,) M-tiles per expert
    tile_end = torch.cumsum(tiles, 0)  # (E,)
    tile_first = tile_end - tiles
    t = torch.arange(max_tiles(n_rows, n_experts, block_m), device=dev)  # (max_tiles,)
    # the expert whose tile range [tile_first, tile_end) holds t; E when t is past every range
    tile_expert = torch.searchsorted(tile_end, t, right=True)
    e = tile_expert.clamp(max=n_experts - 1)
    tile_row = expert_start[e] + (t - tile_first[e]) * block_m
    return SlotTiles(
        s.order,
        inverse_permutation(s.order),
        expert_start,
        expert_end,
        tile_expert,
        tile_row,
        block_m,
        n_experts,
        s.top_k,
    )
