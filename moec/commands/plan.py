"""`moec plan`: per-rank memory and communication of a parallel layout, or a ranked search over layouts."""

from __future__ import annotations

import click

from moec.commands.common import SEQ_LEN, load_plan, refuse_block_features, refuse_hybrid, report_errors, set_option
from moec.plan.accelerators import ACCELERATORS
from moec.vocab import DTYPES

# Layout fields and the command-line options that set them, so each problem names the option to change
OPTION_OF = {"dp_shard": "--dp-shard", "ep": "--ep", "tp": "--tp", "pp": "--pp", "world": "--gpus"}
_DEGREE = click.IntRange(1, 1 << 20)


@click.command()
@click.argument("spec")
@click.option("--gpus", type=_DEGREE, default=8, show_default=True, help="Number of accelerators (ranks).")
@click.option(
    "--gpu", type=click.Choice(tuple(ACCELERATORS)), default="h100", show_default=True, help="Accelerator kind."
)
@click.option("--ep", type=_DEGREE, help="Expert-parallel degree (fixes the layout; the rest default to 1).")
@click.option("--tp", type=_DEGREE, help="Tensor-parallel degree (fixes the layout).")
@click.option("--pp", type=_DEGREE, help="Pipeline stages (fixes the layout).")
@click.option("--dp-shard", type=_DEGREE, help="FSDP degree (fixes the layout; default: every rank left over).")
@click.option("--seq", type=SEQ_LEN, default=4096, show_default=True, help="Sequence length.")
@click.option("--micro-batch", type=_DEGREE, default=1, show_default=True, help="Sequences per rank per micro-batch.")
@click.option("--micro-batches", type=_DEGREE, help="Micro-batches per step (default: pp).")
@click.option("--dtype", type=click.Choice(DTYPES), default="bf16", show_default=True, help="Compute dtype.")
@click.option("--top", type=_DEGREE, default=10, show_default=True, help="Layouts shown when searching.")
@click.option("--format", "fmt", type=click.Choice(["table", "json", "md"]), default="table", show_default=True)
@set_option
@report_errors
def plan(
    spec: str,
    gpus: int,
    gpu: str,
    ep: int | None,
    tp: int | None,
    pp: int | None,
    dp_shard: int | None,
    seq: int,
    micro_batch: int,
    micro_batches: int | None,
    dtype: str,
    top: int,
    fmt: str,
    sets: tuple[str, ...],
) -> None:
    """Per-rank parameter, gradient, optimizer and activation memory, KV cache, and all-to-all, FSDP, TP
    and PP traffic of a layout (--ep/--tp/--pp/--dp-shard); with none of them, every valid layout ranked."""
    from moec.errors import CommandError, Problem, SpecError
    from moec.plan import Layout
    from moec.plan import render as out
    from moec.plan.report import Workload, plan_layout, search
    from moec.plan.tensors import inventory_disagreement

    model = load_plan(spec, sets)
    refuse_hybrid(model, "moec plan", "the planner's per-tensor sharding and traffic")
    refuse_block_features(model, "moec plan", "the planner's per-tensor sharding and traffic")
    if (why := inventory_disagreement(model)) is not None:  # a feature the refusals above do not name yet
        raise CommandError(f"moec plan does not support {model.name} yet: {why}")
    workload = Workload(seq=seq, micro_batch=micro_batch, micro_batches=micro_batches, dtype=dtype)
    searched = ep is None and tp is None and pp is None and dp_shard is None
    if searched:
        plans = search(model, gpus, gpu, workload)[:top]
        if not plans:
            raise SpecError([Problem(spec, None, None, "--gpus", f"no valid layout of {gpus} ranks for {model.name}")])
    else:
        layout = Layout(dp_shard=dp_shard or -1, ep=ep or 1, tp=tp or 1, pp=pp or 1)
        problems = layout.field_problems(model, gpus)
        if problems:
            raise SpecError([Problem(spec, None, None, OPTION_OF[f], message) for f, message in problems])
        plans = [plan_layout(model, layout, gpus, gpu, workload)]
    if fmt == "json":
        click.echo(out.to_json(plans, searched=searched))
    elif fmt == "md":
        click.echo(out.to_markdown(plans, searched=searched), nl=False)
    else:
        out.print_tables(plans, searched=searched)
