"""The smoke-run result as plain data, and its rendering (rich tables and load histograms)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from moec.smoke.dist_report import DistributedReport, print_distributed

SCHEMA = "moec.smoke/1"
BARS = " ▁▂▃▄▅▆▇█"


@dataclass
class LayerLoad:
    layer: int
    tokens_per_expert: list[int]
    max_mean_ratio: float
    starved: list[int]  # experts that received no token during the run
    dropped: int  # routing slots dropped by the capacity factor


@dataclass
class Numerics:
    backend: str
    against: str
    layer: int
    max_abs_diff_output: float
    max_abs_diff_grad: float
    tolerance: float
    ok: bool


@dataclass
class SmokeResult:
    spec: str
    model: str
    device: str
    device_name: str
    backend: str
    dtype: str
    scale: str
    changes: list[str]
    params_total: int
    params_active: int
    steps: int
    batch: int
    seq: int
    losses: list[float]
    loss_first: float
    loss_last: float
    loss_fell: bool
    loss_floor: float  # entropy rate of the synthetic data (best achievable)
    loss_noise: float  # ln V: the loss of a model that learned nothing
    aux_first: float
    aux_last: float
    layers: list[LayerLoad]
    imbalanced: bool
    imbalance_threshold: float
    dropped_tokens: int
    tokens_per_s: float
    achieved_tflops: float
    peak_tflops: float
    peak_source: str
    mfu: float
    peak_memory_bytes: int | None
    numerics: Numerics | None
    flops_per_token: float  # analyzer training FLOPs per token of the scaled model (full attention)
    ok: bool
    failures: list[str] = field(default_factory=list)
    memory_estimate_bytes: int | None = None  # the upper estimate checked before the run started
    distributed: DistributedReport | None = None  # several processes: layout, per-rank figures, step-0 check

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"schema": SCHEMA}
        d.update(dataclasses.asdict(self))
        return d


def sparkline(values: list[int], width: int = 64) -> list[str]:
    """Per-expert load as one bar character each, wrapped at ``width`` experts per line."""
    top = max(values) if values else 0
    chars = [BARS[0] if top == 0 else BARS[max(1 if v else 0, round(8 * v / top))] for v in values]
    return ["".join(chars[i : i + width]) for i in range(0, len(chars), width)] or [""]


def print_report(r: SmokeResult, console: Any = None) -> None:
    from rich.console import Console
    from rich.table import Table

    con = console or Console()
    status = "[green]PASS[/green]" if r.ok else "[red]FAIL[/red]"
    con.print(f"moec smoke-run {r.spec} → {status}  ({r.device_name}, backend {r.backend}, {r.dtype}, scale {r.scale})")
    if r.changes:
        con.print("[dim]scaled to fit: " + "; ".join(r.changes) + "[/dim]")
    t = Table(show_header=False, title="training")
    t.add_column("metric")
    t.add_column("value", justify="right")
    fell = "[green]fell[/green]" if r.loss_fell else "[red]did not fall[/red]"
    t.add_row("params (total / active)", f"{r.params_total:,} / {r.params_active:,}")
    t.add_row("steps × batch × seq", f"{r.steps} × {r.batch} × {r.seq}")
    t.add_row(
        "loss first → last",
        f"{r.loss_first:.3f} → {r.loss_last:.3f} ({fell}; noise {r.loss_noise:.2f}, floor ≈ {r.loss_floor:.2f})",
    )
    t.add_row("aux loss first → last", f"{r.aux_first:.4g} → {r.aux_last:.4g}")
    t.add_row("tokens/s", f"{r.tokens_per_s:,.0f}")
    t.add_row("achieved TFLOP/s", f"{r.achieved_tflops:.3f}  (analyzer: {r.flops_per_token:.4g} training FLOPs/token)")
    t.add_row("MFU", f"{100 * r.mfu:.1f}% of {r.peak_tflops:.3g} TFLOP/s ({r.peak_source})")
    t.add_row("peak memory", "-" if r.peak_memory_bytes is None else f"{r.peak_memory_bytes / 2**20:,.0f} MiB")
    if r.memory_estimate_bytes is not None:
        t.add_row("memory estimate (checked first)", f"{r.memory_estimate_bytes / 2**20:,.0f} MiB")
    t.add_row("dropped routing slots", f"{r.dropped_tokens:,}")
    if r.numerics:
        n = r.numerics
        mark = "[green]ok[/green]" if n.ok else "[red]FAILED[/red]"
        t.add_row(
            f"numerics {n.backend} vs {n.against} (layer {n.layer})",
            f"out {n.max_abs_diff_output:.2e}, grad {n.max_abs_diff_grad:.2e} (tol {n.tolerance:.0e}) {mark}",
        )
    con.print(t)
    if r.distributed is not None:
        print_distributed(r.distributed, r.steps, con)
    if not r.layers:
        con.print("no MoE layers: nothing to balance")
        for f in r.failures:
            con.print(f"[red]failure:[/red] {f}")
        return
    lt = Table(
        title=f"expert load per MoE layer (one bar per expert; imbalanced above max/mean {r.imbalance_threshold:g})"
    )
    lt.add_column("layer", justify="right")
    lt.add_column("load")
    lt.add_column("max/mean", justify="right")
    lt.add_column("starved", justify="right")
    for l in r.layers:
        ratio = f"{l.max_mean_ratio:.2f}"
        if l.max_mean_ratio > r.imbalance_threshold:
            ratio = f"[red]{ratio}[/red]"
        starved = ",".join(map(str, l.starved[:8])) + ("…" if len(l.starved) > 8 else "") if l.starved else "-"
        lt.add_row(str(l.layer), "\n".join(sparkline(l.tokens_per_expert)), ratio, starved)
    con.print(lt)
    if r.imbalanced:
        con.print("[yellow]routing is imbalanced: some experts are overloaded or starved[/yellow]")
    for f in r.failures:
        con.print(f"[red]failure:[/red] {f}")
