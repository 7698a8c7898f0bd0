"""`--plot FILE.png`: matplotlib, imported only here and only when a plot is asked for, drawn on a bare
Figure (no pyplot, so no global state and no display). The PNG goes through moec's output rules."""

from __future__ import annotations

import io
from typing import Any

from moec.errors import CommandError
from moec.roofline.render import LABELS
from moec.roofline.report import RooflineReport


def new_figure(width: float, height: float, columns: int = 1) -> tuple[Any, list[Any]]:
    """A matplotlib Figure and its axes, or a CommandError when matplotlib is not installed."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise CommandError("--plot needs matplotlib: pip install matplotlib") from None
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig, list(fig.subplots(1, columns, squeeze=False)[0])


def png_bytes(fig: Any) -> bytes:
    """``fig`` as a PNG, for moec.commands.common.write_output (moec/output_files.py's rules)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120)
    return buffer.getvalue()


def plot_roofline(report: RooflineReport) -> Any:
    """Left: the roofline (attainable FLOP/s against intensity) with each component at the rate its
    lower-bound time gives. Right: tokens/s against batch."""
    s = report.step
    fig, (roof, curve) = new_figure(11, 4.5, columns=2)
    points = [c for c in s.costs if c.intensity and c.time_s]
    lo = min([c.intensity for c in points] + [s.ridge]) / 10
    hi = max([c.intensity for c in points] + [s.ridge]) * 10
    xs = [lo * (hi / lo) ** (i / 200) for i in range(201)]
    bandwidth = s.accelerator.hbm_bytes_per_s
    roof.plot(xs, [min(s.peak_flops, bandwidth * x) for x in xs], color="black", label="roofline")
    # parts of one intensity sit on one point (projections, router and head at decode): shrinking markers
    # of different shapes keep each one visible
    for i, c in enumerate(points):
        marker = "os^Dv<>ph"[i % 9]
        roof.scatter(
            [c.intensity], [c.flops / c.time_s], label=LABELS[c.name], zorder=3 + i, marker=marker, s=110 - 12 * i
        )
    roof.set(xscale="log", yscale="log", xlabel="arithmetic intensity (FLOP/B)", ylabel="FLOP/s")
    w = s.workload
    roof.set_title(f"{s.model}: {w.phase}, batch {w.batch}, {s.accelerator.name}", fontsize=9)
    roof.legend(fontsize=7)
    batches = [p.workload.batch for p in report.curve]
    curve.plot(batches, [p.tokens_per_s for p in report.curve], marker="o")
    curve.set(xscale="log", yscale="log", xlabel="batch", ylabel="tokens/s (upper bound)")
    curve.set_title(f"{w.phase} tokens/s against batch, context {w.seq}", fontsize=9)
    return fig
