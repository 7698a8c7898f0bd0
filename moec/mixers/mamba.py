"""PLACEHOLDER: the mamba mixer kind (being written; see moec/mixers/__init__.py for the contract)."""

from __future__ import annotations

from moec.spec.base import Strict

KIND = "mamba"
MODULE = ""


class Section(Strict):
    pass
