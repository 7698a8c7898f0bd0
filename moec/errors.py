"""Spec problems as values with locations (docs/architecture.md, "House style, in brief").

Everything below the CLI raises :class:`SpecError`, which carries every problem found, each with the
file, line and column it points at and the dotted field path.  The CLI prints them and exits 2.
"""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class Problem:
    file: str
    line: int | None
    column: int | None
    path: str
    message: str

    def __str__(self) -> str:
        where = self.file
        if self.line is not None:
            where += f":{self.line}"
            if self.column is not None:
                where += f":{self.column}"
        field = f" {self.path}:" if self.path else ""
        return f"{where}{field} {self.message}"


class SpecError(ValueError):
    """One or more problems with a spec. ``problems`` holds all of them, in file order."""

    def __init__(self, problems: list[Problem]):
        self.problems = sorted(problems, key=lambda p: (p.file, p.line or 0, p.column or 0, p.path, p.message))
        super().__init__("\n".join(str(p) for p in self.problems))


class CommandError(ValueError):
    """A problem with a command's arguments or surroundings rather than with a spec's text: an output path
    moec will not write, a model that will not fit in memory, a device that does not exist. The CLI prints
    ``error: <message>`` and exits 2; the message names the path, the estimate and the limit it refers to."""


def _layer_free(text: str) -> str:
    """``layers[17].attention`` and ``layers.17`` → the same key, so per-layer repeats fold together."""
    return re.sub(r"\[\d+\]|(?<=\.)\d+(?=\.|$)|(?<=layer )\d+", "#", text)


def fold_problems(problems: list[Problem]) -> list[str]:
    """One line per distinct problem. Problems at the same place with the same message that differ only in
    a layer index (one bad config field read once per layer) print once, with how many more there were."""
    groups: dict[tuple, list[Problem]] = {}
    for p in problems:
        key = (p.file, p.line, p.column, _layer_free(p.path), _layer_free(p.message))
        groups.setdefault(key, []).append(p)
    lines = []
    for same in groups.values():
        line = str(same[0])
        if len(same) > 1:
            what = "layer" if len({q.path for q in same}) == len(same) and "layer" in same[0].path else "time"
            more = len(same) - 1
            line += f" (and {more} more {what}{'s' if more > 1 else ''})"
        lines.append(line)
    return lines
