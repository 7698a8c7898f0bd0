"""The KV cache of incremental decoding: preallocated, static-shaped, one :class:`LayerCache` per layer.
The classes live in :mod:`moec.kernels.runtime`, which every generated model.py imports too; this module
re-exports them and adds what needs a plan.

    cache = model.new_cache(batch, max_len)
    logits, aux = model(prompt, cache=cache, start=0)            # prefill: (B, P, V)
    logits, aux = model(next_token, cache=cache, start=P)        # one step: (B, 1, V)

Every tensor is allocated once, by :meth:`moec.nn.model.MoecModel.new_cache`, and written in place
(``index_copy_``), so a decode step has the same shapes every call and ``torch.compile`` can capture it.
``start`` may be an int or a 0-d int64 tensor (a tensor keeps a compiled step from specialising on it).

What a layer keeps (docs/decode.md has the arithmetic):

- a GQA layer: its rotated keys and its values, ``(B, kv, size, head_dim)`` each;
- an MLA layer: the normed latent and the rotated shared key side by side, ``(B, 1, size, kv_r + d_rope)``;
  the values are the latent (a view), the up-projections are absorbed into the query and the output;
- ``size`` is ``max_len`` for a full-context layer, and ``min(max_len, window, chunk)`` for a
  sliding-window or chunked layer: a ring, slot = position mod size, that keeps only the keys a query can
  still see. ``positions`` records which position each slot holds (-1: empty), and the mask is built from it.

Decode routes every token to its k experts: capacity-limited routing drops slots according to how many
tokens share a call, so a prefill and a token-by-token decode of one sequence would drop different ones.
:meth:`~moec.nn.model.MoecModel.new_cache` refuses a model with a capacity factor by name;
:func:`without_capacity` gives the plan to build the same weights without it (docs/decode.md, "Capacity").
"""

from __future__ import annotations

import dataclasses

import torch

# the cache itself is torch-only and shared with every generated model.py: moec.kernels.runtime holds it
from moec.kernels.runtime import KVCache, LayerCache, empty_layer_cache
from moec.spec.plan import AttentionPlan, MoEPlan, ResolvedModel

__all__ = [
    "KVCache",
    "LayerCache",
    "capacity_layers",
    "new_layer_cache",
    "without_capacity",
]


def new_layer_cache(
    plan: AttentionPlan,
    *,
    batch: int,
    max_len: int,
    kv_heads: int,
    key_width: int,
    value_width: int | None,
    device: torch.device,
    dtype: torch.dtype,
) -> LayerCache:
    """Zeroed buffers for one layer of ``plan``. ``value_width`` None: the values live inside the keys (MLA)."""
    where = {"window": plan.window, "chunk": plan.chunk, "device": device, "dtype": dtype}
    return empty_layer_cache(batch, max_len, kv_heads, key_width, value_width, **where)


def without_capacity(plan: ResolvedModel) -> ResolvedModel:
    """The same model with every MoE layer's capacity factor removed (same parameters, routing that never
    drops): what a model trained with capacity is decoded with (docs/decode.md, "Capacity")."""

    def layer(lp):  # type: ignore[no-untyped-def]
        if isinstance(lp.ffn, MoEPlan) and lp.ffn.capacity_factor is not None:
            return dataclasses.replace(lp, ffn=dataclasses.replace(lp.ffn, capacity_factor=None))
        return lp

    return plan.replace(layers=tuple(layer(lp) for lp in plan.layers), mtp=tuple(layer(lp) for lp in plan.mtp))


def capacity_layers(plan: ResolvedModel) -> list[int]:
    """Indices of the layers whose routing has a capacity factor."""
    return [lp.index for lp in plan.layers if isinstance(lp.ffn, MoEPlan) and lp.ffn.capacity_factor is not None]
