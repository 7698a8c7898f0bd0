"""Bytes one rank sends per training step, by kind of collective (docs/scaling.md §5).

All figures count what a rank sends (ring collectives send as much as they receive), for the tensors its
pipeline stage holds; the all-to-all assumes uniform routing (the mean over ranks; a hot expert's rank can
send more).
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

from moec.analyze.memory import DTYPE_BYTES
from moec.plan.budget import GRAD_BYTES
from moec.plan.layout import Layout
from moec.plan.shard import RankParams
from moec.spec.plan import LayerPlan, MoEPlan


@dataclass(frozen=True)
class RankTraffic:
    a2a_bytes_per_step: int  # EP dispatch + combine, forward and backward
    fsdp_all_gather_bytes_per_step: int
    fsdp_reduce_scatter_bytes_per_step: int
    tp_bytes_per_step: int
    pp_bytes_per_step: int

    @property
    def total_bytes_per_step(self) -> int:
        return (
            self.a2a_bytes_per_step
            + self.fsdp_all_gather_bytes_per_step
            + self.fsdp_reduce_scatter_bytes_per_step
            + self.tp_bytes_per_step
            + self.pp_bytes_per_step
        )


def a2a_bytes_per_token(top_k: int, d_model: int, nbytes: int, ep: int) -> Fraction:
    """Forward bytes a rank sends per token of one MoE layer: each of the token's k copies goes out to its
    expert's rank (dispatch) and its result comes back (combine), and (ep − 1)/ep of the experts live on
    another rank: 2·k·d·b·(ep − 1)/ep."""
    return Fraction(2 * top_k * d_model * nbytes * (ep - 1), ep)


def pipeline_bubble(pp: int, micro_batches: int) -> float:
    """The idle fraction of a GPipe or 1F1B schedule: (pp − 1)/(m + pp − 1)."""
    return (pp - 1) / (micro_batches + pp - 1)


def rank_traffic(
    blocks: list[LayerPlan],
    params: RankParams,
    layout: Layout,
    *,
    stage: int,
    d_model: int,
    tokens: int,
    micro_batches: int,
    dtype: str,
) -> RankTraffic:
    """Per-step bytes of a rank of ``stage`` that runs ``blocks`` (its layers and MTP blocks) and holds
    ``params``, for ``tokens`` tokens per micro-batch per data-parallel rank."""
    b, m, tp = DTYPE_BYTES[dtype], micro_batches, layout.tp
    seq_shard = Fraction(tokens, tp)  # sequence parallel: each TP rank carries 1/tp of the tokens
    a2a = sum(
        (a2a_bytes_per_token(lp.ffn.top_k, d_model, b, layout.ep) for lp in blocks if isinstance(lp.ffn, MoEPlan)),
        Fraction(0),
    )
    # a ring all-gather or reduce-scatter over n ranks sends the rank's padded shard to n − 1 peers
    dense_peers, expert_peers = layout.dp_shard - 1, layout.efsdp - 1
    gathered = dense_peers * params.other_padded + expert_peers * params.experts_padded
    reduced = dense_peers * (params.other_padded - params.frozen_other_padded) + expert_peers * (
        params.experts_padded - params.frozen_experts_padded
    )
    # Megatron sequence parallel: per block two all-gathers and two reduce-scatters of (tokens, d) forward,
    # the same backward; each sends (tp − 1)/tp of the tensor
    tp_bytes = 8 * Fraction(tp - 1, tp) * tokens * d_model * b * len(blocks)
    pp_sends = (stage > 0) + (stage < layout.pp - 1)  # gradients back, activations on
    return RankTraffic(
        a2a_bytes_per_step=round(2 * a2a * seq_shard * m),
        fsdp_all_gather_bytes_per_step=2 * m * gathered * b,  # forward, and again in the backward
        fsdp_reduce_scatter_bytes_per_step=m * reduced * GRAD_BYTES,
        tp_bytes_per_step=round(tp_bytes * m),
        pp_bytes_per_step=round(pp_sends * seq_shard * d_model * b * m),
    )
