"""`moec generate`: tokens after a prompt, through the KV cache, with prefill and decode rates."""

from __future__ import annotations

import json

import click

from moec.commands.common import FiniteFloatRange, report_errors, set_option
from moec.errors import CommandError
from moec.vocab import TORCH_DTYPE_NAMES

DTYPES = tuple(TORCH_DTYPE_NAMES)


def _prompt_ids(text: str) -> list[int]:
    """``--prompt-tokens 1,2,3`` or ``"1 2 3"``."""
    parts = [p for p in text.replace(",", " ").split() if p]
    try:
        ids = [int(p) for p in parts]
    except ValueError:
        raise click.BadParameter(f"expected token ids like 1,2,3; got {text!r}", param_hint="--prompt-tokens") from None
    if not ids:
        raise click.BadParameter("no token ids given", param_hint="--prompt-tokens")
    return ids


@click.command()
@click.argument("source")
@click.option("--prompt-tokens", help="Prompt token ids, comma- or space-separated.")
@click.option("--prompt", "prompt_text", help="Prompt text, encoded with the tokenizer.json beside the model.")
@click.option("--max-new-tokens", type=click.IntRange(1), default=32, show_default=True)
@click.option("--temperature", type=FiniteFloatRange(0), default=0.0, show_default=True, help="0: greedy (the argmax).")
@click.option(
    "--top-p", type=FiniteFloatRange(0, 1, min_open=True), default=1.0, show_default=True, help="Nucleus sampling."
)
@click.option("--seed", type=click.IntRange(0, (1 << 63) - 1), default=0, show_default=True)
@click.option("--compile", "compile_", is_flag=True, help="Run the decode steps through torch.compile.")
@click.option("--batch", type=click.IntRange(1, 4096), default=1, show_default=True, help="Copies of the prompt.")
@click.option("--device", default="auto", show_default=True, help="auto (cuda if available), cpu, cuda or cuda:N.")
@click.option("--dtype", type=click.Choice(DTYPES), help="Weights and compute (default: the checkpoint's, else fp32).")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True)
@set_option
@report_errors
def generate(
    source: str,
    prompt_tokens: str | None,
    prompt_text: str | None,
    max_new_tokens: int,
    temperature: float,
    top_p: float,
    seed: int,
    compile_: bool,
    batch: int,
    device: str,
    dtype: str | None,
    fmt: str,
    sets: tuple[str, ...],
) -> None:
    """Generate after a prompt from SOURCE: a spec (random weights), a `moec build` folder or a Hugging Face
    checkpoint folder. Prints the tokens (or text), prefill and decode tokens/s, time per output token, and the
    distinct experts each MoE layer touched per step."""
    if (prompt_tokens is None) == (prompt_text is None):
        raise click.UsageError("give exactly one of --prompt-tokens and --prompt")
    ids = _prompt_ids(prompt_tokens) if prompt_tokens is not None else None

    import torch

    from moec.generate import generate as run_generate
    from moec.generate import load_source
    from moec.generate.render import render, to_dict
    from moec.generate.source import decode, decode_errors, encode, require_cache_memory
    from moec.nn.build import resolve_device

    dev = resolve_device(device)
    torch_dtype = getattr(torch, TORCH_DTYPE_NAMES[dtype]) if dtype else None
    loaded = load_source(source, device=dev, dtype=torch_dtype, seed=seed, sets=sets)
    model, plan = loaded.model, loaded.model.plan
    if ids is None:
        ids = encode(loaded.tokenizer_file, prompt_text or "")
    bad = [i for i in ids if not 0 <= i < plan.vocab_size]
    if bad:
        raise CommandError(f"prompt token {bad[0]} is outside the vocabulary [0, {plan.vocab_size})")
    positions = len(ids) + max_new_tokens - 1  # the last new token is never fed back
    if positions > plan.max_seq_len:
        raise CommandError(
            f"{len(ids)} prompt tokens and {max_new_tokens} new ones need {positions} positions; "
            f"{plan.name} has max_seq_len {plan.max_seq_len}"
        )
    dtype_of = next(model.parameters()).dtype
    hint = "; lower --batch or --max-new-tokens"
    require_cache_memory(plan, dtype_of, batch=batch, positions=positions, device=dev, hint=hint)
    prompt = torch.tensor([ids] * batch, device=dev)
    with decode_errors(loaded):
        gen = run_generate(
            model, prompt, max_new_tokens, temperature=temperature, top_p=top_p, seed=seed, compile=compile_
        )
    if fmt == "json":
        click.echo(json.dumps(to_dict(gen, notes=loaded.notes), indent=2))
        return
    mode = "greedy" if temperature == 0 else f"temperature {temperature}, top-p {top_p}, seed {seed}"
    dtype_name = str(next(model.parameters()).dtype).removeprefix("torch.")
    title = f"{plan.name} ({loaded.kind}) on {dev}, {dtype_name}: {max_new_tokens} new tokens, {mode}"
    text = None
    if prompt_text is not None:
        tokenizer = loaded.tokenizer_file

        def text(token_ids: list[int]) -> str:
            return decode(tokenizer, token_ids)

    click.echo(render(gen, title=title, notes=loaded.notes, decode_text=text))
