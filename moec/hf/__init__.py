"""The Hugging Face bridge: ``config.json`` ↔ moec spec, and checkpoint weights (``weights.py``, which needs
torch).

Importing this package never imports torch or transformers: a config is read as JSON and translated
with tables written from transformers 5.23's own configuration and modeling code, one module per family
(``families/``).
"""

from moec.hf.config import (
    Gap,
    export_hf_config,
    hf_to_model,
    import_hf_config,
    read_hf_config,
)
from moec.hf.families import FAMILIES, SUPPORTED_MODEL_TYPES

__all__ = [
    "FAMILIES",
    "SUPPORTED_MODEL_TYPES",
    "Gap",
    "export_hf_config",
    "hf_to_model",
    "import_hf_config",
    "read_hf_config",
]
