"""activation: swiglu_limit (DeepSeek-V4, HY-V4, GLM-5-Next's experts): silu(min(gate, L)) · clamp(up, ±L), against
a plain elementwise oracle and transformers' HYV4Experts gate; the plan keeps its limit (and no alpha), a dense FFN
and an MoE with it count as any gated unit, and the code generator refuses it by name."""

from __future__ import annotations

import math

import pytest
import torch

from moec.analyze import analyze
from moec.kernels.activations import activate
from tests.tiny_specs import TINY_MOE, tiny_plan

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_equals_the_elementwise_oracle_on_both_sides_of_the_limit() -> None:
    limit = 1.5
    gate = torch.linspace(-4, 4, 34, dtype=torch.float64).view(2, 17)  # some beyond ±limit
    h = torch.cat((gate, gate.flip(-1)), dim=-1)  # (2, 34): [gate | up]
    got = activate(h, "swiglu_limit", limit=limit)
    want = torch.empty(2, 17, dtype=torch.float64)
    for i in range(2):
        for j in range(17):
            g, u = min(float(h[i, j]), limit), max(-limit, min(float(h[i, 17 + j]), limit))
            want[i, j] = g / (1 + math.exp(-g)) * u
    torch.testing.assert_close(got, want, rtol=1e-14, atol=1e-14)


def test_equals_hy_v4s_expert_gate() -> None:
    from transformers import AutoConfig
    from transformers.models.hy_v4.modeling_hy_v4 import HYV4Experts

    cfg = AutoConfig.for_model("hy_v4", hidden_size=8, moe_intermediate_size=6, n_routed_experts=2, swiglu_limit=0.7)
    experts = HYV4Experts(cfg)
    h = torch.randn(5, 12, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(activate(h, "swiglu_limit", limit=0.7), experts._apply_gate(h))


def test_the_plan_keeps_the_limit_and_the_counts_are_swiglus() -> None:
    plan = tiny_plan(TINY_MOE, "moe.activation=swiglu_limit", "moe.activation_limit=10")
    moe = plan.layers[0].ffn
    assert (moe.activation, moe.activation_limit, moe.activation_alpha, moe.gated) == ("swiglu_limit", 10.0, None, True)
    assert analyze(plan).params == analyze(tiny_plan(TINY_MOE)).params


def test_the_generated_model_py_gives_the_library_logits(tmp_path) -> None:
    """moec build renders it (tests/codegen/test_features_13.py holds it against moec.nn with shared experts too)."""
    from moec.nn import build_model
    from tests.hf.families._harness import assert_generated_model_gives_the_library_logits

    model = build_model(tiny_plan(TINY_MOE, "moe.activation=swiglu_limit", "moe.activation_limit=0.5"), seed=0).eval()
    tokens = torch.randint(0, 64, (2, 12), generator=torch.Generator().manual_seed(0))
    assert_generated_model_gives_the_library_logits(model, tokens, tmp_path)


def test_shared_experts_take_their_own_activation() -> None:
    """moe.shared_activation: HY-V4's plain SwiGLU shared experts beside swiglu_limit routed ones; the shared FFN's
    output is the plain SwiGLU of its weights (computed here by hand), and the counts are unchanged."""
    from moec.nn import build_model

    sets = ("moe.activation=swiglu_limit", "moe.activation_limit=0.5", "moe.n_shared_experts=1")
    plan = tiny_plan(TINY_MOE, *sets, "moe.shared_activation=swiglu")
    assert analyze(plan).params == analyze(tiny_plan(TINY_MOE, *sets)).params
    shared = build_model(plan, seed=0).layers[0].ffn.shared
    x = torch.randn(3, 32, generator=torch.Generator().manual_seed(1)) * 4  # large enough for the limit to bind
    h = x @ shared.w_gate_up
    gate, up = h.chunk(2, dim=-1)
    torch.testing.assert_close(shared(x), (torch.nn.functional.silu(gate) * up) @ shared.w_down)


def test_shared_activation_misuse_is_located() -> None:
    from moec.errors import SpecError

    with pytest.raises(SpecError, match="moe.shared_activation: only meaningful with moe.n_shared_experts"):
        tiny_plan(TINY_MOE, "moe.shared_activation=swiglu")
    with pytest.raises(SpecError, match=r"must be gated as moe.activation \(swiglu\) is"):
        tiny_plan(TINY_MOE, "moe.n_shared_experts=1", "moe.shared_activation=gelu")
