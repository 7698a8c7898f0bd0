"""`moec sweep`: a grid over spec fields, each combination counted by the analyzer and timed by the
roofline, filtered, ranked and marked on the Pareto frontier. No torch (docs/roofline.md, "Sweeps")."""

from __future__ import annotations

import click

from moec.commands.common import SEQ_LEN, report_errors, set_option, write_or_echo
from moec.commands.roofline import check_targets, gpu_options, write_plot
from moec.plan.accelerators import pick_accelerator
from moec.vocab import DTYPES

DEFAULT_OBJECTIVES = ("active_params:min", "decode_tokens_per_s:max")


@click.command()
@click.argument("spec")
@click.option(
    "--grid",
    "grids",
    multiple=True,
    required=True,
    metavar="FIELD=V1,V2,...",
    help="A spec field and its values (repeatable; any --set path).",
)
@click.option("--keep", "keeps", multiple=True, metavar="METRIC<=N", help="Keep rows that satisfy this (repeatable).")
@click.option(
    "--objective",
    "objectives",
    multiple=True,
    metavar="METRIC[:min|:max]",
    help=f"Pareto axes, the first sorts (default: {' '.join(DEFAULT_OBJECTIVES)}).",
)
@click.option(
    "--budget",
    metavar="METRIC=N|base",
    help="Hold forward_flops, ffn_flops or active_params fixed by solving for d_ff exactly.",
)
@gpu_options
@click.option(
    "--batch", type=click.IntRange(1, 1 << 24), default=1, show_default=True, help="Decode batch for tokens/s."
)
@click.option("--seq", type=SEQ_LEN, default=4096, show_default=True, help="Context length.")
@click.option("--dtype", type=click.Choice(DTYPES), default="bf16", show_default=True)
@click.option("--kv-dtype", type=click.Choice(DTYPES), help="KV cache dtype (default: --dtype).")
@click.option("--max-combinations", type=click.IntRange(1, 10**7), default=100_000, show_default=True)
@click.option("--format", "fmt", type=click.Choice(["table", "csv", "json", "md"]), default="table", show_default=True)
@click.option("-o", "--output", type=click.Path(path_type=str), help="Write the rows here (default: stdout).")
@click.option(
    "--plot", type=click.Path(path_type=str), help="Also draw the first two objectives and the frontier as a PNG."
)
@click.option("--force", is_flag=True, help="Overwrite --output and --plot if they exist.")
@set_option
@report_errors
def sweep(
    spec: str,
    grids: tuple[str, ...],
    keeps: tuple[str, ...],
    objectives: tuple[str, ...],
    budget: str | None,
    gpu: str,
    gpu_file: str | None,
    batch: int,
    seq: int,
    dtype: str,
    kv_dtype: str | None,
    max_combinations: int,
    fmt: str,
    output: str | None,
    plot: str | None,
    force: bool,
    sets: tuple[str, ...],
) -> None:
    """Every combination of the --grid values of SPEC: parameters, active parameters, FLOPs, KV bytes,
    weights and roofline decode tokens/s; --keep filters, the Pareto frontier of the objectives, and every
    skipped combination counted with its reason."""
    from math import prod

    from moec.errors import CommandError
    from moec.roofline.model import peak_of
    from moec.sweep import grid as g
    from moec.sweep import render
    from moec.sweep.run import Settings
    from moec.sweep.run import sweep as run_sweep

    check_targets(spec, output, plot, force)
    axes = g.parse_axes(grids)
    n = prod(len(a.values) for a in axes)
    if n > max_combinations:
        raise CommandError(f"--grid: {n:,} combinations, more than --max-combinations {max_combinations:,}")
    parsed_budget = g.parse_budget(budget) if budget else None
    if parsed_budget is not None and any(a.path in ("moe.d_ff", "ffn.d_ff") for a in axes):
        raise CommandError("--budget solves for d_ff; do not also --grid it")
    acc = pick_accelerator(gpu, gpu_file)
    peak_of(acc, gpu, dtype)  # refuse a dtype the accelerator lacks before counting anything
    settings = Settings(gpu, acc, batch, seq, dtype, kv_dtype or dtype)
    result = run_sweep(
        spec,
        sets,
        axes,
        settings,
        keeps=[g.parse_keep(k) for k in keeps],
        objectives=g.parse_objectives(objectives or DEFAULT_OBJECTIVES),
        budget=parsed_budget,
    )
    if not result.rows and not result.filtered and not result.duplicates:
        reasons = "; ".join(f"{reason} ({count})" for reason, count in result.skipped.most_common(3))
        raise CommandError(f"no combination of the grid is a valid model: {reasons}")
    text = {"csv": render.to_csv, "json": render.to_json, "md": render.to_markdown, "table": render.to_text}[fmt](
        result
    )
    figure = None
    if plot is not None:
        from moec.sweep.plot import plot_pareto

        figure = plot_pareto(result)
    write_or_echo(text, output, force)
    write_plot(figure, plot, force)
