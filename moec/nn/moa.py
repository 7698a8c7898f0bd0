"""A mixture of attention heads (``attention.kind: moa``; JetMoE, arXiv 2404.07413), as moec/spec/moa.py
plans it and docs/conventions.md, "Mixture of attention heads", counts it.

A router (``router``, d → E, no bias) picks top_k of the E attention experts per token. Each expert owns a query
projection (``q_experts[e]``, [h·hd, d]) and an output projection (``o_experts[e]``, [d, h·hd]); the keys and
values are one shared projection (``k_proj``, ``v_proj``, [kv·hd, d]). A token's k chosen experts give it k·h
query heads; expert query head j reads KV head j // (h / kv), as GQA. Each slot's heads go through its expert's
output projection, the k results are summed weighted by the gates, and ``out_bias`` (d) is added once.

The k·h query heads are laid out KV-group-major ((kv, k, h/kv) flattened) so that :func:`attend`'s grouped
heads map each one to its KV head; the cache is GQA's (kv heads of hd keys and values per token).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from moec.kernels.reference import slot_linear
from moec.nn.attention import AttentionLayer, Linear, attend, attend_masked, check_input
from moec.nn.cache import LayerCache
from moec.nn.rope import apply_rope
from moec.nn.router import gates_of, score_eps, scores_of
from moec.spec.plan import AttentionPlan, NormPlan, PositionsPlan


class MoA(AttentionLayer):
    """Attention experts with shared keys and values. x (B, S, d) → (B, S, d)."""

    def __init__(
        self,
        plan: AttentionPlan,
        d_model: int,
        *,
        norm: NormPlan | None = None,  # unused: a mixture of attention heads has no norms of its own
        positions: PositionsPlan | None = None,  # unused: rotary positions arrive as cos/sin
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ):
        super().__init__()
        if plan.kind != "moa" or not plan.moa_n_experts or not plan.moa_top_k:
            raise ValueError("MoA builds attention.kind moa layers with attention.experts")
        self.plan, self.d_model = plan, d_model
        E, h, kv, hd = plan.moa_n_experts, plan.n_heads, plan.n_kv_heads, plan.head_dim
        kw = {"device": device, "dtype": dtype}
        self.router = Linear(d_model, E, bias=False, **kw)
        self.q_experts = nn.Parameter(torch.empty(E, h * hd, d_model, **kw))
        self.o_experts = nn.Parameter(torch.empty(E, d_model, h * hd, **kw))
        self.k_proj = Linear(d_model, kv * hd, bias=False, **kw)
        self.v_proj = Linear(d_model, kv * hd, bias=False, **kw)
        self.out_bias = nn.Parameter(torch.empty(d_model, **kw)) if plan.out_bias else None
        self.sinks, self.gate_proj = None, None
        self.scale = plan.scale if plan.scale is not None else 1 / math.sqrt(hd)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        if self.q_experts.is_meta:
            return
        nn.init.normal_(self.q_experts, std=1 / math.sqrt(self.d_model))
        nn.init.normal_(self.o_experts, std=1 / math.sqrt(self.q_experts.shape[1]))
        if self.out_bias is not None:
            nn.init.zeros_(self.out_bias)

    def route(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x (..., d) → (chosen experts (..., k) int64, their gates (..., k), logits (..., E)), in fp32 (float64
        for a float64 input), the k in descending order of score."""
        p = self.plan
        logits = self.router(x)
        logits = logits.double() if x.dtype == torch.float64 else logits.float()
        assert p.moa_top_k is not None
        after = p.moa_softmax_after_topk  # JetMoE: the k best logits, softmax over those k
        scores = scores_of(logits, p.moa_score)
        idx = (logits if after else scores).topk(p.moa_top_k, dim=-1).indices
        w = gates_of(logits, scores, idx, after)
        if p.moa_normalize_topk and not after:
            w = w / (w.sum(-1, keepdim=True) + score_eps(p.moa_score))
        return idx, w, logits

    def _per_slot(self, weights: torch.Tensor, rows: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """rows (T·k, in) through each slot's own expert matrix weights[idx] ([out, in]) → (T·k, out), sorted by
        expert rather than looped over the experts present (which read them back to the host)."""
        return slot_linear(rows, idx, weights.transpose(1, 2))

    def forward(
        self,
        x: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor] | None = None,
        cache: LayerCache | None = None,
        positions: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x (B, S, d); rope: (cos, sin) or None without rotary positions. With ``cache``: the S new tokens sit
        at ``positions`` (S,) and attend over everything the cache holds."""
        check_input(x, self.d_model, "attention")
        p = self.plan
        B, S, d = x.shape
        kv, hd, k = p.n_kv_heads, p.head_dim, p.moa_top_k
        assert k is not None
        r = p.n_heads // kv  # one expert's query heads per KV head
        idx, w, _ = self.route(x)  # (B, S, k) ×2
        slots = idx.reshape(-1)  # (T·k,) token-major
        xs = x.reshape(B * S, 1, d).expand(B * S, k, d).reshape(-1, d)  # each token once per slot
        q = self._per_slot(self.q_experts, xs, slots)  # (T·k, h·hd)
        q = q.view(B, S, k, kv, r, hd).permute(0, 3, 2, 4, 1, 5).reshape(B, kv * k * r, S, hd)
        keys = self.k_proj(x).view(B, S, kv, hd).transpose(1, 2)  # (B, kv, S, hd)
        values = self.v_proj(x).view(B, S, kv, hd).transpose(1, 2)
        if p.rope:
            if rope is None:
                raise ValueError("this layer applies rotary positions but was given no (cos, sin)")
            q, keys = apply_rope(q, *rope), apply_rope(keys, *rope)
        if cache is None:
            y = attend(q, keys, values, scale=self.scale, window=p.window)
        else:
            assert positions is not None, "a cached call passes the positions of its tokens"
            keys, values_c, key_positions = cache.update(keys, values, positions)
            assert values_c is not None
            y = attend_masked(q, keys, values_c, cache.mask(positions, key_positions), scale=self.scale)
        y = y.view(B, kv, k, r, S, hd).permute(0, 4, 2, 1, 3, 5).reshape(-1, p.n_heads * hd)  # (T·k, h·hd)
        out = self._per_slot(self.o_experts, y, slots).view(B, S, k, d)
        out = (out * w.to(out.dtype)[..., None]).sum(2)
        return out if self.out_bias is None else out + self.out_bias

    def cache_widths(self) -> tuple[int, int, int]:
        """The shared keys and values: kv heads of head_dim per token."""
        return self.plan.n_kv_heads, self.plan.head_dim, self.plan.head_dim

    def extra_repr(self) -> str:
        p = self.plan
        return f"experts={p.moa_n_experts}, top_k={p.moa_top_k}, heads={p.n_heads}, kv_heads={p.n_kv_heads}, head_dim={p.head_dim}"
