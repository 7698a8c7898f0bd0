"""What the tests of moec.nn's cached decode share: a sequence fed through one cache in calls of given sizes."""

from __future__ import annotations

import torch


def decoded(model, tokens: torch.Tensor, steps: list[int]) -> torch.Tensor:  # type: ignore[no-untyped-def]
    """The logits of ``tokens`` (B, S) fed through one new cache, ``steps[i]`` tokens at the i-th call (a prefill,
    then decode steps; the steps sum to S): what the full forward must equal."""
    cache = model.new_cache(*tokens.shape)
    outs, start = [], 0
    with torch.no_grad():
        for n in steps:
            outs.append(model(tokens[:, start : start + n], cache=cache, start=start)[0])
            start += n
    return torch.cat(outs, dim=1)


def prefill_then_ones(prompt: int, seq: int) -> list[int]:
    """A prompt of ``prompt`` tokens, then one token a call up to ``seq``."""
    return [prompt] + [1] * (seq - prompt)
