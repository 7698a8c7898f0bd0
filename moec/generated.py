"""Importing a Python file by its path: how moec runs the model.py ``moec build`` writes (``moec generate`` on a
build folder, the distributed cases that check the generated model, and the tests).

The module is registered in ``sys.modules`` under its name before it runs, because the dataclasses (and typing's
forward references) of a generated model.py look their module up there; if running it fails, the name is
removed again, so a broken file leaves nothing behind."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType


class NotAPythonFile(Exception):
    """A path Python has no loader for (its name does not end in a Python suffix such as .py)."""


def import_python_file(path: Path, name: str) -> ModuleType:
    """The module the file at ``path`` defines, run under the module name ``name``. Raises
    :class:`NotAPythonFile`, or whatever running the file raises (it is the caller's to report: a build folder's
    model.py is the user's to edit)."""
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise NotAPythonFile(f"{path}: not a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    return module
