"""Torch modules built from the resolved plan (never from YAML): norms, RoPE, attention (GQA/MLA),
dense FFN, router, MoE layer, block, model, and the loss helper.

Importing ``moec.nn`` imports torch; ``import moec`` alone does not.
"""

from moec.nn.build import build_model, weight_bytes
from moec.nn.loss import LossParts, lm_loss
from moec.nn.model import ModelAux, MoecModel, component_of

__all__ = ["LossParts", "ModelAux", "MoecModel", "build_model", "component_of", "lm_loss", "weight_bytes"]
