"""Hyper-connections' parameters, FLOPs and activation bytes (docs/conventions.md, "Hyper-connections"):
pure arithmetic over ``model.hyper_connections`` (moec/spec/hyper.py); never imports torch.

With n streams of width d, every sublayer (token mixer or FFN) has one connection: a projection of the n·d
flattened streams to M = 2n (+ n² with the Sinkhorn mix) coefficients, M biases and one learned factor per
coefficient group (pre, post, comb). The dynamic head is one more projection of n·d to n, n biases and one factor.
"""

from __future__ import annotations

from moec.analyze.counts import Part
from moec.spec.plan import AbsentPlan, LayerPlan, ResolvedModel

COMPONENT = "hyper_connections"


def connections(layer: LayerPlan) -> int:
    """The connections a layer holds: one per sublayer it has (its token mixer, its FFN)."""
    return (not isinstance(layer.mixer, AbsentPlan)) + layer.has_ffn


def connection_part(model: ResolvedModel) -> Part:
    """One sublayer's connection: the projection (n·d)·M, its M biases and its factors; FLOPs 2·(n·d)·M for the
    projection and, with the Sinkhorn mix, 2·n²·d for combᵀ·x (a matrix product); the collapse by pre and the
    expansion by post weight whole streams elementwise (0), as do the norm, the sigmoids and Sinkhorn's sums."""
    hc = model.hyper_connections
    assert hc is not None
    n, d, m = hc.n_streams, model.d_model, hc.n_coefficients
    mm = n * d * m
    params = mm + m + hc.n_scales
    mix = n * n * d if hc.residual == "sinkhorn" else 0
    return Part(params, params, 2 * (mm + mix))


def layer_part(layer: LayerPlan, model: ResolvedModel) -> dict[str, Part]:
    """A layer's connections as the analyzer component ``hyper_connections``; {} without hyper-connections."""
    if model.hyper_connections is None:
        return {}
    one, k = connection_part(model), connections(layer)
    return {COMPONENT: Part(k * one.params, k * one.active, k * one.flops)}


def head_part(model: ResolvedModel) -> dict[str, Part]:
    """The merge before the final norm: dynamic, a projection (n·d)·n with n biases and one factor (FLOPs 2·n²·d);
    mean, nothing to learn and elementwise (0). {} without hyper-connections."""
    hc = model.hyper_connections
    if hc is None:
        return {}
    if hc.head == "mean":
        return {COMPONENT: Part(0, 0, 0)}
    n, d = hc.n_streams, model.d_model
    params = n * d * n + n + 1
    return {COMPONENT: Part(params, params, 2 * n * d * n)}


def activation_bytes_per_token(model: ResolvedModel, nbytes: int = 2) -> int:
    """What the streams add to the activations saved for backward per token: for each connection (and a dynamic
    head) the n·d streams it reads in the model dtype, their flattened RMS-normalised copy in fp32 (the
    projection's input) and its coefficients in fp32; 0 without hyper-connections."""
    hc = model.hyper_connections
    if hc is None:
        return 0
    n, d = hc.n_streams, model.d_model
    per = nbytes * n * d + 4 * n * d + 4 * hc.n_coefficients
    head = nbytes * n * d + 4 * n * d + 4 * n if hc.head == "dynamic" else nbytes * n * d
    return sum(connections(lp) for lp in model.layers) * per + head


CONVENTION = (
    "n streams of width d: each sublayer's connection is a projection (n·d)·M, M = 2n (+ n² with the Sinkhorn mix) "
    "plus M biases and 2 (3) factors; FLOPs 2·(n·d)·M, and 2·n²·d for the Sinkhorn mix combᵀ·x; the dynamic head "
    "(n·d)·n + n + 1 parameters, 2·n²·d FLOPs; the collapse, the expansion, the norm and Sinkhorn's sums are "
    "elementwise (0)"
)
