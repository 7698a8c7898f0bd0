"""`moec import-hf` and `moec export-hf`: Hugging Face config.json ↔ moec spec.

No torch here: both commands read and write text only.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import click

from moec.commands.common import load_plan, report_errors, set_option
from moec.errors import Problem, SpecError


@click.command(name="import-hf")
@click.argument("config", type=click.Path(dir_okay=True, file_okay=True, path_type=str))
@click.option(
    "-o", "--output", type=click.Path(dir_okay=False, path_type=str), help="Write the spec here (default: stdout)."
)
@click.option("--force", is_flag=True, help="Overwrite --output if it exists.")
@click.option("--name", help="The spec's name (default: from _name_or_path or the config's directory).")
@report_errors
def import_hf(config: str, output: str | None, force: bool, name: str | None) -> None:
    """A Hugging Face CONFIG.json (or a directory holding one) → a moec spec whose comments name the source fields."""
    from moec.hf.config import import_hf_config

    text = import_hf_config(config, name=name)
    if output is None:
        click.echo(text, nl=False)
        return
    write_atomic(output, text, force=force)
    click.echo(f"wrote {output}", err=True)


@click.command(name="export-hf")
@click.argument("spec")
@click.option(
    "-o", "--output", type=click.Path(dir_okay=False, path_type=str), help="Write config.json here (default: stdout)."
)
@click.option("--force", is_flag=True, help="Overwrite --output if it exists.")
@click.option(
    "--drop-training",
    is_flag=True,
    help="Export even if a training-only balance coefficient has no config.json field (it is left out).",
)
@set_option
@report_errors
def export_hf(spec: str, output: str | None, force: bool, drop_training: bool, sets: tuple[str, ...]) -> None:
    """A moec SPEC → the config.json of the Hugging Face family that expresses it exactly."""
    from moec.hf.config import export_hf_config

    text = json.dumps(export_hf_config(load_plan(spec, sets), drop_training=drop_training), indent=2) + "\n"
    if output is None:
        click.echo(text, nl=False)
        return
    write_atomic(output, text, force=force)
    click.echo(f"wrote {output}", err=True)


def write_atomic(path: str, text: str, *, force: bool) -> None:
    """Write through a temporary file in the same folder, so a reader never sees half a file; without
    ``force`` an existing file is an error, also when it appears while writing (link, not rename)."""
    target = Path(path)
    if target.is_dir():
        raise SpecError([Problem(path, None, None, "", "is a directory")])
    if target.exists() and not force:
        raise SpecError([Problem(path, None, None, "", "exists; pass --force to overwrite it")])
    folder = target.parent if str(target.parent) else Path(".")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=folder)
    except OSError as e:
        raise SpecError([Problem(path, None, None, "", f"cannot write: {e.strerror}")]) from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        if force:
            os.replace(tmp, target)
        else:
            _publish_new(tmp, target)
    except FileExistsError:
        raise SpecError([Problem(path, None, None, "", "exists; pass --force to overwrite it")]) from None
    except OSError as e:
        raise SpecError([Problem(path, None, None, "", f"cannot write: {e.strerror}")]) from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _publish_new(tmp: str, target: Path) -> None:
    """Move ``tmp`` to ``target`` only if ``target`` does not exist (FileExistsError otherwise)."""
    try:
        os.link(tmp, target)  # atomic and never clobbers
    except FileExistsError:
        raise
    except OSError:  # a filesystem without hard links: claim the name exclusively, then replace it
        os.close(os.open(target, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        os.replace(tmp, target)
