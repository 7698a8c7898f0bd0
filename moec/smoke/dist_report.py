"""The distributed part of a smoke-run's result, as plain data, and its rendering."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class RankReport:
    rank: int
    tokens_per_s: float  # this rank's own tokens (its data-parallel share)
    timed_tokens: int  # the tokens of the timed steps (all but the first two)
    timed_s: float
    params_experts: int  # local numel (DTensor.to_local) of the routed-expert tensors
    params_other: int
    planned_params_experts: int | None  # moec.plan.rank_params (FSDP layouts; None without FSDP)
    planned_params_other: int | None
    peak_memory_bytes: int | None  # CUDA: max allocated; CPU: growth of the peak resident set from the load on
    predicted_peak_bytes: int  # the planner's training peak: states, FSDP transient, activations
    a2a_sent_bytes: int  # forward, whole run, counted by the dispatchers on their split sizes
    a2a_sent_bytes_on_routing: int  # forward, whole run, the formula on the routing counts of the EP group
    a2a_count_bytes: int  # the per-expert count exchange, forward, whole run


@dataclass
class Step0Check:
    """Step-0 loss (cross-entropy + aux, as backpropagated) of the parallel model against the unsharded model on
    rank 0, fed the same tokens split the same way (capacity and batch-level balance count each rank's tokens)."""

    loss: float
    single_process: float
    rel_diff: float
    tolerance: float
    ok: bool


@dataclass
class DistributedReport:
    world_size: int
    backend: str  # gloo or nccl
    dp_shard: int
    ep: int
    tp: int
    efsdp: int
    fsdp: bool
    tokens_per_s_total: float
    step0: Step0Check
    planned_a2a_bytes_per_step: int  # per rank, forward + backward, uniform routing (docs/scaling.md §5)
    memory_measure: str  # what peak_memory_bytes measures
    ranks: list[RankReport] = field(default_factory=list)

    @property
    def layout(self) -> str:
        fsdp = "" if self.fsdp else ", no FSDP"
        return f"dp_shard {self.dp_shard} × tp {self.tp}; experts: efsdp {self.efsdp} × ep {self.ep}{fsdp}"


def per_step(total_forward: int, steps: int) -> float:
    """A forward byte count of the whole run → bytes per step, forward and backward (the backward's all-to-all
    is the forward's, reversed)."""
    return 2 * total_forward / steps if steps else 0.0


def _mib(n: int | None) -> str:
    return "-" if n is None else f"{n / 2**20:,.1f}"


def _planned(r: RankReport) -> str:
    if r.planned_params_experts is None or r.planned_params_other is None:
        return "-"
    planned = r.planned_params_experts + r.planned_params_other
    return "equal" if planned == r.params_experts + r.params_other else f"{planned:,}"


def print_distributed(d: DistributedReport, steps: int, con: Any) -> None:
    from moec.analyze.render import natural_width

    s = d.step0
    mark = "[green]ok[/green]" if s.ok else "[red]FAILED[/red]"
    con.print(f"{d.world_size} processes ({d.backend}): {d.layout}; {d.tokens_per_s_total:,.0f} tokens/s in total")
    con.print(
        f"step-0 loss {s.loss:.6f}, one process {s.single_process:.6f}: relative difference {s.rel_diff:.1e} "
        f"(tol {s.tolerance:.0e}) {mark}"
    )
    title = (
        f"per rank: parameters held (moec.plan.rank_params), all-to-all bytes sent per step, forward and "
        f"backward (planner, uniform routing: {d.planned_a2a_bytes_per_step:,}), peak memory ({d.memory_measure})"
    )
    headers = ("rank", "tokens/s", "params", "planned", "a2a counted", "a2a routing", "peak MiB", "planned MiB")
    rows = [
        (
            str(r.rank),
            f"{r.tokens_per_s:,.0f}",
            f"{r.params_experts + r.params_other:,}",
            _planned(r),
            f"{per_step(r.a2a_sent_bytes, steps):,.0f}",
            f"{per_step(r.a2a_sent_bytes_on_routing, steps):,.0f}",
            _mib(r.peak_memory_bytes),
            _mib(r.predicted_peak_bytes),
        )
        for r in d.ranks
    ]
    whole = _rank_table(title, headers, rows, range(len(headers)))
    if natural_width(whole) <= con.width:
        con.print(whole)
        return
    # too wide for the console: parameters and memory, then traffic, each keyed by rank
    con.print(_rank_table(title, headers, rows, (0, 1, 2, 3, 6, 7)))
    con.print(_rank_table("", headers, rows, (0, 4, 5)))


def _rank_table(title: str, headers: tuple[str, ...], rows: list[tuple[str, ...]], cols: Any) -> Any:
    from rich.table import Table

    t = Table(title=title or None)
    for i in cols:
        t.add_column(headers[i], justify="right", no_wrap=True)
    for row in rows:
        t.add_row(*(row[i] for i in cols))
    return t
