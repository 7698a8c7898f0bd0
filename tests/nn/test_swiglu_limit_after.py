"""activation swiglu_limit_after (Step-3.7-Flash): min(silu(gate), L) · clamp(up, ±L), the clamp after the silu,
against a plain elementwise oracle and transformers' Step3p7 experts and MLP; and ``layers.overrides[].moe``, a
layer's own MoE activation and limits (routed and shared apart), which change no count, reach moec.nn on the named
layers only, are checked with located errors and refused by the code generator by name."""

from __future__ import annotations

import math

import pytest
import torch

from moec.analyze import analyze
from moec.errors import SpecError
from moec.kernels.activations import activate
from tests.tiny_specs import tiny_plan

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _silu(x: float) -> float:
    return x / (1 + math.exp(-x))


def test_equals_the_elementwise_oracle_on_both_sides_of_the_limit() -> None:
    limit = 1.5
    gate = torch.linspace(-4, 4, 34, dtype=torch.float64).view(2, 17)  # silu(4) ≈ 3.9: past the limit
    h = torch.cat((gate, gate.flip(-1)), dim=-1)  # (2, 34): [gate | up]
    got = activate(h, "swiglu_limit_after", limit=limit)
    want = torch.empty(2, 17, dtype=torch.float64)
    for i in range(2):
        for j in range(17):
            g, u = min(_silu(float(h[i, j])), limit), max(-limit, min(float(h[i, 17 + j]), limit))
            want[i, j] = g * u
    torch.testing.assert_close(got, want, rtol=1e-14, atol=1e-14)
    # not swiglu_limit, which clamps before the silu: silu(min(4, 1.5)) ≈ 1.23, not 1.5
    assert not torch.allclose(got, activate(h, "swiglu_limit", limit=limit))


def test_equals_step3p7s_experts_and_mlp() -> None:
    from transformers import AutoConfig
    from transformers.models.step3p7.modeling_step3p7 import Step3p7Experts, Step3p7MLP

    cfg = AutoConfig.for_model("step3p7").text_config
    cfg.hidden_size, cfg.moe_intermediate_size, cfg.share_expert_dim, cfg.num_local_experts = 8, 6, 6, 2
    cfg.swiglu_limits_shared = [0.0, 0.9]
    h = torch.randn(5, 12, generator=torch.Generator().manual_seed(0)) * 3
    torch.testing.assert_close(activate(h, "swiglu_limit_after", limit=0.7), Step3p7Experts(cfg, 0.7)._apply_gate(h))
    mlp = Step3p7MLP(cfg, 1, is_shared_expert=True)
    x = torch.randn(5, 8, generator=torch.Generator().manual_seed(1)) * 3
    w_gate_up = torch.cat((mlp.gate_proj.weight.T, mlp.up_proj.weight.T), dim=1)  # moec's (d, 2f) [gate | up]
    with torch.no_grad():
        want = mlp(x)
        got = activate(x @ w_gate_up, "swiglu_limit_after", limit=0.9) @ mlp.down_proj.weight.T
    torch.testing.assert_close(got, want)


SPEC = """\
moec: 1
name: tiny-clamped
model: {vocab_size: 64, d_model: 32, n_layers: 3, max_seq_len: 32}
attention: {n_heads: 4, n_kv_heads: 2}
ffn: {d_ff: 24}
moe: {n_experts: 4, d_ff: 16, n_shared_experts: 1, router: {top_k: 2, normalize_topk: true}}
layers:
  default: {ffn: moe}
  overrides:
    - {select: [0], ffn: dense}
"""
CLAMPED = (
    SPEC
    + "    - {select: [2], moe: {activation: swiglu_limit_after, activation_limit: 0.5, shared_activation_limit: 0.8}}\n"
)


def test_a_layer_of_its_own_clamps_counts_as_plain_swiglu_and_builds_with_its_limits() -> None:
    from moec.nn import build_model

    plan = tiny_plan(CLAMPED)
    plain, clamped = plan.layers[1].ffn, plan.layers[2].ffn
    assert (plain.activation, plain.activation_limit, plain.shared_activation_limit) == ("swiglu", None, None)
    assert (clamped.activation, clamped.activation_limit, clamped.shared_activation_limit) == (
        "swiglu_limit_after",
        0.5,
        0.8,
    )
    assert analyze(plan).params == analyze(tiny_plan(SPEC)).params
    model = build_model(plan, seed=0)
    x = torch.randn(6, 32, generator=torch.Generator().manual_seed(2)) * 4  # large enough for the limits to bind
    for layer, limit in ((model.layers[1].ffn, None), (model.layers[2].ffn, 0.8)):
        shared = layer.shared
        gate, up = (x @ shared.w_gate_up).chunk(2, dim=-1)
        act = torch.nn.functional.silu(gate)
        if limit is not None:
            act, up = act.clamp(max=limit), up.clamp(-limit, limit)
        torch.testing.assert_close(shared(x), (act * up) @ shared.w_down)
    experts = model.layers[2].ffn.experts
    idx = torch.tensor([[0, 3]] * 6)
    w = torch.full((6, 2), 0.5)
    want = torch.zeros(6, 32)
    for e in (0, 3):  # each expert by hand
        gate, up = (x @ experts.w_gate_up[e]).chunk(2, dim=-1)
        want += 0.5 * (torch.nn.functional.silu(gate).clamp(max=0.5) * up.clamp(-0.5, 0.5)) @ experts.w_down[e]
    with torch.no_grad():
        got = experts(x, idx, w, model.layers[2].ffn._kernels(x.device))
    torch.testing.assert_close(got, want)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("{select: [0], moe: {activation: swiglu_limit_after, activation_limit: 7.0}}", r"layers\.overrides\[1\]\.moe: "
         r"selects layers that are not MoE layers \(0\)"),
        # gpt-oss's default limit 7 is not silently taken for a clamp whose limit differs by release
        ("{select: [2], moe: {activation: swiglu_limit_after}}", r"layers\.overrides\[1\]\.moe\.activation: "
         r"swiglu_limit_after has no default clamp limit"),
        ("{select: [1, 2], moe: {activation_limit: 2.0}}", r"layers\.overrides\[1\]\.moe.activation_limit: the routed "
         r"experts' activation \(swiglu\) takes no limit"),
        ("{select: [2], moe: {activation: gelu}}", r"layers\.overrides\[1\]\.moe.activation: must be gated as "
         r"moe.activation \(swiglu\) is"),
        ("{select: [1, 2], moe: {activation: null}}", r"layers\.overrides\[1\]\.moe.activation: null: leave the field out"),
        ("{select: [2], moe: {shared_activation: swiglu_limit_after, shared_activation_limit: 0.0}}",
         r"layers\.overrides\[1\]\.moe.shared_activation_limit"),
    ],
)  # fmt: skip
def test_misuse_is_located(override: str, message: str) -> None:
    """One error per problem, however many layers the override selects."""
    with pytest.raises(SpecError, match=message) as e:
        tiny_plan(SPEC + f"    - {override}\n")
    assert len(e.value.problems) == 1


def test_shared_limit_needs_shared_experts_and_a_limited_activation() -> None:
    no_shared = CLAMPED.replace("n_shared_experts: 1, ", "")
    with pytest.raises(SpecError, match=r"layers\.overrides\[1\]\.moe.shared_activation_limit: only meaningful with "):
        tiny_plan(no_shared)
    with pytest.raises(SpecError, match=r"moe.shared_activation_limit: the shared experts' activation \(swiglu\)"):
        tiny_plan(SPEC, "moe.shared_activation_limit=3")


def test_code_generator_refuses_a_layer_of_its_own_moe_by_name() -> None:
    from moec.codegen.features import plan_features

    for plan in (tiny_plan(CLAMPED), tiny_plan(SPEC.replace("[0], ffn: dense}", "[2], moe: {activation: geglu}}"))):
        with pytest.raises(ValueError, match=r"codegen does not support a layer's own MoE activation or limits"):
            plan_features(plan, list(plan.layers))


def test_the_generated_model_py_gives_the_library_logits(tmp_path) -> None:
    """moec build renders the clamp after the silu and the shared experts' own limit."""
    from moec.nn import build_model
    from tests.hf.families._harness import assert_generated_model_gives_the_library_logits

    sets = ("moe.activation=swiglu_limit_after", "moe.activation_limit=0.3", "moe.shared_activation_limit=0.6")
    model = build_model(tiny_plan(SPEC, *sets), seed=0).eval()
    tokens = torch.randint(0, 64, (2, 12), generator=torch.Generator().manual_seed(0))
    assert_generated_model_gives_the_library_logits(model, tokens, tmp_path)


def test_exporters_refuse_a_layer_of_its_own_moe() -> None:
    """Every exporter reads one MoE configuration (moe_plan): a plan whose layers differ in it is refused, not
    written with the first MoE layer's limits."""
    from moec.hf.draft import CannotExport
    from moec.hf.families._export_common import moe_plan

    assert moe_plan(tiny_plan(SPEC)).activation == "swiglu"
    with pytest.raises(CannotExport, match=r"one MoE configuration for every layer \(the spec's layers\.\*\.moe"):
        moe_plan(tiny_plan(CLAMPED))


def test_the_triton_backend_runs_it_on_the_reference_path() -> None:
    """No fused epilogue clamps after the silu: the Triton backend hands swiglu_limit_after to the reference
    backend (on any device), which gives each expert's clamped unit, summed by hand here."""
    pytest.importorskip("triton")
    from moec.kernels import triton as triton_backend

    g = torch.Generator().manual_seed(3)
    x, w_gate_up, w_down = torch.randn(5, 8, generator=g), torch.randn(2, 8, 12, generator=g), torch.randn(2, 6, 8)
    idx, w = torch.tensor([[0, 1]] * 5), torch.full((5, 2), 0.5)
    got = triton_backend.expert_ffn(x, idx, w, w_gate_up, w_down, activation="swiglu_limit_after", limit=0.3)
    want = torch.zeros(5, 8)
    for e in (0, 1):
        gate, up = (x @ w_gate_up[e]).chunk(2, dim=-1)
        want += 0.5 * (torch.nn.functional.silu(gate).clamp(max=0.3) * up.clamp(-0.3, 0.3)) @ w_down[e]
    torch.testing.assert_close(got, want)


@pytest.mark.parametrize("activation", ["swiglu_limit", "swiglu_limit_after"])
def test_a_section_naming_a_release_specific_clamp_must_write_its_limit(activation: str) -> None:
    """activation_limit's default 7 is gpt-oss's (swiglu_clamped keeps it); these two take none silently."""
    text = SPEC.replace("moe: {n_experts: 4,", f"moe: {{activation: {activation}, n_experts: 4,")
    with pytest.raises(SpecError, match=rf"moe\.activation: {activation} has no default clamp limit") as e:
        tiny_plan(text)
    assert len(e.value.problems) == 1 and e.value.problems[0].line == 6
    limited = tiny_plan(text.replace("n_experts: 4,", "activation_limit: 3.0, n_experts: 4,"))
    assert limited.layers[1].ffn.activation_limit == 3.0
