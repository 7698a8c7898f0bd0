"""model.positions.kind sinusoidal (moec/spec/encdec.py; fairseq's fixed table, NLLB-MoE): planned with its offset,
round-tripped through plain data, counted without parameters, and each misuse named where it is written."""

from __future__ import annotations

import pytest

from moec.analyze import analyze
from moec.spec import load_model
from moec.spec.plan import plan_from_dict
from tests.spec.test_encdec import validate

# 2 encoder and 2 decoder layers of d 16, 2 heads of 8 with biases, an FFN of 32, no MoE
TINY = """\
moec: 1
name: tiny-sinusoidal
model:
  vocab_size: 64
  d_model: 16
  n_layers: 2
  max_seq_len: 32
  tie_embeddings: true
  norm: {kind: layernorm}
  positions: {kind: sinusoidal, offset: 2}
attention: {n_heads: 2, bias: true, out_bias: true}
ffn: {d_ff: 32, activation: relu, bias: true}
encoder:
  n_layers: 2
"""


def test_the_offset_is_planned_and_round_trips(write_spec):
    m = load_model(str(write_spec(TINY)))
    assert (m.positions.kind, m.positions.offset) == ("sinusoidal", 2)
    assert plan_from_dict(m.to_dict()) == m


def test_the_table_has_no_parameters(write_spec):
    """By hand: embedding 64·16 (tied); per layer attention 4·(16·16 + 16), FFN 16·32 + 32 + 32·16 + 16, two
    layernorms of 2·16; each decoder layer a cross-attention 4·(16·16 + 16) and its norm 2·16; two final norms."""
    attention, ffn, norm = 4 * (16 * 16 + 16), 16 * 32 + 32 + 32 * 16 + 16, 2 * 16
    layer = attention + ffn + 2 * norm
    want = 64 * 16 + 2 * layer + 2 * (layer + attention + norm) + 2 * norm
    assert analyze(load_model(str(write_spec(TINY)))).params.total == want


@pytest.mark.parametrize(
    "old, new, where, message",
    [
        ("{kind: sinusoidal, offset: 2}", "{kind: sinusoidal}", "model.positions", "sinusoidal positions need offset"),
        ("{kind: sinusoidal, offset: 2}", "{kind: none, offset: 2}", "model.positions.offset", "only meaningful"),
        ("offset: 2}", "offset: -1}", "model.positions.offset", "greater than or equal to 0"),
        ("encoder:\n  n_layers: 2\n", "", "model.positions.kind", "they need an encoder section"),
    ],
)
def test_each_problem_is_named_where_it_is_written(write_spec, old, new, where, message):
    assert old in TINY
    code, out = validate(write_spec, TINY.replace(old, new))
    # every problem is about the positions mapping, written on line 10 of TINY
    assert code == 2 and "spec.yaml:10:" in out and f"{where}: " in out and message in out, out
