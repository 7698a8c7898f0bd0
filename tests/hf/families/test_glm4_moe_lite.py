"""GLM-4.7-Flash (model_type glm4_moe_lite): the release config's counts equal transformers' model on meta; a tiny
random checkpoint saved by transformers (MLA with interleaved rotary and latent norms at eps 1e-6 under a model eps
of 1e-5, group-limited sigmoid routing with a selection bias, fused shared experts, a dense first layer) loads with
moec.from_hf to transformers' logits and router choices; the generated model.py gives moec.nn's logits; the
release's first_k_dense_replace and MTP layer are handled as transformers handles them."""

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
    assert_a_release_mtp_layer_is_let_go,
    assert_generated_model_gives_the_library_logits,
    hf_counts,
    refused_fields,
    saved_checkpoint,
    tiny_hf,
)
from tests.hf.test_weights import TOKENS, assert_same  # noqa: E402

# zai-org/GLM-4.7-Flash config.json: the copy in vLLM's test of its glm4_moe_lite config shim (its comment: "the
# checkpoint uses a list" of eos ids), plus num_nextn_predict_layers 1, which other public copies of the release
# config carry (a Rust port's metadata test, a tensor-inventory test). Published: 30B total, 3B active ("30B-A3B").
GLM_4_7_FLASH = {
    "model_type": "glm4_moe_lite",
    "architectures": ["Glm4MoeLiteForCausalLM"],
    "vocab_size": 154880,
    "hidden_size": 2048,
    "intermediate_size": 10240,
    "moe_intermediate_size": 1536,
    "num_hidden_layers": 47,
    "num_attention_heads": 20,
    "num_key_value_heads": 20,
    "hidden_act": "silu",
    "rms_norm_eps": 1e-5,
    "attention_dropout": 0.0,
    "attention_bias": False,
    "max_position_embeddings": 202752,
    "rope_theta": 1_000_000.0,
    "rope_scaling": None,
    "partial_rotary_factor": 1.0,
    "q_lora_rank": 768,
    "kv_lora_rank": 512,
    "qk_nope_head_dim": 192,
    "qk_rope_head_dim": 64,
    "v_head_dim": 256,
    "n_routed_experts": 64,
    "n_shared_experts": 1,
    "num_experts_per_tok": 4,
    "norm_topk_prob": True,
    "routed_scaling_factor": 1.8,
    "n_group": 1,
    "topk_group": 1,
    "topk_method": "noaux_tc",
    "first_k_dense_replace": 1,
    "tie_word_embeddings": False,
    "dtype": "bfloat16",
    "pad_token_id": 154820,
    "eos_token_id": [154820, 154827, 154829],
    "num_nextn_predict_layers": 1,
}

# MLA (q latent 24, kv latent 16, 8 nope + 8 interleaved rope dims, v 8), a model eps of 1e-5 beside the latent
# norms' 1e-6, a dense first layer, 8 experts in 4 groups (the best 2) by sigmoid with a selection bias, two shared
# experts fused, renormalised weights scaled by 1.8.
TINY = {
    "vocab_size": 128, "hidden_size": 64, "num_attention_heads": 4, "num_key_value_heads": 4,
    "max_position_embeddings": 64, "rms_norm_eps": 1e-5, "num_hidden_layers": 3, "intermediate_size": 96,
    "q_lora_rank": 24, "kv_lora_rank": 16, "qk_nope_head_dim": 8, "qk_rope_head_dim": 8, "v_head_dim": 8,
    "n_routed_experts": 8, "n_shared_experts": 2, "moe_intermediate_size": 16, "num_experts_per_tok": 2,
    "n_group": 4, "topk_group": 2, "norm_topk_prob": True, "routed_scaling_factor": 1.8, "rope_theta": 1e4,
}  # fmt: skip

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_release_counts_equal_transformers_model_on_meta():
    params = analyze(hf_to_model(GLM_4_7_FLASH)).params
    assert (params.total, params.active) == hf_counts(GLM_4_7_FLASH)
    # 29.9B total; 3.9B active counting the input embedding and the untied head (the card's "A3B" does not)
    assert round(params.total / 1e8) == 299 and round(params.active / 1e8) == 39


def test_tiny_counts_equal_transformers_model_on_meta():
    cfg = {**TINY, "model_type": "glm4_moe_lite"}
    params = analyze(hf_to_model(cfg)).params
    assert (params.total, params.active) == hf_counts(cfg)


def test_release_config_as_transformers_saves_it_imports_to_the_same_plan():
    """save_pretrained's spelling: rope_parameters, mlp_layer_types written out, the release's extra fields kept."""
    saved = hf_model_on_meta(GLM_4_7_FLASH).config.to_dict()
    assert saved["mlp_layer_types"] == ["dense"] + ["sparse"] * 46
    assert plan_differences(hf_to_model(saved), hf_to_model(GLM_4_7_FLASH)) == []


def test_release_fields_transformers_ignores_are_named():
    text = import_hf_config(GLM_4_7_FLASH)
    assert "first_k_dense_replace 1: agrees; transformers ignores it" in text
    assert "num_nextn_predict_layers 1: transformers builds none (ignored)" in text


@pytest.mark.parametrize(
    "change,field",
    [
        ({"first_k_dense_replace": 2}, "first_k_dense_replace"),  # mlp_layer_types' default has one dense layer
        ({"mlp_layer_types": ["sparse"] * 47}, "first_k_dense_replace"),
        ({"mlp_layer_types": ["dense"] * 46}, "mlp_layer_types"),
        ({"rope_interleave": False}, "rope_interleave"),
        ({"attention_bias": True}, "attention_bias"),
        ({"partial_rotary_factor": 0.5}, "partial_rotary_factor"),
        ({"num_key_value_heads": 4}, "num_key_value_heads"),
        ({"scoring_func": "softmax"}, "scoring_func"),
    ],
)
def test_fields_moec_cannot_follow_or_that_disagree_are_refused(change, field):
    assert refused_fields({**GLM_4_7_FLASH, **change}) == [field]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    hf = tiny_hf("glm4_moe_lite", TINY)
    return saved_checkpoint(hf, tmp_path_factory, "glm4_moe_lite")


def test_tiny_checkpoint_gives_transformers_logits_and_router_choices(checkpoint):
    hf, folder = checkpoint
    model = moec.from_hf(folder)
    assert [lp.ffn for lp in model.plan.layers][0] != [lp.ffn for lp in model.plan.layers][1]  # dense, then MoE
    assert assert_same(hf, model) <= 1e-4


def test_a_release_style_mtp_layer_in_the_checkpoint_is_let_go(checkpoint, tmp_path):
    """GLM-4.7-Flash stores its MTP layer as model.layers.47.*; transformers ignores it on load, so does moec.
    A tensor of any other unknown layer is still refused."""
    assert_a_release_mtp_layer_is_let_go(*checkpoint, tmp_path, mtp_layer=47)


def test_generated_model_py_gives_the_library_logits(checkpoint, tmp_path):
    model = moec.from_hf(checkpoint[1])
    assert_generated_model_gives_the_library_logits(model, TOKENS, tmp_path)
