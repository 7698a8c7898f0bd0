"""Kimi Delta Attention (moec.mixers.kda; docs/mixers.md, "kda"), in plain torch.

Per head, state ``S`` (head_dim × head_dim), per token with per-key-channel log decay ``g`` and write strength
``β``::

    S ← (I − β·k·kᵀ) · Diag(exp(g)) · S + β·k·vᵀ        o = Sᵀ·q

The chunked form (training, prefill) follows the WY representation of the delta rule (Yang et al., "Parallelizing
Linear Transformers with the Delta Rule over Sequence Length", arXiv 2406.06484) with KDA's per-channel decay
(arXiv 2510.26692). Inside a chunk, with Γₜ the cumulative log decay since the chunk began and S₀ its incoming
state, the value each token writes, uₜ = βₜ·(vₜ − (Diag(e^{gₜ})·Sₜ₋₁)ᵀ·kₜ), satisfies

    uₜ + βₜ·Σ_{s<t} (kₜ·Diag(e^{Γₜ−Γₛ})·kₛ)·uₛ = βₜ·(vₜ − S₀ᵀ·(e^{Γₜ} ⊙ kₜ)),

one unit lower-triangular system per chunk; then oₜ = S₀ᵀ·(e^{Γₜ} ⊙ qₜ) + Σ_{s≤t} (qₜ·Diag(e^{Γₜ−Γₛ})·kₛ)·uₛ
and the outgoing state is Diag(e^{Γ_c})·S₀ + Σₛ (e^{Γ_c−Γₛ} ⊙ kₛ)·uₛᵀ. The pairwise decays e^{Γₜ−Γₛ} (s ≤ t)
are formed explicitly, never as e^{Γₜ}·e^{−Γₛ}, which overflows for strong decays.

Parameter names and shapes are transformers' KimiLinearDeltaAttention's (q/k/v_proj, conv1d over [q | k | v],
forget_gate.{f_a_proj, f_b_proj, dt_bias, A_log (1, 1, H, 1)}, b_proj, g_a_proj, g_b_proj, o_norm, o_proj);
with a full-rank decay or gate, forget_gate.f_proj and g_proj, as Ling 3.0 names them. The delta rule runs in
float32 at least (float64 for float64 inputs), as transformers' does.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from moec.kernels.mixers.state import MixerState, causal_conv_with_state, conv_window_step, rms_normalize, state_dtype

# the q/k L2 norm's epsilon, added under the square root (transformers' and flash-linear-attention's l2norm)
QK_L2_EPS = 1e-6


def l2_normalize(x: torch.Tensor) -> torch.Tensor:
    return x / torch.sqrt((x * x).sum(-1, keepdim=True) + QK_L2_EPS)


class ForgetGate(nn.Module):
    """The per-channel log decay g (B, S, H, hd) of each token, ≤ 0, computed in float32 at least."""

    def __init__(
        self, d_model: int, n_heads: int, head_dim: int, rank: int, decay: str, lower_bound: float | None, kw: dict
    ):
        super().__init__()
        inner = n_heads * head_dim
        self.head_dim, self.decay, self.lower_bound = head_dim, decay, lower_bound
        if rank:
            self.f_a_proj = nn.Linear(d_model, rank, bias=False, **kw)
            self.f_b_proj = nn.Linear(rank, inner, bias=False, **kw)
        else:
            self.f_proj = nn.Linear(d_model, inner, bias=False, **kw)
        self.dt_bias = nn.Parameter(torch.empty(inner, **kw))
        self.A_log = nn.Parameter(torch.empty(1, 1, n_heads, 1, **kw))

    def reset_parameters(self) -> None:
        """A = U(1, 16) and dt = exp(U(ln 1e-3, ln 1e-1)) with dt_bias its inverse softplus (Mamba's
        initialisation, which transformers and flash-linear-attention give KDA's decay)."""
        with torch.no_grad():
            self.A_log.copy_(torch.empty_like(self.A_log).uniform_(1, 16).log())
            dt = torch.empty_like(self.dt_bias).uniform_(math.log(1e-3), math.log(1e-1)).exp().clamp_min(1e-4)
            self.dt_bias.copy_(dt + torch.log(-torch.expm1(-dt)))

    def forward(self, x: torch.Tensor, work: torch.dtype) -> torch.Tensor:
        f = self.f_proj(x) if hasattr(self, "f_proj") else self.f_b_proj(self.f_a_proj(x))
        f = (f.to(work) + self.dt_bias.to(work)).unflatten(-1, (-1, self.head_dim))  # (B, S, H, hd)
        rate = self.A_log.to(work).exp()  # (1, 1, H, 1)
        if self.decay == "softplus":
            return -rate * F.softplus(f)
        return self.lower_bound * torch.sigmoid(rate * f)


def delta_rule_chunked(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    beta: torch.Tensor,
    state: torch.Tensor,
    chunk: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """q, k, v, g (B, H, S, hd), beta (B, H, S), state (B, H, hd, hd) → outputs (B, H, S, hd) and the state
    after the last token. q is already scaled; the last chunk is shorter when S is not a multiple of chunk."""
    outs = []
    for start in range(0, q.shape[2], chunk):
        part = slice(start, start + chunk)
        o, state = _one_chunk(q[:, :, part], k[:, :, part], v[:, :, part], g[:, :, part], beta[:, :, part], state)
        outs.append(o)
    return torch.cat(outs, dim=2), state


def _one_chunk(q, k, v, g, beta, s0):
    """One chunk of c tokens from the state s0: its outputs and the state after it (the module docstring's
    equations)."""
    c = q.shape[2]
    cum = g.cumsum(2)  # Γ (B, H, c, hd)
    on_or_below = torch.ones(c, c, dtype=torch.bool, device=q.device).tril()
    # e^{Γₜ−Γₛ} for s ≤ t, 0 above the diagonal: (B, H, c, c, hd)
    pair_decay = (cum.unsqueeze(3) - cum.unsqueeze(2)).masked_fill(~on_or_below[..., None], -math.inf).exp()
    scores = torch.einsum("bhtk,bhtsk,bhsk->bhts", q, pair_decay, k)  # on and below the diagonal
    keys = torch.einsum("bhtk,bhtsk,bhsk->bhts", k, pair_decay, k).tril(-1)  # strictly below
    system = torch.eye(c, dtype=q.dtype, device=q.device) + beta.unsqueeze(-1) * keys
    rhs = beta.unsqueeze(-1) * (v - (k * cum.exp()) @ s0)
    u = torch.linalg.solve_triangular(system, rhs, upper=False, unitriangular=True)  # (B, H, c, hd)
    out = (q * cum.exp()) @ s0 + scores @ u
    last = cum[:, :, -1:]  # (B, H, 1, hd)
    state = last.transpose(-1, -2).exp() * s0 + (k * (last - cum).exp()).transpose(-1, -2) @ u
    return out, state


def delta_rule_recurrent(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor, beta: torch.Tensor, state: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The same as :func:`delta_rule_chunked`, one token at a time: the oracle."""
    outs = []
    for t in range(q.shape[2]):
        state = g[:, :, t].exp().unsqueeze(-1) * state  # decay each key channel's row
        read = (state * k[:, :, t].unsqueeze(-1)).sum(-2)  # Sᵀk (B, H, hd)
        write = beta[:, :, t].unsqueeze(-1) * (v[:, :, t] - read)
        state = state + k[:, :, t].unsqueeze(-1) * write.unsqueeze(-2)
        outs.append((state * q[:, :, t].unsqueeze(-1)).sum(-2))
    return torch.stack(outs, dim=2), state


class GatedRMSNorm(nn.Module):
    """RMS norm over each head's hd channels (one weight all heads share), times sigmoid(gate), in float32 at
    least, cast back."""

    def __init__(self, head_dim: int, eps: float, kw: dict):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(head_dim, **kw))
        self.eps = eps

    def forward(self, x: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
        work = state_dtype(x.dtype)
        h = rms_normalize(x, self.eps) * self.weight.to(work)
        return (h * torch.sigmoid(gate.to(work))).to(x.dtype)


class KimiDeltaAttention(nn.Module):
    def __init__(
        self,
        d_model: int,
        *,
        n_heads: int,
        head_dim: int,
        conv_kernel: int,
        decay_rank: int,
        gate_rank: int,
        decay: str,
        norm_eps: float,
        chunk: int,
        decay_lower_bound: float | None = None,
        device=None,
        dtype=None,
    ):
        super().__init__()
        kw = {"device": device, "dtype": dtype}
        inner = n_heads * head_dim
        self.n_heads, self.head_dim, self.conv_kernel, self.chunk = n_heads, head_dim, conv_kernel, chunk
        self.q_proj = nn.Linear(d_model, inner, bias=False, **kw)
        self.k_proj = nn.Linear(d_model, inner, bias=False, **kw)
        self.v_proj = nn.Linear(d_model, inner, bias=False, **kw)
        self.conv1d = nn.Conv1d(3 * inner, 3 * inner, conv_kernel, groups=3 * inner, bias=False, **kw)
        self.forget_gate = ForgetGate(d_model, n_heads, head_dim, decay_rank, decay, decay_lower_bound, kw)
        self.b_proj = nn.Linear(d_model, n_heads, bias=False, **kw)
        if gate_rank:
            self.g_a_proj = nn.Linear(d_model, gate_rank, bias=False, **kw)
            self.g_b_proj = nn.Linear(gate_rank, inner, bias=False, **kw)
        else:
            self.g_proj = nn.Linear(d_model, inner, bias=False, **kw)
        self.o_norm = GatedRMSNorm(head_dim, norm_eps, kw)
        self.o_proj = nn.Linear(inner, d_model, bias=False, **kw)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """moec's convention for the matrices (as its Linear): N(0, 1/fan_in), conv_kernel taps for each
        convolution channel; the output norm's weight 1; the decay as :meth:`ForgetGate.reset_parameters`.
        No init work on meta."""
        if self.o_proj.weight.is_meta:
            return
        with torch.no_grad():
            for module in self.modules():
                if isinstance(module, nn.Linear | nn.Conv1d):
                    fan_in = module.weight[0].numel()
                    nn.init.normal_(module.weight, std=1 / math.sqrt(fan_in))
            self.o_norm.weight.fill_(1.0)
        self.forget_gate.reset_parameters()

    def forward(self, x: torch.Tensor, rope=None, cache: MixerState | None = None, positions=None) -> torch.Tensor:
        """x (B, S, d) → (B, S, d): the chunked form from a zero state, or from ``cache``'s, which it then
        holds the state after the last token (prefill or one token alike)."""
        qkv = torch.cat([self.q_proj(x), self.k_proj(x), self.v_proj(x)], dim=-1).transpose(1, 2)  # (B, 3·H·hd, S)
        conv = causal_conv_with_state(qkv, self.conv1d.weight.squeeze(1), None, cache and cache["conv"])
        q, k, v, g, beta = self._heads(F.silu(conv).transpose(1, 2), x)
        if cache is None:
            s0 = q.new_zeros(*q.shape[:2], self.head_dim, self.head_dim)
        else:  # a copy: the copy_ below must not change what autograd saved
            s0 = cache["recurrent"].to(q.dtype, copy=True)
        out, state = delta_rule_chunked(q, k, v, g, beta, s0, self.chunk)
        if cache is not None:
            cache["recurrent"].copy_(state)
        return self._output(out, x)

    def recurrent(self, x: torch.Tensor, state: MixerState | None = None) -> tuple[torch.Tensor, MixerState]:
        """The oracle: token by token, the convolution over an explicit window of the last conv_kernel inputs
        and the delta rule one step at a time."""
        state = state or self.new_cache(x.shape[0], 1, device=x.device, dtype=x.dtype)
        w = self.conv1d.weight.squeeze(1)  # (3·H·hd, K)
        past, ssm = state["conv"].clone(), state["recurrent"].clone()
        outs = []
        for t in range(x.shape[1]):
            xt = x[:, t : t + 1]
            qkv = torch.cat([self.q_proj(xt), self.k_proj(xt), self.v_proj(xt)], dim=-1)[:, 0]  # (B, 3·H·hd)
            conv, past = conv_window_step(past, qkv, w, None)  # (B, 3·H·hd), (B, 3·H·hd, K−1)
            q, k, v, g, beta = self._heads(F.silu(conv).unsqueeze(1), xt)
            out, ssm = delta_rule_recurrent(q, k, v, g, beta, ssm.to(q.dtype))
            outs.append(self._output(out, xt))
        state["conv"].copy_(past)
        state["recurrent"].copy_(ssm)
        return torch.cat(outs, dim=1), state

    def new_cache(self, batch: int, max_len: int, *, device=None, dtype=None) -> MixerState:
        """The convolution's last conv_kernel − 1 inputs (B, 3·H·hd, K − 1) in ``dtype``, and the delta rule's
        state (B, H, hd, hd) in float32 at least, whatever max_len."""
        inner = self.n_heads * self.head_dim
        conv = torch.zeros(batch, 3 * inner, self.conv_kernel - 1, device=device, dtype=dtype)
        work = state_dtype(dtype or torch.get_default_dtype())
        recurrent = torch.zeros(batch, self.n_heads, self.head_dim, self.head_dim, device=device, dtype=work)
        return MixerState({"conv": conv, "recurrent": recurrent})

    def _heads(self, qkv: torch.Tensor, x: torch.Tensor):
        """The convolved [q | k | v] (B, S, 3·H·hd) and the block input x → q (normalised, scaled), k
        (normalised), v, g (B, H, S, hd) and beta (B, H, S), in the delta rule's working dtype."""
        work = state_dtype(x.dtype)
        q, k, v = (t.unflatten(-1, (self.n_heads, self.head_dim)).transpose(1, 2).to(work) for t in qkv.chunk(3, -1))
        q = l2_normalize(q) / math.sqrt(self.head_dim)
        g = self.forget_gate(x, work).transpose(1, 2)
        beta = torch.sigmoid(self.b_proj(x)).to(work).transpose(1, 2)
        return q, l2_normalize(k), v, g, beta

    def _output(self, out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """The delta rule's output (B, H, S, hd) → normalised per head, gated, projected: (B, S, d)."""
        gate = self.g_b_proj(self.g_a_proj(x)) if hasattr(self, "g_a_proj") else self.g_proj(x)
        out = out.transpose(1, 2).to(x.dtype)  # (B, S, H, hd)
        return self.o_proj(self.o_norm(out, gate.unflatten(-1, (self.n_heads, self.head_dim))).flatten(2))
