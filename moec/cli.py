"""The `moec` command line: click commands only; every command lives in moec/commands/."""

from __future__ import annotations

import click

from moec import __version__
from moec.commands.analyze import analyze, diff, list_specs, schema, validate
from moec.commands.bench import bench
from moec.commands.build import build
from moec.commands.hf import export_hf, import_hf
from moec.commands.smoke import smoke_run


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="moec")
def cli() -> None:
    """moec: Mixture-of-Experts architecture compiler and analyzer."""


for _cmd in (analyze, diff, validate, schema, list_specs, build, smoke_run, bench, import_hf, export_hf):
    cli.add_command(_cmd)


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
