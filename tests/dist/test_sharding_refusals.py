"""Features moec.dist refuses by name instead of sharding them wrongly (no process group needed: the checks run
before any collective)."""

from __future__ import annotations

import pytest

from moec.dist.parallelize import ShardingError, _refuse_sharded_selection_bias
from moec.nn import build_model
from moec.spec import load_spec
from moec.spec.resolve import resolve

SPEC = """
name: ernie-like
model: {vocab_size: 64, d_model: 32, n_layers: 1, max_seq_len: 32}
attention: {n_heads: 4, n_kv_heads: 2}
moe:
  n_experts: 4
  d_ff: 16
  router: {top_k: 2, score: sigmoid, selection_bias: true, selection_bias_parameter: PARAM}
  balance: {bias_update_rate: 0.001}
layers: {default: {ffn: moe}}
"""


@pytest.mark.parametrize("param", ["true", "false"])
def test_a_trainable_selection_bias_is_refused_under_fsdp_and_a_buffer_is_not(param):
    plan = resolve(load_spec("ernie-like.yaml", text=SPEC.replace("PARAM", param)).spec)
    model = build_model(plan, device="meta")
    if param == "false":
        _refuse_sharded_selection_bias(model)  # the aux-loss-free buffer (DeepSeek-V3) shards fine
        return
    with pytest.raises(ShardingError, match=r"layers\.0\.ffn\.router\.expert_bias: .*selection_bias_parameter"):
        _refuse_sharded_selection_bias(model)
