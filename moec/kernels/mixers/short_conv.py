"""LFM2's gated short convolution (moec.mixers.short_conv; docs/mixers.md, "short_conv"):
``b, c, v = in_proj(h)``; ``y = out_proj(c ⊙ conv(b ⊙ v))``, a causal depthwise convolution over ``kernel``
tokens. Parameter names and shapes are transformers' Lfm2MoeShortConv's (in_proj.weight (3d, d) holding the rows
of b, c and v in that order, conv.weight (d, 1, kernel), out_proj.weight (d, d), and their biases with ``bias``),
so an LFM2 checkpoint's weights load by name."""

from __future__ import annotations

import math

import torch
from torch import nn

from moec.kernels.mixers.state import MixerState, causal_conv_with_state, conv_window_step


class ShortConv(nn.Module):
    def __init__(self, d_model: int, *, kernel: int, bias: bool, device=None, dtype=None):
        super().__init__()
        kw = {"device": device, "dtype": dtype}
        self.d_model, self.kernel = d_model, kernel
        self.in_proj = nn.Linear(d_model, 3 * d_model, bias=bias, **kw)
        # padding is unused by forward (it pads with the cached inputs itself); kept so the module prints as LFM2's
        self.conv = nn.Conv1d(d_model, d_model, kernel, groups=d_model, bias=bias, padding=kernel - 1, **kw)
        self.out_proj = nn.Linear(d_model, d_model, bias=bias, **kw)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """moec's convention (as its Linear): weights N(0, 1/fan_in) — d for the projections, ``kernel`` taps for
        each channel of the convolution — and biases zero. No init work on ``meta``."""
        if self.conv.weight.is_meta:
            return
        for layer, fan_in in ((self.in_proj, self.d_model), (self.out_proj, self.d_model), (self.conv, self.kernel)):
            nn.init.normal_(layer.weight, std=1 / math.sqrt(fan_in))
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)

    def forward(self, x: torch.Tensor, rope=None, cache: MixerState | None = None, positions=None) -> torch.Tensor:
        """x (B, S, d) → (B, S, d). The convolution takes the whole sequence at once (it has no chunks); with
        ``cache`` it starts from the cached inputs and leaves the last ``kernel − 1`` in it. ``rope`` and
        ``positions`` are unused: the convolution knows positions only by order."""
        b, c, v = self.in_proj(x).transpose(1, 2).chunk(3, dim=1)  # (B, d, S) each
        state = cache["conv"] if cache is not None else None
        conv = causal_conv_with_state(b * v, self.conv.weight.squeeze(1), self.conv.bias, state)
        return self.out_proj((c * conv).transpose(1, 2))

    def recurrent(self, x: torch.Tensor, state: MixerState | None = None) -> tuple[torch.Tensor, MixerState]:
        """The oracle: token by token, each output from an explicit window of the last ``kernel`` inputs. ``state``
        (from :meth:`new_cache`, a fresh one when None) is continued and updated in place."""
        if state is None:
            state = self.new_cache(x.shape[0], 1, device=x.device, dtype=x.dtype)
        taps = self.conv.weight.squeeze(1)  # (d, K)
        outs = []
        for t in range(x.shape[1]):
            b, c, v = self.in_proj(x[:, t]).chunk(3, dim=-1)  # (B, d) each
            conv, past = conv_window_step(state["conv"], b * v, taps, self.conv.bias)
            state["conv"].copy_(past)
            outs.append(self.out_proj(c * conv))
        return torch.stack(outs, dim=1), state

    def new_cache(self, batch: int, max_len: int, *, device=None, dtype=None) -> MixerState:
        """The last ``kernel − 1`` convolution inputs of each sequence: (B, d, kernel − 1), whatever ``max_len``."""
        conv = torch.zeros(batch, self.d_model, self.kernel - 1, device=device, dtype=dtype)
        return MixerState({"conv": conv})
