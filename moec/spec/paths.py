"""Where shipped specs and templates live: inside the wheel (``moec/_data``) or in the source tree."""

from __future__ import annotations

from pathlib import Path

_PKG = Path(__file__).resolve().parent.parent


def data_dir(name: str) -> Path:
    """``specs`` or ``templates``: the installed copy if present, else the repository's."""
    installed = _PKG / "_data" / name
    if installed.is_dir():
        return installed
    return _PKG.parent / name


def shipped_specs() -> list[Path]:
    d = data_dir("specs")
    return sorted(d.glob("*.yaml")) if d.is_dir() else []


def shipped_spec_path(name: str) -> Path | None:
    """The shipped spec of that name (``mixtral-8x7b`` or ``mixtral-8x7b.yaml``), or None. Only a plain
    file name is looked up: nothing with a path separator, a leading dot or a NUL ever leaves ``specs/``."""
    stem = name[:-5] if name.endswith(".yaml") else name
    if not stem or len(stem) > 200 or any(c in stem for c in "/\\\0") or stem.startswith("."):
        return None
    p = data_dir("specs") / f"{stem}.yaml"
    try:
        return p if p.is_file() else None
    except OSError:  # a name the file system refuses (too long for it)
        return None
