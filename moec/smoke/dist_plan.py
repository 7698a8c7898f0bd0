"""What a distributed smoke-run expects of each rank, from moec.plan: the per-rank memory it fits the model to,
the peak the planner predicts, and the all-to-all bytes, both under uniform routing and on the routing the run
actually saw (docs/scaling.md, "Running distributed"). Pure arithmetic; never imports torch.
"""

from __future__ import annotations

from moec.analyze.memory import RUNTIME_BYTES, RunMemory, run_activation_bytes
from moec.plan.budget import RankMemory, activation_bytes, fsdp_transient_bytes, state_bytes
from moec.plan.layout import Layout
from moec.plan.shard import rank_params, stage_tensors
from moec.plan.tensors import frozen_components
from moec.plan.traffic import rank_traffic
from moec.spec.plan import ResolvedModel
from moec.vocab import DTYPE_BYTES


def rank_memory(plan: ResolvedModel, layout: Layout, rank: int, *, tokens: int, dtype: str) -> RankMemory:
    """The planner's memory of ``rank`` of a resolved one-stage ``layout``, ``tokens`` tokens per step on its
    data-parallel rank: padded FSDP shards of the parameters, gradients and AdamW state (16 B per trainable
    parameter), the FSDP transient, and the analyzer's activation estimate (docs/scaling.md §3)."""
    held = stage_tensors(plan, layout.pp, 0)
    param_b, grad_b, opt_b = state_bytes(rank_params(plan, layout, rank), dtype)
    return RankMemory(
        param_bytes=param_b,
        grad_bytes=grad_b,
        optimizer_bytes=opt_b,
        fsdp_transient_bytes=fsdp_transient_bytes(held, frozen_components(plan), layout, dtype),
        activation_bytes=activation_bytes(plan, list(plan.layers), last=True, tokens=tokens, tp=layout.tp, in_flight=1),
        kv_cache_bytes=0,
    )


def rank_run_memory(
    plan: ResolvedModel, layout: Layout, *, batch: int, seq: int, dtype: str, data_bytes: int = 0
) -> RunMemory:
    """What the busiest rank (rank 0, the largest shares) of a distributed smoke-run is checked against before it
    allocates: the planner's sharded training state and FSDP transient, and the single-process smoke-run's upper
    activation estimate for the rank's ``batch`` sequences (the planner's figure is an ideal bf16 step)."""
    m = rank_memory(plan, layout, 0, tokens=batch * seq, dtype=dtype)
    return RunMemory(
        dtype,
        (
            ("weights", m.param_bytes),
            ("gradients", m.grad_bytes),
            ("optimizer", m.optimizer_bytes),
            ("FSDP transient", m.fsdp_transient_bytes),
            ("activations", run_activation_bytes(plan, batch=batch, seq=seq, dtype=dtype)),
            ("data", data_bytes),
            ("runtime", RUNTIME_BYTES),
        ),
        at=f"at batch {batch} × seq {seq} per rank",
    )


def planned_a2a_bytes_per_step(plan: ResolvedModel, layout: Layout, *, tokens: int, dtype: str) -> int:
    """The planner's all-to-all bytes one rank sends per step (forward and backward) under uniform routing, for
    ``tokens`` tokens on its data-parallel rank (docs/scaling.md §5)."""
    blocks = [*plan.layers, *plan.mtp]
    params = rank_params(plan, layout, 0)
    traffic = rank_traffic(
        blocks, params, layout, stage=0, d_model=plan.d_model, tokens=tokens, micro_batches=1, dtype=dtype
    )
    return traffic.a2a_bytes_per_step


def a2a_sent_on_routing(loads: list[list[list[int]]], rank: int, ep: int, row_bytes: int) -> int:
    """Bytes ``rank`` sends in MoE forwards, from the routing alone: d·b·Σ_{j≠r} (n_{r→j} + n_{j→r}) summed over
    the MoE layers, where n_{r→j} counts the kept slots of rank r's tokens whose expert lives on EP rank j
    (dispatch sends them out, the combine sends the peers' rows back; docs/scaling.md, "All-to-all bytes on the
    actual routing"). ``loads[r][layer][e]``: the kept slots of rank r's tokens on expert e; ``row_bytes``: d·b.

    Rank r's EP group is the ep consecutive ranks from ⌊r/ep⌋·ep, and EP rank i holds experts i·E/ep … (i+1)·E/ep − 1
    (docs/scaling.md §1, one pipeline stage)."""
    first, me = rank // ep * ep, rank % ep
    total = 0
    for layer, own in enumerate(loads[rank]):
        per_rank = len(own) // ep

        def routed(src: int, dst: int, layer: int = layer, per_rank: int = per_rank) -> int:
            return sum(loads[src][layer][dst * per_rank : (dst + 1) * per_rank])

        for peer in range(first, first + ep):
            if peer != rank:
                total += routed(rank, peer - first) + routed(peer, me)
    return total * row_bytes


def row_bytes(plan: ResolvedModel, dtype: str) -> int:
    """The bytes of one routed row, d·b."""
    return plan.d_model * DTYPE_BYTES[dtype]
