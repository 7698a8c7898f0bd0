"""Features moec.dist refuses by name instead of sharding them wrongly (no process group needed: the checks run
before any collective)."""

from __future__ import annotations

import pytest

from moec.dist.parallelize import ShardingError, _refuse_sharded_selection_bias
from moec.nn import build_model
from tests.tiny_specs import TINY_MOE, tiny_plan

# ERNIE-4.5's router on the tiny MoE: the sigmoid selection bias, aux-loss-free, a parameter or a buffer
ERNIE_LIKE = ("moe.router.score=sigmoid", "moe.router.selection_bias=true", "moe.balance.bias_update_rate=0.001")


@pytest.mark.parametrize("param", ["true", "false"])
def test_a_trainable_selection_bias_is_refused_under_fsdp_and_a_buffer_is_not(param):
    plan = tiny_plan(TINY_MOE, *ERNIE_LIKE, f"moe.router.selection_bias_parameter={param}")
    model = build_model(plan, device="meta")
    if param == "false":
        _refuse_sharded_selection_bias(model)  # the aux-loss-free buffer (DeepSeek-V3) shards fine
        return
    with pytest.raises(ShardingError, match=r"layers\.0\.ffn\.router\.expert_bias: .*selection_bias_parameter"):
        _refuse_sharded_selection_bias(model)
