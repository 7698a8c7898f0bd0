"""One decoder layer: attention then FFN (dense or MoE), each with a residual and a norm.

    pre-norm  (GPT-2, Llama):            x = x + attn(attn_norm(x));  x = x + ffn(ffn_norm(x))
    post-norm (original Transformer):    x = attn_norm(x + attn(x));  x = ffn_norm(x + ffn(x))
    after_sublayer (OLMo 2, FlexOlmo):   x = x + attn_norm(attn(x));  x = x + ffn_norm(ffn(x))

Granite scales each branch by ``residual_multiplier`` before it joins the residual (1 elsewhere).

Names (``attn_norm``, ``attn``, ``ffn_norm``, ``ffn``) are a contract with codegen and the HF loader; with
after_sublayer they hold transformers' ``post_attention_layernorm`` and ``post_feedforward_layernorm``.
"""

from __future__ import annotations

import torch
from torch import nn

from moec.nn.attention import Attention
from moec.nn.cache import LayerCache
from moec.nn.ffn import DenseFFN
from moec.nn.mla import MLA
from moec.nn.moe import MoE, MoEAux
from moec.nn.norms import make_norm
from moec.spec.plan import DenseFFNPlan, LayerPlan, ResolvedModel


def make_attention(layer: LayerPlan, model: ResolvedModel, *, device=None, dtype=None) -> Attention | MLA:
    cls = MLA if layer.attention.kind == "mla" else Attention
    return cls(layer.attention, model.d_model, norm=model.norm, positions=model.positions, device=device, dtype=dtype)


def make_ffn(layer: LayerPlan, d_model: int, *, backend: str = "auto", device=None, dtype=None) -> DenseFFN | MoE:
    f = layer.ffn
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
        self.attn_norm = make_norm(model.norm, model.d_model, **kw)
        self.attn = make_attention(layer, model, **kw)
        self.ffn_norm = make_norm(model.norm, model.d_model, **kw)
        self.ffn = make_ffn(layer, model.d_model, backend=backend, **kw)

    def forward(
        self,
        x: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor] | None = None,
        cache: LayerCache | None = None,
        positions: torch.Tensor | None = None,
        token_ids: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, MoEAux | None]:
        """x (B, S, d) → (B, S, d), and the MoE layer's aux (None for a dense FFN). With ``cache``, the
        attention's (the tokens sit at ``positions`` (S,)); see moec.nn.cache. ``token_ids`` (B, S): the ids of
        the tokens at each position, which a hash router routes by (docs/routing.md)."""
        m = self.residual_multiplier
        if self.placement == "pre":
            x = x + m * self.attn(self.attn_norm(x), rope, cache, positions)
            y, aux = self._ffn(self.ffn_norm(x), token_ids)
            return x + m * y, aux
        if self.placement == "after_sublayer":
            x = x + m * self.attn_norm(self.attn(x, rope, cache, positions))
            y, aux = self._ffn(x, token_ids)
            return x + m * self.ffn_norm(y), aux
        x = self.attn_norm(x + m * self.attn(x, rope, cache, positions))
        y, aux = self._ffn(x, token_ids)
        return self.ffn_norm(x + m * y), aux

    def _ffn(self, x: torch.Tensor, token_ids: torch.Tensor | None) -> tuple[torch.Tensor, MoEAux | None]:
        if isinstance(self.ffn, MoE):
            return self.ffn(x, token_ids=token_ids)
        return self.ffn(x), None
