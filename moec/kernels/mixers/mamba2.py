"""Mamba2's selective state-space mixer (moec.mixers.mamba2; docs/mixers.md, "mamba2").

``z, xBC, dt = in_proj(h)``; ``x, B, C = silu(conv(xBC))``; per head ``Δ = clamp(softplus(dt + dt_bias))``,
``a = exp(−Δ·exp(A_log))``, a state ``S`` (head_dim × state_dim) with ``S ← a·S + (Δ·x)·Bᵀ`` and
``y = S·C + D·x``; ``out_proj(norm(y · silu(z)))``, the RMS norm taken over each group's slice.

Two ways to compute the same thing: :func:`ssd_chunked`, the chunked "state-space dual" form of Dao & Gu
(arXiv 2405.21060, section 6) for training and prefill, and :func:`recurrence_step`, one token at a time,
for decode and as the oracle (:meth:`Mamba2.recurrent`). The scan runs in float32 at least, whatever the
weights' dtype. Parameter names and shapes are transformers' (NemotronHMamba2Mixer,
GraniteMoeHybridMambaLayer): in_proj (z | x | B | C | dt), conv1d, dt_bias, A_log, D, norm.weight, out_proj.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from moec.kernels.mixers.state import (
    MixerState,
    causal_conv_with_state,
    conv_window_step,
    initial_step_bias,
    rms_normalize,
    state_dtype,
)


class GatedGroupRMSNorm(nn.Module):
    """``weight · rmsnorm(y · silu(z))``, the RMS taken over each of ``n_groups`` equal slices of the width."""

    def __init__(self, width: int, n_groups: int, eps: float, device=None, dtype=None):
        super().__init__()
        self.n_groups, self.eps = n_groups, eps
        self.weight = nn.Parameter(torch.ones(width, device=device, dtype=dtype))

    def forward(self, y: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        work = state_dtype(y.dtype)
        gated = y.to(work) * F.silu(z.to(work))
        groups = gated.unflatten(-1, (self.n_groups, -1))
        normed = rms_normalize(groups, self.eps)
        return (self.weight.to(work) * normed.flatten(-2)).to(z.dtype)


def segment_log_decays(log_decay: torch.Tensor) -> torch.Tensor:
    """(..., q) → (..., q, q): entry [l, s] is the sum of log_decay over positions s+1 … l (0 on the diagonal),
    −inf above it. Each sum is taken directly rather than as a difference of prefix sums, which in float32
    would lose the small sums near the diagonal to the large ones far from it."""
    q = log_decay.shape[-1]
    upto = torch.ones(q, q, dtype=torch.bool, device=log_decay.device)
    rows = log_decay.unsqueeze(-1).expand(*log_decay.shape, q)  # [t, s] = log_decay[t]
    sums = rows.masked_fill(~upto.tril(-1), 0).cumsum(dim=-2)  # [l, s] = Σ_{s < t ≤ l}
    return sums.masked_fill(~upto.tril(), -math.inf)


def ssd_chunked(
    x: torch.Tensor,
    step: torch.Tensor,
    decay_rate: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    chunk: int,
    state: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The scan without the skip term: x (b, S, H, P), step Δ (b, S, H), decay_rate −exp(A_log) (H),
    B and C (b, S, G, N), state (b, H, P, N) before the first token (zeros if None).
    Returns y (b, S, H, P) and the state after the last token.

    Chunks of ``chunk`` tokens, the last one ``S mod chunk`` long when that is not 0 (no padding). Within a chunk
    the output is attention-like, ``y_l = Σ_{s≤l} (C_l·B_s) · exp(Σ_{s<t≤l} log a_t) · Δ_s x_s``, plus the state
    the chunk received, decayed to l and read by C_l; across chunks only the state travels."""
    b, S, H, P = x.shape
    state = state if state is not None else x.new_zeros(b, H, P, B.shape[-1])
    q = min(chunk, S)
    whole = S - S % q
    y, state = _ssd_equal_chunks(x[:, :whole], step[:, :whole], decay_rate, B[:, :whole], C[:, :whole], q, state)
    if whole == S:
        return y, state
    tail, state = _ssd_equal_chunks(
        x[:, whole:], step[:, whole:], decay_rate, B[:, whole:], C[:, whole:], S - whole, state
    )
    return torch.cat([y, tail], dim=1), state


def _ssd_equal_chunks(x, step, decay_rate, B, C, q: int, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`ssd_chunked` on a length that is a multiple of ``q``; r = H/G heads per group."""
    H, P = x.shape[-2:]
    G = B.shape[-2]
    # Every product below is a matmul, so that its multiply-adds are what a FLOP counter sees whatever the sizes.
    log_decay = step.mul(decay_rate).unflatten(1, (-1, q)).transpose(2, 3)  # (b, c, H, q), ≤ 0
    inputs = (x * step.unsqueeze(-1)).unflatten(1, (-1, q)).transpose(2, 3)  # (b, c, H, q, P): Δ·x
    inputs = inputs.unflatten(2, (G, H // G))  # (b, c, G, r, q, P)
    B, C = (t.unflatten(1, (-1, q)).transpose(2, 3) for t in (B, C))  # (b, c, G, q, N)

    segments = segment_log_decays(log_decay).unflatten(2, (G, H // G))  # (b, c, G, r, l, s)
    scores = (C @ B.transpose(-1, -2)).unsqueeze(3)  # (b, c, G, 1, l, s): C·Bᵀ once per group
    y = (scores * segments.exp()) @ inputs  # (b, c, G, r, l, P)

    to_end = segments[..., -1, :].exp()  # (b, c, G, r, s): the decay from each token to its chunk's end
    weighted = (inputs * to_end.unsqueeze(-1)).transpose(-1, -2).flatten(3, 4)  # (b, c, G, r·P, s)
    added = (weighted @ B).unflatten(3, (H // G, P)).flatten(2, 3)  # (b, c, H, P, N): each chunk's own part
    through = log_decay.sum(-1).exp()  # (b, c, H): the decay across a whole chunk
    starts = []
    for c in range(added.shape[1]):  # only a decay and an add per chunk: cheap to run in order
        starts.append(state)
        state = state * through[:, c, :, None, None] + added[:, c]
    start = torch.stack(starts, dim=1).unflatten(2, (G, H // G)).flatten(3, 4)  # (b, c, G, r·P, N)
    from_start = log_decay.cumsum(-1).exp().unflatten(2, (G, H // G))  # (b, c, G, r, l): chunk start → l
    carried = (C @ start.transpose(-1, -2)).unflatten(-1, (H // G, P)).transpose(3, 4)  # (b, c, G, r, l, P)
    y = y + carried * from_start.unsqueeze(-1)
    return y.flatten(2, 3).transpose(2, 3).flatten(1, 2), state


def recurrence_step(
    x: torch.Tensor,
    step: torch.Tensor,
    decay_rate: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    state: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One token without the skip term: x (b, H, P), Δ (b, H), B and C (b, G, N), state (b, H, P, N).
    Returns y (b, H, P) and the new state ``a·S + (Δ·x)·Bᵀ``."""
    heads_per_group = x.shape[1] // B.shape[1]
    B, C = (t.repeat_interleave(heads_per_group, dim=1) for t in (B, C))  # (b, H, N)
    decay = torch.exp(step * decay_rate)[..., None, None]
    update = torch.matmul((x * step.unsqueeze(-1)).unsqueeze(-1), B.unsqueeze(-2))  # (b, H, P, 1)·(b, H, 1, N)
    state = state * decay + update
    return (state @ C.unsqueeze(-1)).squeeze(-1), state


class Mamba2(nn.Module):
    def __init__(
        self,
        d_model: int,
        *,
        n_heads: int,
        head_dim: int,
        state_dim: int,
        n_groups: int,
        conv_kernel: int,
        conv_bias: bool,
        bias: bool,
        chunk: int,
        step_min: float,
        norm_eps: float,
        step_max: float | None = None,
        device=None,
        dtype=None,
    ):
        super().__init__()
        kw = {"device": device, "dtype": dtype}
        self.d_model, self.n_heads, self.head_dim, self.state_dim = d_model, n_heads, head_dim, state_dim
        self.n_groups, self.conv_kernel, self.chunk = n_groups, conv_kernel, chunk
        self.step_min, self.step_max = step_min, step_max
        self.inner = n_heads * head_dim
        self.conv_channels = self.inner + 2 * n_groups * state_dim
        self.in_proj = nn.Linear(d_model, self.inner + self.conv_channels + n_heads, bias=bias, **kw)
        # padding is unused by forward (it pads with the cached inputs itself); kept so the module prints as transformers'
        self.conv1d = nn.Conv1d(
            self.conv_channels,
            self.conv_channels,
            conv_kernel,
            groups=self.conv_channels,
            bias=conv_bias,
            padding=conv_kernel - 1,
            **kw,
        )
        self.dt_bias = nn.Parameter(torch.empty(n_heads, **kw))
        self.A_log = nn.Parameter(torch.empty(n_heads, **kw))
        self.D = nn.Parameter(torch.empty(n_heads, **kw))
        self.norm = GatedGroupRMSNorm(self.inner, n_groups, norm_eps, **kw)
        self.out_proj = nn.Linear(self.inner, d_model, bias=bias, **kw)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """moec's convention for the matrices (as its Linear): N(0, 1/fan_in), d_model for in_proj, the inner width
        for out_proj, conv_kernel taps for each channel of the convolution; biases zero; the norm's weight 1.
        Mamba2's for the dynamics: decay rates 1 … n_heads (A_log = log h, as transformers), D = 1, dt_bias
        softplus⁻¹ of a Δ log-uniform in [0.001, 0.1] floored at 1e-4. No init work on ``meta``."""
        if self.A_log.is_meta:
            return
        for layer, fan_in in (
            (self.in_proj, self.d_model),
            (self.out_proj, self.inner),
            (self.conv1d, self.conv_kernel),
        ):
            nn.init.normal_(layer.weight, std=1 / math.sqrt(fan_in))
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)
        self.A_log.copy_(torch.log(torch.arange(1, self.n_heads + 1, dtype=torch.float32)))
        nn.init.ones_(self.D)
        self.dt_bias.copy_(initial_step_bias(self.n_heads))
        nn.init.ones_(self.norm.weight)

    def _split(self, projected: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """in_proj's output (..., 2·inner + 2·G·N + H) → z (..., inner), xBC (..., conv channels), dt (..., H)."""
        z, xbc, dt = projected.split([self.inner, self.conv_channels, self.n_heads], dim=-1)
        return z, xbc, dt

    def _ssm_inputs(self, xbc: torch.Tensor, dt: torch.Tensor):
        """After the convolution and its silu: x (..., H, P), Δ (..., H), B and C (..., G, N), in the scan's dtype."""
        work = state_dtype(xbc.dtype)
        gn = self.n_groups * self.state_dim
        x, B, C = xbc.to(work).split([self.inner, gn, gn], dim=-1)
        step = F.softplus(dt.to(work) + self.dt_bias.to(work))
        step = step.clamp(min=self.step_min, max=self.step_max)
        groups = (self.n_groups, self.state_dim)
        return x.unflatten(-1, (self.n_heads, self.head_dim)), step, B.unflatten(-1, groups), C.unflatten(-1, groups)

    def _decay_rate(self, dtype: torch.dtype) -> torch.Tensor:
        return -torch.exp(self.A_log.to(dtype))  # (H,): log a = Δ · decay_rate

    def _finish(self, y: torch.Tensor, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """Skip term, gated norm and out_proj: y, x (..., H, P), z (..., inner) → (..., d)."""
        y = y + self.D.to(y.dtype)[:, None] * x
        return self.out_proj(self.norm(y.flatten(-2), z))

    def forward(self, x: torch.Tensor, rope=None, cache: MixerState | None = None, positions=None) -> torch.Tensor:
        """x (B, S, d) → (B, S, d). Without ``cache``, the chunked form from a zero state; with it, the chunked
        form from the cached state (one decode token: a single recurrence step), leaving the new state in it."""
        z, xbc, dt = self._split(self.in_proj(x))
        conv_state = cache["conv"] if cache is not None else None
        conv = causal_conv_with_state(xbc.transpose(1, 2), self.conv1d.weight.squeeze(1), self.conv1d.bias, conv_state)
        xs, step, B, C = self._ssm_inputs(F.silu(conv).transpose(1, 2), dt)
        rate = self._decay_rate(xs.dtype)
        # a copy: the scan saves its start state for the backward, and the cache is overwritten below
        state = cache["ssm"].to(xs.dtype, copy=True) if cache is not None else None
        if state is not None and x.shape[1] == 1:
            y, state = recurrence_step(xs[:, 0], step[:, 0], rate, B[:, 0], C[:, 0], state)
            y = y.unsqueeze(1)
        else:
            y, state = ssd_chunked(xs, step, rate, B, C, self.chunk, state)
        if cache is not None:
            cache["ssm"].copy_(state)
        return self._finish(y, xs, z)

    def recurrent(self, x: torch.Tensor, state: MixerState | None = None) -> tuple[torch.Tensor, MixerState]:
        """The oracle: token by token, the convolution from an explicit window of the last conv_kernel inputs
        and the state updated once per token."""
        state = state or self.new_cache(x.shape[0], 1, device=x.device, dtype=state_dtype(x.dtype))
        weight = self.conv1d.weight.squeeze(1)  # (channels, K)
        window = state["conv"].clone()  # (b, channels, K − 1); copies, written back once at the end
        ssm = state["ssm"].to(state_dtype(x.dtype), copy=True)
        outs = []
        for t in range(x.shape[1]):
            z, xbc, dt = self._split(self.in_proj(x[:, t]))
            conv, window = conv_window_step(window, xbc, weight, self.conv1d.bias)  # (b, channels), (b, channels, K−1)
            xs, step, B, C = self._ssm_inputs(F.silu(conv).to(x.dtype), dt)
            y, ssm = recurrence_step(xs, step, self._decay_rate(xs.dtype), B, C, ssm)
            outs.append(self._finish(y, xs, z))
        state["conv"].copy_(window)
        state["ssm"].copy_(ssm)
        return torch.stack(outs, dim=1), state

    def new_cache(self, batch: int, max_len: int, *, device=None, dtype=None) -> MixerState:
        """The convolution's last conv_kernel − 1 inputs (B, channels, K − 1) and every head's state
        (B, H, head_dim, state_dim), whatever max_len. The state is kept in float32 at least (the scan's dtype;
        Nemotron-H keeps it so too): in bfloat16 a decode would round it anew at every token."""
        conv = torch.zeros(batch, self.conv_channels, self.conv_kernel - 1, device=device, dtype=dtype)
        scan = state_dtype(dtype or torch.get_default_dtype())
        ssm = torch.zeros(batch, self.n_heads, self.head_dim, self.state_dim, device=device, dtype=scan)
        return MixerState({"conv": conv, "ssm": ssm})
