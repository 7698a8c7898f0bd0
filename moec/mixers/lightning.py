"""Lightning attention (MiniMax-Text-01): linear attention whose key-value memory decays by a fixed factor per
head and token, computed block by block (docs/mixers.md, "lightning").

Per head, with ``q, k, v = act(qkv_proj(h))`` (no 1/√d scaling, no positions) and a fixed slope ``s``:
``S_t = e^(−s)·S_(t−1) + k_tᵀ v_t`` (a head_dim × head_dim memory) and ``o_t = q_t S_t``; the heads' outputs are
RMS-normalised together, gated by ``σ(output_gate(h))`` and projected back by ``out_proj``. The slopes are
ALiBi's, ``s_i = 2^(−8(i+1)/n_heads)``, times a per-layer factor that shrinks with depth (``decay_scale``); they are
not parameters.

Its decode state is that memory: n_heads · head_dim² elements, whatever the context.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from typing import Annotated, Literal

from pydantic import Field

from moec.strict import MAX_HEAD_DIM, MAX_HEADS, MAX_SEQ, Strict

KIND = "lightning"
MODULE = "LightningAttention"
# the decays depend on the layer's depth (decay_scale): the resolver plans each layer with its index
PER_LAYER = True

QKV_ACTIVATIONS = ("silu", "relu", "gelu", "gelu_tanh")
# MiniMax's depth factor: 1 − l/(L − 1 + ε) + ε for layer l of L, so the last layer's decays are near (not at) 0
DEPTH_EPS = 1e-5


class Section(Strict):
    n_heads: Annotated[int, Field(gt=0, le=MAX_HEADS)]
    """Heads, each with its own decay (MiniMax's num_attention_heads)."""
    head_dim: Annotated[int, Field(gt=0, le=MAX_HEAD_DIM)] | None = None
    """Width of each head's query, key and value; unset: d_model / n_heads (MiniMax's head_dim)."""
    chunk: Annotated[int, Field(gt=0, le=MAX_SEQ)] = 256
    """Tokens per block of the chunked form (training, prefill): changes the FLOPs, never the result (block_size)."""
    activation: Literal[QKV_ACTIVATIONS] = "silu"
    """The nonlinearity applied to the query, key and value projections (MiniMax's hidden_act)."""
    norm_eps: Annotated[float, Field(gt=0, lt=1)] | None = None
    """Epsilon of the RMSNorm over the heads' joined outputs; unset: the model norm's (MiniMax-Text-01: 1e-6)."""
    depth_scaled_decay: bool = True
    """Scale the slopes by 1 − l/(L − 1 + 1e-5) + 1e-5 at layer l of L (MiniMax); false: the same in every layer."""


@dataclass(frozen=True, kw_only=True)
class Plan:
    n_heads: int
    head_dim: int
    chunk: int
    activation: str
    norm_eps: float
    decay_scale: float
    """This layer's factor on every head's slope (1 without depth scaling)."""
    kind: str = KIND


def decay_scale(section: Section, layer: int, n_layers: int) -> float:
    """The factor on layer ``layer``'s (0-based, of ``n_layers``) slopes."""
    if not section.depth_scaled_decay:
        return 1.0
    return 1 - layer / (n_layers - 1 + DEPTH_EPS) + DEPTH_EPS


def plan(section: Section, d_model: int, norm_eps: float, *, layer: int = 0, n_layers: int = 1) -> Plan:
    """``layer`` (0-based) of ``n_layers`` sets the depth-scaled decay; the defaults give the first layer's."""
    return Plan(
        n_heads=section.n_heads,
        head_dim=section.head_dim or d_model // section.n_heads,
        chunk=section.chunk,
        activation=section.activation,
        norm_eps=norm_eps if section.norm_eps is None else section.norm_eps,
        decay_scale=decay_scale(section, layer, n_layers),
    )


def problems(section: Section, d_model: int) -> list[tuple[tuple[str, ...], str]]:
    if section.head_dim is None and d_model % section.n_heads:
        return [(("n_heads",), f"d_model {d_model} is not a multiple of n_heads {section.n_heads}; set head_dim")]
    return []


def matmul_weights(plan: Plan, d_model: int) -> int:
    """qkv_proj (d → 3·h·hd), output_gate (d → h·hd) and out_proj (h·hd → d), all without biases."""
    return 5 * d_model * plan.n_heads * plan.head_dim


def params(plan: Plan, d_model: int) -> int:
    """The projections and the output norm's weight (h·hd); the slopes are fixed, not parameters."""
    return matmul_weights(plan, d_model) + plan.n_heads * plan.head_dim


def mixing_flops(plan: Plan, d_model: int, seq: int) -> dict[str, Fraction]:
    """Per token, per head (width hd), 2 FLOPs per multiply-add, the decays' products elementwise (0).

    Chunked (training, prefill): the ``seq`` tokens in blocks of ``chunk``, the last one ``seq mod chunk`` long
    when that is not 0. A block of c tokens forms the full c × c scores q·kᵀ and multiplies them (masked and
    decayed) by v: 2·c²·hd each, so 4·c²·hd; it reads the memory carried in, q·S: 2·c·hd², and adds its own
    kᵀ·v to it: 2·c·hd². Over the sequence that is 4·hd·Σc² + 4·hd²·seq, divided by seq.

    Recurrent (one decode step): the memory update k_tᵀ v_t (2·hd²) and the readout q_t·S (2·hd²): 4·hd²,
    whatever the context.
    """
    h, hd, c = plan.n_heads, plan.head_dim, plan.chunk
    full_blocks, last = divmod(seq, c)
    square_sum = full_blocks * c * c + last * last
    chunked = Fraction(4 * hd * square_sum, seq) + 4 * hd * hd
    return {"chunked": h * chunked, "recurrent": Fraction(h * 4 * hd * hd)}


def state_elements(plan: Plan, d_model: int) -> dict[str, int]:
    """Each head's head_dim × head_dim key-value memory."""
    return {"ssm": plan.n_heads * plan.head_dim * plan.head_dim}


def module_kwargs(plan: Plan) -> dict[str, int | float | bool | str]:
    return {
        "n_heads": plan.n_heads,
        "head_dim": plan.head_dim,
        "chunk": plan.chunk,
        "activation": plan.activation,
        "norm_eps": plan.norm_eps,
        "decay_scale": plan.decay_scale,
    }
