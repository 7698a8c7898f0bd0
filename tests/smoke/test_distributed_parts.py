"""The single-process parts of a distributed smoke-run: the all-to-all bytes a routing implies, the per-rank
memory it is fitted to, how the launcher turns the workers' exits into one error and one exit code, and the
refusals that come before any process is started."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from moec.cli import cli
from moec.plan import Layout
from moec.smoke.dist_plan import a2a_sent_on_routing, rank_run_memory
from moec.smoke.launch import _verdict
from moec.spec import load_spec, resolve

SPEC = """
moec: 1
name: parts
model: {vocab_size: 128, d_model: 32, n_layers: 2, max_seq_len: 64}
attention: {n_heads: 4, n_kv_heads: 2}
ffn: {d_ff: 64}
moe: {n_experts: 4, d_ff: 32, router: {top_k: 2}}
layers: {default: {ffn: moe}}
"""


def test_a2a_bytes_on_the_routing_by_hand():
    # 4 ranks, ep = 2: EP groups {0, 1} and {2, 3}; EP rank 0 holds experts 0-1, EP rank 1 experts 2-3.
    # loads[rank][layer][expert]: kept slots of that rank's tokens
    loads = [
        [[3, 1, 2, 0]],  # rank 0: 2 slots to rank 1
        [[0, 1, 4, 5]],  # rank 1: 1 slot to rank 0
        [[7, 0, 0, 0]],  # rank 2: 0 slots to rank 3
        [[2, 2, 9, 9]],  # rank 3: 4 slots to rank 2
    ]
    # a rank sends its own rows out (dispatch) and its peer's rows back (combine); 10 bytes per row
    assert a2a_sent_on_routing(loads, 0, 2, 10) == (2 + 1) * 10
    assert a2a_sent_on_routing(loads, 1, 2, 10) == (1 + 2) * 10
    assert a2a_sent_on_routing(loads, 2, 2, 10) == (0 + 4) * 10
    assert a2a_sent_on_routing(loads, 3, 2, 10) == (4 + 0) * 10
    assert a2a_sent_on_routing(loads, 3, 1, 10) == 0  # ep = 1: every expert is local


def test_a2a_bytes_add_up_over_layers_and_four_ep_ranks():
    one = [[1, 0, 0, 0]]  # every rank sends one slot to expert 0, on EP rank 0
    loads = [one + one for _ in range(4)]  # two layers
    # rank 0 receives one row from each of 3 peers per layer; each of them sends one row out
    assert a2a_sent_on_routing(loads, 0, 4, 1) == 2 * 3
    assert a2a_sent_on_routing(loads, 2, 4, 1) == 2 * 1


def test_rank_memory_counts_each_ranks_shards_by_hand():
    plan = resolve(load_spec("parts.yaml", text=SPEC))
    parts = dict(rank_run_memory(plan, Layout(ep=2).resolved(2), batch=2, seq=16, dtype="fp32").parts)
    # experts: 2 layers × 4 × (32·64 + 32·32) = 24,576, halved by ep; the rest halved by FSDP:
    # embedding and head 2·128·32, final norm 32, per layer q, k, v, o 32·(32 + 16 + 16 + 32), 2 norms, router 4·32
    other = 2 * 128 * 32 + 32 + 2 * (32 * 96 + 2 * 32 + 4 * 32)
    held = 24_576 // 2 + other // 2
    assert (parts["weights"], parts["gradients"], parts["optimizer"]) == (4 * held, 4 * held, 8 * held)
    assert parts["FSDP transient"] > 0 and parts["activations"] > 0


def _status(code: int, stderr: str = "") -> dict:
    return {"code": code, "stderr": stderr}


def test_launcher_exit_codes_and_error_lines(capsys):
    assert _verdict(0, {0: _status(0), 1: _status(0)}, 2, "") == 0
    # a failed smoke-run: rank 0 printed the report with its failures; nothing more
    assert _verdict(1, {0: _status(1), 1: _status(1)}, 2, "") == 1
    assert capsys.readouterr().err == ""
    # bad input on every rank: rank 0's lines, once
    assert _verdict(1, {0: _status(2, "error: bad\n"), 1: _status(2, "error: bad\n")}, 2, "") == 2
    assert capsys.readouterr().err == "error: bad\n"
    # one rank alone failed: its line, naming it
    assert _verdict(1, {0: _status(0), 1: _status(70, "error: internal error in moec on rank 1 (x)\n")}, 2, "") == 70
    assert capsys.readouterr().err == "error: rank 1: internal error in moec on rank 1 (x)\n"


@pytest.mark.parametrize("returncode, statuses", [(1, {}), (-9, {0: _status(0)}), (0, {0: _status(0)})])
def test_a_worker_that_died_without_a_status_is_one_error_line(capsys, returncode, statuses):
    log = "Traceback (most recent call last):\n  ...\nChildFailedError: worker 1 got signal 9\n"
    code = _verdict(returncode, statuses, 2, log)
    assert code != 0
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("error: a smoke-run worker failed") and "signal 9" in err[0]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--ep", "2"], "need several processes"),
        (["--tp", "2"], "need several processes"),
        (["--no-fsdp"], "need several processes"),
        (["--nproc", "2", "--device", "cuda:1"], "cuda:1"),  # no such device, or an index with several processes
        (["--nproc", "2", "--device", "tpu"], "unknown device"),
    ],
)
def test_refused_before_any_process_starts(args, message):
    r = CliRunner().invoke(cli, ["smoke-run", "textbook-moe", *args])
    assert r.exit_code == 2, r.output
    assert message in r.output and "Traceback" not in r.output
