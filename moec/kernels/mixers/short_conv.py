"""LFM2's gated short convolution (moec.mixers.short_conv; docs/mixers.md, "short_conv"):
``B, C, x = in_proj(h)``; ``y = out_proj(C ⊙ conv(B ⊙ x))``, a causal depthwise convolution over ``kernel``
tokens. Parameter names follow transformers' Lfm2MoeShortConv (in_proj, conv.weight as (d, 1, K), out_proj)."""

from __future__ import annotations

import torch
from torch import nn

from moec.kernels.mixers.state import MixerState, causal_conv_with_state


class ShortConv(nn.Module):
    def __init__(self, d_model: int, *, kernel: int, bias: bool, device=None, dtype=None):
        super().__init__()
        kw = {"device": device, "dtype": dtype}
        self.d_model, self.kernel = d_model, kernel
        self.in_proj = nn.Linear(d_model, 3 * d_model, bias=bias, **kw)
        self.conv = nn.Conv1d(d_model, d_model, kernel, groups=d_model, bias=bias, padding=kernel - 1, **kw)
        self.out_proj = nn.Linear(d_model, d_model, bias=bias, **kw)

    def forward(self, x: torch.Tensor, rope=None, cache: MixerState | None = None, positions=None) -> torch.Tensor:
        """x (B, S, d) → (B, S, d). The convolution is already the whole sequence at once (no chunking needed);
        with ``cache`` it starts from the cached inputs and leaves the last kernel − 1 in it."""
        b, c, h = self.in_proj(x).transpose(1, 2).chunk(3, dim=1)  # (B, d, S) each
        conv = causal_conv_with_state(b * h, self.conv.weight.squeeze(1), self.conv.bias, cache and cache["conv"])
        return self.out_proj((c * conv).transpose(1, 2))

    def recurrent(self, x: torch.Tensor, state: MixerState | None = None) -> tuple[torch.Tensor, MixerState]:
        """The oracle: token by token, each output from an explicit window of the last ``kernel`` inputs."""
        state = state or self.new_cache(x.shape[0], 1, device=x.device, dtype=x.dtype)
        w = self.conv.weight.squeeze(1)  # (d, K)
        outs = []
        for t in range(x.shape[1]):
            b, c, h = self.in_proj(x[:, t]).chunk(3, dim=-1)  # (B, d) each
            window = torch.cat([state["conv"], (b * h).unsqueeze(-1)], dim=-1)  # (B, d, K)
            state["conv"].copy_(window[:, :, 1:])
            conv = (window * w).sum(-1) + (self.conv.bias if self.conv.bias is not None else 0)
            outs.append(self.out_proj(c * conv))
        return torch.stack(outs, dim=1), state

    def new_cache(self, batch: int, max_len: int, *, device=None, dtype=None) -> MixerState:
        """The last kernel − 1 convolution inputs of each sequence: (B, d, kernel − 1), whatever max_len."""
        conv = torch.zeros(batch, self.d_model, self.kernel - 1, device=device, dtype=dtype)
        return MixerState({"conv": conv})
