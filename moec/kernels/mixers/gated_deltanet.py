"""Gated DeltaNet (moec.mixers.gated_deltanet; docs/mixers.md, "gated_deltanet"): linear attention whose
per-head ``dk × dv`` state follows the gated delta rule ``S_t = exp(g_t)·(I − β_t k_t k_tᵀ)·S_{t−1} + β_t k_t
v_tᵀ`` and is read as ``o_t = S_tᵀ q_t``.

Parameter names and shapes follow transformers' Qwen3.5/Lara module (``in_proj_qkv``, ``in_proj_z``,
``in_proj_b``, ``in_proj_a``, ``conv1d.weight`` as (channels, 1, K), ``dt_bias``, ``A_log``, ``norm.weight``,
``out_proj``), so their weights load by name; Qwen3-Next's fused and per-key-head interleaved
``in_proj_qkvz``/``in_proj_ba`` are split into these by its weight mapper.

The delta rule itself runs in at least float32 whatever the model's dtype (as transformers and fla do), and
the decode state keeps ``S`` in that precision.

:func:`chunked_delta_rule` is the parallel form used for training and prefill (the WY/UT form of the
paper's section 3, arXiv 2412.06464); :func:`delta_rule_step` is one token of the plain recurrence, the
oracle and the one-token decode step. No fused (fla) kernel is used: this module is the reference path.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from moec.kernels.mixers.state import MixerState, causal_conv_with_state, conv_window_step, rms_normalize, state_dtype

_L2_EPS = 1e-6  # inside the q/k L2 normalisation: x / sqrt(Σx² + eps), as transformers and fla


def _l2_normalize(x: torch.Tensor) -> torch.Tensor:
    return x * torch.rsqrt((x * x).sum(-1, keepdim=True) + _L2_EPS)


def delta_rule_step(
    state: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, beta: torch.Tensor, g: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """One token of the recurrence. state (B, H, dk, dv); q, k (B, H, dk); v (B, H, dv); beta, g (B, H)
    → (o (B, H, dv), the new state): decay S, write β·(v − Sᵀk) along k, read with q."""
    state = state * g.exp()[..., None, None]
    predicted = torch.einsum("bhkv,bhk->bhv", state, k)
    delta = beta[..., None] * (v - predicted)
    state = state + k[..., :, None] * delta[..., None, :]
    return torch.einsum("bhkv,bhk->bhv", state, q), state


def _pad_to_chunks(chunk: int, *tensors: torch.Tensor) -> list[torch.Tensor]:
    """Zero-pad the sequence axis (dim 2) up to a multiple of ``chunk``. A padded token has β = 0 and g = 0:
    it writes nothing and decays nothing, so the final state is the unpadded sequence's."""
    pad = -tensors[0].shape[2] % chunk
    out = []
    for t in tensors:
        widths = (0, 0) * (t.dim() - 3) + (0, pad)
        out.append(F.pad(t, widths) if pad else t)
    return out


def chunked_delta_rule(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    beta: torch.Tensor,
    g: torch.Tensor,
    chunk: int,
    state: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The delta rule over a whole sequence, ``chunk`` tokens at a time. q, k (B, H, S, dk); v (B, H, S, dv);
    beta, g (B, H, S); state (B, H, dk, dv) or None for zeros → (o (B, H, S, dv), the final state).

    Inside a chunk, with Γ_t the cumulative log-decay from the chunk's start and S₀ the state before it, the
    values each token writes, u_t = β_t·(v_t − e^{Γ_t}·S₀ᵀk_t − Σ_{s<t} e^{Γ_t−Γ_s}(k_tᵀk_s)·u_s), solve one
    unit lower-triangular system (I + A)·U = β·V − β·e^Γ·K·S₀; then o_t = e^{Γ_t}·S₀ᵀq_t + Σ_{s≤t}
    e^{Γ_t−Γ_s}(q_tᵀk_s)·u_s and the next chunk starts from e^{Γ_c}·S₀ + Σ_s e^{Γ_c−Γ_s}·k_s u_sᵀ."""
    B, H, S, dk = k.shape
    dv = v.shape[-1]
    q, k, v, beta, g = _pad_to_chunks(chunk, q, k, v, beta, g)
    n = q.shape[2] // chunk
    q, k, v = (x.reshape(B, H, n, chunk, x.shape[-1]) for x in (q, k, v))
    beta, gamma = beta.reshape(B, H, n, chunk), g.reshape(B, H, n, chunk).cumsum(-1)

    causal = torch.ones(chunk, chunk, dtype=torch.bool, device=q.device).tril()
    relative_decay = (gamma[..., :, None] - gamma[..., None, :]).masked_fill(~causal, -math.inf).exp()
    k_beta = k * beta[..., None]
    strictly_lower = (k_beta @ k.transpose(-1, -2) * relative_decay).tril(-1)
    system = strictly_lower + torch.eye(chunk, dtype=q.dtype, device=q.device)
    rhs = torch.cat([v * beta[..., None], k_beta * gamma.exp()[..., None]], dim=-1)
    solved = torch.linalg.solve_triangular(system, rhs, upper=False, unitriangular=True)
    new_values, decayed_keys = solved.split([dv, dk], dim=-1)  # U = new_values − decayed_keys·S₀

    scores = q @ k.transpose(-1, -2) * relative_decay  # (…, c, c), the diagonal included
    q_decayed = q * gamma.exp()[..., None]
    k_to_end = k * (gamma[..., -1:] - gamma).exp()[..., None]
    chunk_decay = gamma[..., -1].exp()[..., None, None]  # (B, H, n, 1, 1)

    state = q.new_zeros(B, H, dk, dv) if state is None else state.to(q.dtype)
    outs = []
    for i in range(n):
        u = new_values[:, :, i] - decayed_keys[:, :, i] @ state
        outs.append(q_decayed[:, :, i] @ state + scores[:, :, i] @ u)
        state = state * chunk_decay[:, :, i] + k_to_end[:, :, i].transpose(-1, -2) @ u
    return torch.cat(outs, dim=2)[:, :, :S], state


class GatedRMSNorm(nn.Module):
    """RMS norm over each head's ``width`` values, scaled by ``weight`` (init 1), then gated by silu(z); the
    norm in at least float32, cast back to the input dtype before the weight (as Qwen3-Next's)."""

    def __init__(self, width: int, eps: float, *, device=None, dtype=None):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(width, device=device, dtype=dtype))

    def forward(self, x: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
        wide = state_dtype(x.dtype)
        scaled = self.weight * rms_normalize(x, self.eps).to(x.dtype)
        return (scaled.to(wide) * F.silu(gate.to(wide))).to(x.dtype)


class GatedDeltaNet(nn.Module):
    def __init__(
        self,
        d_model: int,
        *,
        n_key_heads: int,
        n_value_heads: int,
        key_head_dim: int,
        value_head_dim: int,
        conv_kernel: int,
        chunk: int,
        norm_eps: float,
        device=None,
        dtype=None,
    ):
        super().__init__()
        kw = {"device": device, "dtype": dtype}
        self.d_model, self.chunk, self.conv_kernel = d_model, chunk, conv_kernel
        self.n_key_heads, self.n_value_heads = n_key_heads, n_value_heads
        self.key_head_dim, self.value_head_dim = key_head_dim, value_head_dim
        keys, values = n_key_heads * key_head_dim, n_value_heads * value_head_dim
        self.splits = (keys, keys, values)
        channels = sum(self.splits)
        self.in_proj_qkv = nn.Linear(d_model, channels, bias=False, **kw)
        self.in_proj_z = nn.Linear(d_model, values, bias=False, **kw)
        self.in_proj_b = nn.Linear(d_model, n_value_heads, bias=False, **kw)
        self.in_proj_a = nn.Linear(d_model, n_value_heads, bias=False, **kw)
        self.conv1d = nn.Conv1d(channels, channels, conv_kernel, groups=channels, bias=False, **kw)
        self.dt_bias = nn.Parameter(torch.empty(n_value_heads, **kw))
        self.A_log = nn.Parameter(torch.empty(n_value_heads, **kw))
        self.norm = GatedRMSNorm(value_head_dim, norm_eps, **kw)
        self.out_proj = nn.Linear(values, d_model, bias=False, **kw)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """moec's convention for the weights (as its Linear): N(0, 1/fan_in), d_model for the input projections,
        Hv·dv for out_proj, conv_kernel taps for each channel of the convolution; the gated norm's weight 1.
        The decay's is transformers' (Qwen3-Next, Qwen3.5): dt_bias 1 and A = exp(A_log) uniform in [0.01, 16]
        per head. No init work on meta."""
        if self.A_log.is_meta:
            return
        with torch.no_grad():
            for proj in (self.in_proj_qkv, self.in_proj_z, self.in_proj_b, self.in_proj_a, self.out_proj):
                nn.init.normal_(proj.weight, std=1 / math.sqrt(proj.in_features))
            nn.init.normal_(self.conv1d.weight, std=1 / math.sqrt(self.conv_kernel))
            self.norm.weight.fill_(1.0)
            self.dt_bias.fill_(1.0)
            self.A_log.copy_(torch.empty_like(self.A_log).uniform_(0.01, 16).log())

    def _gates(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x (B, S, d) → z (B, S, Hv, dv) in x's dtype; β and the log-decay g (B, Hv, S) in the rule's dtype."""
        wide = state_dtype(x.dtype)
        z = self.in_proj_z(x).unflatten(-1, (self.n_value_heads, self.value_head_dim))
        beta = torch.sigmoid(self.in_proj_b(x)).to(wide)
        g = -self.A_log.to(wide).exp() * F.softplus(self.in_proj_a(x).to(wide) + self.dt_bias)
        return z, beta.transpose(1, 2), g.transpose(1, 2)

    def _heads(self, mixed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The convolved channels (B, S, 2·Hk·dk + Hv·dv) → q, k (B, Hv, S, dk) L2-normalised, q also scaled
        by dk^−½, each key head repeated for its value heads; v (B, Hv, S, dv); all in the rule's dtype."""
        wide = state_dtype(mixed.dtype)
        q, k, v = mixed.to(wide).split(self.splits, dim=-1)
        group = self.n_value_heads // self.n_key_heads
        q, k = (t.unflatten(-1, (self.n_key_heads, self.key_head_dim)).repeat_interleave(group, 2) for t in (q, k))
        v = v.unflatten(-1, (self.n_value_heads, self.value_head_dim))
        q = _l2_normalize(q) / math.sqrt(self.key_head_dim)
        return q.transpose(1, 2), _l2_normalize(k).transpose(1, 2), v.transpose(1, 2)

    def _output(self, o: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """o (B, Hv, S, dv) → out_proj(norm(o) ⊙ silu(z)) (B, S, d)."""
        o = o.transpose(1, 2).to(z.dtype)
        return self.out_proj(self.norm(o, z).flatten(-2))

    def forward(self, x: torch.Tensor, rope=None, cache: MixerState | None = None, positions=None) -> torch.Tensor:
        """x (B, S, d) → (B, S, d). Without ``cache`` the chunked form from a zero state; with it, from the
        cached state, which is left holding the state after x (one token: one step of the recurrence)."""
        z, beta, g = self._gates(x)
        conv_state = cache["conv"] if cache is not None else None
        mixed = causal_conv_with_state(
            self.in_proj_qkv(x).transpose(1, 2), self.conv1d.weight.squeeze(1), None, conv_state
        )
        q, k, v = self._heads(F.silu(mixed).transpose(1, 2))
        if cache is None:
            o, _ = chunked_delta_rule(q, k, v, beta, g, self.chunk)
            return self._output(o, z)
        # a copy, not the cache's tensor: the copy_ below must not change what autograd saved
        start = cache["recurrent"].clone()
        if x.shape[1] == 1:
            o, final = delta_rule_step(start, q[:, :, 0], k[:, :, 0], v[:, :, 0], beta[..., 0], g[..., 0])
            o = o.unsqueeze(2)
        else:
            o, final = chunked_delta_rule(q, k, v, beta, g, self.chunk, start)
        cache["recurrent"].copy_(final)
        return self._output(o, z)

    def recurrent(self, x: torch.Tensor, state: MixerState | None = None) -> tuple[torch.Tensor, MixerState]:
        """The oracle: token by token, the convolution from an explicit window of the last ``conv_kernel``
        inputs and the state by :func:`delta_rule_step`."""
        state = state or self.new_cache(x.shape[0], 1, device=x.device, dtype=x.dtype)
        window, S = state["conv"].clone(), state["recurrent"].clone()
        z, beta, g = self._gates(x)
        weight = self.conv1d.weight.squeeze(1)  # (channels, K)
        outs = []
        for t in range(x.shape[1]):
            conv, window = conv_window_step(window, self.in_proj_qkv(x[:, t]), weight, None)  # (B, C), (B, C, K−1)
            mixed = F.silu(conv)
            q, k, v = self._heads(mixed.unsqueeze(1))
            o, S = delta_rule_step(S, q[:, :, 0], k[:, :, 0], v[:, :, 0], beta[..., t], g[..., t])
            outs.append(self._output(o.unsqueeze(2), z[:, t : t + 1]))
        state["conv"].copy_(window)
        state["recurrent"].copy_(S)
        return torch.cat(outs, dim=1), state

    def new_cache(self, batch: int, max_len: int, *, device=None, dtype=None) -> MixerState:
        """The last conv_kernel − 1 convolution inputs (B, channels, K − 1) in ``dtype``, and each value head's
        state (B, Hv, dk, dv) in at least float32; whatever max_len."""
        dtype = dtype or torch.get_default_dtype()
        conv = torch.zeros(batch, sum(self.splits), self.conv_kernel - 1, device=device, dtype=dtype)
        shape = (batch, self.n_value_heads, self.key_head_dim, self.value_head_dim)
        recurrent = torch.zeros(shape, device=device, dtype=state_dtype(dtype))
        return MixerState({"conv": conv, "recurrent": recurrent})
