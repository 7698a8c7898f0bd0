"""The lint rules CI enforces: ruff's checks (McCabe complexity ≤ 15 among them, configured in pyproject.toml),
ruff's formatting, and no module in moec/ over 500 lines (docs/architecture.md, "House style, in brief")."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CHECKED = ["moec", "tests", "bench"]
MAX_LINES = 500


def ruff(*args: str) -> subprocess.CompletedProcess[str]:
    command = [shutil.which("ruff")] if shutil.which("ruff") else [sys.executable, "-m", "ruff"]
    return subprocess.run([*command, *args], cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_ruff_check_passes_with_the_complexity_limit():
    done = ruff("check", "--output-format", "concise", *CHECKED)
    assert done.returncode == 0, done.stdout + done.stderr


def test_ruff_format_leaves_every_file_as_it_is():
    done = ruff("format", "--check", *CHECKED)
    assert done.returncode == 0, done.stdout + done.stderr


def test_a_function_over_the_complexity_limit_is_caught(tmp_path):
    """The rule bites: sixteen branches in one function fail the project's configuration."""
    branches = "\n".join(f"    if x == {i}:\n        return {i}" for i in range(16))
    (tmp_path / "tangled.py").write_text(f"def tangled(x):\n{branches}\n    return -1\n")
    done = ruff("check", "--config", str(ROOT / "pyproject.toml"), str(tmp_path / "tangled.py"))
    assert done.returncode == 1 and "C901" in done.stdout, done.stdout


@pytest.mark.parametrize("path", sorted((ROOT / "moec").rglob("*.py")), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_module_is_over_500_lines(path):
    assert len(path.read_text(encoding="utf-8").splitlines()) <= MAX_LINES
