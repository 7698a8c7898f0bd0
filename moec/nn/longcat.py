"""LongCat-Flash's layer (model.block: shortcut_moe_pair; docs/conventions.md, "Shortcut-MoE pair layers"): two
(attention, dense FFN) pairs and one MoE that reads the first pair's FFN input and joins after the second pair,
so the experts' work overlaps the second attention (Meituan, arXiv 2509.01322, "Shortcut-connected MoE"):

    x = x + attn[0](attn_norm[0](x));  h = ffn_norm[0](x)
    m = moe(h);  x = x + pair_ffn[0](h)
    x = x + attn[1](attn_norm[1](x))
    x = x + pair_ffn[1](ffn_norm[1](x)) + m

Pre-norm only (moec.spec.block_checks). Names: ``attn``, ``attn_norm``, ``ffn_norm`` and ``pair_ffn`` are pairs
(nn.ModuleList), ``ffn`` the MoE, so that moec.nn.model.component_of files each under its analyzer component. A
cached decode keeps one attention cache per attention (:class:`PairCache`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from moec.nn.block import make_attention
from moec.nn.cache import LayerCache
from moec.nn.ffn import DenseFFN
from moec.nn.moe import MoE, MoEAux
from moec.nn.norms import make_norm
from moec.spec.plan import LayerPlan, MoEPlan, ResolvedModel


@dataclass
class PairCache:
    """A pair layer's decode cache: its two attentions' caches, in order."""

    first: LayerCache
    second: LayerCache

    def reset(self) -> None:
        self.first.reset()
        self.second.reset()

    def nbytes(self) -> int:
        return self.first.nbytes() + self.second.nbytes()


class PairBlock(nn.Module):
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
        f = layer.pair_ffn
        assert f is not None and isinstance(layer.ffn, MoEPlan) and layer.has_attention
        kw = {"device": device, "dtype": dtype}
        d = model.d_model
        self.index = layer.index
        self.attn = nn.ModuleList(make_attention(layer, model, **kw) for _ in range(2))
        self.attn_norm = nn.ModuleList(make_norm(model.norm, d, **kw) for _ in range(2))
        self.ffn_norm = nn.ModuleList(make_norm(model.norm, d, **kw) for _ in range(2))
        clamp = {"alpha": f.activation_alpha, "limit": f.activation_limit}
        self.pair_ffn = nn.ModuleList(DenseFFN(d, f.d_ff, f.activation, bias=f.bias, **clamp, **kw) for _ in range(2))
        self.ffn = MoE(layer.ffn, d, backend=backend, **kw)

    def forward(
        self,
        x: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor] | None = None,
        cache: PairCache | None = None,
        positions: torch.Tensor | None = None,
        token_ids: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, MoEAux]:
        """x (B, S, d) → (B, S, d) and the MoE's aux; as moec.nn.block.Block.forward, with a :class:`PairCache`."""
        caches = (None, None) if cache is None else (cache.first, cache.second)
        x = x + self.attn[0](self.attn_norm[0](x), rope, caches[0], positions)
        h = self.ffn_norm[0](x)
        shortcut, aux = self.ffn(h, token_ids=token_ids)  # (B, S, d)
        x = x + self.pair_ffn[0](h)
        x = x + self.attn[1](self.attn_norm[1](x), rope, caches[1], positions)
        return x + self.pair_ffn[1](self.ffn_norm[1](x)) + shortcut, aux

    def new_cache(self, batch: int, max_len: int, *, device: torch.device, dtype: torch.dtype) -> PairCache:
        """Both attentions' KV slots."""
        first, second = (a.new_cache(batch, max_len, device=device, dtype=dtype) for a in self.attn)
        return PairCache(first, second)
