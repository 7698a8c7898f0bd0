"""model.hyper_connections (moec/spec/hyper.py): what it resolves to, that the plan survives spec.resolved.yaml's
plain data, and the one located error each misuse gives through the CLI (exit 2)."""

from __future__ import annotations

from click.testing import CliRunner

from moec.cli import cli
from moec.spec import load_spec, plan_from_dict, resolve
from moec.spec.hyper import HyperConnectionsPlan

SPEC = """\
moec: 1
name: t
model:
  vocab_size: 100
  d_model: 64
  n_layers: 2
  max_seq_len: 64
  hyper_connections: {n_streams: 4, residual: identity, post_scale: 1.5, post_eps: true, head: mean}
attention: {n_heads: 4, n_kv_heads: 2}
ffn: {d_ff: 32}
"""


def test_the_section_resolves_to_its_plan_and_round_trips_through_plain_data() -> None:
    plan = resolve(load_spec("t.yaml", text=SPEC))
    want = HyperConnectionsPlan(4, "identity", 20, 1.5, True, 1e-6, "mean")
    assert plan.hyper_connections == want
    assert (want.n_coefficients, want.n_scales) == (8, 2)
    assert plan_from_dict(plan.to_dict()) == plan


def validate(tmp_path, text: str) -> list[str]:  # noqa: ANN001
    (tmp_path / "t.yaml").write_text(text)
    result = CliRunner().invoke(cli, ["validate", str(tmp_path / "t.yaml")])
    assert result.exit_code == 2 and "Traceback" not in result.output
    return [line for line in result.output.splitlines() if line.startswith("error:")]


def test_each_misuse_is_one_located_error(tmp_path) -> None:  # noqa: ANN001
    text = SPEC.replace("head: mean}", "head: mean, sinkhorn_iters: 3}").replace(
        "  max_seq_len: 64\n", "  max_seq_len: 64\n  norm: {placement: post}\n"
    )
    lines = validate(tmp_path, text)
    assert len(lines) == 2, lines
    messages = {line.split(" ", 2)[2] for line in lines}
    assert messages == {
        "model.hyper_connections.sinkhorn_iters: only meaningful with residual: sinkhorn",
        "model.hyper_connections: hyper-connections wrap pre-norm sublayers; model.norm.placement is post",
    }
    assert all(":9:" in line for line in lines)  # the section's line: both point into it


def test_too_few_streams_and_mtp_are_refused(tmp_path) -> None:  # noqa: ANN001
    text = SPEC.replace("n_streams: 4", "n_streams: 1")
    (line,) = validate(tmp_path, text)
    assert "model.hyper_connections.n_streams" in line and "greater than or equal to 2" in line
    mtp = SPEC.replace("n_streams: 4", "n_streams: 2") + "mtp: {n_layers: 1, ffn: dense}\n"
    (line,) = validate(tmp_path, mtp)
    assert line.endswith(
        "model.hyper_connections: hyper-connections with multi-token prediction (mtp) are not supported"
    )
