"""LFM2-MoE (model_type lfm2_moe, LFM2-8B-A1B): the release config's counts equal transformers' model on meta, and so
do the shipped spec's; a tiny random checkpoint (short convolutions with biases, GQA with q/k norms, a dense layer,
sigmoid routing with a selection bias) loads with moec.from_hf to transformers' logits and router choices, a cached
decode included, and the generated model.py gives moec.nn's logits; import → export → import is the identity; what
transformers cannot build is refused by field."""

from __future__ import annotations

import pytest

from moec.analyze import analyze
from moec.hf import hf_to_model
from moec.hf.config import export_hf_config, plan_differences
from moec.spec import load_model
from tests.conftest import SPECS
from tests.hf.configs import hf_model_on_meta

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from safetensors.torch import load_file  # noqa: E402

import moec  # noqa: E402
from tests.hf.families._harness import (  # noqa: E402
    assert_generated_model_gives_the_library_logits,
    away_from_init,
    hf_counts,
    refused_fields,
    saved_checkpoint,
    tiny_hf,
)
from tests.hf.test_weights import TOKENS, _write_state_dict, assert_same  # noqa: E402

# LiquidAI/LFM2-8B-A1B config.json as two public reimplementations quote it (Rust and Swift ports' test fixtures
# agree field for field; the model card: 8.3B total, 1.5B active parameters); token ids left out.
# fmt: off
LAYER_TYPES = [
    "conv", "conv", "full_attention", "conv", "conv", "conv", "full_attention", "conv", "conv", "conv",
    "full_attention", "conv", "conv", "conv", "full_attention", "conv", "conv", "conv", "full_attention", "conv",
    "conv", "full_attention", "conv", "conv",
]
# fmt: on
LFM2_8B_A1B = {
    "architectures": ["Lfm2MoeForCausalLM"],
    "model_type": "lfm2_moe",
    "vocab_size": 65536,
    "hidden_size": 2048,
    "intermediate_size": 7168,
    "moe_intermediate_size": 1792,
    "num_hidden_layers": 24,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "max_position_embeddings": 128000,
    "norm_eps": 1e-05,
    "conv_bias": False,
    "conv_L_cache": 3,
    "rope_theta": 1000000.0,
    "num_dense_layers": 2,
    "num_experts": 32,
    "num_experts_per_tok": 4,
    "norm_topk_prob": True,
    "use_expert_bias": True,
    "routed_scaling_factor": 1.0,
    "layer_types": LAYER_TYPES,
}
ATTENTION_LAYERS = [2, 6, 10, 14, 18, 21]

# conv, attention, conv, conv: a dense first layer, then MoE; 4 conv taps with biases; untied head; 12 test tokens
TINY = {
    "vocab_size": 128, "hidden_size": 32, "intermediate_size": 48, "moe_intermediate_size": 16,
    "num_hidden_layers": 4, "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 64,
    "num_dense_layers": 1, "num_experts": 8, "num_experts_per_tok": 2, "conv_L_cache": 4, "conv_bias": True,
    "layer_types": ["conv", "full_attention", "conv", "conv"], "routed_scaling_factor": 1.5,
    "tie_word_embeddings": False,
}  # fmt: skip

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_layer_types_as_written_are_the_release_pattern():
    assert [i for i, t in enumerate(LAYER_TYPES) if t == "full_attention"] == ATTENTION_LAYERS and len(
        LAYER_TYPES
    ) == 24


def test_release_counts_equal_transformers_model_on_meta():
    params = analyze(hf_to_model(LFM2_8B_A1B)).params
    assert (params.total, params.active) == hf_counts(LFM2_8B_A1B, experts=".feed_forward.experts.")
    assert round(params.total / 1e8) == 83 and round(params.active / 1e8) == 16  # 8.34B, 1.56B (card: 8.3B, 1.5B)
    # a head_dim the config gives is the attention's (Lfm2MoeConfig has no such field; its attention reads it)
    wide = {**LFM2_8B_A1B, "head_dim": 128}
    params = analyze(hf_to_model(wide)).params
    assert (params.total, params.active) == hf_counts(wide, experts=".feed_forward.experts.")


def test_shipped_spec_is_the_release_config():
    spec = load_model(str(SPECS / "lfm2-8b-a1b.yaml"))
    assert plan_differences(spec, hf_to_model(LFM2_8B_A1B)) == []
    assert (analyze(spec).params.total, analyze(spec).params.active) == hf_counts(
        LFM2_8B_A1B, experts=".feed_forward.experts."
    )


def test_release_config_as_transformers_saves_it_imports_to_the_same_plan():
    saved = hf_model_on_meta(LFM2_8B_A1B).config.to_dict()
    assert plan_differences(hf_to_model(saved), hf_to_model(LFM2_8B_A1B)) == []


def test_mixers_layers_and_state_of_the_release():
    plan = hf_to_model(LFM2_8B_A1B)
    assert [i for i, lp in enumerate(plan.layers) if lp.mixer_kind == "attention"] == ATTENTION_LAYERS
    assert {lp.mixer_kind for lp in plan.layers} == {"attention", "short_conv"}
    assert [lp.ffn.kind for lp in plan.layers[:3]] == ["dense", "dense", "moe"]
    memory = analyze(plan).memory
    # 18 convolution layers keep the last conv_L_cache − 1 = 2 inputs of 2048 channels, bf16; 6 attention layers
    # cache 2·8 KV heads of 64 per token
    assert memory.state_bytes_per_sequence == 18 * 2048 * 2 * 2
    assert memory.kv_cache_bytes_per_token == 6 * 2 * 8 * 64 * 2


def test_older_tie_embedding_is_tie_word_embeddings():
    """Lfm2MoeConfig takes LFM2's older name for the field (tie_embedding) in place of tie_word_embeddings."""
    assert hf_to_model({**LFM2_8B_A1B, "tie_embedding": False}).tie_embeddings is False
    assert hf_model_on_meta({**LFM2_8B_A1B, "tie_embedding": False}).config.tie_word_embeddings is False


def test_import_export_import_gives_the_identical_plan_and_transformers_builds_it():
    plan = hf_to_model(LFM2_8B_A1B)
    exported = export_hf_config(plan)
    assert exported["model_type"] == "lfm2_moe" and exported["layer_types"] == LAYER_TYPES
    assert plan_differences(plan, hf_to_model(exported)) == []
    assert hf_counts(exported, experts=".feed_forward.experts.") == (analyze(plan).params.total, plan_active(plan))


def plan_active(plan) -> int:
    return analyze(plan).params.active


@pytest.mark.parametrize(
    "change,field",
    [
        ({"layer_types": None}, "layer_types"),  # Lfm2MoeConfig has no default: its model cannot be built
        ({"layer_types": ["sliding_attention"] + LAYER_TYPES[1:]}, "layer_types"),  # transformers' mask has none
        ({"layer_types": LAYER_TYPES[:-1]}, "layer_types"),  # 23 entries for 24 layers
        ({"conv_L_cache": 0}, "conv_L_cache"),
        ({"hidden_act": "gelu"}, "hidden_act"),  # transformers ignores it (silu in code): not guessed
        ({"tie_embedding": False, "tie_word_embeddings": True}, "tie_embedding"),  # an alias that disagrees
    ],
)
def test_fields_transformers_cannot_build_or_would_build_otherwise_are_refused(change, field):
    assert refused_fields({**LFM2_8B_A1B, **change}) == [field]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    hf = tiny_hf("lfm2_moe", TINY)
    away_from_init(hf, small_biases=True)  # biases near 1 on every conv would route every token alike
    with torch.no_grad():  # the selection bias, a buffer away_from_init leaves at zero, large enough to change choices
        g = torch.Generator().manual_seed(2)
        for name, b in hf.named_buffers():
            if name.endswith("expert_bias"):
                b.copy_(torch.randn(b.shape, generator=g) * 0.1)
    return saved_checkpoint(hf, tmp_path_factory, "lfm2_moe")


def test_tiny_checkpoint_gives_transformers_logits_and_router_choices(checkpoint):
    hf, folder = checkpoint
    names = load_file(folder / "model.safetensors")
    assert "model.layers.0.conv.conv.bias" in names and "model.layers.2.feed_forward.expert_bias" in names
    model = moec.from_hf(folder)
    assert [lp.mixer_kind for lp in model.plan.layers] == ["short_conv", "attention", "short_conv", "short_conv"]
    assert assert_same(hf, model) <= 1e-4


def test_in_memory_layout_loads_to_the_same_logits(checkpoint, tmp_path):
    """transformers' in-memory state dict: the experts stacked (feed_forward.experts.gate_up_proj)."""
    hf, _ = checkpoint
    folder = _write_state_dict(hf, tmp_path / "stacked")
    assert "model.layers.2.feed_forward.experts.gate_up_proj" in load_file(folder / "model.safetensors")
    assert_same(hf, moec.from_hf(folder))


def test_cached_decode_gives_transformers_logits(checkpoint):
    """A prefill of 8 tokens, then one token at a time: each step's logits are transformers' for the whole
    sequence at that position (the convolution's state and the attention's KV cache carry the context)."""
    hf, folder = checkpoint
    model = moec.from_hf(folder)
    with torch.no_grad():
        want = hf(TOKENS).logits
        cache = model.new_cache(TOKENS.shape[0], TOKENS.shape[1])
        steps = [model(TOKENS[:, :8], cache=cache, start=0)[0]]
        steps += [model(TOKENS[:, t : t + 1], cache=cache, start=t)[0] for t in range(8, TOKENS.shape[1])]
    assert (torch.cat(steps, dim=1) - want).abs().max().item() <= 1e-4


def test_generated_model_py_gives_the_library_logits(checkpoint, tmp_path):
    model = moec.from_hf(checkpoint[1])
    assert_generated_model_gives_the_library_logits(model, TOKENS, tmp_path)
