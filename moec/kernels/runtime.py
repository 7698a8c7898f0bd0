"""What a built model needs at run time besides its modules, in torch alone: the records a forward returns
(:class:`MoEAux`, :class:`ModelAux`), the KV cache of incremental decoding (:class:`LayerCache`,
:class:`KVCache`, :func:`empty_layer_cache`, :func:`with_cache`), the checks a cached call and a cache request
pass, the kernel backend lookup a compiled forward can call, and the routing algorithms of docs/routing.md that a
generated router calls (:func:`hash_experts`, :func:`expert_choice`, :func:`gshard_top2`).

One copy serves both the library model (``moec.nn``, which re-exports these names where they used to live) and
every generated ``model.py`` (``moec build``), which imports them from here: the two can only agree. No plan
objects reach this module (the generated file has none), only numbers. How the cache works, and what a decode
refuses and why: docs/decode.md.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import torch

from moec.kernels import get_backend
from moec.kernels.reference import slot_linear  # noqa: F401  (re-exported: the generated MoA calls it)


@dataclass
class MoEAux:
    """What a training loop needs from one MoE layer besides its output."""

    loss: torch.Tensor  # () weighted aux total: load_balance_coeff·load_balance + z_loss_coeff·z_loss
    load_balance: torch.Tensor  # () Switch's E·Σ_i f_i·P_i, 1 when perfectly balanced
    z_loss: torch.Tensor  # () mean logsumexp(router logits)²
    tokens_per_expert: torch.Tensor  # (E,) int64, kept slots
    dropped: torch.Tensor  # () int64, dropped slots
    # the router's raw scores and their softmax/sigmoid, for balancing losses of one's own
    router_logits: torch.Tensor | None = None  # (T, E) fp32, T = every token of the input, flattened
    router_probs: torch.Tensor | None = None  # (T, E) fp32


@dataclass
class ModelAux:
    """Everything a training loop needs besides the logits."""

    loss: torch.Tensor  # () fp32: Σ of every MoE layer's weighted aux loss (main layers and MTP blocks)
    layers: list[MoEAux | None] = field(default_factory=list)  # by layer: 0..L-1 (None: dense), then MTP blocks
    mtp_logits: list[torch.Tensor] = field(default_factory=list)  # depth k: (B, S, V), position i → token i+1+k


_KERNELS: dict[tuple[str, str], ModuleType] = {}  # (backend, device type) → backend module


def kernels_for(backend: str, device: torch.device) -> ModuleType:
    """The moec.kernels backend module for (backend, device type), looked up once: get_backend imports modules,
    which torch.compile cannot trace, so a layer resolves it at construction and a compiled forward finds it here."""
    key = (backend, device.type)
    if key not in _KERNELS:
        _KERNELS[key] = get_backend(backend, device=str(device))
    return _KERNELS[key]


@dataclass
class LayerCache:
    """One attention layer's keys and values, ``size`` slots per sequence, written in place (``index_copy_``)."""

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
        values = None if v is None or self.values is None else torch.cat((self.values, v), dim=2)
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
        ``key_positions[j]``: a filled slot, causal, inside the window and in the same chunk; the full forward's
        causal mask, over absolute positions."""
        qp, kp = query_positions[:, None], key_positions[None, :]
        allowed = (kp >= 0) & (kp <= qp)
        if self.window is not None:
            allowed = allowed & (kp > qp - self.window)
        if self.chunk is not None:
            allowed = allowed & (kp // self.chunk == qp // self.chunk)
        return allowed

    def reset(self) -> None:
        self.positions.fill_(-1)

    def nbytes(self) -> int:
        """Bytes the keys and values take."""
        return self.keys.nbytes + (self.values.nbytes if self.values is not None else 0)


@dataclass
class KVCache:
    """The whole model's cache: one :class:`LayerCache` per main layer (MTP blocks are not decoded), and the
    rotary tables of every position, per RoPE base, computed once."""

    layers: list[Any]  # per layer: a LayerCache, a mixer's MixerState (docs/mixers.md), or None
    batch: int
    max_len: int
    rope: dict[float | None, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)  # (max_len, rot) ×2

    def reset(self) -> None:
        """Forget every sequence: the next call must start at position 0."""
        for layer in self.layers:
            if layer is not None:  # a layer without a token mixer keeps nothing
                layer.reset()

    def nbytes(self) -> int:
        """Bytes the keys and values take, and the other mixers' states (the positions and rotary tables left
        out)."""
        return sum(c.nbytes() for c in self.layers if c is not None)


def cache_slots(max_len: int, window: int | None = None, chunk: int | None = None) -> int:
    """How many positions a layer must keep: all of them, or the most a query can see through its window or
    chunk."""
    return min([max_len, *(n for n in (window, chunk) if n is not None)])


def empty_layer_cache(
    batch: int,
    max_len: int,
    kv_heads: int,
    key_width: int,
    value_width: int | None,
    *,
    window: int | None = None,
    chunk: int | None = None,
    device: torch.device | None = None,
    dtype: torch.dtype | None = None,
) -> LayerCache:
    """Zeroed buffers for one layer. ``value_width`` None: the values live inside the keys (MLA)."""
    size = cache_slots(max_len, window, chunk)
    keys = torch.zeros(batch, kv_heads, size, key_width, device=device, dtype=dtype)
    values = None
    if value_width is not None:
        values = torch.zeros(batch, kv_heads, size, value_width, device=device, dtype=dtype)
    positions = torch.full((size,), -1, device=device, dtype=torch.int64)
    return LayerCache(keys, values, positions, window, chunk, ring=size < max_len)


def with_cache(
    cache: LayerCache | None, k: torch.Tensor, v: torch.Tensor | None, positions: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Without a cache: (k, v, None), causal over the call's own keys. With one: the new keys and values join it,
    and the queries attend over all it holds through the (S, T) mask of positions returned third."""
    if cache is None:
        return k, v, None
    assert positions is not None, "a cached call passes the positions of its tokens"
    keys, values, key_positions = cache.update(k, v, positions)
    return keys, values, cache.mask(positions, key_positions)


def check_cache_call(cache: KVCache | None, batch: int, seq_len: int, start: int | torch.Tensor) -> None:
    """Refuse (ValueError) tokens (batch, seq_len) at positions start … start+seq_len−1 that ``cache`` cannot
    hold. A tensor ``start`` is not read (that would sync the host every step); None: no cache, nothing to check."""
    if cache is None:
        return
    if batch != cache.batch:
        raise ValueError(f"the cache holds {cache.batch} sequences; tokens has {batch}")
    if isinstance(start, int) and not 0 <= start <= cache.max_len - seq_len:
        end = start + seq_len - 1
        raise ValueError(f"positions {start}..{end} do not fit a cache of {cache.max_len} positions")


def refuse_cache_request(batch: int, max_len: int, max_seq_len: int, refusals: Sequence[str] = ()) -> None:
    """Raise one ValueError naming every reason a cache of ``batch`` × ``max_len`` cannot decode the model exactly:
    a size outside the model's, and the model's own ``refusals`` (features a decode cannot reproduce)."""
    problems: list[str] = []
    if not 1 <= max_len <= max_seq_len:
        problems.append(f"max_len must be between 1 and the model's max_seq_len {max_seq_len}, got {max_len}")
    problems += refusals
    if batch < 1:
        problems.append(f"batch must be at least 1, got {batch}")
    if problems:
        raise ValueError("; ".join(problems))


def capacity_refusal(layers: list[int], remedy: str) -> str:
    """Why layers with a capacity factor cannot be decoded (docs/decode.md, "Capacity"), and ``remedy``."""
    return (
        f"capacity_factor (layers {', '.join(map(str, layers))}): capacity-limited routing drops tokens by how many "
        f"share a call, so a decode would not equal the full forward; {remedy}"
    )


def rope_scaling_refusal(kind: str, trained: int, max_len: int) -> str:
    """Why a RoPE scaling whose frequencies depend on the sequence length cannot be decoded past ``trained``."""
    return (
        f"rope scaling {kind}: its frequencies change once a sequence passes {trained} tokens, and the cached keys "
        f"keep the old ones; use max_len <= {trained} (asked {max_len})"
    )


# ---------------------------------------------------------------------------------------------
# routing algorithms a generated router calls (docs/routing.md), in torch alone

# Knuth's multiplicative constant ⌊2^32/φ⌋: the high bits of id·A mod 2^32 spread consecutive ids evenly
HASH_MULTIPLIER = 2654435761


def hash_experts(token_ids: torch.Tensor, n_experts: int, top_k: int) -> torch.Tensor:
    """Hash routing (Roller et al. 2021): expert 1 of a token is ⌊((id·A) mod 2^32)·E / 2^32⌋, experts 2..k the next
    ones cyclically (distinct while k ≤ E). token_ids (T,) → (T, k) int64. Ids below 2^24 keep id·A below 2^63."""
    spread = (token_ids.long() * HASH_MULTIPLIER) % (1 << 32)  # (T,)
    first = spread * n_experts // (1 << 32)  # (T,)
    return (first[:, None] + torch.arange(top_k, device=token_ids.device)) % n_experts  # (T, k)


def expert_choice(probs: torch.Tensor, top_k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Expert choice (Zhou et al. 2022): each expert takes the ceil(k·T/E) tokens of the call it scores highest (at most
    T). probs (T, E) → token-major (experts (T, E), weights (T, E)): column e holds e and the token's score where expert
    e took the token, -1 and 0 elsewhere. It sees every token of the call, later ones included (docs/routing.md)."""
    T, E = probs.shape
    capacity = min(T, -(-top_k * T // E))  # the count moec.analyze.counts.expert_choice_capacity gives
    taken = probs.detach().t().topk(capacity, dim=-1).indices  # (E, capacity) token ids
    chosen = torch.zeros(E, T, dtype=torch.bool, device=probs.device)
    chosen = chosen.scatter_(1, taken, torch.ones_like(taken, dtype=torch.bool)).t()  # (T, E)
    experts = torch.arange(E, device=probs.device).expand(T, E)
    return torch.where(chosen, experts, -1), torch.where(chosen, probs, 0.0)


def expert_choice_refusal(layers: list[int]) -> str:
    """Why expert-choice layers cannot be decoded with a cache (docs/routing.md, "Expert choice")."""
    return (
        f"moe.router.kind expert_choice (layers {', '.join(map(str, layers))}): each expert picks its tokens among "
        "every token of a call, later positions included, so a decode step cannot route as the full forward did and "
        "training on it leaks the future; decode a token-choice model (docs/routing.md, Expert choice)"
    )


def gshard_top2(probs: torch.Tensor, uniform: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """GShard's top-2 (Lepikhin et al. 2020, Algorithm 1): the two best experts' gates renormalised, g1 + g2 = 1. The
    first is always sent; the second only where uniform < 2·g2, else it is index -1 with weight 0. probs (T, E),
    uniform (T,) in [0, 1) → (experts (T, 2), weights (T, 2))."""
    top, idx = probs.topk(2, dim=-1)  # (T, 2) ×2
    gates = top / top.sum(-1, keepdim=True)  # (T, 2)
    sent = torch.stack((torch.ones_like(uniform, dtype=torch.bool), uniform < 2 * gates[:, 1].detach()), -1)  # (T, 2)
    return torch.where(sent, idx, -1), torch.where(sent, gates, 0.0)


def sparsemixer(logits: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Phi-3.5-MoE's SparseMixer top-2 (arXiv 2409.12136), its inference path (transformers' ``sparsemixer``
    with training off): expert 1 is the best logit, expert 2 the best of the rest; each one's weight is the
    softmax, at it, over the logits s with (best − s)/max(|s|, best) ≤ 2·eps (its own best, the first
    excluded for expert 2). Training uses the same selection: SparseMixer's Gumbel sampling and its Heun
    gradient estimator are not implemented. logits (T, E) fp32 → (indices (T, 2), weights (T, 2))."""

    def one(scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        best, idx = scores.max(dim=-1, keepdim=True)  # (T, 1) ×2
        with torch.no_grad():
            far = (best - logits) / logits.abs().clamp(min=best) > 2 * eps  # (T, E)
        w = scores.masked_fill(far, float("-inf")).softmax(-1).gather(-1, idx)  # (T, 1)
        return idx, w

    idx1, w1 = one(logits)
    idx2, w2 = one(logits.scatter(-1, idx1, float("-inf")))
    return torch.cat((idx1, idx2), -1), torch.cat((w1, w2), -1)
