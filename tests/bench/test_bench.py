"""`moec bench` at a tiny shape: every JSON field is there, the numbers are sane, errors vs the oracle tiny."""

from __future__ import annotations

import json
import statistics

import pytest
from click.testing import CliRunner

from moec.bench.moe_bench import BenchShape, Result, shape_from_spec, useful_flops
from moec.commands.bench import bench

RESULT_FIELDS = set(Result.__dataclass_fields__)


def invoke(*args: str) -> dict:
    res = CliRunner().invoke(bench, [*args, "--format", "json"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    return json.loads(res.output)


@pytest.mark.parametrize("backward", [False, True], ids=["fwd", "fwd+bwd"])
def test_bench_json_has_every_field_and_tiny_errors(backward: bool) -> None:
    args = ["--d-model", "32", "--d-ff", "48", "--experts", "4", "--top-k", "2", "--tokens", "8,24", "--repeats", "2"]
    args += ["--backends", "naive,reference,triton,hf_loop,all_experts,ideal_dense"] + (
        ["--backward"] if backward else []
    )
    report = invoke(*args)
    assert {"machine", "config", "conventions", "notes", "results"} <= set(report)
    assert report["config"]["d_model"] == 32 and report["config"]["backward"] is backward
    results = report["results"]
    assert [(r["tokens"], r["backend"]) for r in results][:6] == [
        (8, b) for b in ("naive", "reference", "triton", "hf_loop", "all_experts", "ideal_dense")
    ]
    flops = useful_flops(BenchShape(32, 48, 4, 2), 24, backward=backward)
    ok_ms = {(r["tokens"], r["backend"]): r["ms"] for r in results if r["status"] == "ok"}
    for r in results:
        assert set(r) == RESULT_FIELDS
        if r["backend"] == "triton" and report["machine"]["device"] == "cpu":
            assert r["status"] == "skipped" and "GPU" in r["note"]
            continue
        assert r["status"] == "ok", r
        # the derived columns from the raw timings, by their documented definitions
        assert len(r["ms_all"]) == 2 and r["ms"] == pytest.approx(statistics.median(r["ms_all"]), abs=1e-3)
        assert r["tflops"] == pytest.approx(r["flops"] / (r["ms"] * 1e-3) / 1e12)
        assert r["ratio_to_ideal"] == pytest.approx(r["ms"] / ok_ms[r["tokens"], "ideal_dense"])
        assert r["speedup_vs_naive"] == pytest.approx(ok_ms[r["tokens"], "naive"] / r["ms"])
        if r["tokens"] == 24:
            assert r["flops"] == flops
        if r["backend"] == "ideal_dense":
            continue
        assert r["max_abs_err"] < 1e-5, r
        if backward:
            assert r["max_rel_err_grad"] < 1e-5, r
        else:
            assert r["max_abs_err_grad"] is None


def test_flops_follow_the_analyzer_convention() -> None:
    swiglu = BenchShape(4096, 14336, 8, 2)  # Mixtral: k·6·d·f per token
    assert useful_flops(swiglu, 1, backward=False) == 2 * 6 * 4096 * 14336
    assert useful_flops(swiglu, 10, backward=True) == 3 * 10 * 2 * 6 * 4096 * 14336
    gelu = BenchShape(512, 2048, 8, 1, "gelu")  # two-matrix expert: 4·d·f
    assert useful_flops(gelu, 1, backward=False) == 4 * 512 * 2048


def test_spec_gives_the_shape_of_its_first_moe_layer() -> None:
    shape, note = shape_from_spec("deepseek-v3")
    assert shape == BenchShape(7168, 2048, 256, 8, "swiglu")
    assert "shared" in note
    assert shape_from_spec("switch-base-8")[0] == BenchShape(768, 3072, 8, 1, "relu")


def test_bench_with_a_spec_and_overrides_and_table_output() -> None:
    res = CliRunner().invoke(
        bench,
        [
            "textbook-moe",
            "--d-model",
            "16",
            "--d-ff",
            "24",
            "--tokens",
            "8",
            "--repeats",
            "1",
            "--backends",
            "naive,reference,ideal_dense",
        ],
        catch_exceptions=False,
    )
    assert res.exit_code == 0, res.output
    assert "d_model=16 d_ff=24 n_experts=8 top_k=1 gelu" in res.output
    assert "reference" in res.output and "/ ideal" in res.output


def test_unknown_backend_is_a_usage_error() -> None:
    res = CliRunner().invoke(bench, ["--backends", "naive,cutlass", "--tokens", "4"])
    assert res.exit_code == 2 and "cutlass" in res.output


@pytest.mark.parametrize("activation", ["gelu_tanh", "geglu_tanh", "swiglu_clamped"])
def test_every_activation_of_the_vocabulary_is_benched_against_the_oracle(activation: str) -> None:
    # --activation offers moec.vocab.ACTIVATIONS; these three were missing from a hand-written copy
    args = ["--d-model", "16", "--d-ff", "16", "--experts", "4", "--top-k", "2", "--tokens", "8", "--repeats", "1"]
    report = invoke(*args, "--activation", activation, "--backends", "naive,reference,all_experts")
    assert report["config"]["activation"] == activation
    for r in report["results"]:
        assert r["status"] == "ok" and r["max_abs_err"] < 1e-5, r


def test_a_spec_limit_is_benched_as_written(tmp_path) -> None:
    # a clamped activation's limit comes from the spec, not from the activation's default (7): every peer and the
    # oracle run the spec's 0.25, which bites at these sizes
    spec = tmp_path / "limited.yaml"
    spec.write_text(
        "extends: textbook-moe\n"
        "model: {d_model: 16}\n"
        "moe: {d_ff: 16, activation: swiglu_limit, activation_limit: 0.25}\n"
    )
    shape, _ = shape_from_spec(str(spec))
    assert (shape.activation, shape.activation_limit) == ("swiglu_limit", 0.25)
    args = ["--tokens", "8", "--repeats", "1", "--backends", "naive,reference,hf_loop,all_experts"]
    report = invoke(str(spec), *args)
    assert report["config"]["activation_limit"] == 0.25
    assert all(r["status"] == "ok" and r["max_abs_err"] < 1e-5 for r in report["results"]), report["results"]
    # --activation of another unit drops the spec's limit with the spec's activation
    assert invoke(str(spec), *args, "--activation", "swiglu")["config"]["activation_limit"] is None
    table = CliRunner().invoke(bench, [str(spec), *args, "--format", "table"], catch_exceptions=False).output
    assert "swiglu_limit (limit 0.25)" in table


@pytest.mark.parametrize("backend", ["naive", "reference", "hf_loop", "all_experts"])
def test_every_peer_clamps_at_the_given_limit(backend: str) -> None:
    # against the clamp written out: silu(min(gate, L)) · clamp(up, -L, L), one expert, weight 1
    import torch

    from moec.bench.peers import Weights, build_peer

    torch.manual_seed(0)
    x, w1, w2, limit = torch.randn(6, 8), torch.randn(1, 8, 12), torch.randn(1, 6, 8), 0.25
    peer = build_peer(backend, Weights(w1, w2, "swiglu_limit", limit=limit), backward=False)
    got = peer.fn(x, torch.zeros(6, 1, dtype=torch.long), torch.ones(6, 1))
    gate, up = (x @ w1[0]).split(6, dim=-1)
    expected = torch.nn.functional.silu(gate.clamp(max=limit)) * up.clamp(-limit, limit) @ w2[0]
    assert gate.max() > limit and up.abs().max() > limit  # the limit bites
    torch.testing.assert_close(got, expected)
