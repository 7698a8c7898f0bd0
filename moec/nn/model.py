"""The whole decoder: embedding → blocks (unrolled from the plan) → final norm → head, plus DeepSeek-V3
multi-token-prediction (MTP) modules when the plan has them.

Module names are a contract with codegen and the HF weight loader:
``embed``, ``pos_embed`` (learned positions), ``layers.{i}.{attn_norm,attn,ffn_norm,ffn}``, ``norm``
(absent with post-norm: that stack ends normalised), ``lm_head`` (its weight *is* ``embed.weight`` when
tied), ``mtp.{j}.{enorm,hnorm,eh_proj,block,norm}``. :func:`component_of` maps every parameter name to
the analyzer's component, which is how frozen components are applied and how the tests compare counts.

Granite's scalings are plan fields: embeddings × ``embedding_multiplier``, logits ÷ ``logits_scaling``
(and each residual branch × ``residual_multiplier``, in the block). ``logit_softcap`` then bounds the logits
to (−cap, cap) by cap·tanh(logits/cap) (Gemma 2's final_logit_softcapping), the MTP heads' too.

Incremental decoding: :meth:`MoecModel.new_cache` allocates a :class:`moec.nn.cache.KVCache`, and
``model(tokens, cache=cache, start=pos)`` runs the tokens at positions pos, pos+1, … against it and returns
their logits, equal to the full forward's at those positions (docs/decode.md). The MTP modules are not run
then (they train the model, and a speculative decoder is not built here).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from moec.kernels.runtime import (  # shared with the generated model.py; ModelAux is re-exported from here
    ModelAux,
    MoEAux,
    capacity_refusal,
    check_cache_call,
    refuse_cache_request,
    rope_scaling_refusal,
)
from moec.nn.attention import Linear
from moec.nn.block import Block
from moec.nn.cache import KVCache, capacity_layers
from moec.nn.hyper import HyperHead, expand_streams
from moec.nn.indexer import share_indexer_choices
from moec.nn.moe import MoE
from moec.nn.norms import make_norm
from moec.nn.rope import RotaryEmbedding
from moec.nn.router import routing_decode_refusals
from moec.spec.plan import AttentionPlan, LayerPlan, ResolvedModel

_MOE_PARTS = {"router": "router", "experts": "routed_experts", "shared": "shared_experts",
              "shared_gate": "shared_experts", "base": "base_ffn", "output_bias": "routed_experts"}  # fmt: skip


def component_of(name: str) -> str:
    """The analyzer component (moec.vocab.COMPONENTS, or MTP's "projection") of a parameter."""
    parts = name.split(".")
    if parts[0] in ("embed", "pos_embed"):
        return "embedding"
    if parts[0] == "lm_head":
        return "head"
    if parts[0] == "norm":
        return "norms"
    if parts[0] == "hc_head":
        return "hyper_connections"
    if parts[0] == "mtp":
        if parts[2] in ("enorm", "hnorm", "norm"):
            return "norms"
        if parts[2] == "eh_proj":
            return "projection"
        parts = parts[2:]  # mtp.{j}.block.<block param> → block.<...>
    # (layers.{i} | block).<attn_norm | ffn_norm | attn | mixer | ffn>.…
    sub = parts[2] if parts[0] == "layers" else parts[1]
    rest = parts[3:] if parts[0] == "layers" else parts[2:]
    if sub in ("attn_norm", "ffn_norm", "attn_post_norm", "ffn_post_norm"):
        return "norms"
    if sub in ("attn_hc", "ffn_hc"):
        return "hyper_connections"
    if sub == "attn":
        return "attention"
    if sub == "mixer":
        return "mixers"
    if sub == "ffn":
        return _MOE_PARTS.get(rest[0], "dense_ffn")
    if sub == "pair_ffn":  # a shortcut-MoE pair layer's two dense FFNs (moec.nn.longcat)
        return "dense_ffn"
    raise ValueError(f"parameter {name!r} belongs to no known component")


def rotary_table(a: AttentionPlan) -> tuple[Any, ...] | None:
    """The key of the RoPE tables a layer reads: None for the model's, else (its base or None, its rotated dims or
    None) when it has a base or a rotary width of its own, and its scaling third when it has its own."""
    if a.rope_theta is None and a.rotary_dim is None and not a.own_rope_scaling:
        return None
    return (a.rope_theta, a.rotary_dim, a.rope_scaling) if a.own_rope_scaling else (a.rope_theta, a.rotary_dim)


class Embedding(nn.Embedding):
    """``nn.Embedding`` initialised N(0, 1/d): a tied head then starts with unit-variance logits, like an
    untied one. No init work on ``meta``."""

    def reset_parameters(self) -> None:
        if not self.weight.is_meta:
            nn.init.normal_(self.weight, std=1 / math.sqrt(self.embedding_dim))


class MTPModule(nn.Module):
    """DeepSeek-V3 MTP depth k (arXiv 2412.19437 §2.2): combine the previous depth's hidden state at
    position i with the embedding of token i+k, run one block, predict token i+1+k with the shared head.
    The concatenation order [embedding | hidden] is the released checkpoints' (vLLM, Megatron)."""

    def __init__(self, layer: LayerPlan, model: ResolvedModel, *, backend: str = "auto", device=None, dtype=None):
        super().__init__()
        kw = {"device": device, "dtype": dtype}
        d = model.d_model
        self.enorm = make_norm(model.norm, d, **kw)
        self.hnorm = make_norm(model.norm, d, **kw)
        self.eh_proj = Linear(2 * d, d, bias=False, **kw)
        self.block = Block(layer, model, backend=backend, **kw)
        self.norm = make_norm(model.norm, d, **kw)  # the analyzer counts it for either placement

    def forward(
        self,
        h: torch.Tensor,
        emb: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor] | None,
        token_ids: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, MoEAux | None]:
        """h (B, S, d) previous depth; emb (B, S, d) embeddings of tokens i+k, whose ids are ``token_ids``
        → (new h (B, S, d), aux)."""
        x = self.eh_proj(torch.cat((self.enorm(emb), self.hnorm(h)), dim=-1))  # (B, S, 2d) → (B, S, d)
        return self.block(x, rope, token_ids=token_ids)


class MoecModel(nn.Module):
    def __init__(
        self,
        plan: ResolvedModel,
        *,
        backend: str = "auto",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ):
        super().__init__()
        self.plan = plan
        d, V = plan.d_model, plan.vocab_size
        kw = {"device": device, "dtype": dtype}
        self.embed = Embedding(V, d, **kw)
        self.pos_embed = Embedding(plan.max_seq_len, d, **kw) if plan.positions.kind == "learned" else None
        self.rotary = None
        # layers with their own rope_theta (MiMo-V2-Flash's sliding layers), rotary_dim (Laguna's full layers) or
        # rope scaling (Laguna XS 2.1's full layers) get tables of their own, keyed (base, rotated dims[, scaling]);
        # no parameters or buffers, so a plain dict: the state_dict is the same with or without them
        self.layer_rotary: dict[tuple[Any, ...], RotaryEmbedding] = {}
        # each layer's table key, worked out once here rather than per layer in every forward and decode step
        self.rope_keys = tuple(rotary_table(lp.attention) for lp in plan.layers)
        if plan.positions.kind == "rope":
            self.rotary = RotaryEmbedding(plan.positions, plan.rope_dim, plan.max_seq_len)
            for key in dict.fromkeys(k for k in self.rope_keys if k is not None):
                theta, rot, *own = key
                positions = dataclasses.replace(
                    plan.positions,
                    theta=plan.positions.theta if theta is None else theta,
                    scaling=own[0] if own else plan.positions.scaling,
                )
                self.layer_rotary[key] = RotaryEmbedding(positions, rot or plan.rope_dim, plan.max_seq_len)
        self.layers = nn.ModuleList(make_block(lp, plan, backend=backend, **kw) for lp in plan.layers)
        share_indexer_choices([layer.attn for layer in self.layers])  # GLM-5.2's layers that reuse a choice
        self.norm = make_norm(plan.norm, d, **kw) if plan.norm.final_norm else None
        hc = plan.hyper_connections  # n residual streams, merged before the final norm (moec/nn/hyper.py)
        self.hc_head = HyperHead(hc, d, plan.norm.eps, **kw) if hc is not None else None
        self.lm_head = Linear(d, V, bias=plan.head_bias, **kw)
        if plan.tie_embeddings:
            self.lm_head.weight = self.embed.weight  # one tensor, counted once
        self.mtp = nn.ModuleList(MTPModule(lp, plan, backend=backend, **kw) for lp in plan.mtp)
        self._freeze(plan.frozen)

    def _freeze(self, frozen: tuple[str, ...]) -> None:
        # LoRA base FFNs freeze themselves (MoE); the spec's `frozen` list names whole components
        for name, p in self.named_parameters():
            if component_of(name) in frozen:
                p.requires_grad_(False)

    def forward(
        self, tokens: torch.Tensor, cache: KVCache | None = None, start: int | torch.Tensor = 0
    ) -> tuple[torch.Tensor, ModelAux]:
        """tokens (B, S) int64/int32 → (logits (B, S, V), ModelAux). Causal LM, no padding mask.

        With ``cache`` (from :meth:`new_cache`): the tokens are positions start … start+S−1 of sequences whose
        earlier positions the cache holds; their keys join the cache, and the logits are theirs alone."""
        if cache is not None:
            return self._decode(tokens, cache, start)
        check_token_ids(tokens, self.plan)
        B, S = tokens.shape
        x = self._embed(tokens)  # (B, S, d)
        if self.pos_embed is not None:
            x = x + self.pos_embed(torch.arange(S, device=tokens.device))
        rope = self.rotary(S, x.device, x.dtype) if self.rotary is not None else None  # (S, rope_dim) ×2
        ropes = {None: rope} | {theta: r(S, x.device, x.dtype) for theta, r in self.layer_rotary.items()}
        auxes: list[MoEAux | None] = []
        x = self._streams(x)
        for block, key in zip(self.layers, self.rope_keys, strict=True):
            x, aux = block(x, ropes[key], token_ids=tokens)
            auxes.append(aux)
        x = self._merge(x)
        if self.norm is not None:
            x = self.norm(x)
        logits = self._head(x)  # (B, S, V)

        mtp_logits = []
        h = x
        for k, m in enumerate(self.mtp, start=1):
            # token i+k at position i; past the end there is none: 0, and those positions have no target
            ahead = F.pad(tokens[:, k:], (0, min(k, S)))[:, :S]  # (B, S)
            h, aux = m(h, self._embed(ahead), rope, ahead)
            auxes.append(aux)
            mtp_logits.append(self._head(m.norm(h)))  # (B, S, V)

        return logits, model_aux(auxes, logits.device, mtp_logits)

    def new_cache(
        self, batch: int, max_len: int, *, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> KVCache:
        """An empty cache for ``batch`` sequences of at most ``max_len`` tokens, on the model's device and in
        its dtype unless told otherwise. Refused (ValueError, naming the feature) where a cached decode could
        not give the full forward's logits."""
        refuse_cache_request(batch, max_len, self.plan.max_seq_len, decode_refusals(self.plan, max_len))
        weight = self.lm_head.weight
        device = torch.device(device) if device is not None else weight.device
        dtype = dtype or weight.dtype
        rope = {}
        if self.rotary is not None:
            tables = {None: self.rotary} | dict(self.layer_rotary)
            rope = {theta: r(max_len, device, dtype) for theta, r in tables.items()}  # (max_len, rot) ×2
        layers = [block.new_cache(batch, max_len, device=device, dtype=dtype) for block in self.layers]
        return KVCache(layers, batch, max_len, rope)

    def _decode(self, tokens: torch.Tensor, cache: KVCache, start: int | torch.Tensor) -> tuple[torch.Tensor, ModelAux]:
        check_token_ids(tokens, self.plan)
        B, S = tokens.shape
        check_cache_call(cache, B, S, start)
        positions = torch.arange(S, device=tokens.device) + start  # (S,)
        x = self._embed(tokens)  # (B, S, d)
        if self.pos_embed is not None:
            x = x + self.pos_embed(positions)
        ropes = {}  # table key → the tables at the new positions, (S, rot) ×2 (a loop: dynamo cannot iterate .items())
        for theta in cache.rope:
            cos, sin = cache.rope[theta]
            ropes[theta] = (cos[positions], sin[positions])
        auxes: list[MoEAux | None] = []
        x = self._streams(x)
        for block, key, layer_cache in zip(self.layers, self.rope_keys, cache.layers, strict=True):
            x, aux = block(x, ropes.get(key), layer_cache, positions, tokens)
            auxes.append(aux)
        x = self._merge(x)
        if self.norm is not None:
            x = self.norm(x)
        logits = self._head(x)  # (B, S, V)
        return logits, model_aux(auxes, logits.device)

    def _embed(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.embed(tokens)  # (B, S, d)
        return x if self.plan.embedding_multiplier == 1.0 else x * self.plan.embedding_multiplier

    def _streams(self, x: torch.Tensor) -> torch.Tensor:
        """The embedding (B, S, d) as the layers read it: itself, or copied into n streams (B, S, n, d)."""
        hc = self.plan.hyper_connections
        return x if hc is None else expand_streams(x, hc.n_streams)

    def _merge(self, x: torch.Tensor) -> torch.Tensor:
        """The last layer's output as the final norm reads it: (B, S, d), the streams merged by the head."""
        return x if self.hc_head is None else self.hc_head(x)

    def _head(self, x: torch.Tensor) -> torch.Tensor:
        return head_logits(self.lm_head(x), self.plan)  # (B, S, V)

    @torch.no_grad()
    def update_bias(self) -> None:
        """Aux-loss-free balancing: call once per optimizer step (a no-op for layers without it)."""
        for m in self.modules():
            if isinstance(m, MoE):
                m.update_bias()

    def param_counts(self) -> dict[str, tuple[int, int]]:
        """{component: (trainable, frozen)} over the main model (MTP modules excluded, like the analyzer's
        headline), tied weights once."""
        main = ((name, p) for name, p in self.named_parameters() if not name.startswith("mtp."))
        return counts_by_component(main, component_of)


def head_logits(logits: torch.Tensor, plan: ResolvedModel) -> torch.Tensor:
    """The head's output as the model returns it: ÷ ``logits_scaling`` (Granite's; Switch/T5's d^0.5 under a tied
    head), then bounded by cap·tanh(logits/cap) with ``logit_softcap``."""
    if plan.logits_scaling != 1.0:
        logits = logits / plan.logits_scaling
    cap = plan.logit_softcap
    return logits if cap is None else torch.tanh(logits / cap) * cap


def check_token_ids(ids: torch.Tensor, plan: ResolvedModel, what: str = "tokens") -> None:
    """One clear ValueError, naming ``what``, unless ``ids`` are (batch, seq) int64 or int32 ids of the model's
    vocabulary, non-empty and at most max_seq_len long (the decoder-only model's tokens, and an encoder-decoder
    model's input_ids and decoder_input_ids)."""
    if not isinstance(ids, torch.Tensor):
        raise ValueError(f"{what} must be a tensor of token ids, got {type(ids).__name__}")
    if ids.dim() != 2:
        raise ValueError(f"{what} must be (batch, seq) token ids; got shape {tuple(ids.shape)}")
    if ids.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"{what} must be int64 (or int32) token ids; got {ids.dtype}")
    if 0 in ids.shape:
        raise ValueError(f"{what} must be non-empty; got shape {tuple(ids.shape)}")
    if ids.shape[1] > plan.max_seq_len:
        raise ValueError(f"{what}: length {ids.shape[1]} exceeds the model's max_seq_len {plan.max_seq_len}")
    # one host sync per call; skipped while compiling (and impossible on meta)
    if not ids.is_meta and not torch.compiler.is_compiling():
        outside = (ids < 0) | (ids >= plan.vocab_size)
        if outside.any():
            bad = int(ids[outside][0])
            raise ValueError(f"{what}: token id {bad} is outside the vocabulary [0, {plan.vocab_size})")


def model_aux(
    auxes: list[MoEAux | None], device: torch.device, mtp_logits: list[torch.Tensor] | None = None
) -> ModelAux:
    """The model's aux: the MoE layers' (None for the others, in layer order) and the sum of their losses (0 when
    no layer routes)."""
    losses = [a.loss for a in auxes if a is not None]
    total = torch.stack(losses).sum() if losses else torch.zeros((), device=device)
    return ModelAux(total, auxes, mtp_logits or [])


def counts_by_component(
    named: Iterable[tuple[str, nn.Parameter]], component: Callable[[str], str]
) -> dict[str, tuple[int, int]]:
    """{component: (trainable, frozen)} over the named parameters, each parameter under ``component(name)``; a tied
    weight (named_parameters gives it once) counts once."""
    out: dict[str, tuple[int, int]] = {}
    for name, p in named:
        c = component(name)
        t, f = out.get(c, (0, 0))
        out[c] = (t + p.numel(), f) if p.requires_grad else (t, f + p.numel())
    return out


def make_block(layer: LayerPlan, model: ResolvedModel, *, backend: str = "auto", device=None, dtype=None) -> nn.Module:
    """A layer's module: a shortcut-MoE pair layer (moec.nn.longcat) where its plan has one, else a Block."""
    if layer.pair_ffn is not None:
        from moec.nn.longcat import PairBlock  # it builds on moec.nn.block

        return PairBlock(layer, model, backend=backend, device=device, dtype=dtype)
    return Block(layer, model, backend=backend, device=device, dtype=dtype)


def decode_refusals(plan: ResolvedModel, max_len: int) -> list[str]:
    """Why a cache of ``max_len`` positions cannot decode this model exactly, besides its size (empty: it can)."""
    problems = routing_decode_refusals(plan)
    moe = capacity_layers(plan)
    if moe:
        remedy = "decode the same weights built from moec.nn.cache.without_capacity(plan), which routes every token"
        problems.append(capacity_refusal(moe, f"{remedy} (docs/decode.md, Capacity)"))
    sc = plan.positions.scaling
    if plan.positions.kind == "rope" and sc is not None and sc.kind in ("dynamic", "longrope"):
        trained = sc.original_max_seq_len or plan.max_seq_len
        if max_len > trained:
            problems.append(rope_scaling_refusal(sc.kind, trained, max_len))
    return problems
