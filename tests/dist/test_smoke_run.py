"""`moec smoke-run --nproc 2` through the command line (torchrun, gloo on 2 CPU processes): the report's layout,
its step-0 loss against a single-process smoke-run of the same spec and data, the all-to-all bytes the
dispatchers counted against the bytes the routing implies, each rank's parameters against moec.plan and a hand
count, the expert loads against the slots routed; a bad layout is one error line and exit code 2."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from moec.cli import cli

pytestmark = pytest.mark.distributed
TIMEOUT_S = 120
ROOT = Path(__file__).resolve().parents[2]

# Already CPU-sized: the tiny scale keeps every width (d_model 32 ≤ 64), so the parameters can be counted by hand.
# The MTP module's final norm runs outside its forward, which FSDP units must allow for
SPEC = """
moec: 1
name: dist-smoke
model: {vocab_size: 128, d_model: 32, n_layers: 2, max_seq_len: 64}
attention: {n_heads: 4, n_kv_heads: 2}
ffn: {d_ff: 64}
moe:
  n_experts: 4
  d_ff: 32
  router: {top_k: 2}
  balance: {load_balance_coeff: 0.01}
layers:
  default: {ffn: moe}
mtp: {n_layers: 1}
"""
E, K, D, F, MOE_LAYERS = 4, 2, 32, 32, 3  # 2 layers and the MTP block
STEPS, BATCH, SEQ = 6, 4, 16
RUN = ["--device", "cpu", "--steps", str(STEPS), "--batch", str(BATCH), "--seq", str(SEQ), "--format", "json"]


def _moec(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")} | (
        env or {}
    )
    cmd = [sys.executable, "-m", "moec", "smoke-run", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT_S, env=env, cwd=ROOT, check=False)


@pytest.fixture(scope="module")
def spec(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("dist-smoke") / "dist-smoke.yaml"
    path.write_text(SPEC)
    return str(path)


@pytest.fixture(scope="module")
def single(spec) -> dict:
    r = CliRunner().invoke(cli, ["smoke-run", spec, *RUN])
    assert r.exit_code == 0, r.output
    return json.loads(r.output)


@pytest.fixture(scope="module")
def ep2(spec) -> dict:
    done = _moec(spec, *RUN, "--nproc", "2", "--ep", "2")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)  # rank 0's report only: rank 1 prints nothing


def test_the_report_names_the_world_and_the_layout(ep2):
    d = ep2["distributed"]
    layout = {k: d[k] for k in ("world_size", "backend", "dp_shard", "ep", "tp", "efsdp", "fsdp")}
    assert layout == {"world_size": 2, "backend": "gloo", "dp_shard": 2, "ep": 2, "tp": 1, "efsdp": 1, "fsdp": True}
    assert [r["rank"] for r in d["ranks"]] == [0, 1]
    assert ep2["ok"] and ep2["loss_fell"]


def test_step0_loss_equals_a_single_process_smoke_run(ep2, single):
    # the same seed gives the same weights and batches; dropless routing makes the cross-entropy of the global
    # batch the same whether it is computed on one process or as the mean of the two ranks' halves
    assert abs(ep2["losses"][0] - single["losses"][0]) <= 1e-5
    step0 = ep2["distributed"]["step0"]
    assert step0["ok"] and step0["rel_diff"] <= 1e-5
    assert ep2["steps"] == single["steps"] == STEPS


def test_counted_all_to_all_bytes_equal_the_bytes_the_routing_implies(ep2):
    d = ep2["distributed"]
    for r in d["ranks"]:
        assert r["a2a_sent_bytes"] == r["a2a_sent_bytes_on_routing"] > 0
        # the count exchange: E/ep int64 counts to the one other rank, per MoE layer per step
        assert r["a2a_count_bytes"] == STEPS * MOE_LAYERS * (E // 2) * 8
    # the planner's uniform-routing mean, 2·k·d·b·(ep−1)/ep per token per MoE layer, forward and backward:
    # by hand 2 · (2·2·32·4·1/2) · (2·16 tokens) · 3 MoE layers = 49,152 B per step per rank
    assert d["planned_a2a_bytes_per_step"] == 49_152
    mean = sum(2 * r["a2a_sent_bytes"] / STEPS for r in d["ranks"]) / 2
    assert 0.5 * 49_152 < mean < 1.5 * 49_152  # this routing is near uniform


def test_each_rank_holds_its_planned_and_hand_counted_parameters(ep2):
    experts_per_rank = MOE_LAYERS * E * (D * 2 * F + F * D) // 2  # swiglu: (E, d, 2f) and (E, f, d), split by ep
    for r in ep2["distributed"]["ranks"]:
        assert r["params_experts"] == r["planned_params_experts"] == experts_per_rank
        assert r["params_other"] == r["planned_params_other"]
        assert r["tokens_per_s"] > 0 and r["peak_memory_bytes"] is not None


def test_expert_loads_are_summed_over_both_ranks(ep2):
    # every routing slot of every step of the whole batch is on some expert (dropless)
    for layer in ep2["layers"]:
        assert sum(layer["tokens_per_expert"]) == STEPS * BATCH * SEQ * K
        assert layer["dropped"] == 0


def test_tensor_parallel_run_equals_one_process_at_step_0(spec, single):
    done = _moec(spec, *RUN, "--nproc", "2", "--tp", "2")
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    d = out["distributed"]
    assert (d["dp_shard"], d["tp"], d["ep"]) == (1, 2, 1)
    assert abs(out["losses"][0] - single["losses"][0]) <= 1e-5
    assert d["step0"]["ok"]
    # both TP ranks compute the whole batch: the loads count each slot once
    assert all(sum(layer["tokens_per_expert"]) == STEPS * BATCH * SEQ * K for layer in out["layers"])
    assert all(r["a2a_sent_bytes"] == 0 for r in d["ranks"])


def test_a_layout_the_model_refuses_is_one_error_line_and_exit_2(spec):
    done = _moec(spec, *RUN, "--nproc", "2", "--ep", "3")
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.splitlines() == [
        "error: n_experts = 4 does not divide by ep = 3; dp_shard·tp = 2·1 = 2 does not divide by ep = 3 "
        "(EP borrows its ranks from the FSDP and TP ranks)"
    ]


def test_a_run_that_does_not_fit_each_ranks_share_is_refused_before_allocating(spec):
    # 2 MB for the host, 1 MB per process: below the runtime allowance alone; every rank refuses alike
    done = _moec(spec, *RUN, "--nproc", "2", "--ep", "2", env={"MOEC_MEMORY_LIMIT": "2000000"})
    assert done.returncode == 2 and done.stdout == ""
    [line] = done.stderr.splitlines()
    assert line.startswith("error: smoke-run of dist-smoke-scaled needs about ")
    assert "per rank" in line and "but each of the 2 ranks (cpu) has 0.0 GiB free" in line
