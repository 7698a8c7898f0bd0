"""The smoke-run result as plain data, and its rendering (rich tables and load histograms)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from moec.smoke.dist_report import DistributedReport, print_distributed
from moec.smoke.metrics import Dynamics, StepRecord, load_entropy_norm

SCHEMA = "moec.smoke/1"
BARS = " ▁▂▃▄▅▆▇█"
STARVED = "·"


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
    params_trainable: int | None = None
    params_frozen: int | None = None  # the base FFN under LoRA experts, or what the spec lists as frozen
    threads: int | None = None  # torch CPU threads (on a CPU run)
    loss_window: int = 1  # loss_first / loss_last are means over this many first / last steps
    aux_coefficients: dict[str, float] = field(default_factory=dict)  # largest per MoE layer; 0 = that part off
    dynamics: Dynamics | None = None  # per-layer averages of the per-step record over the last window
    step_records: list[StepRecord] = field(default_factory=list)  # every step (to --log / --plot, not JSON)
    # each sublayer kind's share of forward+backward time (attention, other mixers, ffn, moe), a few passes
    time_shares: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"schema": SCHEMA}
        d.update(dataclasses.asdict(dataclasses.replace(self, step_records=[])))
        d.pop("step_records")
        return d


def load_lines(values: list[int], per_line: int) -> list[tuple[int, str]]:
    """Per-expert load as one bar each (█ the busiest expert, · an expert that got nothing), wrapped every
    ``per_line`` experts: (first expert of the line, bars)."""
    top = max(values) if values else 0
    chars = [STARVED if v == 0 else BARS[max(1, round(8 * v / top))] for v in values]
    return [(i, "".join(chars[i : i + per_line])) for i in range(0, len(chars), per_line)] or [(0, "")]


def bars_per_line(n_experts: int, width: int, prefix: int) -> int:
    """The largest power of two of experts that fits on a line after ``prefix`` columns (8 at least), so
    that every line starts at a round expert number."""
    room, n = max(8, width - prefix), 8
    while n * 2 <= room and n < n_experts:
        n *= 2
    return n


def print_report(r: SmokeResult, console: Any = None) -> None:
    from rich.console import Console

    con = console or Console()
    status = "[green]PASS[/green]" if r.ok else "[red]FAIL[/red]"
    con.print(f"moec smoke-run {r.spec} → {status}  ({r.device_name}, backend {r.backend}, {r.dtype}, scale {r.scale})")
    if r.changes:
        con.print("[dim]scaled to fit: " + "; ".join(r.changes) + "[/dim]")
    con.print(training_table(r))
    if r.time_shares:
        con.print(time_shares_text(r.time_shares))
    if r.distributed is not None:
        print_distributed(r.distributed, r.steps, con)
    if r.layers:
        con.print(layer_table(r))
        print_loads(r, con)
    else:
        con.print("no MoE layers: nothing to balance")
    print_legend(con)
    print_warnings(r, con)


def training_table(r: SmokeResult) -> Any:
    from rich.table import Table

    t = Table(show_header=False, title="training")
    t.add_column("metric")
    t.add_column("value", justify="right")
    fell = "[green]fell[/green]" if r.loss_fell else "[red]did not fall[/red]"
    t.add_row("params total / active", f"{r.params_total:,} / {r.params_active:,}")
    if r.params_trainable is not None and r.params_frozen is not None:
        t.add_row("params trainable / frozen", f"{r.params_trainable:,} / {r.params_frozen:,}")
    t.add_row("steps × batch × seq", f"{r.steps} × {r.batch} × {r.seq}")
    t.add_row(f"loss first → last ({_window(r.loss_window)})", f"{r.loss_first:.3f} → {r.loss_last:.3f} ({fell})")
    t.add_row("loss noise / floor", f"{r.loss_noise:.2f} / {r.loss_floor:.2f}")
    t.add_row("aux loss first → last", aux_text(r))
    t.add_row(
        "tokens/s", f"{r.tokens_per_s:,.0f}" + (f" ({r.threads} thread{'s' * (r.threads > 1)})" if r.threads else "")
    )
    t.add_row("achieved TFLOP/s", f"{r.achieved_tflops:.3f}")
    t.add_row("training FLOPs/token", f"{r.flops_per_token:,.0f} (analyzer)")
    t.add_row("MFU", f"{100 * r.mfu:.1f}% of {r.peak_tflops:.3g} TFLOP/s ({r.peak_source})")
    t.add_row("peak memory", "-" if r.peak_memory_bytes is None else f"{r.peak_memory_bytes / 2**20:,.0f} MiB")
    if r.memory_estimate_bytes is not None:
        t.add_row("memory estimate (checked first)", f"{r.memory_estimate_bytes / 2**20:,.0f} MiB")
    t.add_row("dropped routing slots", dropped_text(r.dropped_tokens, _all_slots(r)))
    if r.numerics:
        n = r.numerics
        mark = "[green]ok[/green]" if n.ok else "[red]FAILED[/red]"
        t.add_row(
            f"numerics {n.backend} vs {n.against} (layer {n.layer})",
            f"out {n.max_abs_diff_output:.2e}, grad {n.max_abs_diff_grad:.2e} (tol {n.tolerance:.0e}) {mark}",
        )
    return t


def time_shares_text(shares: dict[str, float]) -> str:
    """One line: each sublayer kind's share of the forward+backward time, and the rest (embedding, norms,
    head, loss)."""
    parts = [f"{kind} {100 * share:.1f}%" for kind, share in shares.items()]
    rest = max(0.0, 1 - sum(shares.values()))
    return "time in forward+backward: " + " · ".join([*parts, f"rest {100 * rest:.1f}%"])


def aux_text(r: SmokeResult) -> str:
    """ "off" when no layer has a load-balance or z-loss coefficient (the loss is then 0 by construction)."""
    c = r.aux_coefficients
    if c and not c.get("load_balance_coeff") and not c.get("z_loss_coeff"):
        free = c.get("bias_update_rate")
        return "off" + (f" (aux-free bias, rate {free:g})" if free else " (coefficients 0)")
    return f"{r.aux_first:.4g} → {r.aux_last:.4g}"


def dropped_text(dropped: int, slots: int) -> str:
    if not slots:
        return f"{dropped:,}"
    return f"{100 * dropped / slots:.1f}% ({dropped:,} of {slots:,})"


def _all_slots(r: SmokeResult) -> int:
    return sum(sum(l.tokens_per_expert) + l.dropped for l in r.layers)


def _window(k: int) -> str:
    return "one step each" if k == 1 else f"means of {k} steps"


def layer_table(r: SmokeResult) -> Any:
    from rich.table import Table

    d = r.dynamics
    last = f"the last {d.window} step{'s' if d.window > 1 else ''}" if d else "the run"
    t = Table(title=f"routing per MoE layer (H/ln E, max/mean, router z: {last}; starved, dropped: the run)")
    show_drift = d is not None and any(ld.bias_drift is not None for ld in d.layers)
    for name in ("layer", "H/ln E", "max/mean", "starved", "dropped", "router z", *(("drift",) if show_drift else ())):
        t.add_column(name, justify="right", no_wrap=True)
    by_layer = {ld.layer: ld for ld in d.layers} if d else {}
    for l in r.layers:
        ld = by_layer.get(l.layer)
        ratio = f"{ld.max_mean if ld else l.max_mean_ratio:.2f}"
        if (ld.max_mean if ld else l.max_mean_ratio) > r.imbalance_threshold:
            ratio = f"[red]{ratio}[/red]"
        entropy = f"{ld.entropy_norm if ld else load_entropy_norm(l.tokens_per_expert):.2f}"
        if ld is not None and ld.collapsed:
            entropy = f"[red]{entropy}[/red]"
        slots = sum(l.tokens_per_expert) + l.dropped
        row = [str(l.layer), entropy, ratio, f"{len(l.starved)}/{len(l.tokens_per_expert)}"]
        row += [dropped_text(l.dropped, slots) if l.dropped else "0", "-" if ld is None else f"{ld.router_z:.3g}"]
        if show_drift:
            row.append("-" if ld is None or ld.bias_drift is None else f"{ld.bias_drift:.3g}")
        t.add_row(*row)
    return t


def print_loads(r: SmokeResult, con: Any) -> None:
    """The whole run's load per expert, one bar per expert, wrapped at a power of two that fits the width."""
    layer_w = max(len(f"L{l.layer}") for l in r.layers) + 1
    expert_w = max(len(f"e{len(l.tokens_per_expert)}") for l in r.layers) + 1
    con.print(f"expert load over the run ({STARVED} no slot, {BARS[-1]} the busiest expert of the layer)")
    for l in r.layers:
        per_line = bars_per_line(len(l.tokens_per_expert), con.width, layer_w + expert_w)
        for n, (first, bars) in enumerate(load_lines(l.tokens_per_expert, per_line)):
            name = f"L{l.layer}" if n == 0 else ""
            con.print(f"{name:<{layer_w}}{f'e{first}':<{expert_w}}{bars}", highlight=False, soft_wrap=True)


LEGEND = (
    "loss first/last: mean cross-entropy of the first/last steps; noise: ln V, the loss of a model that "
    "learned nothing; floor: the entropy rate of the synthetic data, the best loss possible. H/ln E: entropy "
    "of the expert load over its maximum (1 even, 0 all on one expert); max/mean: busiest expert's load over "
    "the mean; starved: experts with no slot; dropped: slots over an expert's capacity, share of all slots "
    "(count); router z: mean logsumexp(logits)² before its coefficient; drift: the largest move of a "
    "selection bias (aux-free balancing). L = layer, e = first expert of the line."
)


def print_legend(con: Any) -> None:
    con.print(f"[dim]{LEGEND}[/dim]")


def print_warnings(r: SmokeResult, con: Any) -> None:
    d = r.dynamics
    if d is not None and d.collapsed:
        layers = ", ".join(map(str, d.collapsed))
        con.print(
            f"[yellow]warning: routing collapsed in layer {layers}: H/ln E below {d.collapse_entropy:g} over the "
            f"last {d.window} steps (docs/smoke-run.md)[/yellow]"
        )
    elif r.imbalanced:
        con.print(
            f"[yellow]routing is imbalanced: some expert's load is above {r.imbalance_threshold:g}× the mean, "
            "or some expert got no slot[/yellow]"
        )
    for f in r.failures:
        con.print(f"[red]failure:[/red] {f}")
