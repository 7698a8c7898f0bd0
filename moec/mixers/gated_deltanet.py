"""Gated DeltaNet (Yang, Kautz and Hatamizadeh, "Gated Delta Networks", arXiv 2412.06464), the linear
attention of Qwen3-Next, Qwen3.5 and Lara (docs/mixers.md, "gated_deltanet").

From the layer input ``h``: ``q, k, v = silu(conv(in_proj_qkv(h)))`` (a causal depthwise convolution over the
last ``conv_kernel`` tokens), ``z = in_proj_z(h)``, ``β = sigmoid(in_proj_b(h))`` and the log-decay
``g = −exp(A_log)·softplus(in_proj_a(h) + dt_bias)``, one ``β`` and ``g`` per value head. Queries and keys are
L2-normalised, the query also scaled by ``key_head_dim^−½``; every key head serves ``n_value_heads /
n_key_heads`` consecutive value heads. Each value head keeps a ``key_head_dim × value_head_dim`` matrix ``S``,
updated by the gated delta rule and read by the query:

    S_t = exp(g_t)·(I − β_t k_t k_tᵀ)·S_{t−1} + β_t k_t v_tᵀ,      o_t = S_tᵀ q_t

and the output is ``out_proj(rmsnorm(o) ⊙ silu(z))``, the norm over each value head with one weight of
``value_head_dim`` shared by the heads.

Its decode state per sequence is the convolution's last ``conv_kernel − 1`` inputs and the ``S`` of every
value head, whatever the context.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from typing import Annotated

from pydantic import Field

from moec.strict import MAX_HEAD_DIM, MAX_HEADS, Strict

KIND = "gated_deltanet"
MODULE = "GatedDeltaNet"
FP32_STATE = ("recurrent",)  # the delta rule's state, float32 at least whatever the model's dtype (as transformers)


class GatedDeltaNetSection(Strict):
    n_key_heads: Annotated[int, Field(gt=0, le=MAX_HEADS)] = 16
    """Query and key heads (transformers' linear_num_key_heads)."""
    n_value_heads: Annotated[int, Field(gt=0, le=MAX_HEADS)] = 32
    """Value heads, each with its own state, decay and β; a multiple of n_key_heads (linear_num_value_heads)."""
    key_head_dim: Annotated[int, Field(gt=0, le=MAX_HEAD_DIM)] = 128
    """Width of a query and key head: the rows of each head's state (linear_key_head_dim)."""
    value_head_dim: Annotated[int, Field(gt=0, le=MAX_HEAD_DIM)] = 128
    """Width of a value head: the columns of each head's state (linear_value_head_dim)."""
    conv_kernel: Annotated[int, Field(gt=0, le=64)] = 4
    """Tokens the causal depthwise convolution over q, k and v spans (linear_conv_kernel_dim)."""
    chunk: Annotated[int, Field(gt=0, le=4096)] = 64
    """Tokens per chunk of the chunked form (training, prefill): changes its FLOPs, not its values (fla: 64)."""
    norm_eps: Annotated[float, Field(gt=0, lt=1)] | None = None
    """Eps of the gated output norm; null: model.norm.eps (transformers uses rms_norm_eps)."""


Section = GatedDeltaNetSection  # the contract's name (moec/mixers/__init__.py)


@dataclass(frozen=True, kw_only=True)
class Plan:
    n_key_heads: int
    n_value_heads: int
    key_head_dim: int
    value_head_dim: int
    conv_kernel: int
    chunk: int
    norm_eps: float
    kind: str = KIND


def plan(section: Section, d_model: int, norm_eps: float) -> Plan:
    return Plan(
        n_key_heads=section.n_key_heads,
        n_value_heads=section.n_value_heads,
        key_head_dim=section.key_head_dim,
        value_head_dim=section.value_head_dim,
        conv_kernel=section.conv_kernel,
        chunk=section.chunk,
        norm_eps=norm_eps if section.norm_eps is None else section.norm_eps,
    )


def problems(section: Section, d_model: int) -> list[tuple[tuple[str, ...], str]]:
    if section.n_value_heads % section.n_key_heads:
        msg = (
            f"n_value_heads ({section.n_value_heads}) must be a multiple of n_key_heads ({section.n_key_heads}):"
            " each key head serves a whole number of value heads"
        )
        return [(("n_value_heads",), msg)]
    return []


def _widths(plan: Plan) -> tuple[int, int]:
    """(all key heads' width, all value heads' width)."""
    return plan.n_key_heads * plan.key_head_dim, plan.n_value_heads * plan.value_head_dim


def conv_channels(plan: Plan) -> int:
    """Channels of the convolution: the queries, the keys and the values."""
    keys, values = _widths(plan)
    return 2 * keys + values


def matmul_weights(plan: Plan, d_model: int) -> int:
    """in_proj_qkv (d → 2·Hk·dk + Hv·dv), in_proj_z (d → Hv·dv), in_proj_b and in_proj_a (d → Hv each) and
    out_proj (Hv·dv → d)."""
    _, values = _widths(plan)
    return d_model * (conv_channels(plan) + values + 2 * plan.n_value_heads) + values * d_model


def params(plan: Plan, d_model: int) -> int:
    """The matrices, the convolution (one kernel per channel, no bias), A_log and dt_bias (one per value
    head) and the gated norm's weight (value_head_dim, shared by the heads)."""
    conv = conv_channels(plan) * plan.conv_kernel
    return matmul_weights(plan, d_model) + conv + 2 * plan.n_value_heads + plan.value_head_dim


def _chunk_macs(plan: Plan, c: int) -> int:
    """Multiply-adds of one value head over one chunk of ``c`` tokens, from the state S₀ it starts with:
    the c×c products βK·Kᵀ and Q·Kᵀ (dense, c²·dk each); the unit lower-triangular solve of that system for
    the c new values and the c decayed keys (forward substitution: c(c−1)/2 per right-hand column, dv + dk
    columns); the within-chunk read (Q·Kᵀ)·U (c²·dv); the reads of S₀ by the decayed keys and by the queries
    and the update of S by Kᵀ·U (c·dk·dv each)."""
    dk, dv = plan.key_head_dim, plan.value_head_dim
    return 2 * c * c * dk + c * (c - 1) // 2 * (dk + dv) + c * c * dv + 3 * c * dk * dv


def mixing_flops(plan: Plan, d_model: int, seq: int) -> dict[str, Fraction]:
    """Per token beyond the projections, 2 FLOPs per multiply-add and elementwise work (gates, decays, norms,
    the L2 normalisation) 0 (docs/conventions.md):

    - the convolution, 2·conv_kernel per channel, in both forms;
    - recurrent (one decode step): per value head Sᵀk, the rank-one update k·δᵀ and Sᵀq, dk·dv multiply-adds
      each: 6·dk·dv FLOPs;
    - chunked: ``seq`` tokens in chunks of ``chunk`` (the last one shorter, not padded), per chunk and head
      the multiply-adds :func:`_chunk_macs` lists, averaged over the ``seq`` tokens."""
    conv = 2 * plan.conv_kernel * conv_channels(plan)
    heads = plan.n_value_heads
    recurrent = 6 * plan.key_head_dim * plan.value_head_dim * heads
    full, rest = divmod(seq, plan.chunk)
    chunked_macs = full * _chunk_macs(plan, plan.chunk) + _chunk_macs(plan, rest)
    chunked = Fraction(2 * chunked_macs * heads, seq)
    return {"chunked": conv + chunked, "recurrent": Fraction(conv + recurrent)}


def state_elements(plan: Plan, d_model: int) -> dict[str, int]:
    """The convolution's conv_kernel − 1 previous inputs per channel; each value head's dk × dv state."""
    return {
        "conv": conv_channels(plan) * (plan.conv_kernel - 1),
        "recurrent": plan.n_value_heads * plan.key_head_dim * plan.value_head_dim,
    }


def module_kwargs(plan: Plan) -> dict[str, int | float | bool | str]:
    return {
        "n_key_heads": plan.n_key_heads,
        "n_value_heads": plan.n_value_heads,
        "key_head_dim": plan.key_head_dim,
        "value_head_dim": plan.value_head_dim,
        "conv_kernel": plan.conv_kernel,
        "chunk": plan.chunk,
        "norm_eps": plan.norm_eps,
    }
