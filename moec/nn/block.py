"""One decoder layer: a token mixer then an FFN (dense or MoE), each with a residual and a norm.

    pre-norm  (GPT-2, Llama):            x = x + attn(attn_norm(x));  x = x + ffn(ffn_norm(x))
    post-norm (original Transformer):    x = attn_norm(x + attn(x));  x = ffn_norm(x + ffn(x))
    after_sublayer (OLMo 2, FlexOlmo):   x = x + attn_norm(attn(x));  x = x + ffn_norm(ffn(x))
    normed_residual (MiniMax-Text-01):   h = attn_norm(x); x = α·h + β·attn(h);  h = ffn_norm(x); x = α'·h + β'·ffn(h)
    sandwich (Kolibri, AFMoE, Gemma):    x = x + attn_post_norm(attn(attn_norm(x)));  likewise the FFN
    parallel (Cohere2-MoE):              h = attn_norm(x);  x = x + attn(h) + ffn(h)  (one norm)

The token mixer is attention (GQA or MLA) or another kind of docs/mixers.md (Gated DeltaNet, Mamba, ...); a
layer may also lack its mixer or its FFN (Nemotron-H's layers hold one sublayer each), and then it has neither
that sublayer nor its norm. Granite scales each branch by ``residual_multiplier`` before it joins the residual
(1 elsewhere). Beam scales both sides of its n-th residual add (``model.depth_scaled_residual``): the embedding
is the first, layer i's mixer the (2i+2)-th and its FFN the (2i+3)-th, and x ← x·sqrt((n−1)/n) + f/sqrt(n).

Names (``attn_norm``, ``attn``, ``mixer``, ``ffn_norm``, ``ffn``) are a contract with codegen and the HF loader:
``attn`` holds attention, ``mixer`` any other token mixer (one of them is None), ``attn_norm`` the norm before
either; with after_sublayer the norms hold transformers' ``post_attention_layernorm`` and
``post_feedforward_layernorm``.
"""

from __future__ import annotations

import importlib
import math

import torch
from torch import nn

from moec.mixers import KINDS
from moec.nn.attention import Attention
from moec.nn.cache import LayerCache
from moec.nn.ffn import DenseFFN
from moec.nn.hyper import HyperConnection
from moec.nn.mla import MLA
from moec.nn.moa import MoA
from moec.nn.moe import MoE, MoEAux
from moec.nn.norm_gate import gate_norm
from moec.nn.norms import make_norm
from moec.spec.plan import AbsentPlan, DenseFFNPlan, LayerPlan, MoEPlan, ResolvedModel


def make_attention(layer: LayerPlan, model: ResolvedModel, *, device=None, dtype=None) -> Attention | MLA | MoA:
    cls = {"mla": MLA, "moa": MoA}.get(layer.attention.kind, Attention)
    return cls(layer.attention, model.d_model, norm=model.norm, positions=model.positions, device=device, dtype=dtype)


def make_mixer(layer: LayerPlan, model: ResolvedModel, *, device=None, dtype=None) -> nn.Module | None:
    """The layer's token mixer when it is not attention: its kind's module from moec.kernels.mixers, built from
    the plain values its kind's ``module_kwargs`` gives (as the generated model.py builds it); else None."""
    if layer.mixer is None or isinstance(layer.mixer, AbsentPlan):
        return None
    kind = KINDS[layer.mixer.kind]
    cls = getattr(importlib.import_module(f"moec.kernels.mixers.{kind.KIND}"), kind.MODULE)
    return cls(model.d_model, **kind.module_kwargs(layer.mixer), device=device, dtype=dtype)


def make_ffn(
    layer: LayerPlan, d_model: int, *, backend: str = "auto", device=None, dtype=None
) -> DenseFFN | MoE | None:
    f = layer.ffn
    if isinstance(f, AbsentPlan):
        return None
    if isinstance(f, DenseFFNPlan):
        return DenseFFN(
            d_model, f.d_ff, f.activation, bias=f.bias, alpha=f.activation_alpha, limit=f.activation_limit,
            device=device, dtype=dtype,
        )  # fmt: skip
    return MoE(f, d_model, backend=backend, device=device, dtype=dtype)


class Block(nn.Module):
    def __init__(
        self,
        layer: LayerPlan,
        model: ResolvedModel,
        *,
        backend: str = "auto",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ):
        super().__init__()
        self.index, self.placement = layer.index, model.norm.placement
        self.residual_multiplier = model.residual_multiplier
        kw = {"device": device, "dtype": dtype}
        self.attn = make_attention(layer, model, **kw) if layer.has_attention else None
        self.mixer = make_mixer(layer, model, **kw)
        mixes = self.attn is not None or self.mixer is not None
        gate, d = model.norm_gate, model.d_model  # A.X-K2 gates chosen pre-norms (moec/nn/norm_gate.py)
        self.attn_norm = gate_norm(make_norm(model.norm, d, **kw), gate, "mixer", d, **kw) if mixes else None
        self.ffn = make_ffn(layer, model.d_model, backend=backend, **kw)
        own_norm = self.ffn is not None and self.placement != "parallel"  # parallel: the FFN reads attn_norm's h
        site = "moe_ffn" if isinstance(layer.ffn, MoEPlan) else "dense_ffn"
        self.ffn_norm = gate_norm(make_norm(model.norm, d, **kw), gate, site, d, **kw) if own_norm else None
        sandwich = self.placement == "sandwich"
        self.attn_post_norm = make_norm(model.norm, model.d_model, **kw) if sandwich and mixes else None
        # sandwich's, or an MoE block's own output norm (moe.output_norm, A.X-K1): x + post(moe(ffn_norm(x)))
        moe_norm = isinstance(layer.ffn, MoEPlan) and layer.ffn.output_norm
        post_ffn = (sandwich and self.ffn is not None) or moe_norm
        self.ffn_post_norm = make_norm(model.norm, model.d_model, **kw) if post_ffn else None
        scales = model.residual_scales
        self.mixer_scale = (scales.attention if layer.has_attention else scales.mixer) if scales else (1.0, 1.0)
        self.ffn_scale = scales.ffn if scales else (1.0, 1.0)
        hc = model.hyper_connections  # n residual streams: one connection around each sublayer (moec/nn/hyper.py)
        self.streams = hc is not None
        self.attn_hc = HyperConnection(hc, model.d_model, model.norm.eps, **kw) if hc and mixes else None
        self.ffn_hc = HyperConnection(hc, model.d_model, model.norm.eps, **kw) if hc and self.ffn is not None else None
        depth = model.depth_scaled_residual  # the n of each sublayer's residual add, counting the embedding as 1
        self.mixer_add, self.ffn_add = (2 * layer.index + 2, 2 * layer.index + 3) if depth else (None, None)

    def forward(
        self,
        x: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor] | None = None,
        cache: LayerCache | None = None,
        positions: torch.Tensor | None = None,
        token_ids: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, MoEAux | None]:
        """x (B, S, d) → (B, S, d), and the MoE layer's aux (None for a dense FFN or none). With ``cache``, the
        token mixer's (the tokens sit at ``positions`` (S,)); see moec.nn.cache. ``token_ids`` (B, S): the ids of
        the tokens at each position, which a hash router routes by (docs/routing.md)."""
        mixer = self.token_mixer
        aux: list[MoEAux | None] = [None]
        if self.streams:  # x (B, S, n, d): each sublayer reads and writes the streams through its connection
            if self.attn_hc is not None:
                x = self.attn_hc.around(x, lambda h: mixer(self.attn_norm(h), rope, cache, positions))
            if self.ffn_hc is not None:
                x = self.ffn_hc.around(x, lambda h: self._ffn(self.ffn_norm(h), token_ids, aux))
            return x, aux[0]
        if self.placement == "parallel":  # both sublayers read one norm of the same input (checks: both exist)
            h = self.attn_norm(x)
            m = self.residual_multiplier
            return x + m * mixer(h, rope, cache, positions) + m * self._ffn(h, token_ids, aux), aux[0]
        if mixer is not None:
            post = self.attn_post_norm
            x = self._residual(
                x, self.attn_norm, lambda h: mixer(h, rope, cache, positions), self.mixer_scale, post, self.mixer_add
            )
        if self.ffn is not None:
            post = self.ffn_post_norm
            x = self._residual(
                x, self.ffn_norm, lambda h: self._ffn(h, token_ids, aux), self.ffn_scale, post, self.ffn_add
            )
        return x, aux[0]

    @property
    def token_mixer(self) -> nn.Module | None:
        """The layer's token mixer: its attention, its other mixer, or None."""
        return self.attn if self.attn is not None else self.mixer

    def new_cache(self, batch: int, max_len: int, *, device: torch.device, dtype: torch.dtype) -> object:
        """The token mixer's decode cache: attention's KV slots, another mixer's state (docs/mixers.md), or None
        for a layer without a mixer."""
        mixer = self.token_mixer
        return mixer.new_cache(batch, max_len, device=device, dtype=dtype) if mixer is not None else None

    def _residual(  # type: ignore[no-untyped-def]
        self, x: torch.Tensor, norm: nn.Module, f, scale: tuple[float, float], post=None, n: int | None = None
    ) -> torch.Tensor:
        """One sublayer f with its norm (and its post-norm, sandwich) and residual, as the model's placement says
        (the module docstring); n: the add's index under depth-scaled residual adds (checks: pre, sandwich or
        after_sublayer placement only)."""
        m = self.residual_multiplier
        if self.placement in ("pre", "sandwich") and post is not None:  # sandwich, or an MoE output norm
            return self._add(x, m * post(f(norm(x))), n)
        if self.placement == "pre":
            return self._add(x, m * f(norm(x)), n)
        if self.placement == "after_sublayer":
            return self._add(x, m * norm(f(x)), n)
        if self.placement == "normed_residual":
            h = norm(x)
            return scale[0] * h + scale[1] * f(h)
        return norm(x + m * f(x))

    @staticmethod
    def _add(x: torch.Tensor, y: torch.Tensor, n: int | None) -> torch.Tensor:
        """The residual add x + y, or Beam's n-th depth-scaled one x·sqrt((n−1)/n) + y·(1/sqrt(n))."""
        if n is None:
            return x + y
        return y * (1.0 / math.sqrt(n)) + x * math.sqrt((n - 1) / n)

    def _ffn(self, x: torch.Tensor, token_ids: torch.Tensor | None, aux: list[MoEAux | None]) -> torch.Tensor:
        if isinstance(self.ffn, MoE):
            y, aux[0] = self.ffn(x, token_ids=token_ids)
            return y
        return self.ffn(x)
