"""A sweep's rows as an 80-column table, CSV, JSON and Markdown, with what was skipped and why."""

from __future__ import annotations

import csv
import io
import json
import textwrap
from typing import Any

from moec.roofline.render import md_table, text_table
from moec.sweep.grid import METRICS
from moec.sweep.run import SweepResult

SCHEMA = "moec.sweep/1"
# the table's short headers and formats; CSV and JSON carry every metric exactly
SHORT = {
    "total_params": ("total", lambda v: f"{v / 1e9:,.2f}B"),
    "active_params": ("active", lambda v: f"{v / 1e9:,.2f}B"),
    "forward_flops": ("GFLOP/tok", lambda v: f"{v / 1e9:,.1f}"),
    "kv_bytes_per_token": ("KV B/tok", lambda v: f"{v:,}"),
    "weights_bytes": ("weights", lambda v: f"{v / 1e9:,.1f}GB"),
    "decode_tokens_per_s": ("tok/s", lambda v: f"{v:,.0f}"),
}


# docs/conventions.md's symbols for the fields sweeps vary most, so that a table of four axes fits 80 columns
SYMBOLS = {
    "moe.n_experts": "E",
    "moe.router.top_k": "k",
    "moe.granularity": "m",
    "moe.n_shared_experts": "s",
    "moe.d_ff": "f",
    "moe.d_ff_shared": "f_s",
    "ffn.d_ff": "F",
    "model.d_model": "d",
    "model.n_layers": "L",
    "model.vocab_size": "V",
    "attention.n_heads": "h",
    "attention.n_kv_heads": "kv",
    "attention.head_dim": "hd",
}


def _axis_header(path: str) -> str:
    return SYMBOLS.get(path, path.rsplit(".", 1)[-1])


def header(r: SweepResult) -> list[str]:
    cols = [_axis_header(a.path) for a in r.axes]
    if r.budget is not None:
        cols.append("d_ff")
    return cols + [short for short, _ in SHORT.values()] + ["P"]


def table_rows(r: SweepResult) -> list[list[str]]:
    out = []
    for row in r.rows:
        cells = [row.values[a.path] for a in r.axes]
        if r.budget is not None:
            cells.append(f"{row.d_ff}")
        cells += [fmt(row.metrics[m]) for m, (_, fmt) in SHORT.items()]
        out.append([*cells, "*" if row.pareto else ""])
    return out


def settings_line(r: SweepResult) -> str:
    s = r.settings
    return (
        f"decode tok/s at batch {s.batch}, context {s.seq:,}, {s.dtype} (KV {s.kv_dtype}) on {s.gpu}; "
        f"forward FLOPs at seq {s.seq:,}"
    )


def summary_lines(r: SweepResult) -> list[str]:
    lines = [f"{r.base}: {r.combinations} combinations, {len(r.rows)} kept"]
    named = [f"{_axis_header(a.path)} = {a.path}" for a in r.axes if _axis_header(a.path) != a.path]
    if named:
        lines.append("columns: " + ", ".join(named))
    if r.budget is not None:
        lines.append(f"budget: {r.budget.metric} = {float(r.budget_target):,.0f} exactly, d_ff solved per row")
    if r.objectives:
        axes = ", ".join(f"{o.sense} {o.metric}" for o in r.objectives)
        lines.append(f"P: * on the Pareto frontier of {axes}; sorted by the first")
    if r.duplicates:
        lines.append(f"{r.duplicates} combination(s) resolved to a model already listed and are left out")
    for keep, n in r.filtered.items():
        lines.append(f"--keep {keep}: removed {n}")
    for reason, n in r.skipped.most_common():
        lines.append(f"skipped {n}: {reason} (e.g. {r.examples[reason]})")
    return lines


def to_text(r: SweepResult) -> str:
    lines = [
        wrapped
        for line in (settings_line(r), *summary_lines(r))
        for wrapped in textwrap.wrap(line, 80, subsequent_indent="  ")
    ]
    lines.append("")
    lines += text_table(header(r), table_rows(r)) if r.rows else ["no combination was kept"]
    return "\n".join(lines) + "\n"


def to_markdown(r: SweepResult) -> str:
    lines = [f"<!-- {SCHEMA} -->", "", f"_{settings_line(r)}_", ""]
    lines += [f"- {line}" for line in summary_lines(r)] + [""]
    if r.rows:
        lines += md_table(header(r), table_rows(r))
    return "\n".join(lines) + "\n"


def _records(r: SweepResult) -> list[dict[str, Any]]:
    out = []
    for row in r.rows:
        rec: dict[str, Any] = dict(row.values)
        if r.budget is not None:
            rec["d_ff"] = row.d_ff
        rec.update(row.metrics)
        rec["pareto"] = row.pareto
        out.append(rec)
    return out


def to_csv(r: SweepResult) -> str:
    buf = io.StringIO()
    cols = [a.path for a in r.axes] + (["d_ff"] if r.budget is not None else []) + [*METRICS, "pareto"]
    w = csv.DictWriter(buf, fieldnames=cols, lineterminator="\n")
    w.writeheader()
    w.writerows(_records(r))
    return buf.getvalue()


def to_json(r: SweepResult) -> str:
    s = r.settings
    d = {
        "schema": SCHEMA,
        "base": r.base,
        "settings": {"gpu": s.gpu, "batch": s.batch, "seq": s.seq, "dtype": s.dtype, "kv_dtype": s.kv_dtype},
        "grid": {a.path: list(a.texts) for a in r.axes},
        "budget": None if r.budget is None else {"metric": r.budget.metric, "value": float(r.budget_target)},
        "objectives": [{"metric": o.metric, "sense": o.sense} for o in r.objectives],
        "keep": [k.text for k in r.keeps],
        "combinations": r.combinations,
        "kept": len(r.rows),
        "duplicates": r.duplicates,
        "filtered": dict(r.filtered),
        "skipped": [{"reason": k, "count": n, "example": r.examples[k]} for k, n in r.skipped.most_common()],
        "metrics": METRICS,
        "rows": _records(r),
    }
    return json.dumps(d, indent=2) + "\n"
