"""`moec import-hf` and `moec export-hf`: Hugging Face config.json ↔ moec spec.

No torch here: both commands read and write text only.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from moec.commands.common import load_plan, report_errors, set_option
from moec.output_files import check_file_target, write_file


@click.command(name="import-hf")
@click.argument("config", type=click.Path(dir_okay=True, file_okay=True, path_type=str))
@click.option("-o", "--output", type=click.Path(path_type=str), help="Write the spec here (default: stdout).")
@click.option("--force", is_flag=True, help="Overwrite --output if it exists.")
@click.option("--name", help="The spec's name (default: from _name_or_path or the config's directory).")
@report_errors
def import_hf(config: str, output: str | None, force: bool, name: str | None) -> None:
    """A Hugging Face CONFIG.json (or a directory holding one) → a moec spec whose comments name the source fields."""
    from moec.hf.config import import_hf_config

    if output is not None:
        check_file_target(Path(output), force=force, inputs=(config, str(Path(config) / "config.json")))
    text = import_hf_config(config, name=name)
    if output is None:
        click.echo(text, nl=False)
        return
    for note in write_file(output, text, force=force):
        click.echo(f"note: {note}", err=True)
    click.echo(f"wrote {output}", err=True)


@click.command(name="export-hf")
@click.argument("spec")
@click.option("-o", "--output", type=click.Path(path_type=str), help="Write config.json here (default: stdout).")
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

    if output is not None:
        check_file_target(Path(output), force=force, inputs=(spec,))
    text = json.dumps(export_hf_config(load_plan(spec, sets), drop_training=drop_training), indent=2) + "\n"
    if output is None:
        click.echo(text, nl=False)
        return
    for note in write_file(output, text, force=force):
        click.echo(f"note: {note}", err=True)
    click.echo(f"wrote {output}", err=True)
