"""`moec analyze`, `moec diff`, `moec validate`, `moec schema`, `moec specs`."""

from __future__ import annotations

import json
import os
import textwrap

import click

from moec.commands.common import EXIT_BAD_INPUT, SEQ_LEN, load_plan, print_problems, report_errors, set_option
from moec.vocab import DTYPES

NO_WARNINGS = click.option(
    "--no-warnings",
    "-q",
    "no_warnings",
    is_flag=True,
    help="Do not print warnings (valid settings that are probably not meant: no load balancing, an unused "
    "section, a capacity that must drop tokens).",
)


def print_warnings(plans: list) -> None:  # list[ResolvedModel]
    """Each spec's warnings (moec.spec.traps), one ``warning: file:line:col field: message`` line each, on
    stderr so that JSON and CSV output stay clean."""
    from moec.errors import fold_problems

    for plan in plans:
        for line in fold_problems(list(plan.extra.get("warnings", ()))):
            click.echo(f"warning: {line}", err=True)


@click.command()
@click.argument("specs", nargs=-1, required=True)
@click.option(
    "--seq",
    type=SEQ_LEN,
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
    "--convention",
    type=click.Choice(["moec", "fvcore"]),
    default="moec",
    show_default=True,
    help="FLOP unit: moec counts a multiply-add as 2 FLOPs; fvcore (and papers quoting it) as 1.",
)
@click.option(
    "--verify",
    is_flag=True,
    help="Also count a scaled-down copy at --batch × --seq with torch's FlopCounterMode (forward and "
    "forward+backward) and fvcore (forward), and require exact agreement (imports torch).",
)
@click.option(
    "--threads",
    type=click.IntRange(1, os.cpu_count() or 1),  # torch segfaults at 4096; more than the cores never helps
    default=None,
    help="CPU threads for torch in --verify (default: torch's).",
)
@NO_WARNINGS
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
    convention: str,
    verify: bool,
    threads: int | None,
    no_warnings: bool,
    sets: tuple[str, ...],
) -> None:
    """Parameters, FLOPs and memory of one or more specs (several print side by side).

    JSON output is a list with one object per spec, also for one spec."""
    from moec.analyze import analyze as run
    from moec.analyze import render
    from moec.analyze.report import in_fvcore_convention

    if verify and fmt == "csv":
        raise click.UsageError(
            "--verify adds a section that a CSV table has no room for: use --format table, json or md"
        )
    if threads is not None and not verify:
        raise click.UsageError("--threads sets torch's CPU threads, which only --verify uses")
    plans = [load_plan(s, sets, encoder_decoder=not verify) for s in specs]  # --verify builds the model
    if not no_warnings:
        print_warnings(plans)
    results = [run(p, seq=seq, batch=batch, attention=attention, dtype=dtype) for p in plans]  # type: ignore[arg-type]
    if convention == "fvcore":
        results = [in_fvcore_convention(r) for r in results]
    checks = _verify(plans, seq=seq, batch=batch, threads=threads) if verify else []
    if fmt == "json":
        docs = [r.to_dict() for r in results]
        for doc, check in zip(docs, checks, strict=False):
            doc["verify"] = _verify_dict(check)
        click.echo(json.dumps(docs, indent=2))
    elif fmt == "csv":
        click.echo(render.to_csv(results, layers=layers), nl=False)
    elif fmt == "md":
        click.echo(render.to_markdown(results, layers=layers), nl=False)
    else:
        render.print_tables(results, layers=layers)
    if fmt != "json":
        for check in checks:
            _print_verify(check, md=fmt == "md")
    if not all(c.ok for c in checks):
        raise SystemExit(1)


def _verify(plans: list, *, seq: int, batch: int, threads: int | None) -> list:
    """Each plan's VerifyResult (moec.verify), counted at the analysis's batch and sequence length."""
    import torch

    from moec.verify import verify

    if threads is not None:
        torch.set_num_threads(threads)
    return [verify(p, seq=seq, batch=batch) for p in plans]


def _verify_dict(r) -> dict:  # (VerifyResult) -> dict
    import dataclasses

    d = dataclasses.asdict(r)
    d["ok"] = r.ok
    for c, out in zip(r.checks, d["checks"], strict=True):
        out["ok"] = c.ok
    return d


def _print_verify(r, *, md: bool) -> None:  # (VerifyResult) -> None
    """The verify section: what was built, each count against the analyzer's claim, what was adjusted."""
    bullet = "- " if md else "  "
    click.echo("")
    click.echo(f"{'## ' if md else ''}verify {r.model}: {'ok' if r.ok else 'MISMATCH'}, counted on {r.scaled}")
    click.echo(f"{bullet}at batch {r.batch} × seq {r.seq}, full attention; scaled down from the spec:")
    for change in r.sizes:
        click.echo(f"{bullet}  {change}")
    for c in r.checks:
        mark = "ok" if c.ok else "MISMATCH"
        click.echo(f"{bullet}{mark}: {c.tool} {c.passes} ({c.unit})")
        click.echo(f"{bullet}  measured: {c.measured:,}")
        click.echo(f"{bullet}  {c.claim}: {c.expected:,}")
        if c.rule:
            click.echo(f"{bullet}  ({c.rule})")
        if c.expected != c.measured:
            for op, n in sorted(c.by_op.items(), key=lambda kv: -kv[1]):
                click.echo(f"{bullet}    {op}: {n:,}")
        if c.uncounted_ops:
            click.echo(f"{bullet}  ops it counted as nothing: {', '.join(c.uncounted_ops)}")
    for note in r.adjustments:
        click.echo(textwrap.fill(note, 78, initial_indent=f"{bullet}note: ", subsequent_indent=" " * 8))


@click.command()
@click.argument("spec_a")
@click.argument("spec_b")
@click.option("--seq", type=SEQ_LEN, default=1, show_default=True)
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
@set_option
@click.option("--set-a", "sets_a", multiple=True, metavar="KEY=VALUE", help="Override a field of SPEC_A only.")
@click.option(
    "--set-b",
    "sets_b",
    multiple=True,
    metavar="KEY=VALUE",
    help="Override a field of SPEC_B only: `diff X X --set-b moe.router.top_k=1` shows one change.",
)
@report_errors
def diff(
    spec_a: str,
    spec_b: str,
    seq: int,
    fmt: str,
    sets: tuple[str, ...],
    sets_a: tuple[str, ...],
    sets_b: tuple[str, ...],
) -> None:
    """Field-level differences between two specs, and the change in every headline metric.

    A field only one spec has, at its default value, is not listed (a MoE's default router options
    against a dense model). --set applies to both specs."""
    from moec.analyze import analyze as run
    from moec.analyze.diff import diff_models

    a, b = load_plan(spec_a, sets + sets_a), load_plan(spec_b, sets + sets_b)
    d = diff_models(a, b, run(a, seq=seq), run(b, seq=seq))
    if fmt == "json":
        click.echo(json.dumps(d, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    from moec.analyze.render import human

    con = Console()
    name_a, name_b = (a.name, b.name) if a.name != b.name else (f"{a.name} (A)", f"{b.name} (B)")
    t = Table(title=f"fields: {name_a} → {name_b}")
    for c in ("field", name_a, name_b):
        t.add_column(c)
    for f in d["fields"]:
        t.add_row(f["field"], str(f["a"]), str(f["b"]))
    if not d["fields"]:
        t.add_row("(no differences)", "", "")
    con.print(t)
    m = Table(title="metrics")
    for c, j in (("metric", "left"), (name_a, "right"), (name_b, "right"), ("Δ", "right"), ("Δ%", "right")):
        m.add_column(c, justify=j)  # type: ignore[arg-type]
    for r in d["metrics"]:
        pct = "-" if r["pct"] is None else f"{r['pct']:+.1f}%"
        unit = "B" if r["unit"] == "bytes" else ""
        m.add_row(r["metric"], human(r["a"], unit), human(r["b"], unit), human(r["delta"], unit), pct)
    con.print(m)


@click.command()
@click.argument("specs", nargs=-1, required=True)
@NO_WARNINGS
@set_option
@report_errors
def validate(specs: tuple[str, ...], no_warnings: bool, sets: tuple[str, ...]) -> None:
    """Check specs; print every problem with file:line:column and field. Exit 2 if any is invalid.

    Warnings (valid, but probably not meant) go to stderr too and leave the exit code 0."""
    from moec.analyze.render import layer_pattern, mixer_runs
    from moec.errors import SpecError

    bad = 0
    for s in specs:
        try:
            m = load_plan(s, sets, encoder_decoder=True)
        except SpecError as e:
            bad += 1
            print_problems(e.problems)
            continue
        if not no_warnings:
            print_warnings([m])
        pattern = layer_pattern([l.ffn.kind for l in m.layers])
        mixers = f", mixers {mixer_runs([l.mixer_kind for l in m.layers])}" if m.hybrid else ""
        click.echo(f"ok {s}: {m.name}, {m.n_layers} layers [{pattern}]{mixers}")
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
