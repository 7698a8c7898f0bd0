"""FSDP-only, EP-only, EP×FSDP and TP×FSDP training on 2 processes equal one process over 3 AdamW steps (with
clipping and the aux-loss-free bias step; float64, the router fp32), and so does the generated model.py under EP×FSDP
and TP×FSDP through its own parallelize(); the wrong gradient scaling is caught; each rank holds the parameter count moec.plan
predicts; the selection biases stay identical on every rank."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.distributed
TOL = 1e-5
# generated_*: the generated model.py of the same spec, through its own parallelize()
LAYOUTS = ("fsdp", "ep", "ep_fsdp", "tp_fsdp", "generated_ep_fsdp", "generated_tp_fsdp")
DATA_PARALLEL = ("fsdp", "ep", "ep_fsdp", "generated_ep_fsdp")  # the ranks see different tokens


@pytest.fixture(scope="module")
def ranks(dist_case):
    return dist_case("train")


@pytest.mark.parametrize("layout", LAYOUTS)
def test_training_equals_one_process(ranks, layout):
    for result in ranks:
        run = result[layout]
        assert run["loss_diff"] <= TOL
        assert run["norm_diff"] <= TOL
    # clipping at 0.5 bites on every step (the reference norms are well above it), so it is exercised
    assert min(ranks[0]["reference_norms"]) > 1.0
    assert ranks[0][layout]["param_diff"] <= TOL, ranks[0][layout]["worst"]
    assert ranks[0][layout]["names_equal"]


def test_fsdp_default_gradient_division_with_ep_is_caught(ranks):
    # FSDP's mean over the group on an unscaled per-rank loss: the experts' gradients come out ep× too large
    run = ranks[0]["ep_fsdp_default_division"]
    assert run["norm_diff"] > 1e-2
    assert run["param_diff"] > 10 * TOL


@pytest.mark.parametrize("layout", ("fsdp", "ep_fsdp", "tp_fsdp", "generated_ep_fsdp", "generated_tp_fsdp"))
def test_local_parameter_numel_equals_the_planner(ranks, layout):
    for result in ranks:
        assert result[layout]["numel"] == result[layout]["planned_numel"]


@pytest.mark.parametrize("layout", DATA_PARALLEL)
def test_selection_bias_stays_in_sync_across_ranks(ranks, layout):
    # the check can fail: a step on each rank's own loads would differ between the ranks
    assert any(result[layout]["local_bias_steps_differ"] for result in ranks)
    for result in ranks:
        assert result[layout]["bias_spread_across_ranks"] == 0.0
        assert result[layout]["bias_diff_vs_reference"] == 0.0


def test_tied_embedding_stays_tied_after_the_meta_load(ranks):
    for result in ranks:
        assert all(result[layout]["tied_after_load"] for layout in LAYOUTS)


@pytest.mark.slow
@pytest.mark.parametrize("layout", ("ep2_fsdp", "ep4_fsdp", "tp2_fsdp"))
def test_four_ranks_train_like_one_process(dist_case, layout):
    # ep = 2 leaves efsdp = 2: each expert shard is FSDP-sharded over 2 ranks; tp2_fsdp is a 2-D (dp, tp) mesh
    ranks = dist_case("train4", world=4)
    for result in ranks:
        run = result[layout]
        assert run["loss_diff"] <= TOL
        assert run["norm_diff"] <= TOL
        assert run["numel"] == run["planned_numel"]
        assert run["bias_spread_across_ranks"] == 0.0
    assert ranks[0][layout]["param_diff"] <= TOL, ranks[0][layout]["worst"]


def test_attention_sinks_in_a_generated_model_are_refused_by_tensor_parallelism_by_name(ranks):
    # TP splits neither moec.nn's sinks nor a generated model's: the first attention module is named
    for result in ranks:
        message = result["generated_tp_sinks_refusal"]
        assert message is not None and message.startswith("layers.0.attn: attention sinks (attention.sinks)")


def test_the_layout_check_refuses_tp_with_sinks_before_any_process_group(ranks):
    # the planner's layout problems (moec.plan.layout) name the sinks, as moec plan does
    for result in ranks:
        message = result["layout_tp_sinks_refusal"]
        assert message is not None and "splits the heads, not attention sinks (attention.sinks)" in message
