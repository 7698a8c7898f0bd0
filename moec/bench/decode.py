"""`moec bench --decode`: decode tokens/s at several batch sizes, beside moec roofline's prediction for the
device it ran on (docs/decode.md, "Speed against the roofline").

For each batch B: a cache of ``context + warmup + steps`` positions, a prefill of ``context`` random tokens
and ``warmup`` decode steps (untimed), then ``steps`` decode steps, each timed alone after a device
synchronise. Measured tokens/s = B / the median step (the median: one step slowed by another process on a
shared machine does not move it).

The prediction is :func:`moec.roofline.model.roofline` of the same plan, batch, dtype and context (the
middle of the timed steps), on an accelerator whose peak FLOP/s and bandwidth were measured in the same run:
a square matmul in the run's dtype and a large copy (:mod:`moec.bench.device`). With ``gpu`` it is that
entry of moec's accelerator table instead (the vendor's figures).
"""

from __future__ import annotations

import os
import statistics
import textwrap
from dataclasses import dataclass
from typing import Any

import torch

from moec.bench.device import copy_gbps, dense_matmul_tflops
from moec.bench.moe_bench import DTYPES, _loadavg, machine_info
from moec.errors import CommandError
from moec.plan.accelerators import Accelerator

YARDSTICK = {"cpu": (1024, 256 << 20), "cuda": (8192, 1 << 30)}  # matmul n, copy bytes


@dataclass(frozen=True)
class DecodeOptions:
    batches: tuple[int, ...] = (1, 8, 64)
    context: int = 128  # prompt tokens before the timed steps
    steps: int = 16  # timed decode steps per batch size
    warmup: int = 2  # untimed decode steps after the prefill
    dtype: str = "fp32"
    device: str = "auto"
    threads: int | None = None  # CPU: torch.set_num_threads; default every core
    seed: int = 0
    gpu: str | None = None  # an entry of moec's accelerator table instead of the measured yardsticks
    gpu_file: str | None = None


def measured_accelerator(device: torch.device, dtype: str) -> Accelerator:
    """This device as the roofline sees one: a matmul's FLOP/s in ``dtype`` and a copy's bytes/s, measured now."""
    from moec.nn.build import available_bytes

    n, copy_bytes = YARDSTICK["cuda" if device.type == "cuda" else "cpu"]
    flops = dense_matmul_tflops(device, DTYPES[dtype], n=n, repeats=5) * 1e12
    bandwidth = copy_gbps(device, n_bytes=copy_bytes, repeats=5) * 1e9
    return Accelerator(
        name=f"{device.type} (measured)",
        hbm_bytes=available_bytes(device) or 0,
        hbm_bytes_per_s=round(bandwidth),
        peak_flops={dtype: round(flops)},
        link_bytes_per_s=0,
        nic_bytes_per_s=0,
        gpus_per_node=1,
        source=f"measured in this run: {n}×{n} {dtype} matmul, {copy_bytes >> 20} MiB copy (read + write)",
    )


def time_decode(model: Any, batch: int, opts: DecodeOptions, device: torch.device) -> tuple[list[float], float]:
    """(seconds of each timed step, mean distinct experts per MoE layer per timed step): the generation loop's
    greedy decode of ``warmup + steps`` tokens after a random prompt, its first ``warmup`` steps left out."""
    from moec.generate import generate

    g = torch.Generator(device="cpu").manual_seed(opts.seed)
    prompt = torch.randint(model.plan.vocab_size, (batch, opts.context), generator=g).to(device)
    gen = generate(model, prompt, opts.warmup + opts.steps + 1)  # the first new token comes from the prefill
    distinct = [n for per_step in gen.experts.values() for n in per_step[opts.warmup :]]
    return gen.step_s[opts.warmup :], (sum(distinct) / len(distinct) if distinct else 0.0)


def run_decode_bench(source: str, opts: DecodeOptions, sets: tuple[str, ...] = ()) -> dict[str, Any]:
    """Measured and predicted decode tokens/s for each batch size, as plain data."""
    from moec.generate import load_source
    from moec.generate.source import decode_errors, require_cache_memory
    from moec.nn.build import resolve_device
    from moec.plan.accelerators import pick_accelerator
    from moec.roofline.model import Workload, roofline

    named = pick_accelerator(opts.gpu, opts.gpu_file) if opts.gpu is not None else None  # before any loading
    device = resolve_device(opts.device)
    if device.type == "cpu":
        torch.set_num_threads(opts.threads or os.cpu_count() or 1)
    loaded = load_source(source, device=device, dtype=DTYPES[opts.dtype], seed=opts.seed, sets=sets)
    model, plan = loaded.model, loaded.model.plan
    positions = opts.context + opts.warmup + opts.steps
    if positions > plan.max_seq_len:
        raise CommandError(
            f"--context {opts.context} + --warmup {opts.warmup} + --steps {opts.steps} need {positions} positions; "
            f"{plan.name} has max_seq_len {plan.max_seq_len}: lower --context or --steps"
        )
    hint = "; lower --batch-sizes or --context"  # the largest batch's cache, before any timing
    kv_dtype = DTYPES[opts.dtype]
    require_cache_memory(plan, kv_dtype, batch=max(opts.batches), positions=positions, device=device, hint=hint)
    if named is not None:
        acc, gpu = named, opts.gpu
    else:
        acc, gpu = measured_accelerator(device, opts.dtype), "measured"
    load_before = _loadavg()
    rows = []
    for batch in opts.batches:
        with decode_errors(loaded):
            times, distinct = time_decode(model, batch, opts, device)
        step = statistics.median(times)
        seq = opts.context + opts.warmup + opts.steps // 2
        w = Workload(phase="decode", batch=batch, seq=seq, dtype=opts.dtype, kv_dtype=opts.dtype)
        r = roofline(plan, acc, gpu, w)
        compute_s = sum(c.compute_s for c in r.costs)
        memory_s = sum(c.memory_s for c in r.costs)
        rows.append({
            "batch": batch,
            "step_s_median": step,
            "step_s_min": min(times),
            "measured_tokens_per_s": batch / step,
            "predicted_tokens_per_s": r.tokens_per_s,
            "ratio": batch / step / r.tokens_per_s,
            "predicted_step_s": r.step_s,
            "predicted_bound": "compute" if compute_s >= memory_s else "memory",
            "predicted_bytes": sum(c.bytes for c in r.costs),
            "predicted_flops": sum(c.flops for c in r.costs),
            "distinct_experts_measured": distinct,
            "distinct_experts_predicted": r.distinct_experts,
        })  # fmt: skip
    machine = machine_info(device)
    machine["loadavg_1min_before_after"] = [load_before, _loadavg()]
    return {
        "schema": "moec.bench.decode/1",
        "model": plan.name,
        "source": loaded.kind,
        "notes": loaded.notes,
        "config": {k: getattr(opts, k) for k in ("context", "steps", "warmup", "dtype", "seed")},
        "accelerator": {
            "name": acc.name,
            "peak_flops": acc.peak_flops.get(opts.dtype),
            "hbm_bytes_per_s": acc.hbm_bytes_per_s,
            "source": acc.source,
        },
        "rows": rows,
        "machine": machine,
    }


def render_decode(report: dict[str, Any]) -> str:
    """The table (80 columns): batch, measured and predicted tokens/s, their ratio, the predicted bound, and the
    distinct experts each MoE layer read per step, measured and expected."""
    acc, cfg, m = report["accelerator"], report["config"], report["machine"]
    where = m.get("cpu") if m["device"] == "cpu" else m["device"]
    head = [
        f"decode: {report['model']} ({report['source']}), {cfg['dtype']}, context {cfg['context']}, "
        f"{cfg['steps']} timed steps per batch",
        f"on {where}, {m['torch_threads']} threads, load {m['loadavg_1min_before_after']}",
        f"roofline of {acc['name']}: {acc['peak_flops'] / 1e9:,.1f} GFLOP/s, {acc['hbm_bytes_per_s'] / 1e9:,.1f} GB/s "
        f"({acc['source']})",
        *(f"note: {n}" for n in report["notes"]),
    ]
    lines = [w for text in head for w in textwrap.wrap(text, 80, subsequent_indent="  ", break_on_hyphens=False)]
    lines += ["", "batch  measured tok/s  roofline tok/s  ratio  bound    experts read: meas | pred"]
    for r in report["rows"]:
        pred = r["distinct_experts_predicted"]
        experts = f"{r['distinct_experts_measured']:.1f} | {pred:.1f}" if pred is not None else "–"
        lines.append(
            f"{r['batch']:>5}  {r['measured_tokens_per_s']:>14,.1f}  {r['predicted_tokens_per_s']:>14,.1f}  "
            f"{r['ratio']:>5.3f}  {r['predicted_bound']:<7}  {experts:>16}"
        )
    return "\n".join(lines)
