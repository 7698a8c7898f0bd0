"""Spec problems as values with locations (house style 7).

Everything below the CLI raises :class:`SpecError`, which carries every problem found, each with the
file, line and column it points at and the dotted field path.  The CLI prints them and exits 2.
"""

from __future__ import annotations

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
