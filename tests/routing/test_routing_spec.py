"""The routing fields' validation: each wrong combination is one located error naming the field."""

from __future__ import annotations

import pytest

from moec.errors import SpecError
from moec.spec import load_spec
from tests.tiny_specs import TINY_MOE, tiny_plan


def errors(*sets: str) -> list[str]:
    with pytest.raises(SpecError) as ei:
        load_spec("tiny.yaml", text=TINY_MOE, sets=sets)
    return [str(p) for p in ei.value.problems]


@pytest.mark.parametrize(
    ("sets", "expect"),
    [
        (("moe.router.kind=gshard", "moe.router.top_k=1", "moe.router.normalize_topk=false"), "moe.router.top_k"),
        (("moe.router.kind=gshard",), "remove normalize_topk"),
        (
            ("moe.router.kind=gshard", "moe.router.normalize_topk=false", "moe.capacity_factor=1.0"),
            "drop_policy position",
        ),
        (("moe.router.kind=gshard", "moe.router.normalize_topk=false", "moe.router.score=sigmoid"), "score"),
        (
            ("moe.router.kind=expert_choice", "moe.router.normalize_topk=false", "moe.capacity_factor=1.0"),
            "moe.capacity_factor",
        ),
        (
            ("moe.router.kind=expert_choice", "moe.router.normalize_topk=false", "moe.balance.load_balance_coeff=0.01"),
            "balanced by construction",
        ),
        (("moe.router.kind=hash", "moe.router.normalize_topk=false", "moe.router.mlp_hidden=4"), "mlp_hidden"),
        (
            ("moe.router.kind=hash", "moe.router.normalize_topk=false", "moe.balance.z_loss_coeff=0.1"),
            "moe.balance.z_loss_coeff",
        ),
        (("moe.capacity_group_size=4",), "needs capacity_factor"),
        (("moe.router.score=sqrt_softmax",), "moe.router.score"),
        (("moe.router.mlp_hidden=0",), "moe.router.mlp_hidden"),
    ],
)
def test_each_wrong_routing_combination_is_one_located_error(sets: tuple[str, ...], expect: str):
    problems = errors(*sets)
    assert len(problems) == 1, problems
    assert expect in problems[0]


def test_the_new_fields_reach_the_plan():
    plan = (
        tiny_plan(
            TINY_MOE,
            "moe.router.mlp_hidden=6",
            "moe.router.score=sqrt_softplus",
            "moe.capacity_factor=1.25",
            "moe.capacity_group_size=8",
        )
        .layers[0]
        .ffn
    )
    assert (plan.router.mlp_hidden, plan.router.score, plan.capacity_group_size) == (6, "sqrt_softplus", 8)


def test_each_field_an_algorithm_decides_is_its_own_error_at_its_own_line():
    """TINY_MOE writes normalize_topk: true on its router line; a hash router decides that and the MLP itself."""
    line = next(i for i, text in enumerate(TINY_MOE.splitlines(), 1) if "normalize_topk: true" in text)
    column = TINY_MOE.splitlines()[line - 1].index("normalize_topk: true") + len("normalize_topk: ") + 1  # the value
    problems = errors("moe.router.kind=hash", "moe.router.mlp_hidden=4")
    assert sorted(problems) == sorted(
        [
            f"tiny.yaml:{line}:{column} moe.router.normalize_topk:"
            " remove normalize_topk: hash routing decides it itself",
            "--set moe.router.mlp_hidden: remove mlp_hidden: hash routing decides it itself",
        ]
    ), problems


def test_the_headline_says_expert_choice_active_counts_are_averages_and_only_then():
    from moec.analyze import analyze
    from moec.analyze.report import convention_line

    chosen = analyze(tiny_plan(TINY_MOE, "moe.router.kind=expert_choice", "moe.router.normalize_topk=false"))
    plain = analyze(tiny_plan(TINY_MOE))
    assert "averages over tokens" in chosen.conventions["active_average"]
    assert convention_line(chosen.conventions).endswith("· expert choice: active = average over tokens")
    assert "active_average" not in plain.conventions and "expert choice" not in convention_line(plain.conventions)
