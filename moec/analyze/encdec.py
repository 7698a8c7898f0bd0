"""Counting an encoder-decoder model (moec/spec/encdec.py; docs/conventions.md, "Encoder-decoder").

The unit is one position of each stack: a source token through the encoder and a target token through the
decoder, with source and target both S long. Parameters: both stacks, each decoder layer's cross-attention and
its norm, one relative-bias table of n_buckets × n_heads in each stack's first layer, the shared embedding once.
Forward FLOPs: the encoder's and the decoder's linear FLOPs (a cross-attention's K and V projections run once per
source token, so they count once per pair too), the encoder's bidirectional scores over S keys, the decoder's
self-attention scores under the attention mode, the cross-attention's over all S source keys. A decode step is
one target token: the decoder's linear FLOPs and the head less the cross-attention's K/V projections (the
source's keys and values are cached), its self-attention over S cached keys and its cross-attention over S source
keys; the encoder, run once per source, is not in it.
"""

from __future__ import annotations

from fractions import Fraction

from moec.analyze.counts import Part, attention_part, attention_score_flops, sequence_flops
from moec.spec.encdec import RELATIVE_BUCKET
from moec.spec.plan import AttentionPlan, LayerPlan, ResolvedModel

CONVENTION = (
    "per (source token, target token) pair, source and target S long: both stacks' linear FLOPs (the "
    "cross-attention's K/V projections once per source token), encoder scores over S keys (bidirectional), "
    "decoder self-attention under the attention mode, cross-attention over S source keys; a decode step is one "
    "target token (no encoder, no cross K/V projections); the KV cache is the decoder's self-attention keys "
    "plus each decoder layer's cross-attention K/V of the S source tokens; one relative-bias table of "
    "n_buckets·n_heads per stack"
)


def encdec_conventions(model: ResolvedModel) -> dict[str, str]:
    """analyze's conventions entry for an encoder-decoder model (none for a decoder-only one)."""
    return {"encoder_decoder": CONVENTION} if model.encoder else {}


def encdec_parts(layer: LayerPlan, model: ResolvedModel) -> dict[str, Part]:
    """What an encoder-decoder layer holds besides a decoder-only layer's parts: its cross-attention (under
    attention) and that sublayer's norm of d (under norms); in the first layer of either stack, the stack's
    relative-bias table (under attention: transformers keeps it in that self-attention). Empty otherwise."""
    d, npd = model.d_model, model.norm.params_per_dim
    attention = Part(0, 0, 0)
    norms = 0
    if layer.cross_attention is not None:
        attention = attention_part(layer.cross_attention, d, npd)
        norms = d * npd
    if model.positions.kind == RELATIVE_BUCKET and layer.index == 0 and layer.has_attention:
        assert model.positions.n_buckets is not None
        table = model.positions.n_buckets * layer.attention.n_heads
        attention = Part(attention.params + table, attention.active + table, attention.flops)
    out = {}
    if attention.params:
        out["attention"] = attention
    if norms:
        out["norms"] = Part(norms, norms, 0)
    return out


def merged(parts: dict[str, Part], more: dict[str, Part]) -> dict[str, Part]:
    """``parts`` with ``more`` added component by component."""
    out = dict(parts)
    for k, p in more.items():
        q = out.get(k, Part(0, 0, 0))
        out[k] = Part(q.params + p.params, q.active + p.active, q.flops + p.flops, q.frozen or p.frozen)
    return out


def stack_layers(model: ResolvedModel) -> list[tuple[LayerPlan, bool]]:
    """Every layer the analyzer counts, with whether it is an encoder layer: the encoder's, then the decoder's
    (a decoder-only model's layers, all False)."""
    return [(lp, True) for lp in model.encoder] + [(lp, False) for lp in model.layers]


def attention_label(layer: LayerPlan, in_encoder: bool) -> str:
    """A layer row's attention: its kind, and in an encoder-decoder model which stack it is in ("gqa (encoder)",
    "gqa + cross" in the decoder), as the two stacks' rows share their indices. A decoder-only layer: its kind."""
    kind = layer.attention.kind
    if in_encoder:
        return f"{kind} (encoder)"
    return f"{kind} + cross" if layer.cross_attention is not None else kind


def stack_sequence_flops(layer: LayerPlan, in_encoder: bool, d: int, seq: int, mode: str) -> tuple[Fraction, Fraction]:
    """:func:`moec.analyze.counts.sequence_flops` for a layer of either stack: an encoder layer's scores over
    all S keys whatever the mode, and no decode step; a decoder layer's plus its cross-attention over S source
    keys in both forms. A decoder-only layer: exactly sequence_flops."""
    if in_encoder:
        return sequence_flops(layer, d, seq, "full")[0], Fraction(0)
    train, step = sequence_flops(layer, d, seq, mode)
    if layer.cross_attention is not None:
        cross = attention_score_flops(layer.cross_attention, Fraction(seq))
        train, step = train + cross, step + cross
    return train, step


def not_in_decode_step(model: ResolvedModel, encoder_linear: int) -> int:
    """The linear FLOPs per pair that a decode step does not run: the encoder's (``encoder_linear``) and each
    decoder layer's cross-attention K and V projections of the (cached) source."""
    kv = sum(_kv_projection_flops(lp.cross_attention, model.d_model) for lp in model.layers if lp.cross_attention)
    return encoder_linear + kv


def _kv_projection_flops(a: AttentionPlan, d: int) -> int:
    return 2 * d * a.n_kv_heads * (a.head_dim + a.v_dim)
