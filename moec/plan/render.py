"""Renderers for plans: rich tables for people, JSON and Markdown for scripts. Nothing here computes a figure.

Tables fit 80 columns: the ranking keeps to seven short columns, and the detail is two columns of label and
value.
"""

from __future__ import annotations

import json
from typing import Any

from moec.analyze.render import exact, human
from moec.plan.accelerators import ACCELERATORS
from moec.plan.report import SCHEMA, LayoutPlan

SHOWN_CONVENTIONS = ("states", "activations", "a2a", "step_estimate")  # the rest are in JSON's "conventions"


def convention_line(p: LayoutPlan) -> str:
    return " · ".join(f"{key}: {p.conventions[key]}" for key in SHOWN_CONVENTIONS)


def layout_label(p: LayoutPlan) -> str:
    lay = p.layout
    return f"dp_shard {lay.dp_shard} · ep {lay.ep} · tp {lay.tp} · pp {lay.pp}"


def _bytes(n: float) -> str:
    return human(n, "B")


def detail_rows(p: LayoutPlan) -> list[tuple[str, str]]:
    """Label and value of every per-rank figure of the busiest stage (what a table or Markdown shows)."""
    s, acc = p.busiest, ACCELERATORS[p.gpu]
    mem, traffic, params = s.memory, s.traffic, s.params
    layers = f"{s.layers[0]}–{s.layers[-1]}" if s.layers else "none"
    return [
        ("layout", f"{layout_label(p)} (efsdp {p.efsdp})"),
        ("accelerators", f"{p.world} × {acc.name}"),
        ("seq × micro-batch", f"{p.seq} × {p.micro_batch}"),
        ("micro-batches/step, dtype", f"{p.micro_batches}, {p.dtype}"),
        ("busiest stage", f"{s.stage} of {p.layout.pp} (layers {layers})"),
        ("params/rank: experts", f"{exact(params['experts'])} (padded {exact(params['experts_padded'])})"),
        ("params/rank: other", f"{exact(params['other'])} (padded {exact(params['other_padded'])})"),
        ("parameter bytes", _bytes(mem.param_bytes)),
        ("gradient bytes", _bytes(mem.grad_bytes)),
        ("optimizer bytes", _bytes(mem.optimizer_bytes)),
        ("FSDP transient", _bytes(mem.fsdp_transient_bytes)),
        ("activations", _bytes(mem.activation_bytes)),
        (
            "training peak",
            f"{_bytes(mem.training_peak_bytes)} of {_bytes(p.hbm_bytes)}: {'fits' if p.fits else 'DOES NOT FIT'}",
        ),
        ("KV cache (inference)", _bytes(mem.kv_cache_bytes)),
        ("a2a B/token/MoE layer (fwd)", exact(p.a2a_bytes_per_token_per_moe_layer)),
        ("a2a per step", _bytes(traffic.a2a_bytes_per_step)),
        ("FSDP all-gather per step", _bytes(traffic.fsdp_all_gather_bytes_per_step)),
        ("FSDP reduce-scatter per step", _bytes(traffic.fsdp_reduce_scatter_bytes_per_step)),
        ("TP per step", _bytes(traffic.tp_bytes_per_step)),
        ("PP per step", _bytes(traffic.pp_bytes_per_step)),
        ("pipeline bubble", f"{p.pipeline_bubble:.3f}"),
        (
            "est. step (compute + comm)",
            f"{p.estimate.step_s:.3f} s ({p.estimate.compute_s:.3f} + {p.estimate.comm_s:.3f})",
        ),
        ("est. tokens/s per GPU", f"{p.estimate.tokens_per_s_per_gpu:,.0f}"),
    ]


RANK_COLUMNS = ("#", "dp·ep·tp·pp", "peak/rank", "fits", "comm/step", "bubble", "tok/s/GPU")


def rank_row(i: int, p: LayoutPlan) -> tuple[str, ...]:
    lay = p.layout
    return (
        str(i),
        f"{lay.dp_shard}·{lay.ep}·{lay.tp}·{lay.pp}",
        _bytes(p.busiest.memory.training_peak_bytes),
        "yes" if p.fits else "no",
        _bytes(p.busiest.traffic.total_bytes_per_step),
        f"{p.pipeline_bubble:.2f}",
        f"{p.estimate.tokens_per_s_per_gpu:,.0f}",
    )


# --- JSON / Markdown --------------------------------------------------------------------------


def to_json(plans: list[LayoutPlan], *, searched: bool) -> str:
    if not searched:
        return json.dumps(plans[0].to_dict(), indent=2)
    return json.dumps({"schema": SCHEMA, "ranked": [p.to_dict() for p in plans]}, indent=2)


def to_markdown(plans: list[LayoutPlan], *, searched: bool) -> str:
    best = plans[0]
    lines = [f"<!-- {SCHEMA} -->", "", f"_{convention_line(best)}_", ""]
    if searched:
        lines += [f"### {best.name}: layouts ranked", "", _md_row(RANK_COLUMNS), "|" + "---:|" * len(RANK_COLUMNS)]
        lines += [_md_row(rank_row(i, p)) for i, p in enumerate(plans, 1)]
        lines.append("")
    lines += [f"### {best.name}: {layout_label(best)}", "", "| per rank | value |", "|---|---:|"]
    lines += [_md_row(row) for row in detail_rows(best)]
    return "\n".join(lines) + "\n"


def _md_row(cells: tuple[str, ...]) -> str:
    return "| " + " | ".join(cells) + " |"


# --- rich tables ------------------------------------------------------------------------------


def print_tables(plans: list[LayoutPlan], *, searched: bool, console: Any = None) -> None:
    from rich.console import Console
    from rich.table import Table

    con = console or Console()
    best = plans[0]
    con.print(f"[dim]{convention_line(best)}[/dim]")
    if searched:
        ranked = Table(title=f"{best.name}: layouts on {best.world} × {best.gpu}, ranked")
        for col in RANK_COLUMNS:
            ranked.add_column(col, justify="left" if col == "dp·ep·tp·pp" else "right", no_wrap=True)
        for i, p in enumerate(plans, 1):
            ranked.add_row(*rank_row(i, p))
        con.print(ranked)
        if not best.fits:
            con.print("[bold red]no layout fits in the accelerator's memory[/bold red]")
    detail = Table(title=f"{best.name}: per rank", show_header=False)
    detail.add_column("metric", no_wrap=True)
    detail.add_column("value", justify="right")
    for label, value in detail_rows(best):
        detail.add_row(label, value)
    con.print(detail)
