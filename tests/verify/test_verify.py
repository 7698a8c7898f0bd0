"""The analyzer's forward FLOPs equal torch's FlopCounterMode on scaled-down copies of every shipped
spec, exactly (with formulas registered for grouped matmul and CPU attention)."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from moec.cli import cli
from moec.spec import load_model
from moec.spec.paths import shipped_specs
from moec.verify import verify


@pytest.mark.parametrize("path", shipped_specs(), ids=lambda p: p.stem)
def test_measured_forward_flops_equal_the_analyzer(path):
    r = verify(load_model(str(path)), seq=16, batch=2)
    assert not r.unformulated_ops, r.unformulated_ops
    assert r.measured == r.expected, (r.by_op, r.adjustments)
    assert r.measured > 0


def test_verify_counts_what_flopcountermode_alone_misses():
    # CPU SDPA has no formula in stock FlopCounterMode (pytorch#195460): ours must be what counts it
    r = verify(load_model("textbook-dense"), seq=16)
    assert any("scaled_dot_product" in op for op in r.by_op), r.by_op


def test_cli_verify_reports_ok():
    res = CliRunner().invoke(cli, ["analyze", "--verify", "mixtral-8x7b"])
    assert res.exit_code == 0, res.output
    assert res.output.startswith("ok mixtral-8x7b-scaled")
