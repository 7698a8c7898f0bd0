"""Shared CLI plumbing: loading specs (YAML or HF config.json) and turning SpecError into exit 2."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from moec.errors import SpecError

EXIT_BAD_INPUT = 2


def load_plan(source: str, sets: tuple[str, ...] = ()):  # -> ResolvedModel
    """A spec path, a shipped spec name, or a Hugging Face config.json (or a directory holding one)."""
    p = Path(source)
    if p.suffix == ".json" or (p.is_dir() and (p / "config.json").is_file()):
        from moec.hf.config import hf_to_model

        if sets:
            raise click.UsageError("--set applies to moec specs; import the config with `moec import-hf` first")
        return hf_to_model(str(p))
    from moec.spec import load_model

    return load_model(source, sets=sets)


def report_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Print every spec problem (file:line:col field: message) to stderr and exit 2."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except SpecError as e:
            for p in e.problems:
                click.echo(f"error: {p}", err=True)
            n = len(e.problems)
            click.echo(f"{n} problem{'s' if n != 1 else ''} found", err=True)
            sys.exit(EXIT_BAD_INPUT)

    return wrapper


set_option = click.option(
    "--set",
    "sets",
    multiple=True,
    metavar="KEY=VALUE",
    help="Override a spec field, e.g. --set moe.router.top_k=4 (repeatable).",
)
