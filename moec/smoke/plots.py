"""The PNGs of `moec smoke-run --plot DIR`, drawn with matplotlib (imported here only, and only when asked).

loss.png: cross-entropy and aux loss per step, with the noise and floor lines. expert-load.png: per MoE
layer, each expert's kept slots per step over the mean (1 = its fair share), experts by steps.
balance.png: per layer over the steps: H/ln E with the collapse threshold, max/mean, dropped fraction,
router z, and the selection-bias drift when a layer has one.
"""

from __future__ import annotations

import io
from typing import Any

from moec.smoke.metrics import COLLAPSE_ENTROPY
from moec.smoke.report import SmokeResult

DPI = 100


def render_pngs(result: SmokeResult) -> list[bytes]:
    """loss.png, expert-load.png and balance.png, as PNG bytes; the loss curve alone for a run without MoE layers,
    whose routing figures would be empty axes."""
    plt = pyplot()
    figures = [loss_figure(plt, result)]
    if result.layers:
        figures += [load_figure(plt, result), balance_figure(plt, result)]
    return [png_bytes(plt, fig) for fig in figures]


def pyplot() -> Any:
    """matplotlib.pyplot on the Agg backend (files only: no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def png_bytes(plt: Any, fig: Any) -> bytes:
    """``fig`` as PNG bytes at :data:`DPI`, the figure closed."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    plt.close(fig)
    return buf.getvalue()


def loss_figure(plt: Any, r: SmokeResult) -> Any:
    steps = [s.step for s in r.step_records]
    fig, (ce, aux) = plt.subplots(2, 1, figsize=(8, 6), sharex=True)
    ce.plot(steps, [s.loss for s in r.step_records], label="cross-entropy")
    ce.axhline(r.loss_noise, color="grey", linestyle="--", label=f"noise ln V = {r.loss_noise:.2f}")
    ce.axhline(r.loss_floor, color="green", linestyle=":", label=f"floor (entropy rate) = {r.loss_floor:.2f}")
    ce.set_ylabel("loss (nats)")
    ce.legend()
    ce.set_title(f"{r.spec}: training loss")
    aux.plot(steps, [s.aux for s in r.step_records], color="tab:orange")
    aux.set_ylabel("aux loss (weighted)")
    aux.set_xlabel("step")
    fig.tight_layout()
    return fig


def load_figure(plt: Any, r: SmokeResult) -> Any:
    n = max(1, len(r.layers))
    fig, axes = plt.subplots(n, 1, figsize=(8, 2.5 * n + 1), squeeze=False)
    for j, (ax, layer) in enumerate(zip(axes[:, 0], r.layers, strict=False)):
        share = []
        for s in r.step_records:
            load = s.layers[j].load
            mean = sum(load) / len(load) if load else 0
            share.append([v / mean if mean else 0.0 for v in load])
        columns = list(map(list, zip(*share, strict=True))) if share else [[0.0]]  # (experts, steps)
        im = ax.imshow(columns, aspect="auto", interpolation="nearest", cmap="viridis", origin="lower")
        ax.set_ylabel(f"layer {layer.layer}\nexpert")
        fig.colorbar(im, ax=ax, label="load / mean")
    axes[-1, 0].set_xlabel("step")
    axes[0, 0].set_title(f"{r.spec}: expert load per step (1 = fair share)")
    fig.tight_layout()
    return fig


def balance_figure(plt: Any, r: SmokeResult) -> Any:
    panels = [
        ("H / ln E", lambda ls: ls.entropy_norm),
        ("max / mean", lambda ls: ls.max_mean),
        ("dropped fraction", lambda ls: ls.dropped_fraction),
        ("router z", lambda ls: ls.router_z),
    ]
    if any(ls.bias_drift is not None for s in r.step_records for ls in s.layers):
        panels.append(("bias drift", lambda ls: ls.bias_drift or 0.0))
    fig, axes = plt.subplots(len(panels), 1, figsize=(8, 2 * len(panels) + 1), sharex=True)
    steps = [s.step for s in r.step_records]
    for ax, (name, value) in zip(axes, panels, strict=True):
        for j, layer in enumerate(r.layers):
            ax.plot(steps, [value(s.layers[j]) for s in r.step_records], label=f"layer {layer.layer}")
        ax.set_ylabel(name)
    axes[0].axhline(COLLAPSE_ENTROPY, color="red", linestyle="--", label=f"collapse below {COLLAPSE_ENTROPY:g}")
    axes[0].legend(fontsize="small", ncol=4)
    axes[0].set_title(f"{r.spec}: routing balance per step")
    axes[-1].set_xlabel("step")
    fig.tight_layout()
    return fig
