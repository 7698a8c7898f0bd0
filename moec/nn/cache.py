"""The KV cache of incremental decoding: preallocated, static-shaped, one :class:`LayerCache` per layer.

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
from dataclasses import dataclass

import torch

from moec.spec.plan import AttentionPlan, MoEPlan, ResolvedModel


@dataclass
class LayerCache:
    """One attention layer's keys and values, ``size`` slots per sequence."""

    keys: torch.Tensor  # (B, kv, size, d_k); MLA: (B, 1, size, kv_r + d_rope) = [latent | rotated key]
    values: torch.Tensor | None  # (B, kv, size, d_v); MLA: None (the values are keys[..., :kv_r])
    positions: torch.Tensor  # (size,) int64: the position each slot holds, -1 while empty
    window: int | None
    chunk: int | None
    ring: bool  # size < max_len: slots are reused, slot = position mod size

    @property
    def size(self) -> int:
        return self.keys.shape[2]

    def update(
        self, k: torch.Tensor, v: torch.Tensor | None, positions: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """Store the new keys (B, kv, S, d_k) and values at ``positions`` (S,) and return what the new queries
        attend over: (keys, values, their positions), the new ones included.

        A full-context layer writes, then reads its buffers. So does a ring for one token: the slot it
        overwrites held position p − size, which no query at p can see. A ring given several tokens at once
        would overwrite keys the first of them still needs, so it reads its old slots and the new keys side by
        side, and then keeps the last ``size`` of the new ones."""
        S = k.shape[2]
        if not self.ring or S == 1:
            self._write(k, v, positions)
            return self.keys, self.values, self.positions
        keys = torch.cat((self.keys, k), dim=2)  # (B, kv, size + S, d_k)
        values = None if v is None else torch.cat((self.values, v), dim=2)
        key_positions = torch.cat((self.positions, positions))  # (size + S,)
        keep = min(S, self.size)
        self._write(k[:, :, S - keep :], None if v is None else v[:, :, S - keep :], positions[S - keep :])
        return keys, values, key_positions

    def _write(self, k: torch.Tensor, v: torch.Tensor | None, positions: torch.Tensor) -> None:
        slots = positions % self.size if self.ring else positions  # (S,)
        self.keys.index_copy_(2, slots, k.to(self.keys.dtype))
        if v is not None and self.values is not None:
            self.values.index_copy_(2, slots, v.to(self.values.dtype))
        self.positions.index_copy_(0, slots, positions)

    def mask(self, query_positions: torch.Tensor, key_positions: torch.Tensor) -> torch.Tensor:
        """(S, T) bool, True where the query at ``query_positions[i]`` may attend the key held at
        ``key_positions[j]``: a filled slot, causal, inside the window and in the same chunk; the same rule as
        :func:`moec.nn.attention.causal_mask`, over absolute positions."""
        qp, kp = query_positions[:, None], key_positions[None, :]
        allowed = (kp >= 0) & (kp <= qp)
        if self.window is not None:
            allowed = allowed & (kp > qp - self.window)
        if self.chunk is not None:
            allowed = allowed & (kp // self.chunk == qp // self.chunk)
        return allowed

    def reset(self) -> None:
        self.positions.fill_(-1)


@dataclass
class KVCache:
    """The whole model's cache: one :class:`LayerCache` per main layer (MTP blocks are not decoded), and the
    rotary tables of every position, per RoPE base (None: the model's), computed once."""

    layers: list[LayerCache]
    batch: int
    max_len: int
    rope: dict[float | None, tuple[torch.Tensor, torch.Tensor]]  # base → (cos, sin), each (max_len, rot)

    def reset(self) -> None:
        """Forget every sequence: the next call must start at position 0."""
        for layer in self.layers:
            layer.reset()

    def nbytes(self) -> int:
        """Bytes the keys and values take (the positions and rotary tables left out)."""
        return sum(c.keys.nbytes + (c.values.nbytes if c.values is not None else 0) for c in self.layers)


def slots_for(plan: AttentionPlan, max_len: int) -> int:
    """How many positions a layer must keep: all of them, or the most a query can see through its window or
    chunk."""
    limits = [n for n in (plan.window, plan.chunk) if n is not None]
    return min([max_len, *limits])


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
    """Zeroed buffers for one layer. ``value_width`` None: the values live inside the keys (MLA)."""
    size = slots_for(plan, max_len)
    keys = torch.zeros(batch, kv_heads, size, key_width, device=device, dtype=dtype)
    values = None
    if value_width is not None:
        values = torch.zeros(batch, kv_heads, size, value_width, device=device, dtype=dtype)
    positions = torch.full((size,), -1, device=device, dtype=torch.int64)
    return LayerCache(keys, values, positions, plan.window, plan.chunk, ring=size < max_len)


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
