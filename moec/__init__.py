"""moec: the Mixture-of-Experts architecture compiler and analyzer.

Importing ``moec`` is cheap: torch is only imported by the parts that build or run models.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    # Lazy entry points, so that `import moec` never pulls in torch.
    if name == "build_model":
        from moec.nn.build import build_model

        return build_model
    if name == "from_hf":
        from moec.hf.weights import from_hf

        return from_hf
    if name == "export_hf":
        from moec.hf.export_weights import export_hf

        return export_hf
    if name in ("load_model", "load_spec", "resolve", "SpecError"):
        import moec.spec as s

        return getattr(s, name)
    if name == "analyze":
        from moec.analyze import analyze

        return analyze
    raise AttributeError(name)
