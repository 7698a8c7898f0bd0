"""`moec bench`: time the MoE expert backends side by side (see moec/bench/moe_bench.py for the method)."""

from __future__ import annotations

import json
import os
from dataclasses import asdict

import click

from moec.commands.common import report_errors, set_option
from moec.vocab import ACTIVATIONS, TORCH_DTYPE_NAMES

BACKEND_NAMES = ("naive", "reference", "triton", "hf_loop", "all_experts", "ideal_dense", "hf_grouped_mm", "liger")
DEFAULT_SHAPE = {"d_model": 512, "d_ff": 1024, "n_experts": 8, "top_k": 2, "activation": "swiglu"}


def _decode(spec: str, batches: tuple[int, ...], opts: dict, gpu: str | None, fmt: str, sets: tuple[str, ...]) -> None:
    from moec.bench.decode import DecodeOptions, render_decode, run_decode_bench

    if not batches or min(batches) < 1:
        raise click.BadParameter("batch sizes must be >= 1", param_hint="--batch-sizes")

    report = run_decode_bench(spec, DecodeOptions(batches=batches, gpu=gpu, **opts), sets)
    click.echo(json.dumps(report, indent=2) if fmt == "json" else render_decode(report))


def _ints(values: tuple[str, ...], hint: str = "--tokens") -> tuple[int, ...]:
    """--tokens 1024 --tokens 4096, or --tokens 1024,4096."""
    try:
        out = tuple(int(v) for chunk in values for v in chunk.split(",") if v.strip())
    except ValueError as e:
        raise click.BadParameter(f"expected whole numbers: {e}", param_hint=hint) from e
    if any(t < 0 for t in out):
        raise click.BadParameter("expected numbers >= 0", param_hint=hint)
    return out


@click.command()
@click.argument("spec", required=False)
@click.option("--d-model", type=click.IntRange(1), help="Model width d (default 512, or the spec's).")
@click.option("--d-ff", type=click.IntRange(1), help="Routed expert width f (default 1024, or the spec's).")
@click.option("--experts", "n_experts", type=click.IntRange(1), help="Routed experts E (default 8, or the spec's).")
@click.option("--top-k", type=click.IntRange(1), help="Experts per token k (default 2, or the spec's).")
@click.option(
    "--activation",
    type=click.Choice(ACTIVATIONS),
    metavar="NAME",  # the choices, listed in the help, no longer fit one line of 80 columns
    help=f"Expert activation: {', '.join(ACTIVATIONS)} (default swiglu, or the spec's).",
)
@click.option(
    "--tokens",
    multiple=True,
    default=("4096",),
    show_default=True,
    help="Token counts T (repeatable or comma-separated).",
)
@click.option(
    "--backends",
    default="naive,reference,triton,hf_loop,all_experts,ideal_dense",
    show_default=True,
    help=f"Comma-separated, from: {', '.join(BACKEND_NAMES)}.",
)
@click.option("--dtype", type=click.Choice(list(TORCH_DTYPE_NAMES)), default="fp32", show_default=True)
@click.option(
    "--backward", is_flag=True, help="Time forward+backward (grads for x, gate weights and every expert weight)."
)
@click.option(
    "--repeats",
    type=click.IntRange(1),
    default=5,
    show_default=True,
    help="Timed runs per backend, interleaved round-robin.",
)
@click.option("--warmup", type=click.IntRange(0), default=1, show_default=True)
@click.option(
    "--check-tokens",
    type=click.IntRange(0),
    default=1024,
    show_default=True,
    help="Tokens re-run for the error check vs the oracle (0: skip).",
)
@click.option("--device", default="auto", show_default=True, help="auto (cuda if available), cpu, cuda or cuda:N.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option(
    "--threads",
    type=click.IntRange(1, os.cpu_count() or 1),  # torch crashes on absurd counts; more than the cores never helps
    help="CPU threads (default: every core).",
)
@click.option(
    "--weight-layout",
    type=click.Choice(["moec", "hf"]),
    default="moec",
    show_default=True,
    help="Store expert weights (E, in, out) as moec does, or (E, out, in) as HF/Liger do (others read views).",
)
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
@click.option(
    "--decode",
    is_flag=True,
    help="Instead: time SPEC's cached decode (a spec, build folder or HF folder) at each --batch-sizes, beside "
    "moec roofline's prediction for this device (docs/decode.md).",
)
@click.option("--batch-sizes", default="1,8,64", show_default=True, help="--decode: comma-separated batch sizes.")
@click.option("--context", type=click.IntRange(1), default=128, show_default=True, help="--decode: prompt tokens.")
@click.option("--steps", type=click.IntRange(1), default=16, show_default=True, help="--decode: timed decode steps.")
@click.option("--gpu", help="--decode: predict with this entry of moec's accelerator table, not measured yardsticks.")
@set_option
@report_errors
def bench(
    spec: str | None,
    d_model: int | None,
    d_ff: int | None,
    n_experts: int | None,
    top_k: int | None,
    activation: str | None,
    tokens: tuple[str, ...],
    backends: str,
    dtype: str,
    backward: bool,
    repeats: int,
    warmup: int,
    check_tokens: int,
    device: str,
    seed: int,
    threads: int | None,
    weight_layout: str,
    fmt: str,
    decode: bool,
    batch_sizes: str,
    context: int,
    steps: int,
    gpu: str | None,
    sets: tuple[str, ...],
) -> None:
    """Time MoE expert backends in one process: median ms, TFLOP/s, speedups, ratio to ideal, error vs oracle.

    With SPEC, the shape is its first MoE layer's (explicit options override single fields). With --decode,
    SPEC's decode tokens/s at each batch size beside the roofline's prediction.
    """
    if decode:
        if not spec:
            raise click.UsageError("--decode needs a SPEC, build folder or Hugging Face folder")
        opts = dict(context=context, steps=steps, warmup=warmup, dtype=dtype, device=device, threads=threads, seed=seed)
        _decode(spec, _ints((batch_sizes,), "--batch-sizes"), opts, gpu, fmt, sets)
        return
    from moec.bench.moe_bench import BenchOptions, BenchShape, run_bench, shape_from_spec
    from moec.bench.render import render_table

    if sets and not spec:
        raise click.UsageError("--set needs a SPEC")
    shape_kw = dict(DEFAULT_SHAPE)
    note = None
    if spec:
        try:
            base, note = shape_from_spec(spec, sets)
        except ValueError as e:
            raise click.UsageError(str(e)) from e
        shape_kw = asdict(base)
        if activation not in (None, base.activation):  # the spec's clamp parameters belong to its activation
            shape_kw.update(activation_alpha=None, activation_limit=None)
    given = {"d_model": d_model, "d_ff": d_ff, "n_experts": n_experts, "top_k": top_k, "activation": activation}
    shape_kw.update({k: v for k, v in given.items() if v is not None})
    names = tuple(b.strip() for b in backends.split(",") if b.strip())
    unknown = [b for b in names if b not in BACKEND_NAMES]
    if unknown:
        raise click.BadParameter(
            f"unknown backend(s) {', '.join(unknown)}; choose from {', '.join(BACKEND_NAMES)}", param_hint="--backends"
        )
    try:
        shape = BenchShape(**shape_kw)  # type: ignore[arg-type]
    except ValueError as e:
        raise click.UsageError(str(e)) from e
    opts = BenchOptions(
        tokens=_ints(tokens),
        backends=names,
        dtype=dtype,
        backward=backward,
        repeats=repeats,
        warmup=warmup,
        seed=seed,
        device=device,
        check_tokens=check_tokens,
        threads=threads,
        weight_layout=weight_layout,
    )
    report = run_bench(shape, opts)
    if note:
        report["notes"].insert(0, note)
        report["config"]["spec"] = spec
    if fmt == "json":
        click.echo(json.dumps(report, indent=2))
    else:
        click.echo(render_table(report))
