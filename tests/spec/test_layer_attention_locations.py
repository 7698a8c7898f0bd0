"""A cross-field problem with what a layer override writes in its attention section points at that override's
own field (``file:line:column`` of the value), not at the overrides list: the checks of a mixture of attention
heads (moec/spec/moa.py), a layer's rotary_dim (moec/spec/gate_rotary.py) and a layer's head counts
(moec/spec/mixer_checks.py) find those fields through one walk of layers.default and the overrides. Every
expected location was counted by hand in the text above it."""

from __future__ import annotations

import pytest

from moec.errors import SpecError
from moec.spec import load_spec

MOA = """\
moec: 1
name: t
model: {vocab_size: 256, d_model: 64, n_layers: 2, max_seq_len: 4096, norm: {kind: rmsnorm}}
attention:
  kind: moa
  n_heads: 4
  n_kv_heads: 2
  head_dim: 16
  experts: {n_experts: 6, top_k: 2}
layers:
  default: {ffn: dense}
  overrides:
    - select: {layers: [1]}
      attention:
        qk_norm: true
ffn: {d_ff: 32}
"""
# line 15: "        qk_norm: true" (the value at column 18)

GQA = """\
moec: 1
name: t
model: {vocab_size: 256, d_model: 64, n_layers: 2, max_seq_len: 4096, norm: {kind: rmsnorm}}
attention: {n_heads: 4, n_kv_heads: 2, head_dim: 16}
layers:
  default: {ffn: dense}
  overrides:
    - select: {layers: [1]}
      attention:
        rotary_dim: 32
ffn: {d_ff: 32}
"""
# line 10: "        rotary_dim: 32" (the value at column 21)


def located(text: str) -> list[str]:
    with pytest.raises(SpecError) as ei:
        load_spec("x.yaml", text=text)
    return [str(p) for p in ei.value.problems]


def test_a_moa_problem_in_an_override_points_at_its_field():
    assert located(MOA) == [
        "x.yaml:15:18 layers.overrides[0].attention.qk_norm: not supported with attention.kind moa "
        "(mixture of attention heads)"
    ]


def test_a_layer_rotary_dim_problem_in_an_override_points_at_its_field():
    assert located(GQA) == [
        "x.yaml:10:21 layers.overrides[0].attention.rotary_dim: 32 rotated dims exceed the head dim (16)"
    ]
