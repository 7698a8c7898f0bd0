"""Layout: resolving dp_shard, torchtitan's efsdp, and one quoted message per reason a layout is invalid."""

from __future__ import annotations

import pytest

from moec.plan import Layout, LayoutError
from moec.spec import load_model
from tests.plan.tiny import tiny


@pytest.mark.parametrize(
    ("layout", "world", "dp_shard", "efsdp"),
    [
        (Layout(ep=8), 16, 16, 2),  # experts: 8 ranks split them, 2 shard each split
        (Layout(ep=8, tp=2, pp=2), 16, 4, 1),  # ep borrows the 4·2 FSDP × TP ranks
        (Layout(ep=64, pp=16), 2048, 128, 2),
        (Layout(), 4, 4, 4),  # no EP: the experts shard like everything else
        (Layout(dp_shard=2, tp=2), 4, 2, 4),
    ],
)
def test_resolved_fills_dp_shard_and_efsdp_follows_the_mesh_convention(layout, world, dp_shard, efsdp):
    r = layout.resolved(world)
    assert (r.dp_shard, r.efsdp, r.world) == (dp_shard, efsdp, world)
    assert r.ep * r.efsdp == r.dp_shard * r.tp


def test_efsdp_of_an_unresolved_layout_is_refused():
    with pytest.raises(LayoutError, match="resolved"):
        _ = Layout(ep=2).efsdp


def test_resolved_refuses_a_world_that_does_not_split():
    with pytest.raises(LayoutError, match="6 ranks do not divide by tp·pp = 4·1 = 4"):
        Layout(tp=4).resolved(6)


MIXTRAL = load_model("mixtral-8x7b")


@pytest.mark.parametrize(
    ("layout", "world", "expected"),
    [
        (Layout(ep=3), 6, [("ep", "n_experts = 8 does not divide by ep = 3")]),
        (
            Layout(ep=8, tp=1),
            4,
            [
                (
                    "ep",
                    "dp_shard·tp = 4·1 = 4 does not divide by ep = 8 (EP borrows its ranks from the FSDP and TP ranks)",
                )
            ],
        ),
        (
            Layout(tp=3),
            3,
            [("tp", "n_heads = 32 does not divide by tp = 3"), ("tp", "n_kv_heads = 8 does not divide by tp = 3")],
        ),
        (Layout(tp=16), 16, [("tp", "n_kv_heads = 8 does not divide by tp = 16")]),
        (Layout(pp=64), 64, [("pp", "pp = 64 exceeds the 32 layers (every stage needs a layer)")]),
        (Layout(dp_shard=3), 8, [("dp_shard", "dp_shard·tp·pp = 3·1·1 = 3, not the 8 ranks")]),
        (Layout(tp=0), 8, [("tp", "tp must be a positive integer, got 0")]),
        (Layout(), 0, [("world", "the number of ranks must be positive, got 0")]),
        (
            Layout(ep=3, tp=3, pp=40),  # every problem at once, the model's too
            16,
            [
                ("world", "16 ranks do not divide by tp·pp = 3·40 = 120"),
                ("ep", "n_experts = 8 does not divide by ep = 3"),
                ("tp", "n_heads = 32 does not divide by tp = 3"),
                ("tp", "n_kv_heads = 8 does not divide by tp = 3"),
                ("pp", "pp = 40 exceeds the 32 layers (every stage needs a layer)"),
            ],
        ),
    ],
)
def test_every_problem_is_reported_with_its_values(layout, world, expected):
    assert layout.field_problems(MIXTRAL, world) == expected
    assert layout.problems(MIXTRAL, world) == [message for _, message in expected]


def test_valid_layouts_have_no_problems():
    assert Layout(ep=8).problems(MIXTRAL, 16) == []
    assert Layout(ep=8, tp=8, pp=4).problems(MIXTRAL, 32) == []


def test_tp_checks_dense_and_shared_widths_and_refuses_a_projection_wide_qk_norm():
    model = tiny("attention.n_kv_heads=2", "attention.qk_norm=true", "attention.qk_norm_scope=projection")
    dense = tiny("attention.n_kv_heads=2", "layers.default.ffn=dense", "ffn.d_ff=5")
    shared = tiny("attention.n_kv_heads=2", "moe.n_shared_experts=1", "moe.d_ff_shared=3")
    assert Layout(tp=2).problems(model, 2) == [
        "tp = 2 splits the heads, but the qk-norm spans the whole projection (scope projection)"
    ]
    assert Layout(tp=2).problems(dense, 2) == ["d_ff = 5 does not divide by tp = 2"]
    assert Layout(tp=2).problems(shared, 2) == ["shared experts' width = 3 does not divide by tp = 2"]


def test_ep_without_moe_layers_is_refused():
    assert Layout(ep=2).problems(tiny("layers.default.ffn=dense"), 2) == ["ep = 2 needs MoE layers, and tiny has none"]


@pytest.mark.parametrize(
    ("sets", "part"),
    [
        (("attention.sinks=true",), "attention sinks (attention.sinks)"),
        (("attention.output_gate=head",), "an attention output gate (attention.output_gate)"),
        (("attention.output_gate=element",), "an attention output gate (attention.output_gate)"),
    ],
)
def test_tp_is_refused_for_the_per_head_parts_moec_dist_does_not_split(sets, part):
    """moec.dist's tensor parallelism refuses sinks and the output gate; the planner does not offer tp > 1 for them
    (and still offers the model at tp = 1, and tp = 2 without them)."""
    from tests.plan.tiny import tiny

    two_kv = ("attention.n_kv_heads=2", *sets)  # the tiny spec's one KV head would not divide by tp = 2
    assert Layout(tp=2).field_problems(tiny(*two_kv), 2) == [("tp", f"tp = 2 splits the heads, not {part}")]
    assert Layout(tp=1).field_problems(tiny(*two_kv), 1) == []
    assert Layout(tp=2).field_problems(tiny("attention.n_kv_heads=2"), 2) == []
