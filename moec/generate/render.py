"""`moec generate`'s report, in 80 columns: the tokens or text, the rates, and the experts touched."""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from typing import Any

from moec.generate.loop import Generation

WIDTH = 80


def _rate(tokens_per_s: float | None) -> str:
    return "–" if tokens_per_s is None else f"{tokens_per_s:,.1f} tokens/s"


def _wrap(text: str) -> list[str]:
    return textwrap.wrap(text, WIDTH, subsequent_indent="    ", break_on_hyphens=False)


def experts_lines(gen: Generation) -> list[str]:
    """Distinct experts each MoE layer touched per decode step, as mean [min–max] of E, several layers a line."""
    if not gen.experts:
        return []
    cells = []
    for layer, counts in gen.experts.items():
        mean = sum(counts) / len(counts)
        cells.append(f"L{layer} {mean:.1f} [{min(counts)}-{max(counts)}]/{gen.n_experts[layer]}")
    width = max(len(c) for c in cells) + 2
    per_line = max(1, (WIDTH - 2) // width)
    rows = [cells[i : i + per_line] for i in range(0, len(cells), per_line)]
    everything = [c for counts in gen.experts.values() for c in counts]
    head = f"experts touched per decode step: mean [min-max]/E (all: {sum(everything) / len(everything):.1f})"
    return [head, *("  " + "".join(c.ljust(width) for c in row).rstrip() for row in rows)]


def render(
    gen: Generation,
    *,
    title: str,
    notes: list[str],
    decode_text: Callable[[list[int]], str] | None = None,
) -> str:
    """The whole report; ``decode_text`` turns token ids into text when a tokenizer is at hand."""
    lines = [wrapped for text in (title, *(f"note: {n}" for n in notes)) for wrapped in _wrap(text)]
    for row, ids in enumerate(gen.tokens.tolist()):
        prompt, new = ids[: gen.prompt_len], ids[gen.prompt_len :]
        if decode_text is not None:
            body = decode_text(prompt) + "‖" + decode_text(new)
        else:
            body = " ".join(map(str, prompt)) + " | " + " ".join(map(str, new))
        lines += _wrap(f"[{row}] {body}")
    B, P = gen.batch, gen.prompt_len
    lines.append(f"prefill  {B}×{P} tokens in {gen.prefill_s * 1e3:,.1f} ms: {_rate(gen.prefill_tokens_per_s)}")
    if gen.compile_s is not None:
        lines.append(f"compile  the first decode step (compiling): {gen.compile_s:,.2f} s, not in the rates")
    tpot = gen.time_per_output_token_s
    if tpot is None:
        lines.append("decode   no step timed (one new token comes from the prefill)")
    else:
        lines.append(
            f"decode   {B}×{gen.decode_steps} tokens in {gen.decode_s * 1e3:,.1f} ms: {_rate(gen.decode_tokens_per_s)}"
        )
        lines.append(f"         {tpot * 1e3:,.2f} ms per output token; median step {gen.median_step_s * 1e3:,.2f} ms")
    lines += experts_lines(gen)
    return "\n".join(lines)


def to_dict(gen: Generation, *, notes: list[str]) -> dict[str, Any]:
    return {
        "schema": "moec.generate/1",
        "notes": notes,
        "prompt_tokens": gen.prompt_len,
        "tokens": gen.tokens.tolist(),
        "new_tokens": gen.new_tokens.tolist(),
        "prefill_s": gen.prefill_s,
        "prefill_tokens_per_s": gen.prefill_tokens_per_s,
        "compile_s": gen.compile_s,
        "decode_steps": gen.decode_steps,
        "decode_s": gen.decode_s,
        "decode_tokens_per_s": gen.decode_tokens_per_s,
        "time_per_output_token_s": gen.time_per_output_token_s,
        "median_step_s": gen.median_step_s,
        "experts_touched_per_step": {str(k): v for k, v in gen.experts.items()},
        "n_experts": {str(k): v for k, v in gen.n_experts.items()},
    }
