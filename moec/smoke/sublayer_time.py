"""Where a training step's forward and backward time goes, by sublayer kind: attention, each other token mixer
(docs/mixers.md: gated_deltanet, mamba, ...), the dense FFN (``ffn``) and the MoE layer (``moe``).

Measured with torch hooks on each block's sublayers over a few extra forward+backward passes after the training
steps (one per 8 of them, 1 to 3; no optimizer step, so the run's losses and tokens/s are untouched): a sublayer's forward is the time from
its forward pre-hook to its forward hook; its backward the time from the gradient reaching its output to the
gradient leaving its input (tensor hooks on both). The intervals are disjoint parts of the pass, so the shares
of the pass's time sum to at most 1; what is left is the embedding, the norms, the residual adds, the head and
the loss. On a GPU every hook synchronises the device, which slows these passes but not the training steps.
A sublayer whose input needs no gradient (nothing before it trains) has no backward to time and counts its
forward only.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from moec.mixers import KINDS

PASSES = 3  # forward+backward passes timed after the training steps, at most
STEPS_PER_PASS = 8  # and one per this many training steps, at least one: a 2-step run adds one pass, not three


def timed_passes(steps: int) -> int:
    return max(1, min(PASSES, steps // STEPS_PER_PASS))


_KIND_OF_CLASS = {m.MODULE: m.KIND for m in KINDS.values()}


def sublayer_kind(name: str, module: nn.Module) -> str:
    """The kind a block's sublayer ``name`` (attn, mixer or ffn) reports under."""
    from moec.nn.moe import MoE

    if name == "attn":
        return "attention"
    if name == "ffn":
        return "moe" if isinstance(module, MoE) else "ffn"
    return _KIND_OF_CLASS.get(type(module).__name__, type(module).__name__)


class SublayerTimer:
    """Seconds spent in each sublayer kind, forward and backward, while :meth:`attached`."""

    def __init__(self, model: nn.Module, device: torch.device):
        from moec.nn.block import Block

        self.device = device
        self.spent: dict[str, float] = defaultdict(float)
        self.sublayers = [
            (sublayer_kind(name, getattr(block, name)), getattr(block, name))
            for block in model.modules()
            if isinstance(block, Block)
            for name in ("attn", "mixer", "ffn")
            if getattr(block, name) is not None
        ]

    def now(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    def _hooks(self, kind: str) -> tuple[Callable[..., None], Callable[..., None]]:
        started: list[float] = []

        def before(module: nn.Module, args: tuple) -> None:
            x = args[0] if args and isinstance(args[0], torch.Tensor) else None
            if x is not None and x.requires_grad:  # the gradient leaving the input ends this backward
                x.register_hook(lambda grad: self._stop(kind, started))
            started.append(self.now())

        def after(module: nn.Module, args: tuple, output: Any) -> None:
            self._stop(kind, started)
            y = output[0] if isinstance(output, tuple) else output
            if isinstance(y, torch.Tensor) and y.requires_grad:  # the gradient reaching the output starts it
                y.register_hook(lambda grad: started.append(self.now()))

        return before, after

    def _stop(self, kind: str, started: list[float]) -> None:
        if started:
            self.spent[kind] += self.now() - started.pop()

    @contextmanager
    def attached(self) -> Iterator[None]:
        handles = []
        for kind, module in self.sublayers:
            before, after = self._hooks(kind)
            handles.append(module.register_forward_pre_hook(before))
            handles.append(module.register_forward_hook(after))
        try:
            yield
        finally:
            for h in handles:
                h.remove()


def sublayer_time_shares(
    model: nn.Module,
    forward_backward: Callable[[torch.Tensor], None],
    batches: list[torch.Tensor],
    device: torch.device,
) -> dict[str, float]:
    """Each sublayer kind's share of the forward+backward time of ``forward_backward`` over ``batches`` (the
    gradients it leaves are cleared): the token mixers in the order the model first uses them, then ffn and moe."""
    timer = SublayerTimer(model, device)
    total = 0.0
    with timer.attached():
        for tokens in batches:
            start = timer.now()
            forward_backward(tokens.to(device))
            total += timer.now() - start
            model.zero_grad(set_to_none=True)
    kinds = list(dict.fromkeys(kind for kind, _ in timer.sublayers))
    order = [k for k in kinds if k not in ("ffn", "moe")] + [k for k in ("ffn", "moe") if k in kinds]
    return {kind: timer.spent[kind] / total for kind in order} if total else {}
