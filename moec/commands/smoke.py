"""`moec smoke-run`."""

from __future__ import annotations

import json

import click

from moec.commands.common import load_plan, report_errors, set_option


@click.command(name="smoke-run")
@click.argument("spec")
@click.option("--device", default="auto", show_default=True, help="auto (cuda if available), cpu, cuda or cuda:N.")
@click.option(
    "--backend", type=click.Choice(["auto", "triton", "reference", "naive"]), default="auto", show_default=True
)
@click.option("--steps", type=click.IntRange(2, 100_000), default=30, show_default=True)
@click.option("--batch", type=click.IntRange(1, 1 << 16), default=8, show_default=True)
@click.option("--seq", type=click.IntRange(2, 1 << 20), default=64, show_default=True)
@click.option(
    "--dtype",
    type=click.Choice(["auto", "bf16", "fp32"]),
    default="auto",
    show_default=True,
    help="auto: bf16 on GPU, fp32 on CPU.",
)
@click.option(
    "--scale",
    type=click.Choice(["auto", "full", "tiny"]),
    default="auto",
    show_default=True,
    help="auto: shrink width and depth to fit the device (tiny on CPU).",
)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--lr", type=click.FloatRange(0, 1, min_open=True), default=3e-3, show_default=True)
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
@set_option
@report_errors
def smoke_run(
    spec: str,
    device: str,
    backend: str,
    steps: int,
    batch: int,
    seq: int,
    dtype: str,
    scale: str,
    seed: int,
    lr: float,
    fmt: str,
    sets: tuple[str, ...],
) -> None:
    """Train a spec's model for a few steps: does it learn, balance and run fast? Exit 1 on failure."""
    from moec.smoke.report import print_report
    from moec.smoke.run import SmokeConfig
    from moec.smoke.run import smoke_run as run

    plan = load_plan(spec, sets)
    cfg = SmokeConfig(
        device=device, backend=backend, steps=steps, batch=batch, seq=seq, dtype=dtype, scale=scale, seed=seed, lr=lr
    )
    try:
        result = run(plan, cfg, spec_name=spec, progress=fmt == "table")
    except ValueError as e:
        click.echo(f"error: {e}", err=True)
        raise SystemExit(2) from None
    if fmt == "json":
        click.echo(json.dumps(result.to_dict(), indent=2))
    else:
        print_report(result)
    if not result.ok:
        raise SystemExit(1)
