"""`moec sweep`: every combination of the grid loaded as the base spec with --set assignments, counted by
the analyzer, timed by the roofline, filtered, and marked on the Pareto frontier. Pure Python, in one
process, no torch (docs/roofline.md, "Sweeps")."""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

from moec.errors import SpecError
from moec.plan.accelerators import Accelerator
from moec.roofline.model import Workload, group_layers, roofline
from moec.spec.plan import DenseFFNPlan, MoEPlan, ResolvedModel
from moec.sweep.counts import Headline, headline
from moec.sweep.grid import Axis, Budget, Keep, Objective, combinations
from moec.sweep.load import BaseSpec
from moec.sweep.pareto import pareto_front


@dataclass(frozen=True)
class Settings:
    gpu: str
    accelerator: Accelerator
    batch: int = 1  # decode sequences for decode_tokens_per_s
    seq: int = 4096
    dtype: str = "bf16"
    kv_dtype: str = "bf16"


@dataclass
class Row:
    values: dict[str, str]  # axis path → the value as written
    metrics: dict[str, Any]
    d_ff: int | None = None  # the width the budget solved for (spec value), None without a budget
    pareto: bool = False


@dataclass
class SweepResult:
    base: str
    axes: list[Axis]
    settings: Settings
    objectives: list[Objective]
    keeps: list[Keep]
    budget: Budget | None
    budget_target: Any = None
    rows: list[Row] = field(default_factory=list)  # kept rows, best first by the first objective
    combinations: int = 0
    skipped: Counter[str] = field(default_factory=Counter)  # reason → combinations skipped for it
    examples: dict[str, str] = field(default_factory=dict)  # reason → the first combination it hit
    duplicates: int = 0  # combinations that resolved to a model already counted
    filtered: Counter[str] = field(default_factory=Counter)  # --keep text → rows it removed


class Skip(Exception):
    """A combination that cannot be counted, and why."""


def problem_text(e: SpecError) -> str:
    first = str(e.problems[0])
    return first + (f" (and {len(e.problems) - 1} more)" if len(e.problems) > 1 else "")


class Evaluator:
    """Loads combinations of one base spec, read once, and counts them."""

    def __init__(self, source: str, base_sets: Sequence[str], settings: Settings) -> None:
        self.base = BaseSpec(source, base_sets)
        self.settings = settings

    def model(self, sets: Sequence[str]) -> ResolvedModel:
        return self.base.model(sets)

    def analysis(self, model: ResolvedModel) -> Headline:
        s = self.settings
        return headline(model, seq=s.seq, dtype=s.dtype, kv_dtype=s.kv_dtype)

    def metrics(self, model: ResolvedModel, h: Headline) -> dict[str, Any]:
        s = self.settings
        step = roofline(model, s.accelerator, s.gpu, Workload("decode", s.batch, s.seq, s.dtype, s.kv_dtype))
        return {**vars(h), "decode_tokens_per_s": step.tokens_per_s}


def budget_value(metric: str, h: Headline) -> Fraction:
    return Fraction(getattr(h, metric))


def _width_field(model: ResolvedModel) -> tuple[str, int, int]:
    """The spec field the budget solves, the granularity that divides it, and the width now (per expert)."""
    moe = [lp.ffn for lp in model.layers if isinstance(lp.ffn, MoEPlan)]
    if moe:
        return "moe.d_ff", moe[0].granularity, moe[0].d_ff
    dense = next(lp.ffn for lp in model.layers if isinstance(lp.ffn, DenseFFNPlan))  # a layer may have none
    return "ffn.d_ff", 1, dense.d_ff


def solve_width(
    ev: Evaluator, sets: tuple[str, ...], model: ResolvedModel, metric: str, target: Fraction
) -> tuple[ResolvedModel, Headline, int]:
    """The width x at which ``metric`` equals ``target`` exactly. The metric is affine in x (every count is
    linear in the FFN width, and the shared experts' width follows it unless set), so two counts give the
    line, and a third at the solution confirms it. Raises Skip when no whole width fits."""
    path, g, x0 = _width_field(model)
    a0 = ev.analysis(model)
    m0 = budget_value(metric, a0)
    m1 = budget_value(metric, ev.analysis(ev.model((*sets, f"{path}={g * (x0 + 1)}"))))
    if m1 == m0:
        raise Skip(f"{metric} does not change with {path}")
    x = x0 + (target - m0) / (m1 - m0)
    if x.denominator != 1 or x < 1:
        raise Skip(
            f"no whole {path} gives {metric} = {float(target):,.0f} exactly ({path} = {float(g * x):,.2f} would)"
        )
    model = ev.model((*sets, f"{path}={g * int(x)}"))
    a = ev.analysis(model)
    if budget_value(metric, a) != target:  # not affine after all: refuse rather than approximate
        raise Skip(f"{metric} is not linear in {path} here")
    return model, a, g * int(x)


def _dedupe_key(model: ResolvedModel) -> tuple:
    """Equal for equal models whatever their names: the model-wide fields, the distinct layer plans and
    which one each layer uses (hashing each distinct plan once rather than every layer's)."""
    g = group_layers(model)
    rest = dataclasses.replace(model, layers=(), name="", spec_hash="", source_file="", description="")
    return rest, tuple((lp.attention, lp.ffn, lp.mixer) for lp in g.plans), g.of_layer


def _evaluate(
    ev: Evaluator, sets: tuple[str, ...], budget: Budget | None, target: Fraction | None
) -> tuple[ResolvedModel, Headline, int | None]:
    model = ev.model(sets)
    if budget is None:
        return model, ev.analysis(model), None
    assert target is not None
    return solve_width(ev, sets, model, budget.metric, target)


def sweep(
    source: str,
    base_sets: Sequence[str],
    axes: Sequence[Axis],
    settings: Settings,
    *,
    keeps: Sequence[Keep] = (),
    objectives: Sequence[Objective] = (),
    budget: Budget | None = None,
) -> SweepResult:
    ev = Evaluator(source, base_sets, settings)
    target = None
    if budget is not None:
        target = (
            Fraction(budget.target)
            if budget.target is not None
            else budget_value(budget.metric, ev.analysis(ev.model(())))
        )
    result = SweepResult(source, list(axes), settings, list(objectives), list(keeps), budget, target)
    seen: set[Any] = set()
    for sets in combinations(axes):
        result.combinations += 1
        try:
            model, a, width = _evaluate(ev, sets, budget, target)
        except (SpecError, Skip) as e:
            reason = problem_text(e) if isinstance(e, SpecError) else str(e)
            result.skipped[reason] += 1
            result.examples.setdefault(reason, " ".join(sets))
            continue
        key = _dedupe_key(model)
        if key in seen:
            result.duplicates += 1
            continue
        seen.add(key)
        row = Row({ax.path: s.split("=", 1)[1] for ax, s in zip(axes, sets, strict=True)}, ev.metrics(model, a), width)
        failed = next((k for k in keeps if not k.holds(row.metrics)), None)
        if failed is not None:
            result.filtered[failed.text] += 1
            continue
        result.rows.append(row)
    if objectives:
        for i in pareto_front([[o.key(r.metrics) for o in objectives] for r in result.rows]):
            result.rows[i].pareto = True
        result.rows.sort(key=lambda r: [o.key(r.metrics) for o in objectives])
    return result
