"""`moec roofline`: per component FLOPs, bytes, intensity and lower-bound time of an inference step.

No torch: the roofline is the analyzer's counts over an accelerator's peaks (docs/roofline.md).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from moec.commands.common import (
    SEQ_LEN,
    load_plan,
    report_errors,
    set_option,
    write_or_echo,
    write_output,
)
from moec.plan.accelerators import ACCELERATORS, pick_accelerator  # plain data: cheap to import with the command line
from moec.vocab import DTYPES

if TYPE_CHECKING:
    from moec.roofline.model import Workload
    from moec.spec.plan import ResolvedModel

_DEGREE = click.IntRange(1, 1 << 16)
FORMATS = ("table", "json", "md")


def gpu_options(fn: Any) -> Any:
    """--gpu and --gpu-file, shared with `moec sweep`."""
    fn = click.option(
        "--gpu-file",
        type=click.Path(dir_okay=False, path_type=str),
        help="A YAML file of your own accelerators (docs/roofline.md, 'Your own accelerator').",
    )(fn)
    return click.option(
        "--gpu",
        default="h100",
        show_default=True,
        help=f"Accelerator: {', '.join(ACCELERATORS)}, or one from --gpu-file.",
    )(fn)


def check_layout(spec: str, model: ResolvedModel, workload: Workload) -> None:
    from moec.errors import Problem, SpecError
    from moec.roofline.model import layout_problems

    problems = layout_problems(model, workload)
    if problems:
        raise SpecError([Problem(spec, None, None, option, message) for option, message in problems])


def check_targets(spec: str, output: str | None, plot: str | None, force: bool) -> None:
    """Refuse an output path before any work, so a bad one costs nothing and leaves nothing."""
    from moec.errors import CommandError
    from moec.output_files import check_file_target

    if output is not None and plot is not None and Path(output).resolve() == Path(plot).resolve():
        raise CommandError(f"--output and --plot both name {output}")
    if plot is not None and not plot.lower().endswith(".png"):
        raise CommandError(f"--plot {plot}: the plot is a PNG; name a .png file")
    for path in (output, plot):
        if path is not None:
            check_file_target(Path(path), force=force, inputs=(spec,))


@click.command()
@click.argument("spec")
@gpu_options
@click.option("--phase", type=click.Choice(["decode", "prefill"]), default="decode", show_default=True)
@click.option("--batch", type=click.IntRange(1, 1 << 24), default=1, show_default=True, help="Sequences per step.")
@click.option("--seq", type=SEQ_LEN, default=4096, show_default=True, help="Context length.")
@click.option("--dtype", type=click.Choice(DTYPES), default="bf16", show_default=True, help="Weights and compute.")
@click.option("--kv-dtype", type=click.Choice(DTYPES), help="KV cache dtype (default: --dtype).")
@click.option("--tp", type=_DEGREE, default=1, show_default=True, help="Tensor-parallel degree.")
@click.option("--ep", type=_DEGREE, default=1, show_default=True, help="Expert-parallel degree.")
@click.option(
    "--load",
    "load_file",
    type=click.Path(dir_okay=False, path_type=str),
    help="Expert loads from `moec smoke-run --format json` instead of uniform routing.",
)
@click.option(
    "--load-pool", is_flag=True, help="Sum --load's histograms over its layers; use the sum for every MoE layer."
)
@click.option(
    "--max-batch",
    type=click.IntRange(1, 1 << 24),
    default=1024,
    show_default=True,
    help="Largest batch of the tokens/s curve.",
)
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="table", show_default=True)
@click.option("-o", "--output", type=click.Path(path_type=str), help="Write the report here (default: stdout).")
@click.option("--plot", type=click.Path(path_type=str), help="Also draw the roofline and tokens/s curve as a PNG.")
@click.option("--force", is_flag=True, help="Overwrite --output and --plot if they exist.")
@set_option
@report_errors
def roofline(
    spec: str,
    gpu: str,
    gpu_file: str | None,
    phase: str,
    batch: int,
    seq: int,
    dtype: str,
    kv_dtype: str | None,
    tp: int,
    ep: int,
    load_file: str | None,
    load_pool: bool,
    max_batch: int,
    fmt: str,
    output: str | None,
    plot: str | None,
    force: bool,
    sets: tuple[str, ...],
) -> None:
    """Per component FLOPs, bytes, intensity, bound and lower-bound time of a prefill or decode step on an
    accelerator; tokens/s, the batch where each part turns compute-bound, and tokens/s against batch."""
    from moec.roofline import render
    from moec.roofline.experts import layer_picks, read_load_file
    from moec.roofline.model import Workload
    from moec.roofline.report import build_report, default_batches
    from moec.spec.plan import MoEPlan

    check_targets(spec, output, plot, force)
    acc = pick_accelerator(gpu, gpu_file)
    model = load_plan(spec, sets)
    w = Workload(phase, batch, seq, dtype, kv_dtype or dtype, tp, ep)  # type: ignore[arg-type]
    check_layout(spec, model, w)
    picks, routing = None, "uniform routing"
    if load_file is not None:
        moe = {lp.index: (lp.ffn.n_experts, lp.ffn.top_k) for lp in model.layers if isinstance(lp.ffn, MoEPlan)}
        picks = layer_picks(read_load_file(load_file), moe, load_file, pool=load_pool)
        routing = f"loads measured in {load_file}" + (", summed over its layers" if load_pool else "")
    report = build_report(model, acc, gpu, w, batches=default_batches(max_batch), picks=picks, routing=routing)
    text = {"json": render.to_json, "md": render.to_markdown, "table": render.to_text}[fmt](report)
    figure = None
    if plot is not None:  # drawn before anything is written, so a failure leaves no output behind
        from moec.roofline.plot import plot_roofline

        figure = plot_roofline(report)
    write_or_echo(text, output, force)
    write_plot(figure, plot, force)


def write_plot(figure: Any, plot: str | None, force: bool) -> None:
    if figure is None or plot is None:
        return
    from moec.roofline.plot import png_bytes

    write_output(plot, png_bytes(figure), force)
