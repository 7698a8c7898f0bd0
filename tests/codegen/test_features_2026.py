"""The generated model.py against the library model (moec.nn) for the 2025–26 MoE features (issue 11):
identical logits and aux loss on identical weights, the same parameter names, shapes and trainable flags, and
source that mentions a feature only when the plan uses it."""

from __future__ import annotations

import pytest
import torch

from tests.codegen.test_codegen import (
    assert_generated_gives_the_library_outputs,
    assert_named_only_with_the_feature,
    library_and_generated,
    run_both,
    variant,
)
from tests.tiny_specs import TINY_DEEPSEEK_V3

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CASES = {
    "partial rotary": variant(model="positions: {kind: rope, rotary_dim: 4}", attn="n_kv_heads: 2"),
    "partial rotary factor, windows, moe": variant(
        model="positions: {kind: rope, partial_rotary_factor: 0.5, scaling: {kind: dynamic, factor: 2.0}}",
        attn="n_kv_heads: 2, head_dim: 12",
        moe=True,
        overrides="{select: [1], attention: {window: 4}}, {select: [2], attention: {rope: false}}",
    ),
    "mla latent norm eps": TINY_DEEPSEEK_V3.replace("v_head_dim: 8}", "v_head_dim: 8, latent_norm_eps: 1.0e-3}"),
    "norms after sublayers, moe and dense": variant(
        model="positions: {kind: rope}, norm: {placement: after_sublayer}, residual_multiplier: 0.5",
        attn="qk_norm: true, qk_norm_scope: projection",
        moe=True,
        overrides="{select: [0], ffn: dense}",
    ),
    "norms after sublayers, mla and mtp": TINY_DEEPSEEK_V3.replace(
        "eps: 1.0e-6}", "eps: 1.0e-6, placement: after_sublayer}"
    ),
    "selection bias parameter": variant(
        moe=True,
        router="score: sigmoid, normalize_topk: true, selection_bias: true, selection_bias_parameter: true",
        balance="balance: {bias_update_rate: 0.01}",
    ),
    "per-layer rope theta": variant(
        model="positions: {kind: rope, theta: 500000.0}",
        attn="n_kv_heads: 2",
        moe=True,
        overrides="{select: [0, 2], attention: {window: 4, rope_theta: 10000.0}}",
    ),
    "per-layer rope theta, yarn, mla, mtp": TINY_DEEPSEEK_V3.replace(
        "ffn: dense}]", "ffn: dense}, {select: [1], attention: {rope_theta: 50000.0}}]"
    ),
    "ntk alpha, partial rotary, per-layer theta": variant(
        model="positions: {kind: rope, rotary_dim: 4, scaling: {kind: ntk_alpha, alpha: 1000.0}}",
        attn="n_kv_heads: 2",
        extra="layers: {overrides: [{select: [1], attention: {rope_theta: 500.0}}]}\n",
    ),
    "yarn attention factor as a ratio, mla": TINY_DEEPSEEK_V3.replace("mscale: 1.0,", "mscale: 0.707,"),
    "mrope on text": variant(model="positions: {kind: rope, mrope_sections: [2, 1, 1], mrope_interleaved: true}"),
    "logit softcap": variant(model="positions: {kind: rope}, logit_softcap: 0.5", moe=True),
    "logit softcap after scaling, mtp": TINY_DEEPSEEK_V3.replace(
        "vocab_size: 64,", "vocab_size: 64, logit_softcap: 0.5, logits_scaling: 2.0,"
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_generated_model_matches_the_library(case, tmp_path):
    assert_generated_gives_the_library_outputs(CASES[case], tmp_path)


def test_a_selection_bias_parameter_trains_and_moves_alike(tmp_path):
    plan, lib, gen, _ = library_and_generated(CASES["selection bias parameter"], tmp_path)
    tokens = torch.randint(0, plan.vocab_size, (2, 12), generator=torch.Generator().manual_seed(1))
    logits, aux, out = run_both(lib, gen, tokens, train=True)
    (logits.square().mean() + aux.loss).backward()
    (out[0].square().mean() + out[1].loss).backward()
    lib.update_bias()
    gen.update_bias()
    for name, p in lib.named_parameters():
        q = gen.get_parameter(name)
        assert torch.equal(p, q), name
        assert (p.grad is None) == (q.grad is None) and (p.grad is None or torch.equal(p.grad, q.grad)), name
    assert lib.layers[0].ffn.router.expert_bias.grad is None


@pytest.mark.parametrize(
    "case,words",
    [
        ("partial rotary", ["x[..., :ROPE_DIM]", "ROPE_DIM = 4"]),
        ("mla latent norm eps", ["LATENT_NORM_EPS = 0.001", "make_norm(kv_lora_rank, LATENT_NORM_EPS)"]),
        (
            "norms after sublayers, moe and dense",
            ["x + RESIDUAL_MULTIPLIER * self.attn_norm(self.attn(x, rope, cache, positions))"],
        ),
        ("selection bias parameter", ["self.expert_bias = nn.Parameter(torch.zeros(n_experts, dtype=torch.float32))"]),
        (
            "per-layer rope theta",
            [
                "ROPE_TABLES = ((ROPE_THETA, ROPE_DIM), (10000.0, ROPE_DIM))",
                "layer_rope = ropes[block.attn.rope_theta, block.attn.rotary_dim]",
            ],
        ),
        ("ntk alpha, partial rotary, per-layer theta", ["ROPE_NTK_ALPHA = 1000.0"]),
        (
            "yarn attention factor as a ratio, mla",
            ["ROPE_ATTENTION_FACTOR = yarn_mscale(ROPE_SCALING_FACTOR, 0.707) / yarn_mscale(ROPE_SCALING_FACTOR, 1.0)"],
        ),
        ("logit softcap", ["LOGIT_SOFTCAP = 0.5", "torch.tanh(logits / LOGIT_SOFTCAP) * LOGIT_SOFTCAP"]),
    ],
)
def test_the_source_names_a_feature_only_when_the_plan_uses_it(case, words):
    assert_named_only_with_the_feature(CASES[case], variant(attn="n_kv_heads: 2"), words)
