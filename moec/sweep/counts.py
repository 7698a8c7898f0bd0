"""A sweep row's headline counts: the analyzer's own per-layer parts (moec/analyze/counts.py), summed once per
distinct layer plan times its number of layers.

``moec.analyze.analyze`` sums the same parts layer by layer and builds its per-layer and per-component tables
on the way, which is most of a sweep row's time for a model of many identical layers (BENCHMARKS.md, "Sweep
(`python bench/sweep.py`, issue 17)"). The totals here are the analyzer's by construction: the same parts,
edges and attention scores, MTP left out of the headline as the analyzer leaves it; tests/sweep holds the
two equal on specs with MLA, windows, MTP, dense layers, LoRA experts and frozen parts."""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

from moec.analyze.counts import attention_sublayers, layer_parts, model_edge_parts, sequence_flops
from moec.analyze.memory import DTYPE_BYTES, kv_bytes_per_token
from moec.roofline.model import layer_groups
from moec.spec.plan import ResolvedModel

FFN_COMPONENTS = ("dense_ffn", "routed_experts", "shared_experts", "base_ffn")


@dataclass(frozen=True)
class Headline:
    total_params: int
    active_params: int
    forward_flops: int | float  # per token at seq, full attention, as `moec analyze --seq` reports it
    ffn_flops: int  # the FFNs' forward FLOPs per token: dense FFN, routed and shared experts, frozen base
    kv_bytes_per_token: int  # in kv_dtype
    weights_bytes: int  # in dtype


def headline(model: ResolvedModel, *, seq: int, dtype: str, kv_dtype: str) -> Headline:
    total = active = linear = ffn = kv = 0
    scores = Fraction(0)
    for lp, n in layer_groups(model, per_layer=False):
        for name, part in layer_parts(lp, model).items():
            total += n * part.params
            active += n * part.active
            linear += n * part.flops
            ffn += n * part.flops if name in FFN_COMPONENTS else 0
        scores += n * sequence_flops(lp, model.d_model, seq, "full")[0]  # attention's scores or a mixer's chunks
        # another token mixer keeps a state of constant size, not a KV cache; a shortcut-MoE pair layer two caches
        kv += n * attention_sublayers(lp) * kv_bytes_per_token(lp.attention, DTYPE_BYTES[kv_dtype])
    for part in model_edge_parts(model).values():
        total += part.params
        active += part.active
        linear += part.flops
    forward = linear + scores
    return Headline(
        total_params=total,
        active_params=active,
        forward_flops=int(forward) if forward.denominator == 1 else float(forward),
        ffn_flops=ffn,
        kv_bytes_per_token=kv,
        weights_bytes=total * DTYPE_BYTES[dtype],
    )
