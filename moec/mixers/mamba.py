"""The selective state-space mixer of Mamba (Gu & Dao, arXiv 2312.00752), as Jamba uses it
(docs/mixers.md, "mamba").

``u, z = in_proj(h)`` (each ``inner_dim`` wide); ``u = silu(conv(u))``, a causal depthwise convolution over
``conv_kernel`` tokens; ``dt, B, C = x_proj(u)`` (widths ``dt_rank``, ``state_size``, ``state_size``, each
RMS-normed in Jamba); ``Δ = softplus(dt_proj(dt))`` per channel. Each of the ``inner_dim`` channels keeps
``state_size`` numbers, decayed by ``exp(Δ·A)`` (``A = −exp(A_log)``, one negative rate per channel and state
element) and fed ``Δ·u·B`` every token; the readout is ``y = C·state + D·u``, gated by ``silu(z)`` before
``out_proj``.

Its decode state is the convolution's last ``conv_kernel − 1`` inputs and the ``inner_dim × state_size``
state: a constant in the context length.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Annotated

from pydantic import Field

from moec.strict import MAX_D, Strict

KIND = "mamba"
MODULE = "Mamba"
FP32_STATE = ("ssm",)  # the scan's state accumulates over the sequence: float32 at least, as transformers keeps it


class MambaSection(Strict):
    """The spec's ``mixers.mamba``: Mamba's selective state-space mixer, with Jamba's inner norms as an option."""

    state_size: Annotated[int, Field(gt=0, le=1024)] = 16
    """State elements per inner channel, N (Mamba's d_state)."""
    conv_kernel: Annotated[int, Field(gt=0, le=64)] = 4
    """Tokens the causal depthwise convolution spans (Mamba's d_conv)."""
    expand: Annotated[int, Field(gt=0, le=64)] = 2
    """The inner width as a multiple of d_model: inner_dim = expand · d_model."""
    dt_rank: Annotated[int, Field(gt=0, le=MAX_D)] | None = None
    """Rank of the time-step projection (x_proj's first slice, dt_proj's input); null: ⌈d_model / 16⌉."""
    conv_bias: bool = True
    """A bias on the convolution."""
    proj_bias: bool = False
    """Biases on in_proj and out_proj (dt_proj always has one: it sets the time step's offset)."""
    inner_norms: bool = False
    """RMSNorms (weight only) on the time step, B and C after x_proj, as Jamba has; plain Mamba has none."""
    norm_eps: Annotated[float, Field(gt=0, lt=1)] | None = None
    """Epsilon of the inner norms; null: model.norm.eps."""
    chunk: Annotated[int, Field(gt=0, le=4096)] = 64
    """Tokens per chunk of the chunked scan (training, prefill): the order of work, not a value or a count."""


Section = MambaSection  # the contract's name (moec/mixers/__init__.py)


@dataclass(frozen=True, kw_only=True)
class Plan:
    inner_dim: int
    state_size: int
    conv_kernel: int
    dt_rank: int
    conv_bias: bool
    proj_bias: bool
    inner_norms: bool
    norm_eps: float
    chunk: int
    kind: str = KIND


def default_dt_rank(d_model: int) -> int:
    """Mamba's time-step rank when none is given: ⌈d_model / 16⌉."""
    return math.ceil(d_model / 16)


def plan(section: Section, d_model: int, norm_eps: float) -> Plan:
    return Plan(
        inner_dim=section.expand * d_model,
        state_size=section.state_size,
        conv_kernel=section.conv_kernel,
        dt_rank=section.dt_rank if section.dt_rank is not None else default_dt_rank(d_model),
        conv_bias=section.conv_bias,
        proj_bias=section.proj_bias,
        inner_norms=section.inner_norms,
        norm_eps=section.norm_eps if section.norm_eps is not None else norm_eps,
        chunk=section.chunk,
    )


def problems(section: Section, d_model: int) -> list[tuple[tuple[str, ...], str]]:
    found: list[tuple[tuple[str, ...], str]] = []
    inner = section.expand * d_model
    if inner > MAX_D:
        found.append((("expand",), f"the inner width expand·d_model = {inner} is above the limit {MAX_D}"))
    if section.dt_rank is not None and section.dt_rank > inner:
        found.append((("dt_rank",), f"dt_rank {section.dt_rank} is above the inner width {inner} it projects back to"))
    if section.norm_eps is not None and not section.inner_norms:
        found.append((("norm_eps",), "norm_eps is set but inner_norms is false: there is no norm to apply it to"))
    return found


def matmul_weights(plan: Plan, d_model: int) -> int:
    """in_proj (d → 2·inner), x_proj (inner → dt_rank + 2·N), dt_proj (dt_rank → inner), out_proj (inner → d)."""
    inner, n, r = plan.inner_dim, plan.state_size, plan.dt_rank
    return d_model * 2 * inner + inner * (r + 2 * n) + r * inner + inner * d_model


def params(plan: Plan, d_model: int) -> int:
    inner, n = plan.inner_dim, plan.state_size
    conv = inner * plan.conv_kernel + (inner if plan.conv_bias else 0)
    proj_biases = (2 * inner + d_model) if plan.proj_bias else 0  # in_proj, out_proj
    dt_bias = inner
    decay_and_skip = inner * n + inner  # A_log, D
    norms = (plan.dt_rank + 2 * n) if plan.inner_norms else 0
    return matmul_weights(plan, d_model) + conv + proj_biases + dt_bias + decay_and_skip + norms


def mixing_flops(plan: Plan, d_model: int, seq: int) -> dict[str, Fraction]:
    """Per-token FLOPs beyond the projections; one multiply-add is 2, elementwise work (the decay exp(Δ·A), the
    input products Δ·u·B, softplus, the norms, the D skip and the gate) is 0. With ``I`` the inner width, ``N``
    the state size, ``K`` the kernel, ``T`` the chunk:

    - both forms: the depthwise convolution, ``2·K·I``;
    - **recurrent** (one decode step, one token with a cache): the state update ``s ← a ⊙ s + v``, one multiply-add per state element,
      and the readout ``C·s``, one per state element: ``4·I·N``;
    - **chunked** (training and prefill, ``S`` tokens in chunks of ``T``): scanning each chunk from a zero
      state (every chunk at once), one multiply-add per state element for each token but a chunk's first,
      ``T − 1`` per chunk; carrying the chunk-start states across chunks, one per chunk, the last giving the
      final state: together one per token, ``2·I·N``. Each token reads out its local state, ``2·I·N``, and its
      chunk's start times the decay since (a product, elementwise), ``2·I·N``: ``6·I·N`` per token, whatever
      ``S`` and ``T`` (the last chunk runs at its own length, ``S mod T``).
    """
    inner, n = plan.inner_dim, plan.state_size
    conv = 2 * plan.conv_kernel * inner
    state = inner * n
    return {"chunked": Fraction(conv + 6 * state), "recurrent": Fraction(conv + 4 * state)}


def state_elements(plan: Plan, d_model: int) -> dict[str, int]:
    """The convolution's conv_kernel − 1 previous inputs per inner channel, and the inner_dim × N state."""
    return {"conv": plan.inner_dim * (plan.conv_kernel - 1), "ssm": plan.inner_dim * plan.state_size}


def module_kwargs(plan: Plan) -> dict[str, int | float | bool | str]:
    return {
        "inner_dim": plan.inner_dim,
        "state_size": plan.state_size,
        "conv_kernel": plan.conv_kernel,
        "dt_rank": plan.dt_rank,
        "conv_bias": plan.conv_bias,
        "proj_bias": plan.proj_bias,
        "inner_norms": plan.inner_norms,
        "norm_eps": plan.norm_eps,
        "chunk": plan.chunk,
    }
