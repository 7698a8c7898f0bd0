"""Hyper-connections' counts (docs/conventions.md, "Hyper-connections"): parameters derived by hand for a tiny
model, and the forward FLOPs they add equal to what torch's FlopCounterMode measures on the built model."""

from __future__ import annotations

import pytest
import torch

from moec.analyze import analyze
from tests.tiny_specs import TINY_MOE, tiny_plan

# TINY_MOE: d = 32, 2 layers, each with attention and an MoE (two sublayers, so two connections)
CASES = {
    # n = 4, Sinkhorn: M = 2·4 + 16 = 24; a connection 4·32·24 + 24 + 3 = 3099; four of them 12396; the dynamic
    # head 4·32·4 + 4 + 1 = 517. FLOPs per connection 2·(4·32·24) + 2·16·32 = 7168, four 28672; head 2·4·32·4 = 1024
    "sinkhorn": (("model.hyper_connections.n_streams=4",), 12396 + 517, 28672 + 1024),
    # n = 2, identity, mean head: M = 4; a connection 2·32·4 + 4 + 2 = 262, four 1048; FLOPs 2·(2·32·4) = 512 each
    "identity": (
        ("model.hyper_connections.n_streams=2", "model.hyper_connections.residual=identity",
         "model.hyper_connections.head=mean"),
        1048,
        2048,
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(CASES))
def test_parameters_and_flops_are_the_hand_derived_ones(case: str) -> None:
    sets, params, flops = CASES[case]
    a = analyze(tiny_plan(TINY_MOE, *sets))
    (row,) = [c for c in a.components if c.name == "hyper_connections"]
    assert (row.params, row.active, row.flops) == (params, params, flops)
    plain = analyze(tiny_plan(TINY_MOE))
    assert a.params.total - plain.params.total == params
    assert a.flops.forward_linear - plain.flops.forward_linear == flops


@pytest.mark.usefixtures("one_torch_thread")
@pytest.mark.parametrize("case", sorted(CASES))
def test_added_flops_are_what_flop_counter_mode_measures(case: str) -> None:
    """The same model with and without the streams: the difference torch measures is the streams' FLOPs (every token
    takes k experts either way, so the routed experts' FLOPs cancel)."""
    from torch.utils.flop_counter import FlopCounterMode

    from moec.nn import build_model

    sets, _, flops = CASES[case]
    tokens = torch.arange(10).view(2, 5)

    def measured(*s: str) -> int:
        model = build_model(tiny_plan(TINY_MOE, *s), seed=0)
        with FlopCounterMode(display=False) as counter:
            model(tokens)
        return counter.get_total_flops()

    assert measured(*sets) - measured() == flops * tokens.numel()


def test_the_roofline_counts_the_connections_flops() -> None:
    """moec roofline's hyper_connections row: a decode step of batch 4 does 4 tokens' worth of the analyzer's
    hyper-connection FLOPs."""
    from moec.plan.accelerators import ACCELERATORS
    from moec.roofline.model import Workload, roofline

    plan = tiny_plan(TINY_MOE, *CASES["sinkhorn"][0])
    costs = {c.name: c for c in roofline(plan, ACCELERATORS["h100"], "h100", Workload("decode", batch=4, seq=16)).costs}
    assert costs["hyper_connections"].flops == 4 * CASES["sinkhorn"][2]


def test_moec_plan_refuses_hyper_connections_by_name(tmp_path) -> None:  # noqa: ANN001
    from click.testing import CliRunner

    from moec.cli import cli

    spec = tmp_path / "hc.yaml"
    spec.write_text(TINY_MOE.replace("max_seq_len: 32}", "max_seq_len: 32, hyper_connections: {n_streams: 4}}"))
    result = CliRunner().invoke(cli, ["plan", str(spec)])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "does not support model.hyper_connections" in result.output
