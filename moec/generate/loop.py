"""The generation loop: one prefill over the prompt, then one cached decode step per new token.

Times are wall clock around each call, after a device synchronise: the prefill (the prompt, and the first
new token's logits), and the decode steps (one token per sequence each). With ``compile`` the decode steps
run through ``torch.compile``; the first of them compiles, so its time is reported apart and left out of the
decode rate. The median step is kept beside the total: on the CPU the MoE reference backend's host-side
split recompiles a compiled step when a new pattern of expert counts appears (docs/decode.md), which
lengthens a few steps by the compilation and leaves the others alone.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field

import torch

from moec.nn.model import MoecModel


@dataclass
class Generation:
    tokens: torch.Tensor  # (B, P + N) int64: the prompt, then the new tokens
    prompt_len: int
    prefill_s: float  # the prompt's forward, the first new token included
    decode_s: float  # the timed decode steps
    decode_steps: int  # steps timed (each one new token per sequence)
    compile_s: float | None = None  # the first compiled step, compilation included; None without compile
    # MoE layer index → distinct experts the step touched (the union over the batch), one entry per decode step
    experts: dict[int, list[int]] = field(default_factory=dict)
    n_experts: dict[int, int] = field(default_factory=dict)  # MoE layer index → E
    step_s: list[float] = field(default_factory=list)  # each timed decode step

    @property
    def median_step_s(self) -> float | None:
        return statistics.median(self.step_s) if self.step_s else None

    @property
    def batch(self) -> int:
        return self.tokens.shape[0]

    @property
    def new_tokens(self) -> torch.Tensor:
        return self.tokens[:, self.prompt_len :]

    @property
    def prefill_tokens_per_s(self) -> float:
        return self.batch * self.prompt_len / self.prefill_s

    @property
    def decode_tokens_per_s(self) -> float | None:
        return self.batch * self.decode_steps / self.decode_s if self.decode_steps else None

    @property
    def time_per_output_token_s(self) -> float | None:
        return self.decode_s / self.decode_steps if self.decode_steps else None


def next_tokens(
    logits: torch.Tensor, *, temperature: float, top_p: float, generator: torch.Generator | None
) -> torch.Tensor:
    """(B, V) logits → (B,) int64 tokens: the argmax at temperature 0 (transformers' greedy search), else a
    draw from softmax(logits / temperature) restricted to the smallest set of tokens whose probabilities
    reach ``top_p`` (nucleus sampling, arXiv 1904.09751)."""
    if temperature == 0:
        return logits.argmax(-1)
    # shifted to ≤ 0, a tiny temperature sends every other token to −inf (never inf − inf = nan); one below
    # float32's smallest normal, which float32 would round to 0, divides as that smallest normal does
    shifted = logits.float() - logits.float().amax(-1, keepdim=True)
    probs = (shifted / max(temperature, torch.finfo(torch.float32).tiny)).softmax(-1)  # (B, V)
    if top_p < 1:
        sorted_p, order = probs.sort(-1, descending=True)
        outside = sorted_p.cumsum(-1) - sorted_p >= top_p  # the mass before a token already reaches top_p
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_p.masked_fill(outside, 0.0))
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def _now(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def _distinct(aux_layers: list, moe: list[int]) -> torch.Tensor:
    """(n MoE layers,) distinct experts each layer touched in one call, kept on the device."""
    return torch.stack([(aux_layers[i].tokens_per_expert > 0).sum() for i in moe])


@torch.no_grad()
def generate(
    model: MoecModel,
    prompt: torch.Tensor,
    max_new_tokens: int,
    *,
    temperature: float = 0.0,
    top_p: float = 1.0,
    seed: int = 0,
    compile: bool = False,
    count_experts: bool = True,
) -> Generation:
    """``max_new_tokens`` tokens after each row of ``prompt`` (B, P). The model must be in eval mode (routers
    with jitter and dropout-free training paths would otherwise change the choices)."""
    if model.training:
        raise ValueError("generate needs the model in eval mode (model.eval())")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
    B, P = prompt.shape
    device = prompt.device
    cache = model.new_cache(B, P + max_new_tokens - 1)  # the last new token is never fed back
    generator = torch.Generator(device=device).manual_seed(seed) if temperature > 0 else None
    moe = [lp.index for lp in model.plan.layers if lp.ffn.kind == "moe"]
    pick = {"temperature": temperature, "top_p": top_p, "generator": generator}

    t0 = _now(device)
    logits, _ = model(prompt, cache=cache, start=0)
    token = next_tokens(logits[:, -1], **pick)  # (B,)
    prefill_s = _now(device) - t0
    out, counts = [token], []
    step = torch.compile(model, dynamic=False) if compile else model
    compile_s, step_s = None, []
    for i in range(max_new_tokens - 1):
        start = torch.tensor(P + i, device=device) if compile else P + i  # a tensor: one compiled graph
        t0 = _now(device)
        logits, aux = step(token[:, None], cache=cache, start=start)
        token = next_tokens(logits[:, -1], **pick)
        elapsed = _now(device) - t0
        if compile and compile_s is None:
            compile_s = elapsed
        else:
            step_s.append(elapsed)
        out.append(token)
        if count_experts and moe:
            counts.append(_distinct(aux.layers, moe))
    tokens = torch.cat((prompt, torch.stack(out, 1)), 1)
    gen = Generation(tokens, P, prefill_s, sum(step_s), len(step_s), compile_s, step_s=step_s)
    if counts:
        per_step = torch.stack(counts).tolist()  # (steps, n MoE layers), one host copy at the end
        gen.experts = {layer: [row[j] for row in per_step] for j, layer in enumerate(moe)}
    gen.n_experts = {i: model.plan.layers[i].ffn.n_experts for i in moe}
    return gen
