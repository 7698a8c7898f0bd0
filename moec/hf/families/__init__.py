"""The Hugging Face families moec knows, found rather than listed: every module of this package whose name
does not start with ``_`` is one family (it defines ``FAMILY``, a :class:`Family`) or a few closely related
ones (``FAMILIES``, a tuple). A module holds the family's transformers defaults, its translator
(config.json → spec), its exporter (plan → config.json) and its weight mapping (a :class:`Mapper`
subclass); the steps families share are in ``_common.py`` (translating) and ``_export_common.py``
(exporting). Adding a family is adding one module; docs/hf-families.md says what it must define and pass.

A module that fails to import, or that defines no family, stops the import of this package with an error
naming it: a family is never skipped silently.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Iterable
from types import ModuleType

from moec.hf.draft import CannotExport, Family, layer_pattern

__all__ = ["FAMILIES", "SUPPORTED_MODEL_TYPES", "CannotExport", "Family", "discover", "export_order", "layer_pattern"]


def _families_of(module: ModuleType) -> tuple[Family, ...]:
    """The families a module defines, checked to be what the registry expects."""
    one, many = getattr(module, "FAMILY", None), getattr(module, "FAMILIES", None)
    if (one is None) == (many is None):
        raise ImportError(f"{module.__name__} must define exactly one of FAMILY (a Family) or FAMILIES (a tuple)")
    families = (one,) if one is not None else many
    if not isinstance(families, tuple) or not families or not all(isinstance(f, Family) for f in families):
        raise ImportError(f"{module.__name__}: FAMILY must be a Family, FAMILIES a non-empty tuple of them")
    return families


def discover(path: Iterable[str], package: str) -> dict[str, Family]:
    """Every family the modules of ``package`` (found on ``path``) define, by model_type; modules whose
    names start with ``_`` hold shared helpers and are not read."""
    found: dict[str, Family] = {}
    where: dict[str, str] = {}
    for info in sorted(pkgutil.iter_modules(path), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{package}.{info.name}")  # a broken module raises here
        for fam in _families_of(module):
            if fam.model_type in found:
                raise ImportError(
                    f"model_type {fam.model_type!r} is defined by both {where[fam.model_type]} and {module.__name__}"
                )
            found[fam.model_type], where[fam.model_type] = fam, module.__name__
    return dict(sorted(found.items()))


FAMILIES: dict[str, Family] = discover(__path__, __name__)
SUPPORTED_MODEL_TYPES = tuple(FAMILIES)


def export_order(*, moe: bool) -> list[Family]:
    """The families export tries for a spec with MoE layers (``moe``) or without, in ``export_rank`` order."""
    fams = [f for f in FAMILIES.values() if f.export is not None and f.dense != moe]
    return sorted(fams, key=lambda f: (f.export_rank, f.model_type))
