"""The expert-parallel dispatcher on 2 processes equals the single-process MoE layer, forward and backward,
and the all-to-all bytes it moves equal the formula of docs/scaling.md applied to the actual routing."""

from __future__ import annotations

import pytest

from moec.dist._cases_moe import VARIANTS

pytestmark = pytest.mark.distributed
TOL = 1e-5


@pytest.fixture(scope="module")
def ranks(dist_case):
    return dist_case("dispatcher")


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_dispatcher_equals_the_single_process_layer_forward_and_backward(ranks, variant):
    for rank, result in enumerate(ranks):
        diffs = result[variant]["max_diff"]
        assert {"y", "x_grad", "experts.w_gate_up", "experts.w_down", "router.weight"} <= set(diffs)
        bad = {name: d for name, d in diffs.items() if d > TOL}
        assert not bad, f"rank {rank}, {variant}: {bad}"


def test_capacity_drops_the_same_slots_as_the_single_process_layer(ranks):
    for result in ranks:
        assert result["capacity"]["dropped"] > 0
        assert result["capacity"]["dropped"] == result["capacity"]["dropped_ref"]


def test_starved_experts_get_zero_gradients_not_none(ranks):
    # the router bias keeps every slot off the last rank's experts: that rank receives no rows at all
    for result in ranks:
        assert result["starved"]["tokens_per_expert"][2:] == [0, 0]
    assert ranks[1]["starved"]["local_expert_grad_abs_sum"] == 0.0
    assert ranks[1]["starved"]["expert_grad_is_none"] is False
    assert ranks[0]["starved"]["local_expert_grad_abs_sum"] > 0


def test_biased_and_shared_experts_are_compared(ranks):
    names = set(ranks[0]["biased_shared"]["max_diff"])
    assert {"experts.b_gate_up", "experts.b_down", "shared.w_gate_up", "shared_gate.weight"} <= names


def _rows_between(ranks: list[dict]) -> list[list[int]]:
    """n[r][j]: kept slots of rank r's tokens whose expert lives on rank j (experts split evenly, in order)."""
    counts = [r["traffic"]["tokens_per_expert"] for r in ranks]
    per_rank = len(counts[0]) // len(ranks)
    return [[sum(c[j * per_rank : (j + 1) * per_rank]) for j in range(len(ranks))] for c in counts]


def test_all_to_all_bytes_equal_the_formula_on_the_actual_routing(ranks):
    # docs/scaling.md: a rank sends d·b·Σ_{j≠r}(n_{r→j} + n_{j→r}) per MoE forward (dispatch + combine);
    # a training step sends the same again backwards
    n = _rows_between(ranks)
    for r, result in enumerate(ranks):
        t = result["traffic"]
        expected = t["d_model"] * t["itemsize"] * sum(n[r][j] + n[j][r] for j in range(len(ranks)) if j != r)
        assert expected > 0
        assert t["measured_forward"] == expected
        assert t["counted_sent"] == expected
        assert t["counted_received"] == expected
        assert t["measured_train"] == 2 * expected
        # the count exchange: E/P int64 to each other rank
        per_rank = len(t["tokens_per_expert"]) // len(ranks)
        assert t["measured_count_exchange"] == t["counted_count_exchange"] == 8 * per_rank * (len(ranks) - 1)


def test_what_cannot_run_is_refused_naming_the_feature(ranks):
    said = ranks[0]["refusals"]
    assert said["lora_ep"] == (
        "ExpertParallelError: moe.experts: LoRA experts (expert_kind: lora) do not support expert parallelism"
    )
    assert said["sinks_tp"].startswith("TensorParallelError: layers.0.attn: attention sinks (attention.sinks)")
    assert said["gate_tp"].startswith(
        "TensorParallelError: layers.0.attn: an attention output gate (attention.output_gate)"
    )
    # every problem of the layout at once, before any process group is made
    assert said["ep_3_of_4_experts"].startswith("LayoutError: n_experts = 4 does not divide by ep = 3; ")
    assert "dp_shard·tp = 2·1 = 2 does not divide by ep = 3" in said["ep_3_of_4_experts"]
    assert said["pp_2"] == "LayoutError: pp = 2: pipeline parallelism is not implemented in moec.dist yet"
