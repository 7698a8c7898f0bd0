"""Shared CLI plumbing: loading specs (YAML or HF config.json) and turning SpecError into exit 2."""

from __future__ import annotations

import functools
import math
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from moec.errors import CommandError, SpecError, fold_problems

EXIT_BAD_INPUT = 2


def load_plan(source: str, sets: tuple[str, ...] = (), *, encoder_decoder: bool = False):  # -> ResolvedModel
    """A spec path, a shipped spec name, or a Hugging Face config.json (or a directory holding one). An
    encoder-decoder model is refused by name (exit 2) unless the command counts one (``encoder_decoder``)."""
    from moec.spec.encdec import refuse_encoder_decoder

    plan = _load(source, sets)
    if not encoder_decoder:
        ctx = click.get_current_context(silent=True)
        refuse_encoder_decoder(plan, ctx.command_path if ctx is not None else "moec")
    return plan


def _load(source: str, sets: tuple[str, ...]):  # -> ResolvedModel
    p = Path(source)
    if p.suffix == ".json" or (p.is_dir() and (p / "config.json").is_file()):
        from moec.hf.config import hf_to_model

        if sets:
            raise click.UsageError("--set applies to moec specs; import the config with `moec import-hf` first")
        return hf_to_model(str(p))
    from moec.spec import load_model

    return load_model(source, sets=sets)


def refuse_hybrid(plan: Any, command: str, feature: str) -> None:
    """Refuse a hybrid model (``plan.hybrid``: a token mixer other than attention, or a layer without its mixer
    or its FFN; docs/mixers.md) in a command that cannot count or run one yet: one CommandError naming the
    command, the model's mixers and the ``feature`` that is missing (exit 2), never a wrong number."""
    if not plan.hybrid:
        return
    from moec.spec.mixer_checks import layer_spans  # the spec checks' layer ranges: '0-2, 4'

    kinds = sorted({lp.mixer_kind for lp in plan.layers} - {"attention", "none"})
    what = [f"token mixers {', '.join(kinds)}"] if kinds else []
    no_mixer = [lp.index for lp in plan.layers if lp.mixer_kind == "none"]
    no_ffn = [lp.index for lp in plan.layers if not lp.has_ffn]
    what += [f"no token mixer in layer{'s' * (len(no_mixer) > 1)} {layer_spans(no_mixer)}"] if no_mixer else []
    what += [f"no FFN in layer{'s' * (len(no_ffn) > 1)} {layer_spans(no_ffn)}"] if no_ffn else []
    raise CommandError(
        f"{command} does not support hybrid models yet ({feature}): {plan.name} has {'; '.join(what)} "
        '(docs/mixers.md, "Analyzer and commands")'
    )


def refuse_block_features(plan: Any, command: str, feature: str) -> None:
    """Refuse, as :func:`refuse_hybrid` does, a model using a block feature ``feature`` (what the command lacks)
    does not know yet: each entry of ``present`` below, a spec field of docs/conventions.md; one CommandError naming
    every one the model uses (exit 2)."""
    layers = (*plan.layers, *plan.mtp)
    present = {
        "attention.indexer": any(lp.attention.has_indexer for lp in layers),
        "model.block shortcut_moe_pair": any(lp.pair_ffn is not None for lp in layers),
        "moe.n_zero_experts": any(getattr(lp.ffn, "n_zero_experts", 0) for lp in layers),  # MoE plans only
        # moec.dist keeps a mixture of attention heads whole on every TP rank; the planner would split its KV
        "attention.kind moa": any(lp.attention.kind == "moa" for lp in layers),
        # the planner lists no connection tensors: it would leave them out of the shards
        "model.hyper_connections": plan.hyper_connections is not None,
        # MLA variants whose tensors the planner does not list (and TP would not find q_b_proj for the query gate)
        "attention.rope_key_norm": any(lp.attention.rope_key_norm for lp in layers),
        "attention.query_gate": any(lp.attention.query_gate for lp in layers),
        "model.norm_gate": plan.norm_gate is not None,
    }
    found = [name for name, used in present.items() if used]
    if found:
        raise CommandError(f"{command} does not support {', '.join(found)} yet ({feature}): {plan.name} uses it")


def refuse_replacing_an_input(out: str, inputs: tuple[str | None, ...]) -> None:
    """--force replaces a folder moec wrote, never the folder the command reads from (``export-hf BUILD -o BUILD``,
    or -o the folder holding --weights): as output_files' rule for a single file, the input is not the output."""
    try:
        st = os.stat(out)
    except OSError:
        return  # nothing there yet: nothing to lose
    for source in inputs:
        if source is None:
            continue
        path = Path(source)
        try:
            same = os.path.samestat(st, os.stat(path if path.is_dir() else path.parent))
        except OSError:
            continue  # a shipped spec's name, not a path
        if same:
            raise CommandError(f"{out}: holds the input {source}; write the output somewhere else")


def print_problems(problems: list) -> None:
    """Each distinct spec problem on its own ``error: file:line:col field: message`` line, repeats folded."""
    for line in fold_problems(problems):
        click.echo(f"error: {line}", err=True)


def _describe_os_error(e: OSError) -> str:
    """``path: No space left on device``: the file it concerns and the system's words, no traceback."""
    where = e.filename if e.filename is not None else ""
    reason = e.strerror or str(e)
    return f"{where}: {reason}" if where else reason


def _is_out_of_memory(e: BaseException) -> bool:
    # torch's allocators raise torch.OutOfMemoryError (CUDA) or a plain RuntimeError (CPU); torch is not
    # imported here, so both are recognised by name and by the allocator's words.
    text = str(e)
    return (
        isinstance(e, MemoryError)
        or type(e).__name__ == "OutOfMemoryError"
        or (isinstance(e, RuntimeError) and ("can't allocate memory" in text or "out of memory" in text.lower()))
    )


def report_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn every expected failure into clean ``error:`` lines and exit 2: located spec problems (folded),
    command problems, operating-system errors (disk full, permission denied) and allocation failures."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except SpecError as e:
            print_problems(e.problems)
            n = len(e.problems)
            click.echo(f"{n} problem{'s' if n != 1 else ''} found", err=True)
            sys.exit(EXIT_BAD_INPUT)
        except CommandError as e:
            click.echo(f"error: {e}", err=True)
            sys.exit(EXIT_BAD_INPUT)
        except OSError as e:
            click.echo(f"error: {_describe_os_error(e)}", err=True)
            sys.exit(EXIT_BAD_INPUT)
        except (MemoryError, RuntimeError) as e:
            if not _is_out_of_memory(e):
                raise
            click.echo(f"error: out of memory: {str(e).splitlines()[0] if str(e) else type(e).__name__}", err=True)
            sys.exit(EXIT_BAD_INPUT)

    return wrapper


class FiniteFloatRange(click.FloatRange):
    """click's FloatRange that also refuses ``nan`` and ``inf``: nan passes every bound comparison, and
    neither is a setting (``--temperature nan`` would otherwise reach the sampler as an internal error)."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return number


# --seq of the counting commands: the schema's MAX_SEQ (moec.spec.schema, not imported here: it loads pydantic
# at start-up; tests/cli holds the two equal)
SEQ_LEN = click.IntRange(1, 1 << 27)

set_option = click.option(
    "--set",
    "sets",
    multiple=True,
    metavar="KEY=VALUE",
    help="Override a spec field, e.g. --set moe.router.top_k=4 (repeatable).",
)


def print_notes(notes: list[str]) -> None:
    """Each note of moec's output rules (a swept leftover, a kept file) as a ``note:`` line on stderr."""
    for note in notes:
        click.echo(f"note: {note}", err=True)


def write_output(output: str, content: str | bytes, force: bool) -> None:
    """``content`` to the file ``output`` through moec.output_files, its notes and a ``wrote`` line on stderr."""
    from moec.output_files import write_file

    print_notes(write_file(output, content, force=force))
    click.echo(f"wrote {output}", err=True)


def write_or_echo(text: str, output: str | None, force: bool) -> None:
    """``text`` to stdout, or to the file ``output`` (:func:`write_output`)."""
    if output is None:
        click.echo(text, nl=False)
        return
    write_output(output, text, force)
