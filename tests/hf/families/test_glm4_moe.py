"""GLM-4.5-Air (model_type glm4_moe): the release config's counts equal transformers' model on meta; a tiny random
checkpoint saved by transformers (partial rotary, q/k norms, q/k/v biases, group-limited sigmoid routing with a
selection bias) loads with moec.from_hf to transformers' logits and router choices; the generated model.py gives
moec.nn's logits; the partial rotary factor is read wherever transformers reads it, and its default is
Glm4MoeConfig's; the release's MTP layer tensors are let go as transformers lets them go."""

from __future__ import annotations

import pytest

from moec.analyze import analyze
from moec.hf import hf_to_model, import_hf_config
from moec.hf.config import plan_differences
from moec.spec import load_model
from tests.hf.configs import hf_model_on_meta

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import moec  # noqa: E402
from tests.hf.families._harness import (  # noqa: E402
    assert_a_release_mtp_layer_is_let_go,
    assert_generated_model_gives_the_library_logits,
    hf_counts,
    refused_fields,
    saved_checkpoint,
    tiny_hf,
)
from tests.hf.test_weights import TOKENS, assert_same  # noqa: E402

# zai-org/GLM-4.5-Air config.json, as a public ms-swift conversion log prints it (Glm4MoeConfig of
# /models/ZhipuAI/GLM-4.5-Air under transformers 4.54.1); architectures, dtype and token ids as there.
# Published (model card): 106B total, 12B active parameters.
GLM_4_5_AIR = {
    "architectures": ["Glm4MoeForCausalLM"],
    "attention_bias": True,
    "attention_dropout": 0.0,
    "eos_token_id": [151329, 151336, 151338],
    "first_k_dense_replace": 1,
    "head_dim": 128,
    "hidden_act": "silu",
    "hidden_size": 4096,
    "initializer_range": 0.02,
    "intermediate_size": 10944,
    "max_position_embeddings": 131072,
    "model_type": "glm4_moe",
    "moe_intermediate_size": 1408,
    "n_group": 1,
    "n_routed_experts": 128,
    "n_shared_experts": 1,
    "norm_topk_prob": True,
    "num_attention_heads": 96,
    "num_experts_per_tok": 8,
    "num_hidden_layers": 46,
    "num_key_value_heads": 8,
    "num_nextn_predict_layers": 1,
    "pad_token_id": 151329,
    "partial_rotary_factor": 0.5,
    "rms_norm_eps": 1e-05,
    "rope_scaling": None,
    "rope_theta": 1000000,
    "routed_scaling_factor": 1.0,
    "tie_word_embeddings": False,
    "topk_group": 1,
    "torch_dtype": "bfloat16",
    "transformers_version": "4.54.1",
    "use_cache": True,
    "use_qk_norm": False,
    "vocab_size": 151552,
}

# A dense first layer, group-limited sigmoid routing (4 groups, the best 2) with a selection bias that moves
# choices, renormalised and scaled weights, two shared experts fused into one MLP, q/k norms and q/k/v biases,
# and rotary positions on a quarter of each 16-dim head (4 rotated dims, 12 passed through).
TINY = {
    "vocab_size": 128, "hidden_size": 64, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16,
    "max_position_embeddings": 64, "rms_norm_eps": 1e-5, "num_hidden_layers": 3, "intermediate_size": 96,
    "first_k_dense_replace": 1, "n_routed_experts": 8, "n_shared_experts": 2, "moe_intermediate_size": 16,
    "num_experts_per_tok": 2, "n_group": 4, "topk_group": 2, "norm_topk_prob": True, "routed_scaling_factor": 2.5,
    "attention_bias": True, "use_qk_norm": True, "partial_rotary_factor": 0.25, "rope_theta": 1e4,
}  # fmt: skip

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_release_counts_equal_transformers_model_on_meta():
    params = analyze(hf_to_model(GLM_4_5_AIR)).params
    assert (params.total, params.active) == hf_counts(GLM_4_5_AIR)
    # 106.9B total; 13.4B active counting the input embedding and the untied head (the card's "12B" does not)
    assert round(params.total / 1e8) == 1069 and round(params.active / 1e8) == 134


def test_tiny_counts_equal_transformers_model_on_meta():
    """q/k norms, q/k/v biases (none on o_proj) and two fused shared experts, which the release does not have."""
    params = analyze(hf_to_model({**TINY, "model_type": "glm4_moe"})).params
    assert (params.total, params.active) == hf_counts({**TINY, "model_type": "glm4_moe"})


def test_shipped_spec_is_the_import_of_the_release_config():
    assert plan_differences(load_model("glm-4.5-air"), hf_to_model(GLM_4_5_AIR)) == []


def test_release_config_as_transformers_saves_it_imports_to_the_same_plan():
    """save_pretrained's spelling: rope_parameters holding the partial factor, the class defaults written out."""
    saved = hf_model_on_meta(GLM_4_5_AIR).config.to_dict()
    assert saved["rope_parameters"]["partial_rotary_factor"] == 0.5 and "partial_rotary_factor" not in saved
    assert plan_differences(hf_to_model(saved), hf_to_model(GLM_4_5_AIR)) == []


def test_partial_rotary_factor_is_read_where_transformers_reads_it():
    """Half of each 128-dim head rotates in the release; without the field, Glm4MoeConfig's 0.5; inside
    rope_parameters as transformers 5 writes it."""
    rotated = {"given": 64, "default": 64, "nested": 32}
    without = {k: v for k, v in GLM_4_5_AIR.items() if k != "partial_rotary_factor"}
    nested = {**without, "rope_theta": None, "rope_parameters": {"rope_theta": 1e6, "partial_rotary_factor": 0.25}}
    for name, cfg in (("given", GLM_4_5_AIR), ("default", without), ("nested", nested)):
        hf_dim = hf_model_on_meta(cfg).model.rotary_emb.inv_freq.numel() * 2  # transformers' rotated dims
        assert hf_to_model(cfg).rope_dim == hf_dim == rotated[name]
    assert "partial_rotary_factor unset: 0.5 (Glm4MoeConfig's default)" in import_hf_config(without)


@pytest.mark.parametrize(
    "change,field",
    [
        ({"scoring_func": "softmax"}, "scoring_func"),  # Glm4MoeTopkRouter ignores it: ambiguous
        ({"topk_method": "greedy"}, "topk_method"),
        ({"partial_rotary_factor": 1.5}, "partial_rotary_factor"),
        ({"rope_parameters": {"rope_theta": 1e6, "partial_rotary_factor": 0.25}}, "partial_rotary_factor"),
        ({"num_nextn_predict_layers": -1}, "num_nextn_predict_layers"),
        ({"hidden_act": "relu"}, "hidden_act"),  # a gated ReLU has no moec activation
    ],
)
def test_wrong_or_ambiguous_fields_are_refused_naming_them(change, field):
    assert refused_fields({**GLM_4_5_AIR, **change}) == [field]


def test_mtp_layers_are_named_as_ignored():
    assert "num_nextn_predict_layers 1: transformers builds none (ignored)" in import_hf_config(GLM_4_5_AIR)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    hf = tiny_hf("glm4_moe", TINY)
    return saved_checkpoint(hf, tmp_path_factory, "glm4_moe")


def test_tiny_checkpoint_gives_transformers_logits_and_router_choices(checkpoint):
    hf, folder = checkpoint
    model = moec.from_hf(folder)
    assert model.plan.rope_dim == 4  # the partial rotation is in the plan
    assert assert_same(hf, model) <= 1e-4


def test_a_release_style_mtp_layer_in_the_checkpoint_is_let_go(checkpoint, tmp_path):
    """GLM-4.5-Air stores its MTP layer as model.layers.46.*; transformers ignores it on load, so does moec.
    A tensor of any other unknown layer is still refused."""
    assert_a_release_mtp_layer_is_let_go(*checkpoint, tmp_path, mtp_layer=46)


def test_generated_model_py_gives_the_library_logits(checkpoint, tmp_path):
    model = moec.from_hf(checkpoint[1])
    assert_generated_model_gives_the_library_logits(model, TOKENS, tmp_path)
