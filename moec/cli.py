"""The `moec` command line: click commands only; every command lives in moec/commands/."""

from __future__ import annotations

import os
import sys

import click

from moec import __version__
from moec.commands.analyze import analyze, diff, list_specs, schema, validate
from moec.commands.bench import bench
from moec.commands.build import build
from moec.commands.generate import generate
from moec.commands.hf import export_hf, import_hf
from moec.commands.plan import plan
from moec.commands.roofline import roofline
from moec.commands.smoke import smoke_run
from moec.commands.sweep import sweep
from moec.commands.upcycle import upcycle


class WholeSummaries(click.Group):
    """Lists each command with its whole first sentence, wrapped to the terminal: click's default cuts the
    summaries at the width (with "...") so that they fit one line."""

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = []
        for name in self.list_commands(ctx):
            cmd = self.get_command(ctx, name)
            if cmd is not None and not cmd.hidden:
                rows.append((name, cmd.get_short_help_str(limit=1 << 16)))
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


@click.group(cls=WholeSummaries, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="moec")
def cli() -> None:
    """moec: Mixture-of-Experts architecture compiler and analyzer."""


for _cmd in (
    analyze,
    diff,
    validate,
    schema,
    list_specs,
    build,
    smoke_run,
    bench,
    import_hf,
    export_hf,
    plan,
    roofline,
    sweep,
    generate,
    upcycle,
):
    cli.add_command(_cmd)


EXIT_INTERNAL = 70  # sysexits' EX_SOFTWARE: moec itself failed, not the input


def main() -> None:
    """The installed ``moec`` command. Every expected failure is already an ``error:`` line and exit 2 (see
    moec/commands/common.py); anything else is a moec bug, reported in one line unless MOEC_TRACEBACK=1."""
    try:
        cli(standalone_mode=True)
    except Exception as e:  # click's own exits are SystemExit, which passes through
        if os.environ.get("MOEC_TRACEBACK") == "1":
            raise
        click.echo(
            f"error: internal error in moec ({type(e).__name__}: {e}); please report it, with the command, "
            "and rerun with MOEC_TRACEBACK=1 for the traceback",
            err=True,
        )
        sys.exit(EXIT_INTERNAL)


if __name__ == "__main__":
    main()
