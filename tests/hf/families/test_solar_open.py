"""Solar Open (model_type solar_open): the release config's counts equal transformers' model on meta; a tiny
random checkpoint saved by transformers (q/k/v biases, YaRN rotary, group-limited sigmoid routing with a selection
bias, fused shared experts) loads with moec.from_hf to transformers' logits and router choices; the generated
model.py gives moec.nn's logits; the GLM-4.5 fields SolarOpenConfig drops are accepted when they agree with what
transformers builds and refused when they do not."""

from __future__ import annotations

import pytest

from moec.analyze import analyze
from moec.hf import hf_to_model, import_hf_config
from moec.hf.config import plan_differences
from tests.hf.configs import hf_model_on_meta

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import moec  # noqa: E402
from tests.hf.families._harness import (  # noqa: E402
    assert_generated_model_gives_the_library_logits,
    hf_counts,
    refused_fields,
    saved_checkpoint,
    tiny_hf,
)
from tests.hf.test_weights import TOKENS, assert_same  # noqa: E402

# upstage/Solar-Open-100B config.json: the slice a public MLX port's tests copy as "a faithful slice of the real
# config.json" (n_group, topk_group, use_qk_norm and attention_bias absent, as there), with architectures and
# hidden_act as a Neuron port's test config "matching actual upstage/Solar-Open-100B config" gives them.
SOLAR_OPEN_100B = {
    "architectures": ["SolarOpenForCausalLM"],
    "model_type": "solar_open",
    "partial_rotary_factor": 1.0,
    "hidden_act": "silu",
    "hidden_size": 4096,
    "num_hidden_layers": 48,
    "num_attention_heads": 64,
    "head_dim": 128,
    "num_key_value_heads": 8,
    "vocab_size": 196608,
    "intermediate_size": 10240,
    "moe_intermediate_size": 1280,
    "rms_norm_eps": 1e-05,
    "rope_theta": 1000000,
    "max_position_embeddings": 131072,
    "n_routed_experts": 128,
    "n_shared_experts": 1,
    "norm_topk_prob": True,
    "routed_scaling_factor": 1.0,
    "num_experts_per_tok": 8,
    "tie_word_embeddings": False,
    "first_k_dense_replace": 0,
    "rope_scaling": {"type": "yarn", "factor": 2.0, "original_max_position_embeddings": 65536},
}

# q/k/v biases, YaRN (factor 2 over 32 positions), 8 experts in 4 groups (the best 2), a selection bias that
# moves choices, renormalised weights scaled by 2.5, two shared experts fused into one MLP.
TINY = {
    "vocab_size": 128, "hidden_size": 64, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16,
    "max_position_embeddings": 64, "rms_norm_eps": 1e-5, "num_hidden_layers": 2, "n_routed_experts": 8,
    "n_shared_experts": 2, "moe_intermediate_size": 16, "num_experts_per_tok": 2, "n_group": 4, "topk_group": 2,
    "norm_topk_prob": True, "routed_scaling_factor": 2.5, "attention_bias": True,
    "rope_parameters": {"rope_type": "yarn", "rope_theta": 1e4, "factor": 2.0, "original_max_position_embeddings": 32},
}  # fmt: skip

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_release_counts_equal_transformers_model_on_meta():
    params = analyze(hf_to_model(SOLAR_OPEN_100B)).params
    assert (params.total, params.active) == hf_counts(SOLAR_OPEN_100B)
    # 102.7B total (the card's "100B"); 12.1B active counting the input embedding and the untied head
    assert round(params.total / 1e8) == 1027 and round(params.active / 1e8) == 121


def test_tiny_counts_equal_transformers_model_on_meta():
    cfg = {**TINY, "model_type": "solar_open"}
    params = analyze(hf_to_model(cfg)).params
    assert (params.total, params.active) == hf_counts(cfg)


def test_release_config_as_transformers_saves_it_imports_to_the_same_plan():
    """save_pretrained's spelling: rope_parameters, the dropped GLM-4.5 fields kept as given."""
    saved = hf_model_on_meta(SOLAR_OPEN_100B).config.to_dict()
    assert saved["rope_parameters"]["rope_type"] == "yarn"
    assert plan_differences(hf_to_model(saved), hf_to_model(SOLAR_OPEN_100B)) == []


def test_fields_transformers_ignores_are_named():
    text = import_hf_config({**SOLAR_OPEN_100B, "use_qk_norm": False})
    assert "intermediate_size 10240: SolarOpenConfig drops it, nothing has that width; ignored" in text
    assert "first_k_dense_replace 0: agrees; transformers ignores it" in text
    assert "use_qk_norm false: agrees (transformers ignores it)" in text


@pytest.mark.parametrize(
    "change,field",
    [
        ({"first_k_dense_replace": 1}, "first_k_dense_replace"),  # GLM-4.5's code would build a dense layer
        ({"use_qk_norm": True}, "use_qk_norm"),
        ({"partial_rotary_factor": 0.5}, "partial_rotary_factor"),  # transformers' forward fails on it
        ({"scoring_func": "softmax"}, "scoring_func"),
    ],
)
def test_fields_that_disagree_with_what_transformers_runs_are_refused(change, field):
    assert refused_fields({**SOLAR_OPEN_100B, **change}) == [field]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    hf = tiny_hf("solar_open", TINY)
    return saved_checkpoint(hf, tmp_path_factory, "solar_open")


def test_tiny_checkpoint_gives_transformers_logits_and_router_choices(checkpoint):
    hf, folder = checkpoint
    model = moec.from_hf(folder)
    assert model.plan.positions.scaling.kind == "yarn"
    assert assert_same(hf, model) <= 1e-4


def test_generated_model_py_gives_the_library_logits(checkpoint, tmp_path):
    model = moec.from_hf(checkpoint[1])
    assert_generated_model_gives_the_library_logits(model, TOKENS, tmp_path)
