"""moec.generated.import_python_file: a file defining a dataclass (which looks its module up in sys.modules)
imports and works; a file that raises leaves no module behind and the caller sees its error; a path Python has
no loader for is refused by name."""

from __future__ import annotations

import sys

import pytest

from moec.generated import NotAPythonFile, import_python_file

DATACLASS_FILE = """
from __future__ import annotations
from dataclasses import dataclass

@dataclass
class Config:
    width: int = 3

def doubled() -> int:
    return 2 * Config().width
"""


def test_a_file_with_a_dataclass_imports_and_runs(tmp_path):
    (tmp_path / "model.py").write_text(DATACLASS_FILE)
    module = import_python_file(tmp_path / "model.py", "moec_test_generated_ok")
    try:
        assert module.doubled() == 6
        assert sys.modules["moec_test_generated_ok"] is module
    finally:
        sys.modules.pop("moec_test_generated_ok", None)


def test_a_file_that_raises_leaves_no_module(tmp_path):
    (tmp_path / "model.py").write_text("x = 1\nraise ValueError('broken on purpose')\n")
    with pytest.raises(ValueError, match="broken on purpose"):
        import_python_file(tmp_path / "model.py", "moec_test_generated_broken")
    assert "moec_test_generated_broken" not in sys.modules


def test_a_path_without_a_python_suffix_is_refused(tmp_path):
    (tmp_path / "model.txt").write_text("x = 1\n")
    with pytest.raises(NotAPythonFile, match="model.txt: not a Python module"):
        import_python_file(tmp_path / "model.txt", "moec_test_generated_txt")
    assert "moec_test_generated_txt" not in sys.modules
