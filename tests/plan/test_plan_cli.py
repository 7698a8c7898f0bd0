"""`moec plan` through the CLI: the acceptance figures, every output format, clean errors, no torch."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from moec.cli import cli


def run(*args: str, columns: int = 80):
    return CliRunner(env={"COLUMNS": str(columns)}).invoke(cli, ["plan", *args])


def test_mixtral_at_ep_8_reports_28672_bytes_per_token_per_moe_layer():
    r = run("specs/mixtral-8x7b.yaml", "--ep", "8", "--gpus", "8", "--gpu", "h200", "--format", "json")
    assert r.exit_code == 0, r.output
    d = json.loads(r.output)
    assert d["schema"] == "moec.plan/1" and d["conventions"]["a2a"].startswith("2·k·d·b·(ep−1)/ep")
    assert d["a2a_bytes_per_token_per_moe_layer"] == 28_672
    assert d["layout"] == {"dp_shard": 8, "ep": 8, "tp": 1, "pp": 1} and d["efsdp"] == 1
    stage = d["stages"][d["busiest_stage"]]
    assert stage["params"]["experts"] == 45_097_156_608 // 8
    assert stage["memory"]["training_peak_bytes"] == sum(
        stage["memory"][k]
        for k in ("param_bytes", "grad_bytes", "optimizer_bytes", "fsdp_transient_bytes", "activation_bytes")
    )


def test_deepseek_v3_at_ep_64_reports_225792():
    r = run("deepseek-v3", "--ep", "64", "--gpus", "64", "--format", "json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["a2a_bytes_per_token_per_moe_layer"] == 225_792


def test_table_fits_80_columns_without_cutting_a_figure():
    for args in (("mixtral-8x7b", "--ep", "8"), ("mixtral-8x7b", "--gpus", "16")):
        r = run(*args)
        assert r.exit_code == 0, r.output
        assert max(len(line) for line in r.output.splitlines()) <= 80
        assert "…" not in r.output
    fixed = run("mixtral-8x7b", "--ep", "8").output
    assert "28,672" in fixed and "5,637,144,576" in fixed and "dp_shard 8 · ep 8 · tp 1 · pp 1" in fixed
    ranked = run("mixtral-8x7b", "--gpus", "16").output
    assert "dp·ep·tp·pp" in ranked and "tok/s/GPU" in ranked


def test_search_output_ranks_and_limits_to_top():
    r = run("mixtral-8x7b", "--gpus", "16", "--gpu", "h100", "--top", "3", "--format", "json")
    ranked = json.loads(r.output)["ranked"]
    assert len(ranked) == 3 and all(p["fits"] for p in ranked)
    rates = [p["estimate"]["tokens_per_s_per_gpu"] for p in ranked]
    assert rates == sorted(rates, reverse=True)


def test_markdown_holds_the_ranking_and_the_detail():
    r = run("mixtral-8x7b", "--gpus", "16", "--top", "2", "--format", "md")
    assert r.exit_code == 0, r.output
    assert r.output.startswith("<!-- moec.plan/1 -->")
    assert "| # | dp·ep·tp·pp | peak/rank | fits | comm/step | bubble | tok/s/GPU |" in r.output
    assert "| a2a B/token/MoE layer (fwd) | 28,672 |" in r.output
    assert len([line for line in r.output.splitlines() if line.startswith("| 1 |") or line.startswith("| 2 |")]) == 2


def test_when_nothing_fits_the_table_says_so():
    r = run("mixtral-8x7b", "--gpus", "8", "--gpu", "h100")
    assert r.exit_code == 0 and "no layout fits" in r.output


def test_an_invalid_layout_gives_one_error_per_problem_and_exit_2():
    r = run("mixtral-8x7b", "--ep", "3", "--tp", "3", "--pp", "40", "--gpus", "16")
    assert r.exit_code == 2
    lines = r.output.strip().splitlines()
    assert lines == [
        "error: mixtral-8x7b --ep: n_experts = 8 does not divide by ep = 3",
        "error: mixtral-8x7b --gpus: 16 ranks do not divide by tp·pp = 3·40 = 120",
        "error: mixtral-8x7b --pp: pp = 40 exceeds the 32 layers (every stage needs a layer)",
        "error: mixtral-8x7b --tp: n_heads = 32 does not divide by tp = 3",
        "error: mixtral-8x7b --tp: n_kv_heads = 8 does not divide by tp = 3",
        "5 problems found",
    ]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("textbook-dense", "--ep", "2"), "error: textbook-dense --ep: ep = 2 needs MoE layers"),
        (("mixtral-8x7b", "--dp-shard", "3"), "error: mixtral-8x7b --dp-shard: dp_shard·tp·pp = 3·1·1 = 3, not the 8"),
        (("mixtral-8x7b", "--ep", "0"), "Invalid value for '--ep'"),
        (("mixtral-8x7b", "--gpu", "tpu"), "Invalid value for '--gpu'"),
        (("no-such-spec",), "error: "),
    ],
)
def test_bad_input_exits_2_without_a_traceback(args, message):
    r = run(*args)
    assert r.exit_code == 2 and message in r.output and "Traceback" not in r.output


@pytest.mark.parametrize(
    ("spec", "named"),
    [
        ("deepseek-v3.2-exp", "attention.indexer"),
        ("longcat-flash", "model.block shortcut_moe_pair, moe.n_zero_experts"),
    ],
)
def test_block_features_outside_the_inventory_are_refused_by_name(spec: str, named: str):
    """The planner lists every tensor by name and shape; features whose tensors it does not list yet are refused,
    one line, exit 2, before any figure."""
    from click.testing import CliRunner

    from moec.cli import cli

    res = CliRunner().invoke(cli, ["plan", spec])
    assert res.exit_code == 2 and "Traceback" not in res.output
    assert res.output.strip() == (
        f"error: moec plan does not support {named} yet (the planner's per-tensor sharding and traffic): {spec} uses it"
    )


def test_a_feature_no_refusal_names_is_still_caught_by_the_inventory_check(monkeypatch):
    """With the named refusals switched off, a model whose tensors the planner does not list (the indexer's) is
    refused because its tensor list and the analyzer's parameters differ, naming the component: never planned."""
    import moec.commands.plan as plan_command

    monkeypatch.setattr(plan_command, "refuse_block_features", lambda *a: None)
    res = run("deepseek-v3.2-exp", "--ep", "8")
    assert res.exit_code == 2 and "Traceback" not in res.output
    assert "the planner's tensor list disagrees with the analyzer's parameters (attention " in res.output


@pytest.mark.parametrize(
    ("spec", "sets", "named"),
    [
        ("deepseek-v3", ["attention.rope_key_norm=true"], "attention.rope_key_norm"),
        ("deepseek-v3", ["attention.query_gate=true"], "attention.query_gate"),
        ("textbook-moe", ["model.norm_gate.rank=4", "model.norm_gate.sites=[mixer]"], "model.norm_gate"),
    ],
)
def test_issue_13s_unlisted_block_features_are_refused_by_name(spec: str, sets: list[str], named: str):
    """Dots3's rotary-key norm and A.X-K2's query gate and norm gates have tensors the planner does not list: each
    is refused by its own name (moec/commands/common.py), not only by the inventory check's component sums."""
    res = run(spec, *(arg for s in sets for arg in ("--set", s)))
    assert res.exit_code == 2 and "Traceback" not in res.output
    assert res.output.strip() == (
        f"error: moec plan does not support {named} yet (the planner's per-tensor sharding and traffic): {spec} uses it"
    )
