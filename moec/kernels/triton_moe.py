"""The former name of the ``triton`` backend, :mod:`moec.kernels.triton`; kept only while ``moec/bench/peers.py``
imports it by this name."""

from moec.kernels.triton import expert_ffn, lora_mix

__all__ = ["expert_ffn", "lora_mix"]
