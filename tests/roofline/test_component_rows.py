"""moec roofline's rows for this session's components: model.norm_gate (A.X-K2's gated norms: their matmuls, which
the analyzer counts in its "norms" part, are in the step; plain norms still add no row) and hyper-connections."""

from __future__ import annotations

import pytest

from moec.analyze.counts import layer_parts
from moec.plan.accelerators import ACCELERATORS
from moec.roofline.model import Workload, roofline
from moec.spec import load_spec, resolve

SPEC = """
name: gated
model: {vocab_size: 64, d_model: 32, n_layers: 2, max_seq_len: 32, norm_gate: {rank: 4, sites: [mixer, moe_ffn]}}
attention: {n_heads: 4}
ffn: {d_ff: 24}
moe: {n_experts: 4, d_ff: 8, router: {top_k: 2}}
layers: {default: {ffn: moe}, overrides: [{select: [0], ffn: dense}]}
"""
PLAIN = SPEC.replace(", norm_gate: {rank: 4, sites: [mixer, moe_ffn]}", "")
STEP = Workload("decode", batch=4, seq=16)


def _costs(text: str) -> dict:
    plan = resolve(load_spec("gated.yaml", text=text))
    return {c.name: c for c in roofline(plan, ACCELERATORS["h100"], "h100", STEP).costs}


def test_the_norm_gates_flops_are_in_the_step_and_plain_norms_add_no_row():
    # by hand: layer 0 gates its attention norm (dense FFN: moe_ffn does not apply), layer 1 both; a gate is
    # fc1 (32→4) and fc2 (4→32): 2·(2·32·4) = 512 FLOPs a token; 3 gates, 4 tokens
    gated, plain = _costs(SPEC), _costs(PLAIN)
    assert "norms" not in plain
    assert gated["norms"].flops == 4 * 3 * 512
    plan = resolve(load_spec("gated.yaml", text=SPEC))
    assert gated["norms"].flops == 4 * sum(layer_parts(lp, plan)["norms"].flops for lp in plan.layers)
    assert {k: c.flops for k, c in gated.items() if k != "norms"} == {k: c.flops for k, c in plain.items()}


HYPER = PLAIN.replace("max_seq_len: 32}", "max_seq_len: 32, hyper_connections: {n_streams: 4}}")


@pytest.mark.parametrize(
    ("text", "label"), [(SPEC, "norm gates"), (HYPER, "hyper-connections")], ids=["norm_gate", "hyper"]
)
def test_moec_roofline_prints_and_plots_every_component_it_counts(tmp_path, text, label):
    """Every row the model tallies has its label: the table, JSON and plot of a model with norm gates or
    hyper-connections run (exit 0) and name the row."""
    from click.testing import CliRunner

    from moec.cli import cli

    spec = tmp_path / "spec.yaml"
    spec.write_text(text)
    outputs = []
    for args in ([], ["--format", "json"], ["--plot", str(tmp_path / "r.png")]):
        res = CliRunner(env={"COLUMNS": "80"}).invoke(cli, ["roofline", str(spec), *args])
        assert res.exit_code == 0, res.output
        outputs.append(res.output)
    assert label in outputs[0]
