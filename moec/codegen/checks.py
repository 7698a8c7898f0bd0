"""The only ways a plan value becomes text in the generated ``model.py`` (moec.codegen): integers and floats are
type-checked and emitted with ``repr``, strings must be members of a fixed set, flags must be bools."""

from __future__ import annotations

import math
from typing import Any


def int_text(v: Any, what: str, *, minimum: int = 1) -> str:
    if type(v) is not int or v < minimum:
        raise ValueError(f"{what} must be an integer ≥ {minimum}; got {v!r}")
    return repr(v)


def float_text(v: Any, what: str) -> str:
    if type(v) not in (int, float) or not math.isfinite(v):
        raise ValueError(f"{what} must be a finite number; got {v!r}")
    return repr(float(v)).replace("e+", "e")  # 1e20, not 1e+20: as ruff format writes it (the same float)


def checked_bool(v: Any, what: str) -> bool:
    if type(v) is not bool:
        raise ValueError(f"{what} must be true or false; got {v!r}")
    return v


def checked_choice(v: Any, allowed: tuple[str, ...], what: str) -> str:
    if type(v) is not str or v not in allowed:
        raise ValueError(f"{what} must be one of {', '.join(allowed)}; got {v!r}")
    return v


def str_literal(v: Any, allowed: tuple[str, ...], what: str) -> str:
    """A string literal for the generated code (a member of a fixed set, so repr is plain)."""
    return repr(checked_choice(v, allowed, what)).replace("'", '"')
