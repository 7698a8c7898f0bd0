"""`moec analyze`, `moec diff`, `moec validate`, `moec schema`, `moec specs`."""

from __future__ import annotations

import json

import click

from moec.commands.common import EXIT_BAD_INPUT, load_plan, print_problems, report_errors, set_option
from moec.vocab import DTYPES


@click.command()
@click.argument("specs", nargs=-1, required=True)
@click.option(
    "--seq",
    type=click.IntRange(1, 1 << 27),
    default=1,
    show_default=True,
    help="Context length S for attention FLOPs and KV cache.",
)
@click.option(
    "--batch",
    type=click.IntRange(1, 1 << 20),
    default=1,
    show_default=True,
    help="Batch size for KV-cache and activation memory.",
)
@click.option(
    "--attention",
    type=click.Choice(["full", "causal"]),
    default="full",
    show_default=True,
    help="full: every query sees S keys; causal: (S+1)/2 on average.",
)
@click.option(
    "--dtype",
    type=click.Choice(DTYPES),
    default="bf16",
    show_default=True,
    help="Storage dtype for weights and KV cache (never changes FLOPs).",
)
@click.option("--layers", is_flag=True, help="Also print the per-layer table.")
@click.option("--format", "fmt", type=click.Choice(["table", "json", "csv", "md"]), default="table", show_default=True)
@click.option(
    "--verify",
    is_flag=True,
    help="Also build a scaled-down copy and check the FLOPs against torch's FlopCounterMode (imports torch).",
)
@set_option
@report_errors
def analyze(
    specs: tuple[str, ...],
    seq: int,
    batch: int,
    attention: str,
    dtype: str,
    layers: bool,
    fmt: str,
    verify: bool,
    sets: tuple[str, ...],
) -> None:
    """Parameters, FLOPs and memory of one or more specs (several print side by side)."""
    from moec.analyze import analyze as run
    from moec.analyze import render

    if verify:
        _verify([load_plan(s, sets) for s in specs], fmt)
        return
    results = [run(load_plan(s, sets), seq=seq, batch=batch, attention=attention, dtype=dtype) for s in specs]  # type: ignore[arg-type]
    if fmt == "json":
        click.echo(render.to_json(results))
    elif fmt == "csv":
        click.echo(render.to_csv(results, layers=layers), nl=False)
    elif fmt == "md":
        click.echo(render.to_markdown(results, layers=layers), nl=False)
    else:
        render.print_tables(results, layers=layers)


def _verify(plans: list, fmt: str) -> None:
    import dataclasses

    from moec.verify import verify

    results = [verify(p) for p in plans]
    if fmt == "json":
        click.echo(json.dumps([{**dataclasses.asdict(r), "ok": r.ok} for r in results], indent=2))
    else:
        for r in results:
            mark = "ok" if r.ok else "MISMATCH"
            click.echo(
                f"{mark} {r.model}: analyzer {r.expected:,} FLOPs vs FlopCounterMode {r.measured:,} (batch {r.batch} × seq {r.seq}, full attention)"
            )
            for note in r.adjustments:
                click.echo(f"    note: {note}")
            for op, n in sorted(r.by_op.items(), key=lambda kv: -kv[1]):
                click.echo(f"    {op}: {n:,}")
            if r.unformulated_ops:
                click.echo(f"    ops with no FLOP formula: {', '.join(r.unformulated_ops)}")
            if r.fvcore_macs is not None:
                click.echo(f"    fvcore (counts multiply-adds): {r.fvcore_macs:,} MACs = {2 * r.fvcore_macs:,} FLOPs")
    if not all(r.ok for r in results):
        raise SystemExit(1)


@click.command()
@click.argument("spec_a")
@click.argument("spec_b")
@click.option("--seq", type=click.IntRange(1, 1 << 27), default=1, show_default=True)
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
@report_errors
def diff(spec_a: str, spec_b: str, seq: int, fmt: str) -> None:
    """Field-level differences between two specs, and the change in every headline metric."""
    from moec.analyze import analyze as run
    from moec.analyze.diff import diff_models

    a, b = load_plan(spec_a), load_plan(spec_b)
    d = diff_models(a, b, run(a, seq=seq), run(b, seq=seq))
    if fmt == "json":
        click.echo(json.dumps(d, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    from moec.analyze.render import human

    con = Console()
    t = Table(title=f"fields: {a.name} → {b.name}")
    for c in ("field", a.name, b.name):
        t.add_column(c)
    for f in d["fields"]:
        t.add_row(f["field"], str(f["a"]), str(f["b"]))
    if not d["fields"]:
        t.add_row("(no differences)", "", "")
    con.print(t)
    m = Table(title="metrics")
    for c, j in (("metric", "left"), (a.name, "right"), (b.name, "right"), ("Δ", "right"), ("Δ%", "right")):
        m.add_column(c, justify=j)  # type: ignore[arg-type]
    for r in d["metrics"]:
        pct = "-" if r["pct"] is None else f"{r['pct']:+.1f}%"
        unit = "B" if r["unit"] == "bytes" else ""
        m.add_row(r["metric"], human(r["a"], unit), human(r["b"], unit), human(r["delta"], unit), pct)
    con.print(m)


@click.command()
@click.argument("specs", nargs=-1, required=True)
@set_option
@report_errors
def validate(specs: tuple[str, ...], sets: tuple[str, ...]) -> None:
    """Check specs; print every problem with file:line:column and field. Exit 2 if any is invalid."""
    from moec.errors import SpecError

    bad = 0
    for s in specs:
        try:
            m = load_plan(s, sets)
        except SpecError as e:
            bad += 1
            print_problems(e.problems)
            continue
        pattern = "".join("M" if l.ffn.kind == "moe" else "D" for l in m.layers)
        click.echo(f"ok {s}: {m.name}, {m.n_layers} layers [{pattern}]")
    if bad:
        click.echo(f"{bad} of {len(specs)} spec(s) invalid", err=True)
        raise SystemExit(EXIT_BAD_INPUT)


@click.command()
def schema() -> None:
    """The JSON Schema of the spec format (for editors)."""
    from moec.spec.schema import Spec

    click.echo(json.dumps(Spec.model_json_schema(), indent=2))


@click.command(name="specs")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
def list_specs(fmt: str) -> None:
    """The shipped specs, with one-line summaries."""
    from moec.analyze import analyze as run
    from moec.spec import load_model
    from moec.spec.paths import shipped_specs

    rows = []
    for p in shipped_specs():
        m = load_model(str(p))
        a = run(m)
        rows.append(
            {
                "name": p.stem,
                "total": a.params.total,
                "active": a.params.active,
                "layers": m.n_layers,
                "description": m.description,
            }
        )
    if fmt == "json":
        click.echo(json.dumps(rows, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    from moec.analyze.render import human

    t = Table(title="shipped specs")
    for c, j in (("name", "left"), ("total", "right"), ("active", "right"), ("layers", "right"), ("summary", "left")):
        t.add_column(c, justify=j)  # type: ignore[arg-type]
    for r in rows:
        t.add_row(r["name"], human(r["total"]), human(r["active"]), str(r["layers"]), r["description"])
    Console().print(t)
