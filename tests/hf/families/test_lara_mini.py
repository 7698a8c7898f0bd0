"""Lara-Mini (model_type lara_mini): Gated DeltaNet, sliding-window attention with RoPE and full attention without
positions, in a period of five; every layer MoE with an ungated shared expert. On the class defaults (no release
config is published) the analyzer's total and active equal transformers' model built on meta; a tiny
save_pretrained checkpoint (the delta net's fused in_proj and out_norm, split and renamed by the mapper) loads with
moec.from_hf to transformers' logits and router choices; what transformers would not run as said is refused."""

from __future__ import annotations

import pytest

from moec.analyze import analyze
from moec.hf import hf_to_model

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from safetensors.torch import load_file  # noqa: E402

import moec  # noqa: E402
from tests.hf.families._harness import (  # noqa: E402
    assert_table_holds_class_defaults,
    hf_counts,
    refused_fields,
    saved_checkpoint,
    tiny_hf,
)
from tests.hf.test_weights import assert_same  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CLASS_DEFAULTS = {"architectures": ["LaraMiniForCausalLM"], "model_type": "lara_mini"}


def test_class_default_counts_equal_transformers_model_on_meta():
    plan = hf_to_model(CLASS_DEFAULTS)
    params = analyze(plan).params
    assert (params.total, params.active) == hf_counts(CLASS_DEFAULTS)
    kinds = [(lp.mixer_kind, lp.attention.window, lp.attention.rope) for lp in plan.layers[:5]]
    assert kinds == [
        ("gated_deltanet", None, True),
        ("attention", 512, True),
        ("gated_deltanet", None, True),
        ("attention", None, False),
        ("attention", 512, True),
    ]


@pytest.mark.parametrize(
    "change,field",
    [
        ({"layer_types": ["linear_attention"] * 33 + ["chunked_attention"]}, "layer_types"),
        ({"layer_types": ["linear_attention"] * 5}, "layer_types"),  # 5 entries for 34 layers
        ({"linear_num_key_heads": 6}, "linear_num_value_heads"),  # 16 value heads over 6 key heads
        ({"hidden_act": "gelu_new"}, "hidden_act"),  # the delta net's convolution is silu in moec
        ({"rope_parameters": {"rope_type": "default", "rope_theta": 1e4, "partial_rotary_factor": 0.5}},
         "partial_rotary_factor"),  # LaraMiniRotaryEmbedding rotates whole heads
    ],
)  # fmt: skip
def test_what_transformers_would_not_run_as_said_is_refused_located(change, field):
    assert field in refused_fields({**CLASS_DEFAULTS, **change})


# 5 layers, one period: GQA 4/2 heads of 16 with a window of 4 tokens on the sliding ones, the delta net with 2 key
# heads of 16 over 4 value heads of 8, top-2 of 8 experts, untied
TINY = {
    "hidden_size": 64, "num_hidden_layers": 5, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16,
    "vocab_size": 128, "moe_intermediate_size": 16, "shared_expert_intermediate_size": 24, "num_experts": 8,
    "num_experts_per_tok": 2, "linear_num_key_heads": 2, "linear_num_value_heads": 4, "linear_key_head_dim": 16,
    "linear_value_head_dim": 8, "sliding_window": 4, "max_position_embeddings": 64, "rms_norm_eps": 1e-5,
    "tie_word_embeddings": False, "eos_token_id": 1,
}  # fmt: skip


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return saved_checkpoint(tiny_hf("lara_mini", TINY), tmp_path_factory, "lara_mini")


def test_tiny_checkpoint_gives_transformers_logits_and_router_choices(checkpoint):
    hf, folder = checkpoint
    names = load_file(folder / "model.safetensors").keys()
    assert {"model.layers.0.linear_attn.in_proj.weight", "model.layers.0.linear_attn.out_norm.weight"} <= names
    model = moec.from_hf(folder)
    assert [lp.mixer_kind for lp in model.plan.layers] == ["gated_deltanet", "attention", "gated_deltanet"] + [
        "attention"
    ] * 2
    assert assert_same(hf, model) <= 1e-4


def test_defaults_are_transformers_class_defaults():
    from moec.hf.families.lara_mini import DEFAULTS

    assert_table_holds_class_defaults(DEFAULTS, transformers.LaraMiniConfig, at_least=20)
    assert DEFAULTS["default_theta"] == transformers.LaraMiniConfig.default_theta


def test_generated_model_py_gives_the_library_logits(checkpoint, tmp_path):
    from tests.hf.families._harness import assert_generated_model_gives_the_library_logits
    from tests.hf.test_weights import TOKENS

    assert_generated_model_gives_the_library_logits(moec.from_hf(checkpoint[1]), TOKENS, tmp_path)
