"""The roofline report: one step, the batch at which each part turns compute-bound, and tokens/s against
batch; as plain data for JSON."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from moec.plan.accelerators import Accelerator
from moec.roofline.model import Roofline, Workload, batch_curve, crossover_batch, roofline
from moec.spec.plan import ResolvedModel

SCHEMA = "moec.roofline/1"
CONVENTIONS = {
    "flop_unit": "1 multiply-add = 2 FLOPs (moec analyze's counts)",
    "bytes": "each weight matrix read once per step in --dtype; the KV cache read (decode) or written (prefill) "
    "in --kv-dtype; activations stay on chip; norms, elementwise work and communication not counted",
    "routed_experts": "weights of the expected distinct experts of the step: E·(1 − (1 − k/E)^T) under uniform "
    "routing, Σ 1 − (1 − p_i)^T with a measured load (p_i = k·c_i/Σc), tokens routed independently",
    "time": "Σ over components and layers of max(FLOPs / peak, bytes / bandwidth): a lower bound",
    "lm_head": "the last position of each sequence only",
    "ranks": "max(tp, ep) ranks: tp splits attention, shared experts, dense FFN, embedding and head; ep splits "
    "the routed experts; figures are for the busiest rank, tokens/s for the whole group",
    "mtp": "not counted (the main model's step only)",
    "mixers": "another token mixer (docs/mixers.md): its projections as weights read once per step, whole on every "
    "rank (tp 1 only); its chunked form per prefill token or recurrent step per decode token, and its state, "
    "constant in the context, in --kv-dtype (float32 parts at 4 B), read and written by a decode step, written by "
    "a prefill",
}


def default_batches(limit: int) -> list[int]:
    """1, 2, 4, … up to ``limit``."""
    out, b = [], 1
    while b <= limit:
        out.append(b)
        b *= 2
    return out


@dataclass(frozen=True)
class RooflineReport:
    step: Roofline
    crossovers: dict[str, int | None]  # component → the smallest compute-bound batch (None: never)
    step_crossover: int | None
    curve: list[Roofline]
    routing: str  # "uniform routing", or the loads' file


def build_report(
    model: ResolvedModel,
    acc: Accelerator,
    gpu: str,
    w: Workload,
    *,
    batches: Sequence[int],
    picks: dict[int, Sequence[float]] | None = None,
    routing: str = "uniform routing",
) -> RooflineReport:
    step = roofline(model, acc, gpu, w, picks=picks)
    crossovers = {c.name: crossover_batch(model, acc, gpu, w, c.name, picks=picks) for c in step.costs}
    return RooflineReport(
        step=step,
        crossovers=crossovers,
        step_crossover=crossover_batch(model, acc, gpu, w, picks=picks),
        curve=batch_curve(model, acc, gpu, w, batches, picks=picks),
        routing=routing,
    )


def _point(r: Roofline) -> dict[str, Any]:
    return {
        "batch": r.workload.batch,
        "tokens_per_s": r.tokens_per_s,
        "step_s": r.step_s,
        "bound": "compute" if sum(c.compute_s for c in r.costs) >= sum(c.memory_s for c in r.costs) else "memory",
        "fits": r.fits,
    }


def to_dict(report: RooflineReport) -> dict[str, Any]:
    r, w, acc = report.step, report.step.workload, report.step.accelerator
    return {
        "schema": SCHEMA,
        "model": r.model,
        "workload": {
            "phase": w.phase,
            "batch": w.batch,
            "seq": w.seq,
            "dtype": w.dtype,
            "kv_dtype": w.kv_dtype,
            "tp": w.tp,
            "ep": w.ep,
            "ranks": w.ranks,
        },
        "accelerator": {
            "gpu": r.gpu,
            "name": acc.name,
            "peak_flops": r.peak_flops,
            "hbm_bytes_per_s": acc.hbm_bytes_per_s,
            "hbm_bytes": acc.hbm_bytes,
            "source": acc.source,
        },
        "routing": report.routing,
        "components": [
            {
                "name": c.name,
                "flops": c.flops,
                "bytes": c.bytes,
                "intensity": c.intensity,
                "bound": c.bound,
                "compute_s": c.compute_s,
                "memory_s": c.memory_s,
                "time_s": c.time_s,
                "compute_bound_from_batch": report.crossovers[c.name],
            }
            for c in r.costs
        ],
        "step_s": r.step_s,
        "tokens_per_s": r.tokens_per_s,
        "time_per_output_token_s" if w.phase == "decode" else "time_to_first_token_s": r.step_s,
        "compute_bound_from_batch": report.step_crossover,
        "distinct_experts_per_moe_layer": r.distinct_experts,
        "weights_bytes_per_rank": r.weights_bytes,
        "kv_cache_bytes_per_rank": r.kv_cache_bytes,
        "fits": r.fits,
        "ridge_flops_per_byte": r.ridge,
        "tokens_per_s_by_batch": [_point(p) for p in report.curve],
        "conventions": CONVENTIONS,
    }
