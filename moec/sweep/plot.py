"""`moec sweep --plot pareto.png`: every kept row on the first two objectives, the frontier joined."""

from __future__ import annotations

from typing import Any

from moec.errors import CommandError
from moec.roofline.plot import new_figure
from moec.sweep.run import SweepResult


def plot_pareto(r: SweepResult) -> Any:
    if len(r.objectives) < 2:
        raise CommandError("--plot draws the first two --objective metrics; give two (e.g. active_params:min)")
    x, y = r.objectives[0], r.objectives[1]
    fig, (ax,) = new_figure(7, 5)
    others = [row for row in r.rows if not row.pareto]
    front = sorted((row for row in r.rows if row.pareto), key=lambda row: row.metrics[x.metric])
    ax.scatter(
        [o.metrics[x.metric] for o in others], [o.metrics[y.metric] for o in others], color="0.6", s=14, label="kept"
    )
    ax.plot(
        [p.metrics[x.metric] for p in front],
        [p.metrics[y.metric] for p in front],
        color="tab:red",
        marker="o",
        label="Pareto frontier",
    )
    for p in front:
        label = ", ".join(f"{k.rsplit('.', 1)[-1]}={v}" for k, v in p.values.items())
        ax.annotate(
            label, (p.metrics[x.metric], p.metrics[y.metric]), fontsize=6, xytext=(3, 3), textcoords="offset points"
        )
    ax.set(xlabel=f"{x.metric} ({x.sense})", ylabel=f"{y.metric} ({y.sense})")
    ax.set_title(f"{r.base}: {len(r.rows)} designs, {len(front)} on the frontier", fontsize=9)
    ax.legend(fontsize=7)
    return fig
