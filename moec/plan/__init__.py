"""The parallelism planner: per-rank memory and communication of a layout. Pure Python; never imports torch.

The names below load on first use (PEP 562): `moec plan`, `moec roofline` and `moec sweep` read the
accelerator table (moec.plan.accelerators) while the command line is built, and importing this package must
not load the spec schema (pydantic) for every `moec` invocation."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from moec.plan.layout import AUTO, Layout, LayoutError
    from moec.plan.shard import RankParams, rank_params

_HOME = {
    "AUTO": "moec.plan.layout",
    "Layout": "moec.plan.layout",
    "LayoutError": "moec.plan.layout",
    "RankParams": "moec.plan.shard",
    "rank_params": "moec.plan.shard",
}

__all__ = ["AUTO", "Layout", "LayoutError", "RankParams", "rank_params"]


def __getattr__(name: str) -> Any:
    if name not in _HOME:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_HOME[name]), name)
