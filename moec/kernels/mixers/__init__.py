"""The torch modules of the linear-attention, state-space and short-convolution mixers (docs/mixers.md), one
module per kind of :mod:`moec.mixers`. Shared by :mod:`moec.nn` and every generated model.py, as
:mod:`moec.kernels.runtime` is: their constructors take plain values, never a plan."""
