"""Causal self-attention: MHA, GQA and MQA (one module; n_kv_heads says which), qk-norm, qkv clipping,
biases, sliding windows, chunked attention, Llama-4's weightless L2 qk-norm and NoPE temperature tuning,
and attention sinks.

Parameter names follow Hugging Face Llama/Qwen3/OLMoE/gpt-oss so a weight loader maps one to one:
``q_proj``, ``k_proj``, ``v_proj``, ``o_proj`` (``nn.Linear``, weight ``[out, in]``), ``q_norm``,
``k_norm`` (over head_dim, shared by every head, as Qwen3; or over the whole projection, as OLMoE),
``sinks`` (one logit per head, gpt-oss).
The parameter count equals :func:`moec.analyze.counts.attention_part` exactly.

:func:`attend` is the one place scores are computed, also for MLA: ``scaled_dot_product_attention``
(flash/fused kernels, causal) unless the layer has sinks, which SDPA cannot express; then an explicit
softmax with the sink logit in the denominator. :func:`attend_masked` is its counterpart for a cached
decode (``moec.nn.cache``): the queries see the cache's keys through a mask built from positions.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from moec.nn.cache import LayerCache, new_layer_cache
from moec.nn.norms import make_norm
from moec.nn.rope import apply_rope
from moec.spec.plan import AttentionPlan, NormPlan, PositionsPlan

_SDPA_GQA = tuple(int(p) for p in torch.__version__.split(".")[:2]) >= (2, 5)  # enable_gqa arrived in 2.5


class Linear(nn.Linear):
    """``nn.Linear`` (weight ``[out, in]``, HF layout) initialised N(0, 1/in), biases zero; no init work
    on ``meta``, which keeps building a 671B model on meta instant."""

    def reset_parameters(self) -> None:
        if self.weight.is_meta:
            return
        nn.init.normal_(self.weight, std=1 / math.sqrt(self.in_features))
        if self.bias is not None:
            nn.init.zeros_(self.bias)


def repeat_kv(x: torch.Tensor, n_rep: int) -> torch.Tensor:
    """(B, kv, S, d) → (B, kv·n_rep, S, d): each KV head serves n_rep consecutive query heads."""
    if n_rep == 1:
        return x
    B, kv, S, d = x.shape
    return x[:, :, None].expand(B, kv, n_rep, S, d).reshape(B, kv * n_rep, S, d)


def check_input(x: torch.Tensor, d_model: int, what: str) -> None:
    """A clear error for the mistakes that otherwise surface as a shape error deep inside a view."""
    if x.dim() != 3:
        raise ValueError(f"{what} input must be (batch, seq, d_model); got shape {tuple(x.shape)}")
    if x.shape[-1] != d_model:
        raise ValueError(f"{what} input has d_model {x.shape[-1]}, expected {d_model}")
    if not x.is_floating_point():
        raise ValueError(f"{what} input must be a floating-point tensor; got {x.dtype}")


def causal_mask(seq_len: int, window: int | None, device: torch.device, chunk: int | None = None) -> torch.Tensor:
    """(S, S) bool, True where query i may attend key j: j ≤ i, and j > i − window with a window, and
    j ≥ floor(i/chunk)·chunk with chunked attention (Llama-4)."""
    i = torch.arange(seq_len, device=device)[:, None]
    j = torch.arange(seq_len, device=device)[None, :]
    allowed = j <= i
    if window is not None:
        allowed = allowed & (j > i - window)
    if chunk is not None:
        allowed = allowed & (j // chunk == i // chunk)
    return allowed


def l2_norm(x: torch.Tensor, eps: float) -> torch.Tensor:
    """Weightless x / rms(x) over the last dim in fp32 (Llama-4's ``L2Norm``)."""
    xf = x.float()
    return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).type_as(x)


def sigmoid_gated(y: torch.Tensor, gate: torch.Tensor | None) -> torch.Tensor:
    """y times sigmoid(gate), elementwise, the sigmoid in float32 at least (float64 stays float64) and the product
    cast back to y's dtype, as transformers computes A.X-K2's gates (MLA's attention.query_gate, model.norm_gate);
    y itself without a gate."""
    if gate is None:
        return y
    return (y * torch.sigmoid(gate.to(torch.promote_types(gate.dtype, torch.float32)))).to(y.dtype)


def temperature(
    seq_len: int, floor_scale: float, scale: float, device: torch.device, form: str = "floor_log"
) -> torch.Tensor:
    """(S,) fp32 query multipliers 1 + scale·log1p(floor((pos + 1)/floor_scale)) (Llama-4's NoPE layers,
    arXiv 2501.19399): long-range queries sharpen as the context grows. form "power": (1 + (pos + 1)/floor_scale)
    ^ scale, without the floor (Beam's NoPE layers), computed as exp(scale·log1p(·)) as transformers does."""
    return temperature_at(torch.arange(seq_len, device=device), floor_scale, scale, form)


def temperature_at(positions: torch.Tensor, floor_scale: float, scale: float, form: str = "floor_log") -> torch.Tensor:
    """:func:`temperature` at the given (S,) positions (a cached decode starts past 0)."""
    pos = positions.to(torch.float32)
    if form == "power":
        return torch.exp(scale * torch.log1p((pos + 1.0) / floor_scale))
    return torch.log1p(torch.floor((pos + 1.0) / floor_scale)) * scale + 1.0


def attend(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    scale: float,
    window: int | None = None,
    sinks: torch.Tensor | None = None,
    chunk: int | None = None,
) -> torch.Tensor:
    """Causal attention. q (B, h, S, d_qk), k (B, kv, S, d_qk), v (B, kv, S, d_v) → (B, h, S, d_v)."""
    S = q.shape[2]
    if window is not None and window >= S:
        window = None  # a window as long as the sequence is plain causal: keep the fast path
    if chunk is not None and chunk >= S:
        chunk = None  # likewise one chunk
    if sinks is None and window is None and chunk is None:
        return _sdpa(q, k, v, scale=scale, is_causal=True)
    return attend_masked(q, k, v, causal_mask(S, window, q.device, chunk), scale=scale, sinks=sinks)


def attend_masked(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor,
    *,
    scale: float,
    sinks: torch.Tensor | None = None,
) -> torch.Tensor:
    """Attention through an explicit mask, for a cached decode. q (B, h, S, d_qk), k (B, kv, T, d_qk),
    v (B, kv, T, d_v), mask (S, T) bool (True: may attend; every row has a True) → (B, h, S, d_v)."""
    if sinks is None:
        return _sdpa(q, k, v, scale=scale, attn_mask=mask)
    # gpt-oss: each head's learned sink logit joins the softmax denominator and takes no value
    h, kv = q.shape[1], k.shape[1]
    k, v = repeat_kv(k, h // kv), repeat_kv(v, h // kv)
    scores = (q @ k.transpose(-2, -1)) * scale  # (B, h, S, T)
    scores = scores.masked_fill(~mask, float("-inf"))
    B, S = q.shape[0], q.shape[2]
    sink = sinks.to(scores.dtype).view(1, h, 1, 1).expand(B, h, S, 1)  # (B, h, S, 1)
    wide = torch.promote_types(scores.dtype, torch.float32)  # float32 at least; a float64 model stays float64
    probs = torch.cat((scores, sink), dim=-1).to(wide).softmax(-1)[..., :-1]  # (B, h, S, T)
    return probs.to(v.dtype) @ v


def _sdpa(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    scale: float,
    is_causal: bool = False,
    attn_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """torch's fused attention, the kv heads shared by groups of query heads (repeated where torch is too old
    to do it itself)."""
    h, kv = q.shape[1], k.shape[1]
    if not _SDPA_GQA and kv != h:
        k, v = repeat_kv(k, h // kv), repeat_kv(v, h // kv)
    gqa = {"enable_gqa": bool(kv != h)} if _SDPA_GQA else {}  # a Python bool even under a jit trace
    return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=is_causal, scale=scale, **gqa)


class AttentionLayer(nn.Module):
    """What GQA and MLA layers share: the optional learned sink logit per head (``self.sinks``), zero to start,
    and an empty cache whose per-token widths each kind gives in :meth:`cache_widths`."""

    plan: AttentionPlan
    sinks: nn.Parameter | None
    gate_proj: nn.Linear | None
    gate_bias: nn.Parameter | None
    o_proj: nn.Linear

    def make_output_gate(self, d_model: int, *, device=None, dtype=None) -> None:
        """``self.gate_proj``: the output gate's projection of the layer input (Qwen3-Next, Ling 3), one gate per
        element of each head's values or per head (AttentionPlan.gate_width); None without a gate. It has a bias of
        its own where q/k/v have one (attention.output_gate_bias qkv; never in MLA, which has none); with ``head``,
        ``self.gate_bias`` holds one per head, added to each of the head's gate logits (Beam), zero to start as
        transformers initialises it."""
        p = self.plan
        width = p.gate_width
        own_bias = p.bias and p.output_gate_bias == "qkv"
        self.gate_proj = Linear(d_model, width, bias=own_bias, device=device, dtype=dtype) if width else None
        head_bias = width and p.output_gate_bias == "head"
        self.gate_bias = nn.Parameter(torch.zeros(p.n_heads, device=device, dtype=dtype)) if head_bias else None

    def output(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The heads' outputs y (B, h, S, dv) → o_proj, through the output gate σ(gate_proj(x)) when there is one
        (softplus(gate_proj(x)) with output_gate_fn softplus, Laguna: in fp32 at least, as transformers does)."""
        B, S = x.shape[0], x.shape[1]
        y = y.transpose(1, 2)  # (B, S, h, dv)
        if self.gate_proj is not None:
            g = self.gate_proj(x).view(B, S, y.shape[2], -1)  # (B, S, h, dv or 1)
            if self.gate_bias is not None:
                g = g + self.gate_bias[:, None]  # one per head, over the head's gates
            wide = torch.promote_types(g.dtype, torch.float32)
            gate = F.softplus(g.to(wide)) if self.plan.output_gate_fn == "softplus" else torch.sigmoid(g)
            y = y * gate.to(y.dtype)
        return self.o_proj(y.reshape(B, S, -1))  # (B, S, h·dv) → (B, S, d)

    def reset_parameters(self) -> None:
        if self.sinks is not None and not self.sinks.is_meta:
            nn.init.zeros_(self.sinks)  # a sink logit of 0 to start: it learns how much mass to absorb
        if self.gate_bias is not None and not self.gate_bias.is_meta:
            nn.init.zeros_(self.gate_bias)

    def cache_widths(self) -> tuple[int, int, int | None]:
        """(cached heads, key width, value width or None when the values live inside the keys) per token."""
        raise NotImplementedError

    def new_cache(self, batch: int, max_len: int, *, device: torch.device, dtype: torch.dtype) -> LayerCache:
        """Empty cache slots for this layer, :meth:`cache_widths` wide."""
        kv_heads, key_width, value_width = self.cache_widths()
        return new_layer_cache(
            self.plan,
            batch=batch,
            max_len=max_len,
            kv_heads=kv_heads,
            key_width=key_width,
            value_width=value_width,
            device=device,
            dtype=dtype,
        )


class Attention(AttentionLayer):
    """GQA (MHA when n_kv_heads = n_heads, MQA when 1). x (B, S, d) → (B, S, d)."""

    def __init__(
        self,
        plan: AttentionPlan,
        d_model: int,
        *,
        norm: NormPlan,
        positions: PositionsPlan | None = None,  # unused: YaRN reaches GQA through cos/sin only
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ):
        super().__init__()
        if plan.kind != "gqa":
            raise ValueError(f"Attention builds gqa layers; use MLA for {plan.kind!r}")
        self.plan, self.d_model = plan, d_model
        h, kv, hd, vd = plan.n_heads, plan.n_kv_heads, plan.head_dim, plan.v_dim  # vd: MiMo-V2-Flash's v ≠ q/k
        kw = {"device": device, "dtype": dtype}
        self.q_proj = Linear(d_model, h * hd, bias=plan.bias, **kw)
        self.k_proj = Linear(d_model, kv * hd, bias=plan.bias, **kw)
        self.v_proj = Linear(d_model, kv * vd, bias=plan.bias, **kw)
        self.o_proj = Linear(h * vd, d_model, bias=plan.out_bias, **kw)
        # the model's norm kind (the analyzer counts it so); scope "head": one norm over head_dim shared by
        # the heads (Qwen3); "projection": one norm over the whole q and k projections (OLMoE)
        # "l2" (Llama-4) is weightless: no module, see forward
        per_head = plan.qk_norm_scope == "head"
        learned = plan.qk_norm and plan.qk_norm_kind == "model"
        self.q_norm = make_norm(norm, hd if per_head else h * hd, **kw) if learned else None
        self.k_norm = make_norm(norm, hd if per_head else kv * hd, **kw) if learned else None
        self.norm_eps = norm.eps
        self.sinks = nn.Parameter(torch.empty(h, **kw)) if plan.sinks else None
        self.make_output_gate(d_model, **kw)
        self.scale = plan.scale if plan.scale is not None else 1 / math.sqrt(hd)
        self.reset_parameters()

    def forward(
        self,
        x: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor] | None = None,
        cache: LayerCache | None = None,
        positions: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x (B, S, d); rope: (cos, sin), each (S, rotary dim ≤ head_dim), or None without rotary positions.
        With ``cache``: the S new tokens sit at ``positions`` (S,), their keys and values are stored, and they
        attend over everything the cache holds."""
        check_input(x, self.d_model, "attention")
        B, S, _ = x.shape
        q, k, v = self._qkv(x, rope, positions)  # (B, h, S, hd), (B, kv, S, hd) ×2
        if cache is None:
            y = attend(q, k, v, scale=self.scale, window=self.plan.window, sinks=self.sinks, chunk=self.plan.chunk)
        else:
            assert positions is not None, "a cached call passes the positions of its tokens"
            keys, values, key_positions = cache.update(k, v, positions)
            assert values is not None
            y = attend_masked(q, keys, values, cache.mask(positions, key_positions), scale=self.scale, sinks=self.sinks)
        return self.output(x, y)

    def _qkv(
        self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None, positions: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Queries, keys and values as attention takes them: normed, clipped, rotated and tempered."""
        B, S, _ = x.shape
        p = self.plan
        hd = p.head_dim
        q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)  # (B, S, h·hd), (B, S, kv·hd) ×2
        if p.qk_norm and p.qk_norm_scope == "projection":
            q, k = self.q_norm(q), self.k_norm(k)  # OLMoE
        if p.clip_qkv is not None:  # DBRX, OLMoE: after any projection norm
            q, k, v = (t.clamp(-p.clip_qkv, p.clip_qkv) for t in (q, k, v))
        if p.value_scale is not None:  # MiMo-V2-Flash: before the cache, so cached values are scaled too
            v = v * p.value_scale
        # head counts from the widths, not the plan: under tensor parallelism this rank holds only its own heads
        h, kv = q.shape[-1] // hd, k.shape[-1] // hd
        q, k, v = q.view(B, S, h, hd), k.view(B, S, kv, hd), v.view(B, S, kv, -1)
        head_norm = p.qk_norm and p.qk_norm_scope == "head" and p.qk_norm_kind == "model"
        if head_norm and not p.qk_norm_after_rope:
            q, k = self.q_norm(q), self.k_norm(k)  # before rotation, as Qwen3
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, h, S, hd), (B, kv, S, hd) ×2
        if p.rope:
            if rope is None:
                raise ValueError("this layer applies rotary positions but was given no (cos, sin)")
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        if head_norm and p.qk_norm_after_rope:
            q, k = self.q_norm(q), self.k_norm(k)  # after rotation, as Hunyuan-A13B (norm over the last dim)
        if p.qk_norm and p.qk_norm_kind == "l2":  # after rotation, as Llama-4 (rotation keeps the rms anyway)
            q, k = l2_norm(q, self.norm_eps), l2_norm(k, self.norm_eps)
        if p.temperature_floor_scale is not None and p.temperature_scale is not None:
            if positions is None:
                t = temperature(S, p.temperature_floor_scale, p.temperature_scale, q.device, p.temperature_form)
            else:
                t = temperature_at(positions, p.temperature_floor_scale, p.temperature_scale, p.temperature_form)
            q = (q * t[:, None]).to(q.dtype)
        return q, k, v

    def cache_widths(self) -> tuple[int, int, int]:
        """Keys and values for this layer's own KV heads (under tensor parallelism: this rank's)."""
        hd = self.plan.head_dim
        return self.k_proj.out_features // hd, hd, self.plan.v_dim

    def extra_repr(self) -> str:
        p = self.plan
        return f"heads={p.n_heads}, kv_heads={p.n_kv_heads}, head_dim={p.head_dim}, window={p.window}, chunk={p.chunk}, rope={p.rope}"
