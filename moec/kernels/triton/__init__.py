"""Triton kernels for the MoE expert computation (the ``triton`` backend's internals).

routing.py  sort routing slots by expert, per-tile tables (torch ops, no host sync)
configs.py  block sizes: heuristic table, optional GPU autotune with a disk cache
_common.py  interpreter switch, dot helper, activations and their derivatives
grouped.py  generic grouped matmul, per-expert weight-gradient (XᵀY) kernel, deterministic combine
ffn.py      fused up-projection + activation, fused down-projection backward, fwd/bwd drivers
op.py       torch.library custom op, autograd registration, FLOP-counter formulas
lora.py     routed LoRA experts through the same grouped kernels

The public entry points are in :mod:`moec.kernels.triton_moe`.
"""
