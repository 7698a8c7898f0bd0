"""Encoder-decoder specs (moec/spec/encdec.py): what the resolver plans for each stack, written out by hand for a
small model; that decoder-only specs plan no encoder; the round trip through plain data; every cross-field problem
named and located by `moec validate`."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from moec.cli import cli
from moec.spec import load_model
from moec.spec.paths import shipped_specs
from moec.spec.plan import DenseFFNPlan, MoEPlan, plan_from_dict

# 3 encoder layers (MoE on 1 only), 2 decoder layers (MoE on 1), T5 relative bias of 8 buckets
TINY = """\
moec: 1
name: tiny-encdec
model:
  vocab_size: 64
  d_model: 16
  n_layers: 2
  max_seq_len: 32
  tie_embeddings: true
  norm: {kind: rmsnorm, eps: 1.0e-6}
  positions: {kind: relative_bucket, n_buckets: 8, max_distance: 16}
attention: {n_heads: 2, head_dim: 4, scale: 1.0}
ffn: {d_ff: 32, activation: relu}
moe: {n_experts: 4, d_ff: 32, activation: relu, router: {top_k: 1}, drop_policy: position}
layers:
  default: {ffn: dense}
  overrides:
    - {select: [1], ffn: moe}
encoder:
  n_layers: 3
  expert_capacity: 4
  layers:
    default: {ffn: dense}
    overrides:
      - {select: {layers: [1]}, ffn: moe}
"""


def test_each_stack_is_planned(write_spec):
    m = load_model(str(write_spec(TINY)))
    assert [lp.index for lp in m.encoder] == [0, 1, 2] and [lp.index for lp in m.layers] == [0, 1]
    assert [type(lp.ffn) for lp in m.encoder] == [DenseFFNPlan, MoEPlan, DenseFFNPlan]
    assert [type(lp.ffn) for lp in m.layers] == [DenseFFNPlan, MoEPlan]
    assert all(lp.cross_attention is None for lp in m.encoder)
    for lp in m.layers:  # the attention section's shape, over the source: no window, no rotation
        c = lp.cross_attention
        assert c is not None and (c.n_heads, c.n_kv_heads, c.head_dim, c.window, c.rope) == (2, 2, 4, None, False)
    assert (m.positions.kind, m.positions.n_buckets, m.positions.max_distance) == ("relative_bucket", 8, 16)
    assert m.expert_capacity == 4


def test_the_plan_round_trips_through_plain_data(write_spec):
    m = load_model(str(write_spec(TINY)))
    assert plan_from_dict(m.to_dict()) == m


@pytest.mark.parametrize("path", shipped_specs(), ids=lambda p: p.stem)
def test_decoder_only_specs_plan_no_encoder(path):
    if "encoder:" in path.read_text():
        pytest.skip("an encoder-decoder spec")
    m = load_model(str(path))
    assert m.encoder == () and m.expert_capacity is None
    assert all(lp.cross_attention is None for lp in m.layers)


def validate(write_spec, text: str) -> tuple[int, str]:
    res = CliRunner().invoke(cli, ["validate", str(write_spec(text))])
    return res.exit_code, res.output


@pytest.mark.parametrize(
    "old, new, where, message",
    [
        ("n_buckets: 8, ", "", "model.positions", "relative_bucket positions need n_buckets"),
        ("kind: relative_bucket", "kind: none", "model.positions.n_buckets", "only meaningful with kind"),
        ("drop_policy: position", "drop_policy: probs", "moe.drop_policy", "keeps the earliest tokens: position"),
        ("drop_policy: position", "drop_policy: position, capacity_factor: 1.0", "moe.capacity_factor", "give one"),
        ("select: {layers: [1]}", "select: {layers: [5]}", "encoder.layers.overrides[0].select", "layer 5 does not"),
        (
            "    default: {ffn: dense}\n    overrides",
            "    default: {ffn: none}\n    overrides",
            "encoder.layers.default.ffn",
            "every encoder layer has an FFN",
        ),
        (
            "    default: {ffn: dense}\n    overrides",
            "    default: {ffn: dense, attention: {window: 4}}\n    overrides",
            "encoder.layers.default.attention",
            "encoder self-attention",
        ),
        (
            "attention: {n_heads: 2, head_dim: 4, scale: 1.0}",
            "attention: {n_heads: 2, head_dim: 4, scale: 1.0}\nmtp: {n_layers: 1, ffn: dense}",
            "mtp",
            "multi-token prediction",
        ),
    ],
)
def test_each_problem_is_named_where_it_is_written(write_spec, old, new, where, message):
    assert old in TINY
    code, out = validate(write_spec, TINY.replace(old, new))
    assert code == 2 and f"{where}: " in out and message in out, out
    assert "spec.yaml:" in out  # located in the file


def test_relative_bucket_positions_need_an_encoder(write_spec):
    decoder_only = TINY.split("encoder:")[0]
    code, out = validate(write_spec, decoder_only)
    assert code == 2 and "model.positions.kind: relative_bucket positions are T5's: they need an encoder" in out


def test_encoder_moe_layers_need_the_moe_section_and_use_it(write_spec):
    text = TINY.replace(
        "moe: {n_experts: 4, d_ff: 32, activation: relu, router: {top_k: 1}, drop_policy: position}\n", ""
    )
    text = text.replace("    - {select: [1], ffn: moe}\n", "    - {select: [1], ffn: dense}\n")
    code, out = validate(write_spec, text)
    assert code == 2 and "some layers use an MoE FFN but the spec has no moe section" in out, out
    assert "encoder.expert_capacity: needs a moe section" in out


def test_the_encoder_section_is_strict(write_spec):
    code, out = validate(write_spec, TINY.replace("  n_layers: 3\n", "  n_layers: 3\n  n_heads: 4\n"))
    assert code == 2 and "encoder.n_heads" in out
    code, out = validate(write_spec, TINY.replace("  n_layers: 3\n", "  n_layers: 0\n"))
    assert code == 2 and "encoder.n_layers" in out


def test_a_section_only_the_encoder_uses_is_not_warned_unused(write_spec):
    decoder_dense = TINY.replace("    - {select: [1], ffn: moe}\n", "    - {select: [1], ffn: dense}\n")
    res = CliRunner().invoke(cli, ["validate", str(write_spec(decoder_dense))])
    assert res.exit_code == 0 and "no layer uses this moe section" not in res.output, res.output
