"""The roofline report as text (80 columns), Markdown and JSON; the plain table helpers `moec sweep` shares."""

from __future__ import annotations

import json
import textwrap
from collections.abc import Sequence

from moec.roofline.model import COMPONENT_LABELS
from moec.roofline.report import RooflineReport, to_dict

LABELS = COMPONENT_LABELS  # one list: moec.roofline.model
COLUMNS = ("component", "FLOPs", "bytes", "FLOP/B", "bound", "time", "compute-bound")


def text_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """Columns padded to their widest cell: the first left-aligned, the rest right-aligned."""
    widths = [max(len(str(r[i])) for r in (header, *rows)) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        first = str(cells[0]).ljust(widths[0])
        return "  ".join([first, *(str(c).rjust(w) for c, w in zip(cells[1:], widths[1:], strict=True))]).rstrip()

    return [line(header), *(line(r) for r in rows)]


def md_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    cells = [header, *rows]
    out = ["| " + " | ".join(str(c) for c in r) + " |" for r in cells]
    out.insert(1, "|---|" + "---:|" * (len(header) - 1))
    return out


def _si(x: float, unit: str = "") -> str:
    """Three significant digits and an SI prefix (``2.68 GB``, ``191 PFLOP``): one width from a decode step at
    batch 1 to a prefill of many long prompts."""
    for prefix, scale in (("E", 1e18), ("P", 1e15), ("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(x) >= scale:
            return f"{x / scale:.3g} {prefix}{unit}"
    return f"{x:.3g} {unit}".rstrip()


def _seconds(t: float) -> str:
    if t >= 1000:
        return f"{t:,.0f} s"
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("µs", 1e-6)):
        if t >= scale:
            return f"{t / scale:.3g} {unit}"
    return f"{t * 1e9:.3g} ns"


def _intensity(x: float | None) -> str:
    return "-" if x is None else f"{x:,.1f}" if x < 1e4 else _si(x)


def _from(b: int | None) -> str:
    return "never" if b is None else f"batch {b:,}"


def component_rows(report: RooflineReport) -> list[tuple[str, ...]]:
    rows = [
        (
            LABELS[c.name],
            _si(c.flops),
            _si(c.bytes, "B"),
            _intensity(c.intensity),
            c.bound,
            _seconds(c.time_s),
            _from(report.crossovers[c.name]),
        )
        for c in report.step.costs
    ]
    s = report.step
    total_flops, total_bytes = sum(c.flops for c in s.costs), sum(c.bytes for c in s.costs)
    compute = sum(c.compute_s for c in s.costs) >= sum(c.memory_s for c in s.costs)
    rows.append(
        (
            "step",
            _si(total_flops),
            _si(total_bytes, "B"),
            _intensity(total_flops / total_bytes),
            "compute" if compute else "memory",
            _seconds(s.step_s),
            _from(report.step_crossover),
        )
    )
    return rows


def curve_rows(report: RooflineReport) -> list[tuple[str, ...]]:
    return [
        (
            f"{p.workload.batch:,}",
            f"{p.tokens_per_s:,.0f}",
            f"{p.step_s * 1e3:,.3f}",
            "compute" if sum(c.compute_s for c in p.costs) >= sum(c.memory_s for c in p.costs) else "memory",
            "yes" if p.fits else "no",
        )
        for p in report.curve
    ]


CURVE_COLUMNS = ("batch", "tokens/s", "step ms", "bound", "fits")


def summary_lines(report: RooflineReport) -> list[str]:
    s, w, acc = report.step, report.step.workload, report.step.accelerator
    ranks = f"{w.ranks} × " if w.ranks > 1 else ""
    return [
        f"{s.model} · {w.phase} · batch {w.batch:,} · context {w.seq:,} · weights {w.dtype}, KV {w.kv_dtype}",
        f"{ranks}{acc.name}, tp {w.tp}, ep {w.ep}",
        f"{s.peak_flops / 1e12:,.0f} TFLOP/s {w.dtype} · {acc.hbm_bytes_per_s / 1e12:,.2f} TB/s · "
        f"ridge {s.ridge:,.0f} FLOP/B",
        *textwrap.wrap(f"source: {acc.source}", 80, subsequent_indent="  "),
    ]


def result_lines(report: RooflineReport) -> list[str]:
    s, w = report.step, report.step.workload
    if w.phase == "decode":
        lines = [f"decode: at most {s.tokens_per_s:,.1f} tokens/s; at least {s.step_s * 1e3:,.3f} ms per output token"]
    else:
        lines = [
            f"prefill: at most {s.tokens_per_s:,.0f} tokens/s; at least {s.step_s * 1e3:,.3f} ms to the first token"
        ]
    if s.distinct_experts is not None:
        lines.append(
            f"routed experts read per MoE layer and rank: {s.distinct_experts:,.2f} (expected; {report.routing})"
        )
    held = s.weights_bytes + s.kv_cache_bytes
    verdict = "fits" if s.fits else "does not fit"
    cache = "KV + mixer state" if any(c.name == "mixer_state" for c in s.costs) else "KV"
    lines.append(
        f"per rank: weights {s.weights_bytes / 1e9:,.2f} GB + {cache} {s.kv_cache_bytes / 1e9:,.2f} GB = "
        f"{held / 1e9:,.2f} GB of {s.accelerator.hbm_bytes / 1e9:,.0f} GB: {verdict}"
    )
    return lines


def to_text(report: RooflineReport) -> str:
    lines = summary_lines(report) + [""] + text_table(COLUMNS, component_rows(report)) + [""]
    lines += [w for line in result_lines(report) for w in textwrap.wrap(line, 80, subsequent_indent="  ")]
    lines += ["", "tokens/s against batch:"] + text_table(CURVE_COLUMNS, curve_rows(report))
    return "\n".join(lines) + "\n"


def to_markdown(report: RooflineReport) -> str:
    lines = [f"<!-- {to_dict(report)['schema']} -->", "", *(f"_{line}_  " for line in summary_lines(report)), ""]
    lines += md_table(COLUMNS, component_rows(report)) + [""] + [f"- {line}" for line in result_lines(report)] + [""]
    lines += md_table(CURVE_COLUMNS, curve_rows(report))
    return "\n".join(lines) + "\n"


def to_json(report: RooflineReport) -> str:
    return json.dumps(to_dict(report), indent=2) + "\n"
