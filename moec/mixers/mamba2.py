"""Mamba2, the state-space mixer of Granite-4.0-H and Nemotron-H (docs/mixers.md, "mamba2"; Dao & Gu 2024,
"Transformers are SSMs", arXiv 2405.21060).

One layer: ``z, xBC, dt = in_proj(h)``; ``x, B, C = silu(conv(xBC))`` (a causal depthwise convolution);
per head a step ``Δ = clamp(softplus(dt + dt_bias))`` and a scalar decay ``a = exp(−Δ·exp(A_log))``; per head
a state ``S`` of ``head_dim × state_dim`` that each token updates as ``S ← a·S + (Δ·x)·Bᵀ`` and reads as
``y = S·C + D·x``; then ``out_proj(groupnorm(y · silu(z)))``, an RMS norm over each of the ``n_groups`` slices.
``B`` and ``C`` are shared by the heads of a group.

Its decode state is the convolution's ``conv_kernel − 1`` last inputs and every head's ``S``: a constant in
the context length.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from typing import Annotated

from pydantic import Field

from moec.strict import MAX_HEAD_DIM, MAX_HEADS, MAX_SEQ, Strict

KIND = "mamba2"
MODULE = "Mamba2"

EXPAND = 2  # Mamba2's default inner width is twice the model width (n_heads left unset)
FP32_STATE = ("ssm",)  # the scan's state accumulates over the sequence: float32 at least (Nemotron-H keeps it so)


class Mamba2Section(Strict):
    n_heads: Annotated[int, Field(gt=0, le=MAX_HEADS)] | None = None
    """SSM heads, each with its own step, decay and state (inner width n_heads·head_dim); null: 2·d_model/head_dim."""
    head_dim: Annotated[int, Field(gt=0, le=MAX_HEAD_DIM)] = 64
    """Channels per head (the width of x per head; Nemotron-H's mamba_head_dim)."""
    state_dim: Annotated[int, Field(gt=0, le=MAX_HEAD_DIM)] = 128
    """State entries per channel: the width of B and C (ssm_state_size, mamba_d_state)."""
    n_groups: Annotated[int, Field(gt=0, le=MAX_HEADS)] = 1
    """Groups of heads sharing one B and one C; the gated output norm normalises each group's slice alone."""
    conv_kernel: Annotated[int, Field(gt=0, le=64)] = 4
    """Tokens the causal depthwise convolution over x, B and C spans."""
    conv_bias: bool = True
    """A bias on the convolution."""
    bias: bool = False
    """Biases on in_proj and out_proj."""
    chunk: Annotated[int, Field(gt=0, le=MAX_SEQ)] = 256
    """Tokens per chunk of the chunked (SSD) scan: changes the training FLOPs, never the outputs."""
    step_min: Annotated[float, Field(ge=0, le=1e6)] = 0.0
    """Lower clamp of the step size Δ after the softplus (0: none; Nemotron-H clamps at its time_step_min)."""
    step_max: Annotated[float, Field(gt=0, le=1e6)] | None = None
    """Upper clamp of Δ; null: none."""
    norm_eps: Annotated[float, Field(gt=0, lt=1)] | None = None
    """eps of the gated output norm; null: model.norm.eps."""


Section = Mamba2Section  # the name moec.mixers' contract reads


@dataclass(frozen=True, kw_only=True)
class Plan:
    n_heads: int
    head_dim: int
    state_dim: int
    n_groups: int
    conv_kernel: int
    conv_bias: bool
    bias: bool
    chunk: int
    step_min: float
    step_max: float | None
    norm_eps: float
    kind: str = KIND


def _heads(section: Mamba2Section, d_model: int) -> int:
    return section.n_heads if section.n_heads is not None else EXPAND * d_model // section.head_dim


def plan(section: Mamba2Section, d_model: int, norm_eps: float) -> Plan:
    return Plan(
        n_heads=_heads(section, d_model),
        head_dim=section.head_dim,
        state_dim=section.state_dim,
        n_groups=section.n_groups,
        conv_kernel=section.conv_kernel,
        conv_bias=section.conv_bias,
        bias=section.bias,
        chunk=section.chunk,
        step_min=section.step_min,
        step_max=section.step_max,
        norm_eps=section.norm_eps if section.norm_eps is not None else norm_eps,
    )


def problems(section: Mamba2Section, d_model: int) -> list[tuple[tuple[str, ...], str]]:
    found: list[tuple[tuple[str, ...], str]] = []
    if section.n_heads is None and (EXPAND * d_model) % section.head_dim:
        found.append(
            (
                ("head_dim",),
                f"with n_heads unset, head_dim {section.head_dim} must divide 2·d_model = {EXPAND * d_model}",
            )
        )
    heads = _heads(section, d_model)
    if heads and heads % section.n_groups:
        found.append((("n_groups",), f"n_groups {section.n_groups} must divide n_heads {heads}"))
    if section.step_max is not None and section.step_max <= section.step_min:
        found.append((("step_max",), f"step_max {section.step_max} must exceed step_min {section.step_min}"))
    return found


def inner_width(plan: Plan) -> int:
    """n_heads·head_dim: the width of x, z and y."""
    return plan.n_heads * plan.head_dim


def conv_channels(plan: Plan) -> int:
    """x, B and C, the convolution's channels."""
    return inner_width(plan) + 2 * plan.n_groups * plan.state_dim


def matmul_weights(plan: Plan, d_model: int) -> int:
    """in_proj (d → z, x, B, C and one dt per head) and out_proj (inner width → d)."""
    inner = inner_width(plan)
    return d_model * (inner + conv_channels(plan) + plan.n_heads) + inner * d_model


def params(plan: Plan, d_model: int) -> int:
    inner, channels = inner_width(plan), conv_channels(plan)
    biases = (inner + channels + plan.n_heads + d_model) if plan.bias else 0
    conv = channels * plan.conv_kernel + (channels if plan.conv_bias else 0)
    per_head = 3 * plan.n_heads  # dt_bias, A_log, D
    return matmul_weights(plan, d_model) + biases + conv + per_head + inner  # + the gated norm's weight


def mixing_flops(plan: Plan, d_model: int, seq: int) -> dict[str, Fraction]:
    """Per token, beyond the projections. Both forms start with the depthwise convolution, 2·conv_kernel per
    channel of x, B and C. What multiplies a state or a token by a per-head scalar (the decay, Δ, D, the gates)
    is elementwise and counts 0; what sums over an index counts 2 per multiply-add.

    ``recurrent`` (one decode step): per head, the rank-one update ``S += (Δ·x)·Bᵀ`` and the read-out ``S·C``,
    head_dim·state_dim multiply-adds each: 4·n_heads·head_dim·state_dim.

    ``chunked`` (the SSD form, the ``seq`` tokens in chunks of ``chunk``, the last one ``seq mod chunk`` long):
    a chunk of c tokens forms per group its c × c scores ``C·Bᵀ`` (2·c²·state_dim) and per head multiplies the
    decay-masked scores by ``Δ·x`` (2·c²·head_dim), adds its tokens to the state (2·c·head_dim·state_dim) and
    reads the state it received (2·c·head_dim·state_dim). Passing the state on is a decay and an add: 0.
    Summed over the chunks and divided by ``seq``: it grows with ``seq`` up to ``chunk`` and stays there."""
    channels, heads, p, n = conv_channels(plan), plan.n_heads, plan.head_dim, plan.state_dim
    conv = 2 * plan.conv_kernel * channels
    whole, tail = divmod(seq, plan.chunk)
    squares = whole * plan.chunk**2 + tail**2  # Σ c² over the chunks
    chunked = Fraction(squares * 2 * (plan.n_groups * n + heads * p), seq) + 4 * heads * p * n
    return {"chunked": conv + chunked, "recurrent": Fraction(conv + 4 * heads * p * n)}


def state_elements(plan: Plan, d_model: int) -> dict[str, int]:
    """The convolution's conv_kernel − 1 previous inputs per channel, and every head's state."""
    return {
        "conv": conv_channels(plan) * (plan.conv_kernel - 1),
        "ssm": plan.n_heads * plan.head_dim * plan.state_dim,
    }


def module_kwargs(plan: Plan) -> dict[str, int | float | bool | str]:
    kwargs: dict[str, int | float | bool | str] = {
        "n_heads": plan.n_heads,
        "head_dim": plan.head_dim,
        "state_dim": plan.state_dim,
        "n_groups": plan.n_groups,
        "conv_kernel": plan.conv_kernel,
        "conv_bias": plan.conv_bias,
        "bias": plan.bias,
        "chunk": plan.chunk,
        "step_min": plan.step_min,
        "norm_eps": plan.norm_eps,
    }
    if plan.step_max is not None:  # the module's default is no upper clamp: only plain values go through
        kwargs["step_max"] = plan.step_max
    return kwargs
