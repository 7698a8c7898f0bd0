"""``moec bench``'s plain-text table: one row per (tokens, backend), then the notes."""

from __future__ import annotations

import shutil
import textwrap
from typing import Any

KEY_COLUMNS = 2  # tokens and backend: repeated in every block when the columns are split to fit the width


def render_table(report: dict[str, Any], width: int | None = None) -> str:
    """A plain-text table: one row per (tokens, backend), at most ``width`` columns wide (default: the
    terminal's): the heading and notes wrap at spaces, and the columns go into as many blocks as needed,
    each repeating tokens and backend, so that no number is ever broken."""
    width = width or shutil.get_terminal_size().columns
    c = report["config"]
    m = report["machine"]
    mode = "fwd+bwd" if c["backward"] else "fwd"
    clamps = [f"{k} {c.get('activation_' + k)}" for k in ("alpha", "limit") if c.get("activation_" + k) is not None]
    activation = f"{c['activation']} ({', '.join(clamps)})" if clamps else c["activation"]
    head = (
        f"moec bench: d_model={c['d_model']} d_ff={c['d_ff']} n_experts={c['n_experts']} top_k={c['top_k']} "
        f"{activation} {c['dtype']} {mode} | {m['device']} {m.get('gpu') or m['cpu']} "
        f"({m['torch_threads']} threads) torch {m['torch']} | median of {c['repeats']}, interleaved"
        f" | load avg {m['loadavg_1min_before_after'][0]} -> {m['loadavg_1min_before_after'][1]}"
    )
    cols = [
        "tokens",
        "backend",
        "ms",
        "TFLOP/s",
        "GB/s",
        "vs naive",
        "vs ref",
        "/ ideal",
        "max err",
        "grad err (rel)",
        "peak MB",
    ]
    rows, notes = [], []
    for r in report["results"]:
        if r["status"] != "ok":
            rows.append([str(r["tokens"]), r["backend"], r["status"]] + [""] * (len(cols) - 3))
            notes.append(f"{r['backend']} {r['status']}: {r['note']}")
            continue
        if r["note"]:
            notes.append(f"{r['backend']} (T={r['tokens']}): {r['note']}")
        rows.append(
            [
                str(r["tokens"]),
                r["backend"],
                f"{r['ms']:.2f}",
                _fmt(r["tflops"], "{:.3f}"),
                _fmt(r["gbps"], "{:.0f}"),
                _fmt(r["speedup_vs_naive"], "{:.2f}x"),
                _fmt(r["speedup_vs_reference"], "{:.2f}x"),
                _fmt(r["ratio_to_ideal"], "{:.2f}"),
                _fmt(r["max_abs_err"], "{:.1e}"),
                _fmt(r["max_rel_err_grad"], "{:.1e}"),
                _fmt(r["peak_mem_mb"], "{:.0f}"),
            ]
        )
    widths = [max(len(col), *(len(row[i]) for row in rows)) if rows else len(col) for i, col in enumerate(cols)]
    lines = textwrap.wrap(head, width, break_long_words=False, break_on_hyphens=False)
    for block in column_blocks(widths, width):
        lines.append("  ".join(cols[i].rjust(widths[i]) for i in block))
        lines += ["  ".join(row[i].rjust(widths[i]) for i in block) for row in rows]
    legend = "/ ideal: time over dense matmuls of the same FLOPs and shapes; errors vs the naive oracle (float64)."
    for text in [*(f"note: {n}" for n in [*report["notes"], *dict.fromkeys(notes)]), legend]:
        lines += textwrap.wrap(text, width, break_long_words=False, break_on_hyphens=False)
    return "\n".join(lines)


def column_blocks(widths: list[int], width: int) -> list[list[int]]:
    """Column indices in blocks no wider than ``width`` (two spaces between columns), each block starting
    with the key columns."""
    key = list(range(KEY_COLUMNS))
    blocks, block = [], list(key)
    for i in range(KEY_COLUMNS, len(widths)):
        if len(block) > KEY_COLUMNS and sum(widths[j] + 2 for j in [*block, i]) - 2 > width:
            blocks.append(block)
            block = list(key)
        block.append(i)
    return [*blocks, block]


def _fmt(v: float | None, spec: str) -> str:
    return "-" if v is None else spec.format(v)
