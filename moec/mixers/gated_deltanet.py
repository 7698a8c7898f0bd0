"""PLACEHOLDER: the gated_deltanet mixer kind (being written; see moec/mixers/__init__.py for the contract)."""

from __future__ import annotations

from moec.spec.base import Strict

KIND = "gated_deltanet"
MODULE = ""


class Section(Strict):
    pass
