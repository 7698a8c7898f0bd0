"""MiniMax-Text-01's Lightning attention (moec.mixers.lightning; docs/mixers.md, "lightning"): linear attention
with a fixed per-head decay. Per head, ``S_t = e^(−s)·S_(t−1) + k_tᵀ v_t`` and ``o_t = q_t S_t``; the output is
``out_proj(σ(output_gate(x)) ⊙ rmsnorm(o))``.

Parameter names and layouts follow transformers' MiniMaxLightningAttention: ``qkv_proj`` (d → h·3·hd, each
head's [q | k | v] side by side), ``output_gate``, ``out_proj`` and ``norm.weight`` (over all heads at once).
Its slopes are not weights: they follow from n_heads and decay_scale and are computed where they are used, so a
model built on ``meta`` needs nothing filled in for them.

No optional fast path: flash-linear-attention's kernels are not used here (the chunked form below is plain torch).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from moec.kernels.mixers.state import MixerState

_ACTIVATIONS = {
    "silu": F.silu,
    "relu": F.relu,
    "gelu": F.gelu,
    "gelu_tanh": lambda t: F.gelu(t, approximate="tanh"),
}


def lightning_slopes(n_heads: int, decay_scale: float) -> list[float]:
    """Each head's decay rate s_i = 2^(−8(i+1)/n_heads) · decay_scale (ALiBi's slopes, scaled for the layer)."""
    base = 2 ** (-8 / n_heads)
    return [base ** (i + 1) * decay_scale for i in range(n_heads)]


class JointRMSNorm(nn.Module):
    """RMSNorm over the heads' joined outputs, normalised in fp32 and cast back before the weight (MiniMax)."""

    def __init__(self, dim: int, eps: float, *, device=None, dtype=None):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim, device=device, dtype=dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.weight * F.rms_norm(x.float(), (x.shape[-1],), eps=self.eps).to(x.dtype)


def block_decays(slopes: torch.Tensor, c: int, dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
    """A block of c tokens' decay factors for slopes (H,), computed in the slopes' dtype (float32 at least) and
    cast to ``dtype``: (within the block (H, c, c): e^(−s(i−j)) for j ≤ i, else 0; on the memory carried in
    (H, c, 1): e^(−s·i); on each token's kᵀv carried out (H, c, 1): e^(−s(c−j)); on the memory carried through
    (H, 1, 1): e^(−s·c)), positions i, j = 1…c."""
    s = slopes[:, None]  # (H, 1)
    pos = torch.arange(1, c + 1, device=slopes.device, dtype=slopes.dtype)
    gap = pos[:, None] - pos[None, :]  # i − j
    within = torch.where(gap >= 0, torch.exp(-s[..., None] * gap.clamp(min=0)), 0)
    tables = (
        within,
        torch.exp(-s * pos)[..., None],
        torch.exp(-s * (c - pos))[..., None],
        torch.exp(-s * c)[..., None],
    )
    return tuple(t.to(dtype) for t in tables)


def chunked_decay_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, slopes: torch.Tensor, state: torch.Tensor, chunk: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The block-wise form. q, k, v (B, H, S, hd); slopes (H,); state (B, H, hd, hd), the memory carried in.
    Returns the outputs (B, H, S, hd) and the memory after the last token.

    Within a block of c tokens (positions 1…c), token i sees the memory carried in decayed i times and each
    earlier token j ≤ i of the block decayed i − j times; the memory carried out is the one carried in decayed
    c times plus each token's kᵀv decayed c − j times."""
    outputs = []
    for start in range(0, q.shape[2], chunk):
        qc, kc, vc = (t[:, :, start : start + chunk] for t in (q, k, v))
        within, on_memory, on_carried, through = block_decays(slopes, qc.shape[2], q.dtype)
        intra = ((qc @ kc.transpose(-1, -2)) * within) @ vc
        outputs.append(intra + (qc * on_memory) @ state)
        state = state * through + (kc * on_carried).transpose(-1, -2) @ vc
    return torch.cat(outputs, dim=2), state


class LightningAttention(nn.Module):
    def __init__(
        self,
        d_model: int,
        *,
        n_heads: int,
        head_dim: int,
        chunk: int,
        activation: str,
        norm_eps: float,
        decay_scale: float,
        device=None,
        dtype=None,
    ):
        super().__init__()
        kw = {"device": device, "dtype": dtype}
        self.n_heads, self.head_dim, self.chunk = n_heads, head_dim, chunk
        self.activation, self.decay_scale = activation, decay_scale
        inner = n_heads * head_dim
        self.qkv_proj = nn.Linear(d_model, 3 * inner, bias=False, **kw)
        self.out_proj = nn.Linear(inner, d_model, bias=False, **kw)
        self.output_gate = nn.Linear(d_model, inner, bias=False, **kw)
        self.norm = JointRMSNorm(inner, norm_eps, **kw)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """moec's convention (as its Linear): weights N(0, 1/fan_in), the norm's weight one. No init work on
        ``meta``. (The decays, which transformers initialises as buffers, are not weights here.)"""
        if self.qkv_proj.weight.is_meta:
            return
        for layer in (self.qkv_proj, self.output_gate, self.out_proj):
            nn.init.normal_(layer.weight, std=1 / math.sqrt(layer.in_features))
        nn.init.ones_(self.norm.weight)

    def slopes(self, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """(H,) in ``dtype``, float32 at least (the decays are computed from them before any cast to a 16-bit
        model dtype); computed in float64 first, so that a float64 model's decays are exact to float64."""
        dtype = torch.promote_types(dtype, torch.float32)
        return torch.tensor(lightning_slopes(self.n_heads, self.decay_scale), dtype=torch.float64).to(device, dtype)

    def _qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, S, d) → q, k, v, each (B, H, S, hd)."""
        qkv = _ACTIVATIONS[self.activation](self.qkv_proj(x))
        qkv = qkv.unflatten(-1, (self.n_heads, 3 * self.head_dim)).transpose(1, 2)
        return qkv.split(self.head_dim, dim=-1)

    def _output(self, x: torch.Tensor, o: torch.Tensor) -> torch.Tensor:
        """o (B, H, S, hd) → the layer's output (B, S, d): joint norm, the gate from x, out_proj."""
        o = self.norm(o.transpose(1, 2).flatten(2))
        return self.out_proj(torch.sigmoid(self.output_gate(x)) * o)

    def forward(self, x: torch.Tensor, rope=None, cache: MixerState | None = None, positions=None) -> torch.Tensor:
        """x (B, S, d) → (B, S, d), block by block. With ``cache`` it starts from the cached memory and leaves
        the memory after the last token in it. Lightning attention has no positions: rope and positions are
        unused."""
        q, k, v = self._qkv(x)
        state = (
            cache["ssm"].to(q.dtype) if cache is not None else q.new_zeros(*q.shape[:2], self.head_dim, self.head_dim)
        )
        o, state = chunked_decay_attention(q, k, v, self.slopes(x.device, q.dtype), state, self.chunk)
        if cache is not None:
            cache["ssm"].copy_(state)
        return self._output(x, o)

    def recurrent(self, x: torch.Tensor, state: MixerState | None = None) -> tuple[torch.Tensor, MixerState]:
        """The oracle: token by token, the memory decayed once and the token's kᵀv added, then read by q.
        ``state`` (from :meth:`new_cache`, a fresh one when None) is continued and updated in place."""
        if state is None:
            state = self.new_cache(x.shape[0], 1, device=x.device, dtype=x.dtype)
        q, k, v = self._qkv(x)
        decay = torch.exp(-self.slopes(x.device, q.dtype))[:, None, None].to(q.dtype)  # (H, 1, 1)
        memory = state["ssm"].to(q.dtype)
        outs = []
        for t in range(x.shape[1]):
            memory = decay * memory + k[:, :, t, :, None] @ v[:, :, t, None, :]  # the outer product kᵀv
            outs.append((q[:, :, t, None, :] @ memory).squeeze(-2))
        state["ssm"].copy_(memory)
        return self._output(x, torch.stack(outs, dim=2)), state

    def new_cache(self, batch: int, max_len: int, *, device=None, dtype=None) -> MixerState:
        """Each sequence's key-value memory: (B, H, hd, hd), whatever max_len."""
        return MixerState(
            {"ssm": torch.zeros(batch, self.n_heads, self.head_dim, self.head_dim, device=device, dtype=dtype)}
        )
