"""Memory per rank of one pipeline stage: sharded training state, the FSDP transient, activations, KV cache.

Conventions (docs/scaling.md §3): FSDP2 mixed precision keeps an fp32 master copy and fp32 gradients of its
shard, and AdamW two fp32 moments, which together are the analyzer's 16 bytes per trainable parameter; a
frozen parameter is stored in the compute dtype only. The figures count FSDP2's padded shards.
"""

from __future__ import annotations

from dataclasses import dataclass

from moec.analyze.memory import ADAMW_BYTES_TRAINABLE, DTYPE_BYTES, activation_bytes_per_token, memory
from moec.plan.layout import Layout
from moec.plan.shard import RankParams, chunk_rows
from moec.plan.tensors import ParamTensor
from moec.spec.plan import LayerPlan, ResolvedModel

MASTER_BYTES = 4  # fp32 master weight of a trainable parameter's shard
GRAD_BYTES = 4  # fp32 gradient shard; also the reduce-scatter dtype
OPTIMIZER_BYTES = ADAMW_BYTES_TRAINABLE - MASTER_BYTES - GRAD_BYTES  # AdamW's two fp32 moments


@dataclass(frozen=True)
class RankMemory:
    param_bytes: int  # fp32 master shards of trainable params + compute-dtype shards of frozen ones
    grad_bytes: int
    optimizer_bytes: int
    fsdp_transient_bytes: int  # unsharded params and grads of the two largest FSDP units (current + prefetch)
    activation_bytes: int  # saved for backward, all micro-batches in flight on this stage (1F1B)
    kv_cache_bytes: int  # inference: seq × micro-batch tokens of context on this stage's layers

    @property
    def states_bytes(self) -> int:
        return self.param_bytes + self.grad_bytes + self.optimizer_bytes

    @property
    def training_peak_bytes(self) -> int:
        return self.states_bytes + self.fsdp_transient_bytes + self.activation_bytes


def state_bytes(params: RankParams, dtype: str) -> tuple[int, int, int]:
    """(param, grad, optimizer) bytes of one rank's padded shards."""
    trainable = params.total_padded - params.frozen_padded
    return (
        MASTER_BYTES * trainable + DTYPE_BYTES[dtype] * params.frozen_padded,
        GRAD_BYTES * trainable,
        OPTIMIZER_BYTES * trainable,
    )


def fsdp_transient_bytes(held: list[ParamTensor], frozen: set[str], layout: Layout, dtype: str) -> int:
    """While a unit computes, FSDP2 holds its all-gathered compute-dtype params and, in the backward, its
    unsharded fp32 gradients before the reduce-scatter; the next unit is prefetched meanwhile. A rank
    gathers only its own TP slice and its own ep share of the experts."""
    units: dict[str, int] = {}
    for t in held:
        numel = t.numel // layout.ep if t.expert else _tp_slice(t, layout.tp)
        grads = 0 if t.component in frozen else GRAD_BYTES
        units[t.unit] = units.get(t.unit, 0) + numel * (DTYPE_BYTES[dtype] + grads)
    return sum(sorted(units.values(), reverse=True)[:2])


def _tp_slice(t: ParamTensor, tp: int) -> int:
    if t.tp_dim is None:
        return t.numel
    return t.numel // t.shape[t.tp_dim] * chunk_rows(t.shape[t.tp_dim], tp, 0)


def activation_bytes(
    plan: ResolvedModel, layers: list[LayerPlan], *, last: bool, tokens: int, tp: int, in_flight: int
) -> int:
    """The analyzer's per-token activation estimate for these layers (plus the final norm and logits on the
    last stage), for the tokens of one micro-batch, split over tp (sequence parallel), times the
    micro-batches a stage holds at once."""
    edge = activation_bytes_per_token(plan.replace(layers=()))  # final norm input and fp32 logits
    per_token = activation_bytes_per_token(plan.replace(layers=tuple(layers))) - edge + (edge if last else 0)
    return -(-per_token * tokens // tp) * in_flight


def kv_cache_bytes(plan: ResolvedModel, layers: list[LayerPlan], *, seq: int, batch: int, tp: int, dtype: str) -> int:
    """The analyzer's KV cache for these layers. TP splits GQA's KV heads; MLA's latent is one vector per
    token that every TP rank keeps whole."""
    gqa = tuple(lp for lp in layers if lp.attention.kind != "mla")
    mla = tuple(lp for lp in layers if lp.attention.kind == "mla")

    def cache(part: tuple[LayerPlan, ...]) -> int:
        return memory(plan.replace(layers=part), 0, 0, 0, seq=seq, batch=batch, dtype=dtype).kv_cache_bytes

    return cache(gqa) // tp + cache(mla)
