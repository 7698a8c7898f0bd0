"""Renderers for analyses: rich tables for people; JSON, CSV and Markdown for scripts.

The arithmetic lives in report.py; nothing here computes a metric, it only formats one.
"""

from __future__ import annotations

import csv
import io
from itertools import groupby
from typing import Any

from moec.analyze.report import SCHEMA, Analysis, LayerRow, convention_line

COMPONENT_LABELS = {
    "embedding": "embedding",
    "attention": "attention",
    "norms": "norms",
    "router": "router",
    "routed_experts": "routed experts",
    "shared_experts": "shared experts",
    "dense_ffn": "dense FFN",
    "base_ffn": "frozen base FFN (LoRA)",
    "head": "lm_head",
}


def human(n: float, unit: str = "") -> str:
    """46702792704 → '46.70 B'; bytes use binary units with unit='B'."""
    if unit == "B":
        for u, s in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
            if abs(n) >= s:
                return f"{n / s:.2f} {u}"
        return f"{int(n)} B"
    for u, s in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= s:
            return f"{n / s:.2f} {u}{unit}"
    return f"{n:g}{(' ' + unit) if unit else ''}"


def exact(n: int | float) -> str:
    return f"{n:,}" if isinstance(n, int) else f"{n:,.1f}"


def has_other_mixers(a: Analysis) -> bool:
    """Whether some layer mixes tokens with something other than attention (docs/mixers.md): then the tables
    say "sequence mixing" for attention's scores and show the decode step and the mixers' state."""
    return any(r.mixer not in ("attention", "none") for r in a.layers)


def headline_rows(a: Analysis, *, hybrid: bool | None = None) -> list[tuple[str, Any]]:
    """The metrics shown side by side when several specs are compared (and in `moec diff`); ``hybrid``: with
    the rows of models with other token mixers (default: when ``a`` has one), so that specs compared side by
    side share their rows."""
    hybrid = has_other_mixers(a) if hybrid is None else hybrid
    m = a.memory
    rows: list[tuple[str, Any]] = [
        ("total params", a.params.total),
        ("active params", a.params.active),
        ("active params (no embedding)", a.params.active_non_embedding),
        ("trainable params", a.params.trainable),
        ("frozen params", a.params.frozen),
        ("layers (MoE / dense)", f"{a.moe.moe_layers} / {a.moe.dense_layers}" if a.moe else f"0 / {len(a.layers)}"),
        (
            "experts (routed, top-k, shared)",
            f"{a.moe.n_experts}, {a.moe.top_k}, {a.moe.n_shared_experts}" if a.moe else "-",
        ),
        (f"fwd FLOPs/token (S={a.seq})", a.flops.forward),
        ("  linear", a.flops.forward_linear),
        ("  sequence mixing" if hybrid else "  attention scores", a.flops.forward_attention),
    ]
    if hybrid:
        rows.append((f"decode FLOPs/token (after S={a.seq})", a.flops.decode_step))
    rows += [
        ("training FLOPs/token", a.flops.training),
        (f"weights ({m.dtype})", m.weights_bytes),
        (f"KV cache/token ({m.dtype})", m.kv_cache_bytes_per_token),
        (f"KV cache at S={a.seq}, batch {a.batch}", m.kv_cache_bytes),
    ]
    if hybrid:
        rows.append((f"mixer state/sequence ({m.dtype})", m.state_bytes_per_sequence))
        rows.append((f"KV cache and state at S={a.seq}, batch {a.batch}", m.cache_and_state_bytes))
    rows.append(("AdamW training state", m.training_state_bytes))
    if a.mtp:
        rows.append(("MTP params (separate)", a.mtp.params))
    return rows


def layer_pattern(ffn_kinds: list[str]) -> str:
    """Each layer's FFN as a letter: M (MoE), D (dense), - (none)."""
    return "".join({"moe": "M", "dense": "D"}.get(k, "-") for k in ffn_kinds)


def mixer_runs(kinds: list[str], most: int = 6) -> str:
    """Each layer's token mixer, a run written once with its length: ``gated_deltanet×3, attention, …``."""
    runs = [(kind, len(list(run))) for kind, run in groupby(kinds)]
    text = [kind if n == 1 else f"{kind}×{n}" for kind, n in runs[:most]]
    return ", ".join(text) + (", …" if len(runs) > most else "")


def _fmt(label: str, v: Any) -> str:
    if isinstance(v, str):
        return v
    if "KV" in label or "weights" in label or "state" in label:
        return f"{human(v, 'B')}"
    return f"{human(v)}  ({exact(v)})"


# --- JSON / CSV / Markdown --------------------------------------------------------------------


def _flat(prefix: str, v: Any, out: list[tuple[str, Any]]) -> None:
    if isinstance(v, dict):
        for k, x in v.items():
            _flat(f"{prefix}.{k}" if prefix else k, x, out)
    elif isinstance(v, list):
        for i, x in enumerate(v):
            _flat(f"{prefix}[{i}]", x, out)
    else:
        out.append((prefix, v))


def to_csv(analyses: list[Analysis], *, layers: bool = False) -> str:
    """Long format: one row per (spec, metric), so several specs stay in one CSV."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["spec", "metric", "value"])
    for a in analyses:
        d = a.to_dict()
        if not layers:
            d.pop("layers")
        rows: list[tuple[str, Any]] = []
        _flat("", d, rows)
        for k, v in rows:
            w.writerow([a.name, k, "" if v is None else v])
    return buf.getvalue()


def to_markdown(analyses: list[Analysis], *, layers: bool = False) -> str:
    lines = [f"<!-- {SCHEMA} -->", "", f"_{convention_line(analyses[0].conventions)}_", ""]
    lines.append("| metric | " + " | ".join(a.name for a in analyses) + " |")
    lines.append("|---|" + "---:|" * len(analyses))
    hybrid = any(has_other_mixers(a) for a in analyses)
    per = [headline_rows(a, hybrid=hybrid) for a in analyses]
    for i, (label, _) in enumerate(per[0]):
        vals = [p[i][1] if i < len(p) else "" for p in per]
        lines.append(f"| {label.strip()} | " + " | ".join(_fmt(label, v) for v in vals) + " |")
    for a in analyses:
        lines += [
            "",
            f"### {a.name}: components",
            "",
            "| component | params | active | frozen | fwd FLOPs/token |",
            "|---|---:|---:|---:|---:|",
        ]
        for c in a.components:
            lines.append(
                f"| {COMPONENT_LABELS.get(c.name, c.name)} | {exact(c.params)} | {exact(c.active)} | {exact(c.frozen)} | {exact(c.flops)} |"
            )
        if layers:
            lines += ["", f"### {a.name}: layers", "", *_markdown_layers(a)]
    return "\n".join(lines) + "\n"


def _markdown_layers(a: Analysis) -> list[str]:
    """The layer table in Markdown; a model with a layer whose mixer is not attention gets a mixer column
    (attention's kind, gqa or mla, on attention layers) in place of the attention one, and its sequence-mixing
    FLOPs in both forms."""
    if not _mixer_column(a):
        out = [
            "| layer | ffn | attention | window | params | active | linear FLOPs | attention FLOPs |",
            "|---:|---|---|---:|---:|---:|---:|---:|",
        ]
        for r in a.layers:
            out.append(
                f"| {r.index} | {r.ffn} | {r.attention} | {r.window or '-'} | {exact(r.params)} | {exact(r.active)} "
                f"| {exact(r.flops_linear)} | {exact(r.flops_attention)} |"
            )
        return out
    out = [
        "| layer | ffn | mixer | window | params | active | linear FLOPs | mixing FLOPs | decode mixing FLOPs |",
        "|---:|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in a.layers:
        out.append(
            f"| {r.index} | {r.ffn} | {layer_mixer(r)} | {r.window or '-'} | {exact(r.params)} | {exact(r.active)} "
            f"| {exact(r.flops_linear)} | {exact(r.flops_attention)} | {exact(r.flops_decode_mixing)} |"
        )
    return out


def _mixer_column(a: Analysis) -> bool:
    """Whether the layer tables name each layer's mixer: some layer's is not attention (another kind, or none)."""
    return any(r.mixer != "attention" for r in a.layers)


def layer_mixer(r: LayerRow) -> str:
    """A layer's token mixer as the layer tables show it: attention's kind (gqa, mla), or the mixer's kind."""
    return r.attention if r.mixer == "attention" else r.mixer


# --- rich tables ------------------------------------------------------------------------------
#
# Every table fits the console (COLUMNS=80 and up) without breaking a number: number columns never wrap,
# and each table has leaner forms (exact counts on a second line, human-readable units only, specs split
# over several tables) tried in turn until one fits. Only text labels wrap. Wider terminals get the
# richest form that fits (tests/cli/test_columns.py).

UNLIMITED = 100_000  # a console width at which nothing wraps: a table's natural width


def natural_width(table: Any, *, wrapping: int | None = None) -> int:
    """Columns ``table`` needs with every cell on one line; with ``wrapping`` (a column index), that text
    column may wrap down to its longest word."""
    from rich.console import Console

    con = Console(width=UNLIMITED)
    width = con.measure(table).maximum
    if wrapping is not None:
        col = table.columns[wrapping]
        cells = [str(c) for c in col.cells] + [str(col.header)]
        longest = max((len(c) for c in cells), default=0)
        word = max((len(w) for c in cells for w in c.split()), default=0)
        width -= longest - word
    return width


def first_fitting(console: Any, tables: list[Any], *, wrapping: int | None = None) -> Any:
    """The first of ``tables`` (richest first) that fits ``console``; the last one otherwise."""
    for t in tables[:-1]:
        if natural_width(t, wrapping=wrapping) <= console.width:
            return t
    return tables[-1]


def _fmt_stacked(label: str, v: Any) -> str:
    """_fmt with the exact count under the rounded one instead of beside it."""
    return _fmt(label, v).replace("  (", "\n(")


def side_by_side(analyses: list[Analysis], fmt: Any = None) -> Any:
    from rich.table import Table

    fmt = fmt or _fmt
    t = Table(title="moec analyze", show_lines=fmt is _fmt_stacked)
    t.add_column("metric", overflow="fold")
    for a in analyses:
        t.add_column(a.name, justify="right", no_wrap=True)
    hybrid = any(has_other_mixers(a) for a in analyses)
    per = [headline_rows(a, hybrid=hybrid) for a in analyses]
    for i, (label, _) in enumerate(per[0]):
        t.add_row(label, *[fmt(label, p[i][1]) if i < len(p) else "" for p in per])
    return t


def print_side_by_side(analyses: list[Analysis], con: Any) -> None:
    """All specs in one table if it fits, exact counts stacked under the rounded ones if that fits, else
    the specs in groups of as many as fit."""
    for fmt in (_fmt, _fmt_stacked):
        t = side_by_side(analyses, fmt)
        if natural_width(t, wrapping=0) <= con.width:
            con.print(t)
            return
    group = len(analyses) - 1
    while group > 1 and natural_width(side_by_side(analyses[:group], _fmt_stacked), wrapping=0) > con.width:
        group -= 1
    for start in range(0, len(analyses), group):
        con.print(side_by_side(analyses[start : start + group], _fmt_stacked))


def headline_table(a: Analysis) -> Any:
    from rich.table import Table

    head = Table(title=f"{a.name}", show_header=False)
    head.add_column("metric", overflow="fold")
    head.add_column("value", justify="right", no_wrap=True)
    rows = [(label, _fmt(label, v)) for label, v in headline_rows(a)]
    share = 100 * a.flops.six_n_active / a.flops.training
    rows.append(("6·N_active shortcut (for comparison)", f"{human(a.flops.six_n_active)}  ({share:.1f}% of training)"))
    extra = a.flops.training - 3 * a.flops.forward
    if extra:
        rows.append(("  of which frozen weights save", human(-extra)))
    rows.append(("activations at S, batch (estimate)", human(a.memory.activation_bytes_estimate, "B")))
    for label, value in rows:
        head.add_row(label, value)
    return head


def components_table(a: Analysis) -> Any:
    from rich.table import Table

    comp = Table(title="components")
    comp.add_column("component", overflow="fold")
    for col in ("params", "% total", "active", "frozen", "fwd FLOPs", "% FLOPs"):
        comp.add_column(col, justify="right", no_wrap=True)
    fwd = a.flops.forward or 1
    for c in a.components:
        comp.add_row(
            COMPONENT_LABELS.get(c.name, c.name),
            human(c.params),
            f"{100 * c.params / a.params.total:.1f}%",
            human(c.active),
            human(c.frozen) if c.frozen else "-",
            human(c.flops),
            f"{100 * c.flops / fwd:.1f}%",
        )
    attn = a.flops.forward_attention
    mixing = "sequence mixing" if has_other_mixers(a) else "attention scores"
    comp.add_row(mixing, "-", "-", "-", "-", human(attn), f"{100 * attn / fwd:.1f}%")
    return comp


def layers_table(a: Analysis, *, number: Any = exact, bar: bool = True) -> Any:
    """One row per layer; ``number`` formats the counts (exact, or human for narrow consoles)."""
    from rich import box
    from rich.table import Table

    lean = number is not exact
    lt = Table(title=f"{a.name}: layers", box=box.SIMPLE_HEAD if lean else box.HEAVY_HEAD, pad_edge=not lean)
    hybrid = _mixer_column(a)
    # a hybrid's mixer column names attention's kind on attention layers and the other mixers' elsewhere
    mixer = "mixer" if hybrid else "attn" if lean else "attention"
    mixing = "mixing" if hybrid else mixer
    heads = ("layer", "ffn", mixer, "window", "params", "active", "linear\nFLOPs", f"{mixing}\nFLOPs")
    for col in heads:
        lt.add_column(col, justify="left" if col in ("ffn", mixer) else "right", no_wrap=True)
    if bar:
        lt.add_column("", no_wrap=True)
    peak = max((r.params for r in a.layers), default=1)
    for r in a.layers:
        cells = [str(r.index), r.ffn, layer_mixer(r) if hybrid else r.attention, str(r.window or "-")]
        cells += [number(x) for x in (r.params, r.active, r.flops_linear, r.flops_attention)]
        if bar:
            cells.append(f"[cyan]{'█' * max(1, round(20 * r.params / peak))}[/cyan]")
        lt.add_row(*cells)
    return lt


def print_tables(analyses: list[Analysis], *, layers: bool = False, console: Any = None) -> None:
    from rich.console import Console

    con = console or Console()
    con.print(f"[dim]{convention_line(analyses[0].conventions)}[/dim]")
    if len(analyses) > 1:
        print_side_by_side(analyses, con)
        if not layers:
            return
    for a in analyses:
        if len(analyses) == 1:
            con.print(first_fitting(con, [headline_table(a)], wrapping=0))
            con.print(components_table(a))
            if a.mtp:
                con.print(
                    f"MTP ({a.mtp.n_layers} layer(s), not in the totals above): {human(a.mtp.params)} params, "
                    f"{human(a.mtp.forward_flops)} fwd FLOPs/token"
                )
        if layers:
            variants = [layers_table(a), layers_table(a, bar=False), layers_table(a, number=human, bar=False)]
            con.print(first_fitting(con, variants))
