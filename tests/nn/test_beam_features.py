"""Beam's three small features against plain oracles (the causal GQA of tests/nn/_gqa.py): the output gate's own bias,
one per head (attention.output_gate_bias), the power form of the NoPE query temperature
(attention.temperature_tuning.form) and depth-scaled residual adds (model.depth_scaled_residual); their counts by
hand and each one's validation, located."""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")

from moec.analyze.report import analyze  # noqa: E402
from moec.errors import SpecError  # noqa: E402
from moec.nn import build_model  # noqa: E402
from moec.plan.tensors import model_tensors  # noqa: E402
from moec.spec import load_spec, resolve  # noqa: E402
from tests.nn._gqa import naive_gqa, perturbed  # noqa: E402

SPEC = """\
name: t
model: {vocab_size: 64, d_model: 16, n_layers: 2, max_seq_len: 16MODEL}
attention: {n_heads: 4, n_kv_heads: 2, head_dim: 8ATTN}
ffn: {d_ff: 24}
LAYERS
"""


def plan_of(model: str = "", attn: str = "", layers: str = ""):  # type: ignore[no-untyped-def]
    return resolve(
        load_spec("t.yaml", text=SPEC.replace("MODEL", model).replace("ATTN", attn).replace("LAYERS", layers))
    )


NOPE = ", positions: {kind: none}"


def test_a_head_bias_joins_every_gate_logit_of_its_head_before_the_sigmoid():
    plan = plan_of(model=NOPE, attn=", output_gate: element, output_gate_bias: head")
    att = perturbed(plan).layers[0].attn
    assert att.gate_proj.bias is None and att.gate_bias.shape == (4,)
    x = torch.randn(2, 5, 16, dtype=torch.float64)
    logits = (x @ att.gate_proj.weight.T).view(2, 5, 4, 8) + att.gate_bias.view(1, 1, 4, 1)
    gated = naive_gqa(att, x) / (1 + torch.exp(-logits))  # the sigmoid by its definition
    torch.testing.assert_close(att(x), gated.reshape(2, 5, 32) @ att.o_proj.weight.T, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(
    ("attn", "per_layer"),
    [
        (", output_gate: element", 16 * 32),  # no attention bias: an unbiased gate projection
        (", output_gate: element, bias: true", 16 * 32 + 32 + (32 + 16 + 16)),  # the gate's bias as q/k/v's
        (", output_gate: element, bias: true, output_gate_bias: none", 16 * 32 + (32 + 16 + 16)),
        (", output_gate: element, output_gate_bias: head", 16 * 32 + 4),
        (", output_gate: head, output_gate_bias: head", 16 * 4 + 4),
    ],
)
def test_gate_bias_counts_by_hand_in_the_built_model_and_in_the_planner(attn, per_layer):
    """Attention parameters a layer beyond q, k, v and o (16·32 + 2·16·16 + 32·16): the gate and its bias."""
    plan = plan_of(model=NOPE, attn=attn)
    base = analyze(plan_of(model=NOPE)).params.total
    total = analyze(plan).params.total
    assert total - base == 2 * per_layer
    model = build_model(plan, device="meta")
    assert sum(p.numel() for p in model.parameters()) == total
    # the planner's tensor inventory (moec plan) names and shapes the same parameters
    assert {t.name: t.shape for t in model_tensors(plan)} == {n: tuple(p.shape) for n, p in model.named_parameters()}


def test_the_power_temperature_scales_the_queries_of_its_layers_by_a_power_of_the_position():
    tt = ", temperature_tuning: {floor_scale: 3.0, scale: 0.5, form: power}"
    layers = "layers: {overrides: [{select: {layers: [0]}, attention: {temperature_tuning: false}}]}"
    plan = plan_of(model=NOPE, attn=tt, layers=layers)
    model = perturbed(plan)
    x = torch.randn(2, 7, 16, dtype=torch.float64)
    scale = torch.tensor([(1 + (p + 1) / 3.0) ** 0.5 for p in range(7)], dtype=torch.float64)
    for att, want in ((model.layers[0].attn, None), (model.layers[1].attn, scale)):
        y = naive_gqa(att, x, q_scale=want).reshape(2, 7, 32) @ att.o_proj.weight.T
        torch.testing.assert_close(att(x), y, rtol=1e-6, atol=1e-6)  # the multiplier is fp32, as transformers'

    assert analyze(plan).params.total == analyze(plan_of(model=NOPE)).params.total  # a multiplier, no weights


def test_the_power_temperature_holds_at_the_positions_of_a_cached_decode():
    from moec.nn.attention import temperature, temperature_at

    full = temperature(9, 2048.0, 0.1, torch.device("cpu"), "power")
    torch.testing.assert_close(temperature_at(torch.arange(5, 9), 2048.0, 0.1, "power"), full[5:])
    want = torch.tensor([(1 + (p + 1) / 2048) ** 0.1 for p in range(9)])
    torch.testing.assert_close(full, want)


@pytest.mark.parametrize("placement", ["pre", "sandwich", "after_sublayer"])
def test_depth_scaled_adds_weigh_the_residual_and_the_branch_by_their_add_index(placement):
    """Layer i's mixer is the (2i+2)-th add (the embedding the first), its FFN the (2i+3)-th: x·√((n−1)/n) + f/√n,
    composed here from the block's own sublayers."""
    plan = plan_of(model=f"{NOPE}, norm: {{placement: {placement}}}, depth_scaled_residual: true")
    model = perturbed(plan)
    x = torch.randn(2, 5, 16, dtype=torch.float64)

    def branch(block, norm, f, post, h):  # type: ignore[no-untyped-def]
        if placement == "after_sublayer":
            return norm(f(h))
        y = f(norm(h))
        return post(y) if placement == "sandwich" else y

    h = got = x
    for i, block in enumerate(model.layers):
        for n, (norm, f, post) in (
            (2 * i + 2, (block.attn_norm, block.attn, block.attn_post_norm)),
            (2 * i + 3, (block.ffn_norm, block.ffn, block.ffn_post_norm)),
        ):
            h = h * math.sqrt((n - 1) / n) + branch(block, norm, f, post, h) / math.sqrt(n)
        got, _ = block(got)
        torch.testing.assert_close(got, h, rtol=1e-12, atol=1e-12)
    plain = analyze(plan_of(model=f"{NOPE}, norm: {{placement: {placement}}}"))
    assert (analyze(plan).params.total, analyze(plan).flops) == (plain.params.total, plain.flops)


@pytest.mark.parametrize(
    ("model", "attn", "field", "words"),
    [
        ("", ", output_gate_bias: head", "attention.output_gate_bias", "needs attention.output_gate"),
        (", norm: {placement: post}, depth_scaled_residual: true", "", "model.depth_scaled_residual", "placement"),
        (", norm: {placement: normed_residual}, depth_scaled_residual: true", "", "model.depth_scaled_residual", "placement"),
        (", residual_multiplier: 0.5, depth_scaled_residual: true", "", "model.depth_scaled_residual", "residual_multiplier"),
        ("", ", temperature_tuning: {floor_scale: 8.0, scale: 0.1, form: square}", "attention.temperature_tuning.form", ""),
    ],
)  # fmt: skip
def test_each_misuse_is_refused_at_its_field(model, attn, field, words):
    with pytest.raises(SpecError) as e:
        plan_of(model=model, attn=attn)
    assert [p.path for p in e.value.problems] == [field]
    assert words in e.value.problems[0].message


def test_a_head_gate_bias_on_mla_is_refused():
    text = """\
name: t
model: {vocab_size: 64, d_model: 16, n_layers: 1, max_seq_len: 16}
attention: {kind: mla, n_heads: 4, kv_lora_rank: 8, qk_nope_head_dim: 8, qk_rope_head_dim: 4, v_head_dim: 8,
            output_gate: head, output_gate_bias: head}
ffn: {d_ff: 24}
"""
    with pytest.raises(SpecError) as e:
        load_spec("t.yaml", text=text)
    assert [p.path for p in e.value.problems] == ["attention.output_gate_bias"]


@pytest.mark.parametrize(
    ("model", "attn"),
    [("", ", output_gate: element, output_gate_bias: head"), (", depth_scaled_residual: true", "")],
    ids=["gate bias per head", "depth-scaled adds"],
)
def test_the_generated_model_py_gives_the_library_logits(model, attn, tmp_path):
    """moec build renders both (tests/codegen/test_features_13.py holds them against moec.nn in more variants)."""
    from tests.hf.families._harness import assert_generated_model_gives_the_library_logits

    m = perturbed(plan_of(model=model, attn=attn)).float().eval()
    tokens = torch.randint(0, m.plan.vocab_size, (2, 12), generator=torch.Generator().manual_seed(0))
    assert_generated_model_gives_the_library_logits(m, tokens, tmp_path)
