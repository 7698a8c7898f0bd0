"""Progress of a smoke-run on stderr: a rich bar on a terminal, a plain line every tenth of the run otherwise
(a log file or a pipe gets no cursor codes, and stdout keeps only the report)."""

from __future__ import annotations

import sys
from typing import Any

PLAIN_LINES = 10  # plain-text updates per run


class PlainProgress:
    def __init__(self, steps: int, stream: Any = None):
        self.steps, self.stream = steps, stream if stream is not None else sys.stderr
        self.every = max(1, steps // PLAIN_LINES)

    def __enter__(self) -> PlainProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def update(self, done: int, ce: float, aux: float, tokens_per_s: float) -> None:
        if done % self.every == 0 or done == self.steps:
            print(f"step {done}/{self.steps}  {_figures(ce, aux, tokens_per_s)}", file=self.stream, flush=True)


class BarProgress:
    def __init__(self, steps: int, console: Any):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.bar = Progress(
            TextColumn("{task.description}"),
            BarColumn(bar_width=20),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
            transient=True,
        )
        self.task = self.bar.add_task("training", total=steps)

    def __enter__(self) -> BarProgress:
        self.bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.bar.stop()

    def update(self, done: int, ce: float, aux: float, tokens_per_s: float) -> None:
        self.bar.update(self.task, completed=done, description=_figures(ce, aux, tokens_per_s))


def progress_display(steps: int) -> PlainProgress | BarProgress:
    from rich.console import Console

    console = Console(stderr=True)
    return BarProgress(steps, console) if console.is_terminal else PlainProgress(steps)


def _figures(ce: float, aux: float, tokens_per_s: float) -> str:
    # the first steps warm up untimed (moec.smoke.run.train): no rate yet, rather than "0 tok/s"
    rate = f"{tokens_per_s:,.0f} tok/s" if tokens_per_s else "tok/s after warm-up"
    return f"loss {ce:.3f}  aux {aux:.3g}  {rate}"
