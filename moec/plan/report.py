"""The plan of one layout (per-rank memory, traffic and a step-time estimate), and the search over layouts.

Arithmetic only, as plain dataclasses; moec.plan.render formats them. The step-time estimate exists to rank
layouts, not to predict a run: peak FLOP/s, no overlap of communication with compute (docs/scaling.md §6).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from fractions import Fraction
from math import isqrt
from typing import Any

from moec.analyze import analyze
from moec.analyze.memory import DTYPE_BYTES
from moec.plan.accelerators import ACCELERATORS, Accelerator
from moec.plan.budget import (
    RankMemory,
    activation_bytes,
    fsdp_transient_bytes,
    kv_cache_bytes,
    state_bytes,
)
from moec.plan.layout import Layout, LayoutError
from moec.plan.shard import count_params, stage_layers, stage_tensors
from moec.plan.tensors import frozen_components, model_tensors
from moec.plan.traffic import RankTraffic, a2a_bytes_per_token, pipeline_bubble, rank_traffic
from moec.spec.plan import MoEPlan, ResolvedModel

SCHEMA = "moec.plan/1"


@dataclass(frozen=True)
class Workload:
    seq: int = 4096
    micro_batch: int = 1  # sequences per data-parallel rank per micro-batch
    micro_batches: int | None = None  # per step (pipeline micro-batches or gradient accumulation); None: pp
    dtype: str = "bf16"  # compute dtype: gathered weights, activations, messages, KV cache


@dataclass(frozen=True)
class StagePlan:
    stage: int
    layers: tuple[int, ...]  # the block indices this stage runs
    params: dict[str, int]  # RankParams of the stage's rank with the largest shares, with its total
    memory: RankMemory
    traffic: RankTraffic


@dataclass(frozen=True)
class StepEstimate:
    compute_s: float  # the busiest stage's training FLOPs at peak
    comm_s: float  # its sent bytes at link or NIC bandwidth, not overlapped
    step_s: float  # compute stretched by the pipeline bubble, plus communication
    tokens_per_s_per_gpu: float


@dataclass(frozen=True)
class LayoutPlan:
    name: str
    gpu: str
    world: int
    layout: Layout  # resolved
    efsdp: int
    seq: int
    micro_batch: int
    micro_batches: int
    dtype: str
    a2a_bytes_per_token_per_moe_layer: int | float  # forward, dispatch + combine; the largest over MoE layers
    pipeline_bubble: float
    stages: list[StagePlan]
    busiest_stage: int  # the stage with the highest training peak memory
    hbm_bytes: int
    fits: bool  # the busiest stage's training peak is within the accelerator's memory
    estimate: StepEstimate
    conventions: dict[str, Any] = field(default_factory=dict)

    @property
    def busiest(self) -> StagePlan:
        return self.stages[self.busiest_stage]

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"schema": SCHEMA}
        d.update(dataclasses.asdict(self))
        for stage, s in zip(d["stages"], self.stages, strict=True):
            stage["memory"]["training_peak_bytes"] = s.memory.training_peak_bytes
            stage["traffic"]["total_bytes_per_step"] = s.traffic.total_bytes_per_step
        return d


def conventions(w: Workload, micro_batches: int) -> dict[str, Any]:
    return {
        "mesh": "world = pp·dp_shard·tp; routed experts: ep·efsdp = dp_shard·tp (torchtitan)",
        "states": "16 B per trainable param (fp32 master, grad, 2 AdamW moments), dtype bytes per frozen one",
        "fsdp_padding": "each tensor's dim 0 padded to a multiple of its shard count",
        "fsdp_transient": "unsharded dtype params + fp32 grads of the two largest FSDP units",
        "activations": "the analyzer's bf16 estimate × tokens/tp × micro-batches in flight (1F1B)",
        "kv_cache": f"inference, S={w.seq} × micro-batch {w.micro_batch}; GQA heads split by tp, MLA latent whole",
        "a2a": "2·k·d·b·(ep−1)/ep per token per MoE layer forward, uniform routing; ×2 for the backward",
        "fsdp_comms": "all-gather twice per micro-batch (reshard after forward), reduce-scatter once, fp32",
        "tp_comms": "8·(tp−1)/tp·tokens·d·b per block per micro-batch (sequence parallel)",
        "pp_comms": "tokens/tp·d·b per stage boundary per direction per micro-batch",
        "micro_batches": micro_batches,
        "step_estimate": "peak FLOP/s, link or NIC bandwidth, no overlap; for ranking only",
        "dtype": w.dtype,
    }


class _Model:
    """What every layout of one model shares, computed once: its tensors, frozen set and FLOPs."""

    def __init__(self, plan: ResolvedModel, seq: int):
        self.plan = plan
        self.tensors = model_tensors(plan)
        self.frozen = frozen_components(plan)
        self.training_flops_per_token = analyze(plan, seq=seq, attention="causal").flops.training
        moe = [lp.ffn.top_k for lp in (*plan.layers, *plan.mtp) if isinstance(lp.ffn, MoEPlan)]
        self.max_top_k = max(moe, default=0)


def plan_layout(plan: ResolvedModel, layout: Layout, world: int, gpu: str, workload: Workload) -> LayoutPlan:
    """Per-rank memory and traffic of ``layout`` on ``world`` accelerators of kind ``gpu``. Raises
    LayoutError quoting every problem when the layout does not fit the model or the world."""
    problems = layout.problems(plan, world)
    if problems:
        raise LayoutError("; ".join(problems))
    return _plan(_Model(plan, workload.seq), layout.resolved(world), ACCELERATORS[gpu], gpu, workload)


def _plan(model: _Model, layout: Layout, acc: Accelerator, gpu: str, w: Workload) -> LayoutPlan:
    plan = model.plan
    m = w.micro_batches or layout.pp
    stages = [_stage(model, layout, s, w, m) for s in range(layout.pp)]
    busiest = max(range(layout.pp), key=lambda s: stages[s].memory.training_peak_bytes)
    bubble = pipeline_bubble(layout.pp, m)
    per_token = a2a_bytes_per_token(model.max_top_k, plan.d_model, DTYPE_BYTES[w.dtype], layout.ep)
    return LayoutPlan(
        name=plan.name,
        gpu=gpu,
        world=layout.world,
        layout=layout,
        efsdp=layout.efsdp,
        seq=w.seq,
        micro_batch=w.micro_batch,
        micro_batches=m,
        dtype=w.dtype,
        a2a_bytes_per_token_per_moe_layer=_number(per_token),
        pipeline_bubble=bubble,
        stages=stages,
        busiest_stage=busiest,
        hbm_bytes=acc.hbm_bytes,
        fits=stages[busiest].memory.training_peak_bytes <= acc.hbm_bytes,
        estimate=_estimate(model, layout, acc, w, m, stages),
        conventions=conventions(w, m),
    )


def _stage(model: _Model, layout: Layout, stage: int, w: Workload, m: int) -> StagePlan:
    plan = model.plan
    last = stage == layout.pp - 1
    held = stage_tensors(plan, layout.pp, stage, model.tensors)
    layers = [plan.layers[i] for i in stage_layers(plan.n_layers, layout.pp)[stage]]
    blocks = layers + (list(plan.mtp) if last else [])
    params = count_params(held, model.frozen, layout, 0, 0)  # rank 0 of a stage has the largest shares
    tokens = w.seq * w.micro_batch
    param_b, grad_b, opt_b = state_bytes(params, w.dtype)
    memory = RankMemory(
        param_bytes=param_b,
        grad_bytes=grad_b,
        optimizer_bytes=opt_b,
        fsdp_transient_bytes=fsdp_transient_bytes(held, model.frozen, layout, w.dtype),
        activation_bytes=activation_bytes(
            plan, layers, last=last, tokens=tokens, tp=layout.tp, in_flight=min(layout.pp - stage, m)
        ),
        kv_cache_bytes=kv_cache_bytes(plan, layers, seq=w.seq, batch=w.micro_batch, tp=layout.tp, dtype=w.dtype),
    )
    traffic = rank_traffic(
        blocks, params, layout, stage=stage, d_model=plan.d_model, tokens=tokens, micro_batches=m, dtype=w.dtype
    )
    counts = {**dataclasses.asdict(params), "total": params.total, "total_padded": params.total_padded}
    return StagePlan(stage, tuple(lp.index for lp in layers), counts, memory, traffic)


def _estimate(
    model: _Model, layout: Layout, acc: Accelerator, w: Workload, m: int, stages: list[StagePlan]
) -> StepEstimate:
    tokens_per_rank = w.seq * w.micro_batch * m  # per data-parallel rank per step
    compute = model.training_flops_per_token * tokens_per_rank / (layout.tp * layout.pp) / acc.bf16_flops

    def bandwidth(span: int) -> int:  # a group of `span` consecutive ranks stays inside one node or not
        inside = span <= acc.gpus_per_node and acc.gpus_per_node % span == 0
        return acc.link_bytes_per_s if inside else acc.nic_bytes_per_s

    block = layout.dp_shard * layout.tp
    comm = max(
        s.traffic.a2a_bytes_per_step / bandwidth(layout.ep)
        + (s.traffic.fsdp_all_gather_bytes_per_step + s.traffic.fsdp_reduce_scatter_bytes_per_step) / bandwidth(block)
        + s.traffic.tp_bytes_per_step / bandwidth(layout.tp)
        + s.traffic.pp_bytes_per_step / bandwidth(layout.world)
        for s in stages
    )
    step = compute / (1 - pipeline_bubble(layout.pp, m)) + comm
    return StepEstimate(compute, comm, step, tokens_per_rank * layout.dp_shard / step / layout.world)


def candidate_layouts(plan: ResolvedModel, world: int, max_tp: int) -> list[Layout]:
    """Every valid layout of ``world`` ranks with tp ≤ max_tp (TP stays inside a node)."""
    out = []
    for tp in (t for t in _divisors(world) if t <= max_tp):
        for pp in (p for p in _divisors(world // tp) if p <= plan.n_layers):
            for ep in _divisors(world // pp):  # ep tiles the dp_shard·tp block
                layout = Layout(ep=ep, tp=tp, pp=pp)
                if not layout.problems(plan, world):
                    out.append(layout.resolved(world))
    return out


def search(plan: ResolvedModel, world: int, gpu: str, workload: Workload) -> list[LayoutPlan]:
    """Every valid layout, ranked: those that fit the accelerator's memory first, then by estimated tokens/s
    per GPU, then by lower peak memory."""
    acc = ACCELERATORS[gpu]
    model = _Model(plan, workload.seq)
    plans = [_plan(model, layout, acc, gpu, workload) for layout in candidate_layouts(plan, world, acc.gpus_per_node)]
    return sorted(
        plans,
        key=lambda p: (not p.fits, -p.estimate.tokens_per_s_per_gpu, p.busiest.memory.training_peak_bytes),
    )


def _divisors(n: int) -> list[int]:
    small = [d for d in range(1, isqrt(n) + 1) if n % d == 0]
    return sorted({*small, *(n // d for d in small)})


def _number(x: Fraction) -> int | float:
    return int(x) if x.denominator == 1 else float(x)
