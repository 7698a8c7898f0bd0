"""Mamba's selective state-space mixer (moec.mixers.mamba; docs/mixers.md, "mamba"), with Jamba's optional RMSNorms
on the time step, B and C. Parameter names and shapes follow transformers' JambaMambaMixer (in_proj, conv1d,
x_proj, dt_proj, A_log, D, out_proj, dt_layernorm, b_layernorm, c_layernorm), so a checkpoint loads by name.

Per inner channel ``i`` and state element ``n`` the state follows ``s ← exp(Δᵢ·Aᵢₙ)·s + Δᵢ·uᵢ·Bₙ`` and the
channel reads ``yᵢ = Σₙ Cₙ·sᵢₙ + Dᵢ·uᵢ``. :func:`chunked_scan` scans every chunk of the sequence at once and
then carries the chunks' starting states; :meth:`Mamba.recurrent` is the token-by-token oracle. The scan runs in
float32 at least (float64 stays float64), as the state accumulates over the whole sequence.

No fused kernel (mamba-ssm's selective scan) is used: the chunked scan is plain PyTorch and holds each token's
decay and input, ``B·S·inner·N`` elements each, as transformers' own fallback does.
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


class InnerRMSNorm(nn.Module):
    """Jamba's weight-only RMSNorm on Δ, B and C: normalised in float32 at least, cast back, then scaled."""

    def __init__(self, width: int, eps: float, *, device=None, dtype=None):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(width, device=device, dtype=dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.weight * rms_normalize(x, self.eps).to(x.dtype)


def _scan_from_zero(
    decay: torch.Tensor, feed: torch.Tensor, c: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Every chunk at once, token by token from a zero state: decay, feed (B, chunks, T, I, N), c (B, chunks, T, N)
    → each token's readout of its local state (B, chunks, T, I), each token's decay since the chunk began (the
    running product of the chunk's decays, (B, chunks, T, I, N)) and each chunk's last local state (B, chunks, I,
    N). The local states themselves are read out as they come and never stored."""
    state, since = feed[:, :, 0], decay[:, :, 0]
    read, decayed = [torch.einsum("bkin,bkn->bki", state, c[:, :, 0])], [since]
    for t in range(1, feed.shape[2]):
        state = decay[:, :, t] * state + feed[:, :, t]
        since = since * decay[:, :, t]
        read.append(torch.einsum("bkin,bkn->bki", state, c[:, :, t]))
        decayed.append(since)
    return torch.stack(read, dim=2), torch.stack(decayed, dim=2), state


def _carry_across_chunks(
    chunk_decay: torch.Tensor, chunk_local_end: torch.Tensor, initial: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each chunk's starting state, one chunk after another: chunk_decay and chunk_local_end (B, chunks, I, N),
    initial (B, I, N) → the starts (B, chunks, I, N) and the state after the last chunk (B, I, N)."""
    start = initial
    starts = []
    for j in range(chunk_decay.shape[1]):
        starts.append(start)
        start = chunk_decay[:, j] * start + chunk_local_end[:, j]
    return torch.stack(starts, dim=1), start


def _chunks(t: torch.Tensor, T: int) -> list[torch.Tensor]:
    """(B, S, …) → the whole chunks as one (B, S // T, T, …) and, when T does not divide S, the last S mod T
    tokens as one more chunk (B, 1, S mod T, …): the last chunk runs at its own length, nothing is padded."""
    whole = t.shape[1] // T * T
    groups = [t[:, :whole].unflatten(1, (-1, T))] if whole else []
    if whole < t.shape[1]:
        groups.append(t[:, whole:].unsqueeze(1))
    return groups


def chunked_scan(
    u: torch.Tensor,
    dt: torch.Tensor,
    rates: torch.Tensor,
    b: torch.Tensor,
    c: torch.Tensor,
    initial: torch.Tensor | None,
    chunk: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The selective scan in chunks of ``chunk`` tokens: u, dt (B, S, I); rates A (I, N), negative; b, c (B, S, N);
    initial (B, I, N) or None for zeros. Returns ``Σₙ Cₙ·sᵢₙ`` per token (B, S, I) and the final state (B, I, N).

    Within a chunk each token's state is its local state (the chunk's own inputs, scanned from zero, every
    chunk at once) plus the chunk's starting state times the product of the decays since the chunk began, a
    factor in (0, 1] that never overflows. The starting states are carried across chunks one after another, so a
    sequence takes T + S/T steps instead of S."""
    batch, seq, inner = u.shape
    T = min(chunk, seq)
    decay = torch.exp(dt.unsqueeze(-1) * rates)  # (B, S, I, N), in (0, 1]
    feed = (dt * u).unsqueeze(-1) * b.unsqueeze(2)  # (B, S, I, N)
    groups = list(zip(_chunks(decay, T), _chunks(feed, T), _chunks(c, T), strict=True))
    local_read, since_start, local_end = zip(*(_scan_from_zero(a, f, cg) for a, f, cg in groups), strict=True)
    if initial is None:
        initial = feed.new_zeros(batch, inner, feed.shape[-1])
    chunk_decay = torch.cat([s[:, :, -1] for s in since_start], dim=1)  # (B, chunks, I, N)
    starts, final = _carry_across_chunks(chunk_decay, torch.cat(local_end, dim=1), initial.to(feed.dtype, copy=True))
    per_group = starts.split([g[0].shape[1] for g in groups], dim=1)
    ys = []
    for (_, _, cg), read, since, start in zip(groups, local_read, since_start, per_group, strict=True):
        carried = torch.einsum("bctin,bcin,bctn->bcti", since, start, cg)  # the chunk's start, decayed, read out
        ys.append((read + carried).flatten(1, 2))  # (B, chunks·T, I)
    return torch.cat(ys, dim=1), final


class Mamba(nn.Module):
    def __init__(
        self,
        d_model: int,
        *,
        inner_dim: int,
        state_size: int,
        conv_kernel: int,
        dt_rank: int,
        conv_bias: bool,
        proj_bias: bool,
        inner_norms: bool,
        norm_eps: float,
        chunk: int,
        device=None,
        dtype=None,
    ):
        super().__init__()
        kw = {"device": device, "dtype": dtype}
        self.d_model, self.inner_dim, self.state_size = d_model, inner_dim, state_size
        self.conv_kernel, self.dt_rank, self.inner_norms, self.chunk = conv_kernel, dt_rank, inner_norms, chunk
        self.in_proj = nn.Linear(d_model, 2 * inner_dim, bias=proj_bias, **kw)
        self.conv1d = nn.Conv1d(
            inner_dim, inner_dim, conv_kernel, groups=inner_dim, bias=conv_bias, padding=conv_kernel - 1, **kw
        )
        self.x_proj = nn.Linear(inner_dim, dt_rank + 2 * state_size, bias=False, **kw)
        self.dt_proj = nn.Linear(dt_rank, inner_dim, bias=True, **kw)
        self.A_log = nn.Parameter(torch.empty(inner_dim, state_size, **kw))
        self.D = nn.Parameter(torch.empty(inner_dim, **kw))
        self.out_proj = nn.Linear(inner_dim, d_model, bias=proj_bias, **kw)
        if inner_norms:
            self.dt_layernorm = InnerRMSNorm(dt_rank, norm_eps, **kw)
            self.b_layernorm = InnerRMSNorm(state_size, norm_eps, **kw)
            self.c_layernorm = InnerRMSNorm(state_size, norm_eps, **kw)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """moec's convention for the matrices (as its Linear): N(0, 1/fan_in), d_model for in_proj, the inner width
        for x_proj and out_proj, conv_kernel taps for each channel of the convolution; biases zero; the inner norms'
        weights 1. Mamba's for the dynamics (arXiv 2312.00752, section 3.6): A = −(1, 2, …, N) in every channel
        (S4D-real), D = 1, dt_proj's weight uniform in ±dt_rank^−½ and its bias softplus⁻¹ of a Δ log-uniform in
        [0.001, 0.1]. No init work on ``meta``."""
        if self.A_log.is_meta:
            return
        with torch.no_grad():
            for layer, fan_in in ((self.in_proj, self.d_model), (self.x_proj, self.inner_dim),
                                  (self.out_proj, self.inner_dim), (self.conv1d, self.conv_kernel)):  # fmt: skip
                nn.init.normal_(layer.weight, std=1 / math.sqrt(fan_in))
                if layer.bias is not None:
                    nn.init.zeros_(layer.bias)
            for norm in ("dt_layernorm", "b_layernorm", "c_layernorm") if self.inner_norms else ():
                getattr(self, norm).weight.fill_(1.0)
            rates = torch.arange(1, self.state_size + 1, dtype=torch.float32, device=self.A_log.device)
            self.A_log.copy_(rates.log().expand(self.inner_dim, -1))
            self.D.fill_(1.0)
            bound = self.dt_rank**-0.5
            self.dt_proj.weight.uniform_(-bound, bound)
            self.dt_proj.bias.copy_(initial_step_bias(self.inner_dim, self.D.device))

    def decay_rates(self, dtype: torch.dtype) -> torch.Tensor:
        """A = −exp(A_log), (I, N): every channel's state elements decay at their own rate."""
        return -torch.exp(self.A_log.to(dtype))

    def _selective(self, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The input-dependent parameters from the convolved input u (…, I): Δ (…, I), B and C (…, N), in the scan
        dtype."""
        dt, b, c = self.x_proj(u).split([self.dt_rank, self.state_size, self.state_size], dim=-1)
        if self.inner_norms:
            dt, b, c = self.dt_layernorm(dt), self.b_layernorm(b), self.c_layernorm(c)
        ssm = state_dtype(u.dtype)
        dt = F.softplus(F.linear(dt, self.dt_proj.weight).to(ssm) + self.dt_proj.bias.to(ssm))
        return dt, b.to(ssm), c.to(ssm)

    def _output(self, y: torch.Tensor, u: torch.Tensor, z: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """The D skip, the silu(z) gate and out_proj: y, u, z (…, I) → (…, d)."""
        y = (y + u.to(y.dtype) * self.D.to(y.dtype)) * F.silu(z.to(y.dtype))
        return self.out_proj(y.to(dtype))

    def forward(self, x: torch.Tensor, rope=None, cache: MixerState | None = None, positions=None) -> torch.Tensor:
        """x (B, S, d) → (B, S, d), the chunked scan. With ``cache`` it starts from the cached convolution inputs and
        state and leaves the new ones in it; one token with a cache (a decode step) updates the state once."""
        u, z = self.in_proj(x).chunk(2, dim=-1)  # (B, S, I) each
        conv_state = cache["conv"] if cache is not None else None
        w = self.conv1d.weight.squeeze(1)  # (I, K)
        u = F.silu(causal_conv_with_state(u.transpose(1, 2), w, self.conv1d.bias, conv_state)).transpose(1, 2)
        dt, b, c = self._selective(u)
        rates = self.decay_rates(dt.dtype)
        if cache is None:
            y, _ = chunked_scan(u, dt, rates, b, c, None, self.chunk)
        elif x.shape[1] == 1:  # s ← exp(Δ·A)·s + Δ·u·B, then C·s: the count's recurrent form
            decay = torch.exp(dt.unsqueeze(-1) * rates)  # (B, 1, I, N)
            ssm = decay * cache["ssm"].unsqueeze(1) + (dt * u).unsqueeze(-1) * b.unsqueeze(2)
            y = torch.einsum("bsin,bsn->bsi", ssm, c)  # (B, 1, I)
            cache["ssm"].copy_(ssm[:, 0])
        else:
            y, final = chunked_scan(u, dt, rates, b, c, cache["ssm"], self.chunk)
            cache["ssm"].copy_(final)
        return self._output(y, u, z, x.dtype)

    def recurrent(self, x: torch.Tensor, state: MixerState | None = None) -> tuple[torch.Tensor, MixerState]:
        """The oracle: token by token, the convolution from an explicit window of the last ``conv_kernel`` inputs
        and the state updated once per token."""
        state = state or self.new_cache(x.shape[0], 1, device=x.device, dtype=x.dtype)
        w = self.conv1d.weight.squeeze(1)  # (I, K)
        past, ssm = state["conv"].clone(), state["ssm"].to(state_dtype(x.dtype), copy=True)
        outs = []
        for t in range(x.shape[1]):
            u, z = self.in_proj(x[:, t]).chunk(2, dim=-1)  # (B, I) each
            conv, past = conv_window_step(past, u, w, self.conv1d.bias)
            u = F.silu(conv)
            dt, b, c = self._selective(u)  # (B, I), (B, N), (B, N)
            decay = torch.exp(dt.unsqueeze(-1) * self.decay_rates(dt.dtype))  # (B, I, N)
            ssm = decay * ssm + (dt * u).unsqueeze(-1) * b.unsqueeze(1)
            y = (ssm * c.unsqueeze(1)).sum(-1)  # (B, I)
            outs.append(self._output(y, u, z, x.dtype))
        state["conv"].copy_(past)
        state["ssm"].copy_(ssm)
        return torch.stack(outs, dim=1), state

    def new_cache(self, batch: int, max_len: int, *, device=None, dtype=None) -> MixerState:
        """The last conv_kernel − 1 convolution inputs (B, I, K − 1) in ``dtype`` and the state (B, I, N) in float32
        at least (it accumulates over the whole sequence, as transformers keeps it), whatever max_len."""
        conv = torch.zeros(batch, self.inner_dim, self.conv_kernel - 1, device=device, dtype=dtype)
        ssm_dtype = state_dtype(dtype or torch.get_default_dtype())
        ssm = torch.zeros(batch, self.inner_dim, self.state_size, device=device, dtype=ssm_dtype)
        return MixerState({"conv": conv, "ssm": ssm})
