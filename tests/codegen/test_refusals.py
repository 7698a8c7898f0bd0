"""What a spec can say but the generated model.py does not render yet (moec.codegen.features._refuse_unsupported) is
refused naming the feature, and `moec build` turns that into one error line and exit code 2, with no traceback and
no output folder. Each spec here loads and resolves (moec.nn builds it); only codegen refuses it."""

from __future__ import annotations

import re

import pytest
from click.testing import CliRunner

from moec.cli import cli
from moec.codegen import render_model_source
from tests.codegen.test_codegen import plan_of, variant
from tests.codegen.test_features_13 import INDEXED
from tests.tiny_specs import TINY_DEEPSEEK_V3

LONGROPE = (
    "positions: {kind: rope, scaling: {kind: longrope, factor: 4.0, original_max_seq_len: 16, "
    "short_factor: [1.0, 1.5, 2.0, 2.5], long_factor: [2.0, 3.0, 4.0, 5.0], short_mscale: 1.0, long_mscale: 1.2}}"
)
MLA_LAYER = "ffn: dense}, {select: [1], attention: {"  # TINY_DEEPSEEK_V3's override list, one more for layer 1

REFUSED = {
    "a layer's own attention sinks (layers.*.attention.sinks) with MLA": TINY_DEEPSEEK_V3.replace(
        "ffn: dense}]", MLA_LAYER + "sinks: true}}]"
    ),
    "per-layer attention shapes": TINY_DEEPSEEK_V3.replace("ffn: dense}]", MLA_LAYER + "n_heads: 2}}]"),
    "attention.output_gate_fn softplus with MLA": TINY_DEEPSEEK_V3.replace(
        "v_head_dim: 8}", "v_head_dim: 8, output_gate: head, output_gate_fn: softplus}"
    ),
    "attention.query_gate": TINY_DEEPSEEK_V3.replace("v_head_dim: 8}", "v_head_dim: 8, query_gate: true}"),
    "attention.indexer.rope_dims 'last'": INDEXED.replace("top_k: 4}", "top_k: 4, rope_dims: last}"),
    "model.positions.scaling kind 'longrope' with a layer's own rotary_dim": variant(
        model=LONGROPE, extra="layers: {overrides: [{select: [1], attention: {rotary_dim: 8}}]}\n"
    ),
    "model.depth_scaled_residual in a hybrid model": variant(
        model="positions: {kind: rope}, depth_scaled_residual: true",
        extra="layers: {overrides: [{select: [1], ffn: none}]}\n",
    ),
    "model.norm.placement 'sandwich' or 'parallel' in a hybrid model": variant(
        model="positions: {kind: rope}, norm: {placement: sandwich}",
        extra="layers: {overrides: [{select: [1], ffn: none}]}\n",
    ),
    "moe.output_norm in a hybrid model": variant(
        moe=True, moex="output_norm: true", overrides="{select: [1], ffn: none}"
    ),
    "model.norm_gate": variant(model="positions: {kind: rope}, norm_gate: {rank: 4, sites: [mixer]}"),
}


@pytest.mark.parametrize("feature", list(REFUSED))
def test_a_feature_codegen_does_not_render_is_refused_by_name(feature, tmp_path):
    plan = plan_of(REFUSED[feature])  # the spec is valid: only the generator refuses it
    with pytest.raises(ValueError, match=f"^codegen does not support {re.escape(feature)}"):
        render_model_source(plan)
    (tmp_path / "tiny.yaml").write_text(REFUSED[feature])
    res = CliRunner().invoke(cli, ["build", str(tmp_path / "tiny.yaml"), "-o", str(tmp_path / "out")])
    assert res.exit_code == 2, res.output
    assert res.output.startswith(f"error: codegen does not support {feature}") and "Traceback" not in res.output
    assert not (tmp_path / "out").exists()
