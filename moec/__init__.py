"""moec: the Mixture-of-Experts architecture compiler and analyzer.

Importing ``moec`` is cheap: torch is only imported by the parts that build or run models. The public API
(``moec.__all__``, documented with examples in docs/api.md) is loaded on first use.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import Any

__version__ = "0.1.0"

# public name → the module that defines it, imported on first use so that `import moec` never pulls in torch
_ENTRY_POINTS = {
    "analyze": "moec.analyze",  # spec plan → Analysis (parameters, FLOPs, memory); torch-free
    "load_model": "moec.spec",  # path or shipped name (and --set overrides) → resolved plan; torch-free
    "load_spec": "moec.spec",  # path, or text=, → validated spec; torch-free
    "resolve": "moec.spec",
    "ResolvedModel": "moec.spec",
    "SpecError": "moec.errors",
    "build_model": "moec.nn.build",
    "MoE": "moec.api",
    "MoEAux": "moec.nn.moe",
    "ModelAux": "moec.nn.model",
    "lm_loss": "moec.nn.loss",
    "from_hf": "moec.hf.weights",
    "export_hf": "moec.hf.export_weights",
    "upcycle": "moec.hf.upcycle",  # dense HF checkpoint → upcycled MoE model (docs/upcycling.md)
}

__all__ = sorted(_ENTRY_POINTS)


def __getattr__(name: str) -> Any:
    if name in _ENTRY_POINTS:
        return getattr(importlib.import_module(_ENTRY_POINTS[name]), name)
    raise AttributeError(f"module 'moec' has no attribute {name!r}")


def __dir__() -> list[str]:
    # the API and the module's own dunders, not the helpers this file imports
    return sorted(set(_ENTRY_POINTS) | {n for n in globals() if n.startswith("__")})


class _Package(types.ModuleType):
    def __setattr__(self, name: str, value: Any) -> None:
        # Importing the subpackage moec.analyze sets the attribute moec.analyze to it, which would hide the
        # function moec.analyze from then on. The package stays reachable by `from moec.analyze import …`
        # and `from moec.analyze.report import …`; an attribute chain (`import moec.analyze.report as r`, a
        # monkeypatch target string "moec.analyze.report.x") meets the function instead.
        if name in _ENTRY_POINTS and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
