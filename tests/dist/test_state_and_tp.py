"""A meta-built model loaded by broadcast from rank 0 exports exactly the single-process state dict, under
EP×FSDP, TP and TP×FSDP; tensor-parallel attention (GQA with a per-head qk-norm, and MLA) and dense FFNs
(fused [gate | up] in rank order) equal the unsharded model in logits and in one SGD step, and so does the
generated model.py of the same specs through its own parallelize() (TP × FSDP), against moec.nn's single process."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.distributed


@pytest.fixture(scope="module")
def ranks(dist_case):
    return dist_case("state")


@pytest.mark.parametrize("layout", ("round_trip_ep_fsdp", "round_trip_tp", "round_trip_tp_fsdp"))
def test_meta_build_broadcast_load_and_export_round_trip(ranks, layout):
    rank0 = ranks[0][layout]
    assert rank0["names_equal"]
    assert rank0["max_diff"] == 0.0
    assert ranks[1][layout]["exported"] == 0  # the full state dict lands on rank 0 only


@pytest.mark.parametrize("attention", ("tp_gqa", "tp_mla", "generated_tp_gqa", "generated_tp_mla"))
def test_tensor_parallel_equals_the_unsharded_model(ranks, attention):
    for result in ranks:
        run = result[attention]
        assert run["logits_diff"] <= 1e-5
        assert run["loss_diff"] <= 1e-6
        assert run["local_q_rows"] * 2 == run["full_q_rows"]  # each rank computes half the heads
        assert run["local_gate_up_is_rank_columns"]
    assert ranks[0][attention]["step_param_diff"] <= 1e-5
    assert ranks[0][attention]["names_equal"]
