"""Kimi Delta Attention (KDA; Kimi-Linear, arXiv 2510.26692): a gated delta rule whose decay is per key
channel (docs/mixers.md, "kda").

Per head, with a state ``S`` of head_dim × head_dim, each token (its query and key L2-normalised, the query
also scaled by 1/√head_dim) updates and reads::

    S ← (I − β·k·kᵀ) · Diag(exp(g)) · S + β·k·vᵀ        o = Sᵀ·q

``g`` (a vector over the key channels, ≤ 0) is the token's log decay, ``β = sigmoid(b_proj(x))`` per head its
write strength. q, k and v pass a causal depthwise convolution (with SiLU) first; the output is RMS-normalised
per head, gated by ``sigmoid(gate(x))`` and projected back to ``d``.

Its decode state is the convolution's last ``conv_kernel − 1`` inputs of q, k and v, and one head_dim ×
head_dim matrix per head, whatever the context.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from typing import Annotated, Literal

from pydantic import Field

from moec.strict import MAX_D, MAX_HEAD_DIM, MAX_HEADS, Strict

KIND = "kda"
MODULE = "KimiDeltaAttention"
FP32_STATE = ("recurrent",)  # the delta rule's state, float32 at least whatever the model's dtype (as transformers)

# transformers' default kda_lower_bound for Ling 3.0's bounded decay
DEFAULT_DECAY_LOWER_BOUND = -5.0


class KDASection(Strict):
    n_heads: Annotated[int, Field(gt=0, le=MAX_HEADS)]
    """Heads of the delta rule, each with its own state (Kimi-Linear's linear_attn_config.num_heads)."""
    head_dim: Annotated[int, Field(gt=0, le=MAX_HEAD_DIM)]
    """Width of each head's queries, keys and values alike (linear_attn_config.head_dim)."""
    conv_kernel: Annotated[int, Field(gt=0, le=64)] = 4
    """Tokens the causal depthwise convolution on q, k and v spans (short_conv_kernel_size)."""
    decay_rank: Annotated[int, Field(ge=0, le=MAX_D)] | None = None
    """Inner width of the low-rank decay projection d → r → n_heads·head_dim (unset: head_dim, Kimi's; 0: full rank)."""
    gate_rank: Annotated[int, Field(ge=0, le=MAX_D)] | None = None
    """Inner width of the low-rank output-gate projection (unset: head_dim, Kimi's; 0: one full-rank projection)."""
    decay: Literal["softplus", "bounded_sigmoid"] = "softplus"
    """Log decay per channel: softplus −exp(A)·softplus(f + dt_bias) (Kimi), or lower·sigmoid(exp(A)·(f + dt_bias))."""
    decay_lower_bound: Annotated[float, Field(lt=0, ge=-1e4)] | None = None
    """The bounded_sigmoid decay's lowest log decay per token (Ling's kda_lower_bound; unset: −5); that decay only."""
    norm_eps: Annotated[float, Field(gt=0, lt=1)] | None = None
    """Epsilon of the per-head RMS norm on the output; unset: the model norm's."""
    chunk: Annotated[int, Field(gt=0, le=4096)] = 64
    """Tokens per chunk of the chunked (training and prefill) form: it changes that form's FLOPs, never its result."""


Section = KDASection  # the contract's name (moec/mixers/__init__.py)


@dataclass(frozen=True, kw_only=True)
class Plan:
    n_heads: int
    head_dim: int
    conv_kernel: int
    decay_rank: int  # 0: full rank
    gate_rank: int  # 0: full rank
    decay: str
    decay_lower_bound: float | None  # None with the softplus decay, which has no bound
    norm_eps: float
    chunk: int
    kind: str = KIND


def plan(section: Section, d_model: int, norm_eps: float) -> Plan:
    bounded = section.decay == "bounded_sigmoid"
    lower = section.decay_lower_bound
    return Plan(
        n_heads=section.n_heads,
        head_dim=section.head_dim,
        conv_kernel=section.conv_kernel,
        decay_rank=section.head_dim if section.decay_rank is None else section.decay_rank,
        gate_rank=section.head_dim if section.gate_rank is None else section.gate_rank,
        decay=section.decay,
        decay_lower_bound=(DEFAULT_DECAY_LOWER_BOUND if lower is None else lower) if bounded else None,
        norm_eps=norm_eps if section.norm_eps is None else section.norm_eps,
        chunk=section.chunk,
    )


def problems(section: Section, d_model: int) -> list[tuple[tuple[str, ...], str]]:
    found: list[tuple[tuple[str, ...], str]] = []
    if section.decay_lower_bound is not None and section.decay != "bounded_sigmoid":
        found.append(
            (
                ("decay_lower_bound",),
                f"a lower bound applies to the bounded_sigmoid decay only; the {section.decay} decay has none "
                "(remove it, or set decay: bounded_sigmoid)",
            )
        )
    return found


def _low_rank_or_full(rank: int, d_in: int, d_out: int) -> int:
    """The weights of d_in → rank → d_out, or of one d_in → d_out matrix when rank is 0."""
    return rank * (d_in + d_out) if rank else d_in * d_out


def matmul_weights(plan: Plan, d_model: int) -> int:
    """q, k, v (d → H·hd each), the decay and output-gate projections (low-rank or full), β (d → H) and the
    output projection (H·hd → d)."""
    d, inner = d_model, plan.n_heads * plan.head_dim
    return (
        3 * d * inner
        + _low_rank_or_full(plan.decay_rank, d, inner)
        + _low_rank_or_full(plan.gate_rank, d, inner)
        + d * plan.n_heads
        + inner * d
    )


def params(plan: Plan, d_model: int) -> int:
    """The matrices, the convolution (3·H·hd channels × conv_kernel taps, no bias), dt_bias (H·hd), A_log (H)
    and the output norm's one head_dim weight, which every head shares."""
    inner = plan.n_heads * plan.head_dim
    conv = 3 * inner * plan.conv_kernel
    return matmul_weights(plan, d_model) + conv + inner + plan.n_heads + plan.head_dim


def _chunk_macs_per_head(c: int, hd: int) -> int:
    """Multiply-adds of one chunk of c tokens in one head (keys and values both hd wide), as the chunked form
    executes them (the same convention as gated_deltanet's, docs/mixers.md):

    - the decayed key–key products kₜ·Diag(e^{Γₜ−Γₛ})·kₛ and query–key scores qₜ·Diag(e^{Γₜ−Γₛ})·kₛ, each a
      dense c × c block of hd-wide products (masked afterwards): c²·hd each;
    - the unit lower-triangular solve for the chunk's corrected values U by forward substitution, c(c−1)/2
      products per column, hd columns;
    - the intra-chunk output, the c × c scores times U: c²·hd;
    - three products with the chunk's incoming state (hd × hd): the keys' and queries' reads of it and the
      state's update by the chunk, c·hd² each."""
    return 3 * c * c * hd + c * (c - 1) // 2 * hd + 3 * c * hd * hd


def mixing_flops(plan: Plan, d_model: int, seq: int) -> dict[str, Fraction]:
    """Per token, beyond the projections; elementwise work (decays, gates, norms, SiLU, the L2 normalisation)
    counts 0.

    The convolution: 2·conv_kernel per channel of q, k and v, in both forms.

    ``recurrent`` (one decode step, per head): the state's read by the key (Sᵀk), its rank-one update
    (k·uᵀ) and its read by the query (Sᵀq), hd² multiply-adds each: 6·hd² FLOPs.

    ``chunked`` (training and prefill): the sequence in chunks of ``chunk`` tokens, the last one shorter when
    ``seq`` is not a multiple (no padding is computed); each chunk costs :func:`_chunk_macs_per_head`
    multiply-adds per head, and the total is averaged over the ``seq`` tokens, so it grows with ``seq`` up to
    one full chunk and stays there."""
    H, hd, C = plan.n_heads, plan.head_dim, plan.chunk
    conv = Fraction(2 * plan.conv_kernel * 3 * H * hd)
    full, rest = divmod(seq, C)
    chunk_macs = full * _chunk_macs_per_head(C, hd) + _chunk_macs_per_head(rest, hd)
    return {
        "chunked": conv + Fraction(2 * H * chunk_macs, seq),
        "recurrent": conv + Fraction(2 * H * 3 * hd * hd),
    }


def state_elements(plan: Plan, d_model: int) -> dict[str, int]:
    """The convolution's conv_kernel − 1 previous inputs of each q, k and v channel, and the delta rule's
    head_dim × head_dim matrix per head (``recurrent``)."""
    inner = plan.n_heads * plan.head_dim
    return {"conv": 3 * inner * (plan.conv_kernel - 1), "recurrent": plan.n_heads * plan.head_dim * plan.head_dim}


def module_kwargs(plan: Plan) -> dict[str, int | float | bool | str]:
    kwargs: dict[str, int | float | bool | str] = {
        "n_heads": plan.n_heads,
        "head_dim": plan.head_dim,
        "conv_kernel": plan.conv_kernel,
        "decay_rank": plan.decay_rank,
        "gate_rank": plan.gate_rank,
        "decay": plan.decay,
        "norm_eps": plan.norm_eps,
        "chunk": plan.chunk,
    }
    if plan.decay_lower_bound is not None:
        kwargs["decay_lower_bound"] = plan.decay_lower_bound
    return kwargs
