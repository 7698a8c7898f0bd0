"""What every section of the schema shares: the strict base model and the sane upper bounds on sizes.

Outside moec.spec so that the token-mixer sections of :mod:`moec.mixers` can build on it without starting the
spec package, whose schema gathers those sections (importing moec.spec.anything runs moec.spec's __init__).
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

# Sane upper bounds: far above any published model, far below anything that would hang.
MAX_VOCAB = 1 << 24  # 16.7M
MAX_D = 1 << 18  # 262,144
MAX_LAYERS = 4096
MAX_SEQ = 1 << 27  # 134M tokens
MAX_HEADS = 1 << 12
MAX_EXPERTS = 1 << 16
MAX_FF = 1 << 21
# list lengths: a layer index at most once per layer; overrides cost resolve O(overrides · layers)
MAX_OVERRIDES = 1024
MAX_HEAD_DIM = 4096


class Strict(BaseModel):
    # each field's docstring is its description in the JSON Schema (`moec schema`, editors' help)
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, use_attribute_docstrings=True)
