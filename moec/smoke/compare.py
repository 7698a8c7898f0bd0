"""`moec smoke-run SPEC --compare A --compare B ...`: one spec trained under several router settings, on the
same data and seed, summarised in one table (and one load-over-time plot with --plot). docs/routing.md,
"Comparing router settings".

A setting is a named preset (:data:`PRESETS`) or comma-separated ``KEY=VALUE`` overrides, read exactly as
``--set`` reads them. Every setting's spec is loaded and checked before any training, so a bad one costs
nothing and leaves no output.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from moec.errors import CommandError
from moec.smoke.report import SmokeResult
from moec.spec.plan import ResolvedModel

# the textbook comparison of the issue: collapse without balancing, and the two cures
PRESETS: dict[str, tuple[str, ...]] = {
    "top1": ("moe.router.top_k=1", "moe.balance.load_balance_coeff=0"),
    # 0.1, not the textbook spec's 0.01: at 0.01 the loss has not evened the load within a smoke-run's tens of
    # steps (docs/routing.md, "Comparing router settings")
    "top1-balanced": ("moe.router.top_k=1", "moe.balance.load_balance_coeff=0.1"),
    "expert-choice": (
        "moe.router.kind=expert_choice",
        "moe.router.top_k=1",
        "moe.router.normalize_topk=false",
        "moe.balance.load_balance_coeff=0",
    ),
    "gshard": (
        "moe.router.kind=gshard",
        "moe.router.top_k=2",
        "moe.router.normalize_topk=false",
        "moe.balance.load_balance_coeff=0.01",
    ),
}
COMPARE_PLOT = "compare-load.png"
WIDTH = 80


@dataclass(frozen=True)
class Setting:
    name: str  # the preset's name, or the overrides as written
    sets: tuple[str, ...]  # --set overrides, applied after the command's own --set


def parse_setting(text: str) -> Setting:
    """A preset name, or ``KEY=VALUE[,KEY=VALUE...]`` (values cannot contain commas)."""
    text = text.strip()
    if text in PRESETS:
        return Setting(text, PRESETS[text])
    parts = tuple(p.strip() for p in text.split(","))
    bad = [p for p in parts if "=" not in p or not p.split("=", 1)[0]]
    if not text or bad:
        raise CommandError(
            f"--compare {text!r}: expected a preset ({', '.join(PRESETS)}) or KEY=VALUE[,KEY=VALUE...]"
            + (f"; {bad[0]!r} has no KEY=" if bad and bad[0] else "")
        )
    return Setting(text, parts)


@dataclass(frozen=True)
class CompareRow:
    """One setting's run, summed over the whole run and every MoE layer (the worst layer for max/mean)."""

    name: str
    loss: float  # mean cross-entropy of the last window of steps
    max_mean: float  # busiest expert's load over the mean, in the worst layer
    starved: int  # experts (all layers) with no slot in the whole run
    n_experts: int  # experts over all MoE layers
    dropped_fraction: float  # dropped over kept + dropped (slots; tokens no expert took under expert choice)
    tokens_per_s: float


def row_of(name: str, r: SmokeResult) -> CompareRow:
    kept = sum(sum(l.tokens_per_expert) for l in r.layers)
    dropped = sum(l.dropped for l in r.layers)
    return CompareRow(
        name=name,
        loss=r.loss_last,
        max_mean=max((l.max_mean_ratio for l in r.layers), default=0.0),
        starved=sum(len(l.starved) for l in r.layers),
        n_experts=sum(len(l.tokens_per_expert) for l in r.layers),
        dropped_fraction=dropped / (kept + dropped) if kept + dropped else 0.0,
        tokens_per_s=r.tokens_per_s,
    )


def compare(
    plans: list[tuple[Setting, ResolvedModel]],
    run: Callable[[ResolvedModel], SmokeResult],
) -> list[tuple[Setting, SmokeResult]]:
    """Run each setting's plan (``run`` holds the shared config: same data and seed for each)."""
    return [(s, run(plan)) for s, plan in plans]


def compare_table(rows: list[CompareRow]) -> str:
    """The table, at most 80 columns: the setting's name is cut to fit (with …)."""
    numbers = f"{'loss':>7} {'max/mean':>8} {'starved':>8} {'dropped':>7} {'tokens/s':>9}"
    name_w = WIDTH - len(numbers) - 1
    lines = [f"{'setting':<{name_w}} {numbers}"]
    for r in rows:
        name = r.name if len(r.name) <= name_w else r.name[: name_w - 1] + "…"
        starved = f"{r.starved}/{r.n_experts}"
        lines.append(
            f"{name:<{name_w}} {r.loss:>7.3f} {r.max_mean:>8.2f} {starved:>8} {r.dropped_fraction:>7.1%} "
            f"{r.tokens_per_s:>9,.0f}"
        )
    lines += [
        "loss: mean cross-entropy of the last steps. max/mean: the busiest expert's load",
        "over the mean (worst layer, whole run; 1 is even). starved: experts with no",
        "slot in the run. dropped: share of slots over capacity (expert choice: of",
        "tokens no expert took). Same data, seed and steps for every setting.",
    ]
    return "\n".join(lines)


def render_compare_png(results: list[tuple[Setting, SmokeResult]]) -> bytes:
    """compare-load.png: per setting, max/mean of the expert load at every step (worst MoE layer)."""
    from moec.smoke.plots import png_bytes, pyplot

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for setting, r in results:
        steps = [s.step for s in r.step_records]
        worst = [max((ls.max_mean for ls in s.layers), default=0.0) for s in r.step_records]
        ax.plot(steps, worst, label=setting.name[:40])
    ax.axhline(1.0, color="grey", linestyle=":", label="even load")
    ax.set_xlabel("step")
    ax.set_ylabel("max / mean expert load (worst layer)")
    ax.set_title("expert load over time, per router setting")
    ax.legend(fontsize="small")
    fig.tight_layout()
    return png_bytes(plt, fig)


def write_compare_plot(results: list[tuple[Setting, SmokeResult]], folder: str, *, force: bool) -> list[str]:
    from moec.output_files import write_file

    return write_file(Path(folder) / COMPARE_PLOT, render_compare_png(results), force=force)
