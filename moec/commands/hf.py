"""`moec import-hf` and `moec export-hf`: Hugging Face config.json ↔ moec spec, and a checkpoint folder with
weights (moec/hf/export_weights.py).

Torch is imported only to export weights: config.json alone is text in, text out.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from moec.commands.common import load_plan, refuse_replacing_an_input, report_errors, set_option, write_or_echo
from moec.output_files import check_file_target


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
    write_or_echo(text, output, force)


@click.command(name="export-hf")
@click.argument("spec")
@click.option(
    "-o",
    "--output",
    type=click.Path(path_type=str),
    help="Write config.json here (default: stdout); with weights, the checkpoint folder to write.",
)
@click.option("--force", is_flag=True, help="Overwrite --output if it exists (a folder: only one moec wrote).")
@click.option(
    "--drop-training",
    is_flag=True,
    help="Export even if a training-only balance coefficient has no config.json field (it is left out).",
)
@click.option(
    "--weights",
    type=click.Path(exists=True, dir_okay=False, path_type=str),
    help="A moec weights file (moec build's model.safetensors): write a whole checkpoint folder to -o.",
)
@click.option("--family", help="The Hugging Face model_type to write (default: the first that expresses the spec).")
@click.option("--max-shard-size", default="5GB", show_default=True, help="The largest safetensors shard.")
@set_option
@report_errors
def export_hf(
    spec: str,
    output: str | None,
    force: bool,
    drop_training: bool,
    weights: str | None,
    family: str | None,
    max_shard_size: str,
    sets: tuple[str, ...],
) -> None:
    """A moec SPEC → the config.json of the Hugging Face family that expresses it exactly; with --weights, or
    given a moec build folder (BUILD_DIR/model.safetensors), a checkpoint folder -o DIR that transformers'
    from_pretrained loads: config.json, generation_config.json, safetensors shards and their index."""
    from moec.hf.config import export_hf_config

    build_dir = Path(spec) / "spec.resolved.yaml"
    if weights is not None or build_dir.is_file():
        _export_checkpoint(spec, output, force, weights, family, max_shard_size, sets, drop_training)
        return
    if output is not None:
        check_file_target(Path(output), force=force, inputs=(spec,))
    if family is not None:
        from moec.hf.export_config import family_config

        cfg = family_config(load_plan(spec, sets, encoder_decoder=True), family)
    else:
        cfg = export_hf_config(load_plan(spec, sets, encoder_decoder=True), drop_training=drop_training)
    text = json.dumps(cfg, indent=2) + "\n"
    write_or_echo(text, output, force)


def _export_checkpoint(
    spec: str,
    output: str | None,
    force: bool,
    weights: str | None,
    family: str | None,
    max_shard_size: str,
    sets: tuple[str, ...],
    drop_training: bool,
) -> None:
    """SPEC with --weights, or a build folder, → a checkpoint folder."""
    from moec.codegen.output import WEIGHTS, read_build_plan
    from moec.hf.export_config import parse_size
    from moec.hf.export_weights import export_hf as write_checkpoint
    from moec.hf.export_weights import load_moec_weights

    if output is None:
        raise click.UsageError("a checkpoint with weights is a folder: give -o DIR")
    refuse_replacing_an_input(output, (spec, weights))
    folder = Path(spec)
    if folder.is_dir():
        if sets:
            raise click.UsageError("--set applies to a SPEC, not to a build folder")
        plan = read_build_plan(folder)
        weights = weights or str(folder / WEIGHTS)
        if not Path(weights).is_file():
            raise click.UsageError(f"{folder} holds no {WEIGHTS} (build it with --weights), and no --weights was given")
    else:
        plan = load_plan(spec, sets, encoder_decoder=True)
    assert weights is not None
    max_bytes = parse_size(max_shard_size)
    model = load_moec_weights(plan, weights)
    files = write_checkpoint(
        model, output, family=family, max_shard_size=max_bytes, force=force, drop_training=drop_training
    )
    shards = [f for f in files if f.startswith("model-")]
    shown = [f for f in files if f not in shards]
    if shards:
        shown.insert(shown.index("model.safetensors.index.json"), f"{len(shards)} shards")
    click.echo(f"wrote {output}/: {', '.join(shown)}", err=True)
