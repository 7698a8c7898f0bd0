"""Multi-head latent attention (DeepSeek-V2, arXiv 2405.04434; DeepSeek-V3).

Queries go through an optional low-rank bottleneck (q_lora_rank); keys and values are reconstructed per
head from one compressed latent of width kv_lora_rank (what an inference cache stores), plus one shared
rotary key of width qk_rope_head_dim:

    q      = q_b_proj(norm(q_a_proj(x)))                    (B, S, h·(d_nope + d_rope))
    c, k_r = split(kv_a_proj_with_mqa(x))                   (B, S, kv_r), (B, S, d_rope)
    k_n, v = split(kv_b_proj(norm(c)))                      per head: d_nope, d_v
    k      = [k_n | rope(k_r) broadcast to every head]

Names and layouts are transformers' DeepseekV3Attention, and the rotary dims use DeepSeek's adjacent-pair
convention (``rope_interleave``), so HF checkpoints load without permutation. The softmax scale carries
YaRN's mscale² correction. The latent norms, and Dots3's norm of the rotary key before its rotation
(``attention.rope_key_norm``), take ``plan.latent_norm_eps`` when set. With ``attention.indexer``
(DeepSeek-V3.2) an :class:`moec.nn.indexer.Indexer` picks the top_k keys each query attends, in the full forward and
in a cached decode alike. Parameter count = :func:`moec.analyze.counts.attention_part`.

A cached call (``moec.nn.cache``) stores only [norm(c) | rope(k_r)] per token and absorbs kv_b_proj into the
query and the output, as DeepSeek's inference does (docs/decode.md, "MLA"): with W_uk, W_uv the key and
value rows of kv_b_proj for head i,

    q·k_n = q_n·(W_uk c) = (W_ukᵀ q_n)·c          scores against the latent itself
    Σ_j p_j v_j = W_uv Σ_j p_j c_j                  the values' up-projection after the softmax
"""

from __future__ import annotations

import dataclasses
import math

import torch
from torch import nn

from moec.nn.attention import (
    AttentionLayer,
    Linear,
    attend,
    attend_masked,
    causal_mask,
    check_input,
    sigmoid_gated,
)
from moec.nn.cache import LayerCache
from moec.nn.indexer import Indexer
from moec.nn.norms import make_norm
from moec.nn.rope import apply_rope_interleaved, softmax_scale_factor
from moec.spec.plan import AttentionPlan, NormPlan, PositionsPlan


class MLA(AttentionLayer):
    def __init__(
        self,
        plan: AttentionPlan,
        d_model: int,
        *,
        norm: NormPlan,
        positions: PositionsPlan,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ):
        super().__init__()
        if plan.kind != "mla":
            raise ValueError(f"MLA builds mla layers, not {plan.kind!r}")
        if plan.qk_norm or plan.bias or plan.out_bias or plan.clip_qkv is not None:
            raise ValueError("MLA has no qk_norm, clip_qkv or projection biases (DeepSeek-V2/V3 layout)")
        assert plan.kv_lora_rank and plan.qk_nope_head_dim and plan.v_head_dim and plan.qk_rope_head_dim is not None
        self.plan, self.d_model = plan, d_model
        h, nope, rope, dv = plan.n_heads, plan.qk_nope_head_dim, plan.qk_rope_head_dim, plan.v_head_dim
        self.n_heads, self.nope, self.rope_dim, self.v_dim = h, nope, rope, dv
        qk = nope + rope
        kw = {"device": device, "dtype": dtype}
        if plan.latent_norm_eps is not None:  # transformers' DeepSeek/LongCat latent norms keep 1e-6
            norm = dataclasses.replace(norm, eps=plan.latent_norm_eps)
        self.q_gate_proj = None
        if plan.q_lora_rank:
            self.q_a_proj = Linear(d_model, plan.q_lora_rank, bias=False, **kw)
            self.q_a_layernorm = make_norm(norm, plan.q_lora_rank, **kw)
            self.q_b_proj = None if plan.query_gate else Linear(plan.q_lora_rank, h * qk, bias=False, **kw)
            if plan.query_gate:  # A.X-K2: [norm(c_q) | c_q] → per head [query | a gate per value element]
                self.q_gate_proj = Linear(2 * plan.q_lora_rank, h * (qk + dv), bias=False, **kw)
            self.q_proj = None
        else:
            self.q_a_proj = self.q_a_layernorm = self.q_b_proj = None
            self.q_proj = Linear(d_model, h * qk, bias=False, **kw)
        self.kv_a_proj_with_mqa = Linear(d_model, plan.kv_lora_rank + rope, bias=False, **kw)
        self.kv_a_layernorm = make_norm(norm, plan.kv_lora_rank, **kw)
        # Dots3 norms the shared rotary key before rotating it (attention.rope_key_norm); transformers' name
        self.k_rope_only_layernorm = make_norm(norm, rope, **kw) if plan.rope_key_norm else None
        self.kv_b_proj = Linear(plan.kv_lora_rank, h * (nope + dv), bias=False, **kw)
        self.o_proj = Linear(h * dv, d_model, bias=False, **kw)
        self.make_output_gate(d_model, **kw)  # Ling 3's per-head gate
        self.sinks = nn.Parameter(torch.empty(h, **kw)) if plan.sinks else None
        self.indexer = Indexer(plan, d_model, **kw) if plan.has_indexer else None  # DeepSeek-V3.2's sparse attention
        # the keys its indexer chose in its last call, (B, 1, S, T) (None: every key): what a layer of indexer_shared
        # after it attends (GLM-5.2, HY-V4), pointed at this layer by moec.nn.indexer.share_indexer_choices, which
        # sets lends_choice; kept only then, as a layer holding its last S×T choice would hold it past the call
        self.chosen: torch.Tensor | None = None
        self.lends_choice = False
        self.choice_of: list[MLA] = []
        self.scale = plan.scale if plan.scale is not None else softmax_scale_factor(positions) / math.sqrt(qk)
        # LongCat-Flash's constant factors on the query and the normed kv latent (1: DeepSeek's MLA)
        self.q_scale = math.sqrt(d_model / plan.q_lora_rank) if plan.latent_scales and plan.q_lora_rank else 1.0
        self.kv_scale = math.sqrt(d_model / plan.kv_lora_rank) if plan.latent_scales else 1.0
        self.reset_parameters()

    def forward(
        self,
        x: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor] | None = None,
        cache: LayerCache | None = None,
        positions: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x (B, S, d); rope: (cos, sin), each (S, qk_rope_head_dim), or None without rotary positions.
        With ``cache``: the S new tokens sit at ``positions`` (S,); see :meth:`decode`."""
        if cache is not None:
            assert positions is not None, "a cached call passes the positions of its tokens"
            return self.decode(x, rope, cache, positions)
        q_nope, q_rot, latent, k_rot, q_latent, gate = self._project(x, rope)  # checks x first
        (B, h, S, nope), r, dv = q_nope.shape, self.rope_dim, self.v_dim
        kv = self.kv_b_proj(self.normed_latent(latent)).view(B, S, h, nope + dv).transpose(1, 2)  # (B, h, S, nope+dv)
        k_nope, v = kv.split([nope, dv], dim=-1)
        q = torch.cat((q_nope, q_rot), dim=-1)  # (B, h, S, nope + r)
        k = torch.cat((k_nope, k_rot.expand(B, h, S, r)), dim=-1)  # (B, h, S, nope + r)
        chosen = None
        if self.indexer is not None and S > self.indexer.top_k:  # else every query sees at most top_k keys: dense
            allowed = causal_mask(S, self.plan.window, x.device)
            ix_rope = rope if self.plan.rope else None
            index_keys = self.indexer.keys(x, ix_rope)
            chosen = self.indexer.select(self.indexer.scores(x, q_latent, index_keys, ix_rope), allowed)[:, None]
        elif self.plan.indexer_shared:
            chosen = self.shared_choice()  # None where its source attended every key
        self.chosen = chosen if self.lends_choice else None
        if chosen is not None:
            y = attend_masked(q, k, v, chosen, scale=self.scale, sinks=self.sinks)  # (B, h, S, dv)
        else:
            y = attend(q, k, v, scale=self.scale, window=self.plan.window, sinks=self.sinks)  # (B, h, S, dv)
        return self.output(x, sigmoid_gated(y, gate))

    def decode(
        self,
        x: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor] | None,
        cache: LayerCache,
        positions: torch.Tensor,
    ) -> torch.Tensor:
        """The absorbed form over the latent cache: the same output as :meth:`forward` on the whole sequence."""
        q_nope, q_rot, latent, k_rot, q_latent, gate = self._project(x, rope)  # checks x first
        (B, h, S, nope), dv, kv_r = q_nope.shape, self.v_dim, self.plan.kv_lora_rank
        width = kv_r + self.rope_dim  # the attention's part of a cache entry; the indexer's key follows it
        w = self.kv_b_proj.weight.view(h, nope + dv, kv_r)  # per head: [W_uk (nope, kv_r) | W_uv (dv, kv_r)]
        w_uk, w_uv = w[:, :nope], w[:, nope:]
        q_lat = torch.einsum("bhsn,hnc->bhsc", q_nope, w_uk)  # (B, h, S, kv_r)
        parts = [self.normed_latent(latent).view(B, 1, S, kv_r), k_rot]
        if self.indexer is not None:
            parts.append(self.indexer.keys(x, rope if self.plan.rope else None))  # (B, 1, S, d_I)
        keys, _, key_positions = cache.update(torch.cat(parts, dim=-1), None, positions)  # (B, 1, T, width [+ d_I])
        mask = cache.mask(positions, key_positions)  # (S, T)
        if self.indexer is not None:  # the top_k of the visible keys, by the indexer's scores against its cached keys
            scores = self.indexer.scores(x, q_latent, keys[..., width:], rope if self.plan.rope else None)  # (B, S, T)
            mask = self.indexer.select(scores, mask)[:, None]  # (B, 1, S, T)
            self.chosen = mask if self.lends_choice else None
        elif self.plan.indexer_shared:  # its source's cache holds the same positions in the same slots
            mask = self.shared_choice()
        q_abs = torch.cat((q_lat, q_rot), dim=-1)  # (B, h, S, kv_r + r)
        y = attend_masked(q_abs, keys[..., :width], keys[..., :kv_r], mask, scale=self.scale, sinks=self.sinks)
        y = torch.einsum("bhsc,hvc->bhsv", y, w_uv)  # (B, h, S, dv)
        return self.output(x, sigmoid_gated(y, gate))

    def _project(
        self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """What forward and decode share: the query's two parts (B, h, S, nope) and (B, h, S, r), the latent
        (B, S, kv_r) before its norm and the rotary key (B, 1, S, r), both rotary parts rotated, the normed
        query latent (B, S, q_lora_rank) the indexer reads (None without q_lora_rank), and with
        attention.query_gate the gate logits of the values (B, h, S, dv) (None without)."""
        check_input(x, self.d_model, "MLA")
        B, S, _ = x.shape
        nope, r = self.nope, self.rope_dim  # head counts come from the shapes (TP: local heads)
        gate = None
        if self.q_proj is not None:
            q, q_latent = self.q_proj(x), None
        elif self.q_gate_proj is not None:  # A.X-K2: one projection of the normed and the raw latent side by side
            c_q = self.q_a_proj(x)  # (B, S, q_lora_rank)
            q_latent = self.q_a_layernorm(c_q)
            qg = self.q_gate_proj(torch.cat((q_latent, c_q), dim=-1))  # (B, S, h·(nope + r + dv))
            qg = qg.view(B, S, -1, nope + r + self.v_dim)  # per head [query | gate]
            q, gate = qg[..., : nope + r].reshape(B, S, -1), qg[..., nope + r :].transpose(1, 2)  # gate (B, h, S, dv)
        else:
            q_latent = self.q_a_layernorm(self.q_a_proj(x))  # (B, S, q_lora_rank)
            q = self.q_b_proj(q_latent)  # (B, S, h·(nope + r))
        if self.q_scale != 1.0:
            q = q * self.q_scale
        h = q.shape[-1] // (nope + r)
        q_nope, q_rot = q.view(B, S, h, nope + r).transpose(1, 2).split([nope, r], dim=-1)  # (B, h, S, ·)
        latent, k_rot = self.kv_a_proj_with_mqa(x).split([self.plan.kv_lora_rank, r], dim=-1)  # (B, S, kv_r), (B, S, r)
        k_rot = k_rot.view(B, 1, S, r)  # one rotary key shared by every head
        if self.k_rope_only_layernorm is not None:
            k_rot = self.k_rope_only_layernorm(k_rot)
        if self.plan.rope:
            if rope is None:
                raise ValueError("this layer applies rotary positions but was given no (cos, sin)")
            q_rot, k_rot = apply_rope_interleaved(q_rot, *rope), apply_rope_interleaved(k_rot, *rope)
        return q_nope, q_rot, latent, k_rot, q_latent, gate

    def shared_choice(self) -> torch.Tensor | None:
        """The keys the last layer with an indexer before this one chose in this call (attention.indexer shared)."""
        if not self.choice_of:
            raise ValueError("this layer shares an indexer's choice but no earlier layer was wired to it")
        return self.choice_of[0].chosen

    def normed_latent(self, latent: torch.Tensor) -> torch.Tensor:
        """The kv latent (B, S, kv_r) normed (and scaled, attention.latent_scales): what kv_b_proj reads and the
        cache holds."""
        c = self.kv_a_layernorm(latent)
        return c * self.kv_scale if self.kv_scale != 1.0 else c

    def cache_widths(self) -> tuple[int, int, None]:
        """[latent | rotated key] slots: one (kv_r + d_rope)-wide entry per token, shared by the heads; with an
        indexer, its key of d_I follows in the same entry (moec.analyze.memory.kv_bytes_per_token counts it)."""
        index_width = self.indexer.head_dim if self.indexer is not None else 0
        return 1, self.plan.kv_lora_rank + self.rope_dim + index_width, None

    def extra_repr(self) -> str:
        p = self.plan
        return (
            f"heads={p.n_heads}, q_lora_rank={p.q_lora_rank}, kv_lora_rank={p.kv_lora_rank}, "
            f"qk_nope={p.qk_nope_head_dim}, qk_rope={p.qk_rope_head_dim}, v={p.v_head_dim}, window={p.window}"
        )
