"""PLACEHOLDER: the kda mixer kind (being written; see moec/mixers/__init__.py for the contract)."""

from __future__ import annotations

from moec.spec.base import Strict

KIND = "kda"
MODULE = ""


class Section(Strict):
    pass
