"""How the CLI reports failure: one ``error:`` line per distinct problem, per-layer repeats folded, exit 2 for
bad input and surroundings (a full disk, no memory), and never a traceback."""

from __future__ import annotations

import errno
import os
import subprocess
import sys

import click
import pytest
from click.testing import CliRunner

from moec.commands.common import report_errors
from moec.errors import CommandError, Problem, SpecError, fold_problems


def test_a_field_reported_once_per_layer_prints_once_with_the_count():
    problems = [Problem("c.json", 7, 3, f"layers[{i}].attention.temperature", "4: not supported") for i in range(48)]
    problems.append(Problem("c.json", 9, 3, "rope_theta", "-1: expected a positive number"))
    lines = fold_problems(problems)
    assert lines == [
        "c.json:7:3 layers[0].attention.temperature: 4: not supported (and 47 more layers)",
        "c.json:9:3 rope_theta: -1: expected a positive number",
    ]


def test_problems_at_different_places_are_never_folded():
    problems = [Problem("s.yaml", line, 5, f"layers.overrides[{line}].ffn", "unknown ffn kind") for line in (4, 9)]
    assert len(fold_problems(problems)) == 2


def test_the_same_problem_twice_prints_once():
    p = Problem("s.yaml", 3, 1, "moe.n_experts", "must be ≥ 1")
    assert fold_problems([p, p]) == ["s.yaml:3:1 moe.n_experts: must be ≥ 1 (and 1 more time)"]


def _command(failure: BaseException):
    @click.command()
    @report_errors
    def failing() -> None:
        raise failure

    return failing


@pytest.mark.parametrize(
    ("failure", "words"),
    [
        (SpecError([Problem("a.yaml", 2, 4, "model.n_layers", "too large")] * 3), "a.yaml:2:4 model.n_layers"),
        (CommandError("needs 41.0 GiB but 18.0 GiB is available"), "needs 41.0 GiB"),
        (OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "out/model.py"), "out/model.py: No space left on device"),
        (PermissionError(errno.EACCES, os.strerror(errno.EACCES), "/root/x"), "/root/x: Permission denied"),
        (MemoryError(), "out of memory"),
        (RuntimeError("[enforce fail] DefaultCPUAllocator: can't allocate memory: you tried 9 TB"), "out of memory"),
    ],
)
def test_expected_failures_are_one_line_and_exit_2(failure, words):
    result = CliRunner().invoke(_command(failure), [])
    assert result.exit_code == 2 and isinstance(result.exception, SystemExit)
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and words in errors[0], result.output


def test_an_unexpected_exception_is_not_swallowed_by_report_errors():
    result = CliRunner().invoke(_command(KeyError("bug")), [])
    assert isinstance(result.exception, KeyError)  # a moec bug stays visible to tests and to MOEC_TRACEBACK


BUGGY_MOEC = """
import sys
import moec.commands.analyze as analyze_cmd
def broken(*args, **kwargs):
    raise KeyError("planted bug")
analyze_cmd.load_plan = broken
from moec.cli import main
sys.argv = ["moec", "analyze", "mixtral-8x7b"]
main()
"""


@pytest.mark.parametrize("traceback", ["0", "1"])
def test_the_installed_command_reports_a_bug_in_one_line_unless_asked_for_the_traceback(traceback):
    env = {**os.environ, "MOEC_TRACEBACK": traceback}
    done = subprocess.run([sys.executable, "-c", BUGGY_MOEC], capture_output=True, text=True, env=env, timeout=120)
    if traceback == "1":
        assert done.returncode == 1 and "Traceback" in done.stderr and "planted bug" in done.stderr
    else:
        assert done.returncode == 70 and "Traceback" not in done.stderr
        assert done.stderr.count("\n") == 1 and "internal error in moec (KeyError: 'planted bug')" in done.stderr
