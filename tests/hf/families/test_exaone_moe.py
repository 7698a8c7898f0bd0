"""EXAONE-MoE (model_type exaone_moe, K-EXAONE): the release config's counts equal transformers' model on meta;
a tiny random checkpoint loads with moec.from_hf to transformers' logits and router choices, NoPE global layers
and the selection bias under K-EXAONE's name included; the generated model.py gives moec.nn's logits."""

from __future__ import annotations

import pytest

from moec.analyze import analyze
from moec.hf import hf_to_model, import_hf_config
from moec.hf.config import plan_differences
from tests.hf.configs import hf_model_on_meta

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from safetensors.torch import load_file, save_file  # noqa: E402

import moec  # noqa: E402
from tests.hf.families._harness import (  # noqa: E402
    assert_generated_model_gives_the_library_logits,
    hf_counts,
    refused_fields,
    saved_checkpoint,
    tiny_hf,
)
from tests.hf.test_weights import TOKENS, assert_same  # noqa: E402

# LGAI-EXAONE/K-EXAONE-236B-A23B config.json, assembled from two public copies: the sizes of the TensorRT-LLM
# test config written from it (hidden 6144, 64 heads, 8 KV heads, head_dim 128, intermediate 18432, 128
# experts of 2048, top-8, 1 shared, vocab 153600, theta 1e6, 262144 positions, pattern "LLLG"; trimmed there to
# 4 layers and a window of 4) and the model card (48 main layers, a 128-token window, 3:1 sliding:global,
# 236B total and 23B activated parameters, 234B without embeddings), spelt as transformers' ExaoneMoeConfig
# spells them (layer_types and mlp_layer_types written out, as a port's test fixture of this family does).
K_EXAONE = {
    "architectures": ["ExaoneMoeForCausalLM"],
    "model_type": "exaone_moe",
    "vocab_size": 153600,
    "hidden_size": 6144,
    "intermediate_size": 18432,
    "moe_intermediate_size": 2048,
    "num_hidden_layers": 48,
    "num_attention_heads": 64,
    "num_key_value_heads": 8,
    "head_dim": 128,
    "num_experts": 128,
    "num_experts_per_tok": 8,
    "num_shared_experts": 1,
    "rms_norm_eps": 1e-05,
    "max_position_embeddings": 262144,
    "sliding_window": 128,
    "sliding_window_pattern": "LLLG",
    "layer_types": ["sliding_attention", "sliding_attention", "sliding_attention", "full_attention"] * 12,
    "mlp_layer_types": ["dense"] + ["sparse"] * 47,
    "first_k_dense_replace": 1,
    "n_group": 1,
    "topk_group": 1,
    "routed_scaling_factor": 2.5,
    "norm_topk_prob": True,
    "scoring_func": "sigmoid",
    "topk_method": "noaux_tc",
    "rope_parameters": {"rope_theta": 1000000, "rope_type": "default"},
    "tie_word_embeddings": False,
    "bos_token_id": 1,
    "eos_token_id": 53,
    "pad_token_id": 0,
}

# Sliding layers 0 and 2 (window 4 < the 12 test tokens, with rope), global NoPE layers 1 and 3, a dense first
# layer from first_k_dense_replace, group-limited sigmoid routing with a selection bias, one shared expert.
TINY = {
    "vocab_size": 128, "hidden_size": 64, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16,
    "max_position_embeddings": 64, "rms_norm_eps": 1e-5, "num_hidden_layers": 4, "intermediate_size": 96,
    "sliding_window": 4, "sliding_window_pattern": 2, "first_k_dense_replace": 1, "num_experts": 8,
    "num_experts_per_tok": 2, "n_group": 4, "topk_group": 2, "moe_intermediate_size": 16, "num_shared_experts": 1,
    "routed_scaling_factor": 2.5, "norm_topk_prob": True,
}  # fmt: skip

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_release_counts_equal_transformers_model_on_meta():
    params = analyze(hf_to_model(K_EXAONE)).params
    assert (params.total, params.active) == hf_counts(K_EXAONE)
    assert round(params.total / 1e9) == 237 and round(params.active / 1e9) == 24  # 236.6B, 23.7B (card: 236B, 23B)
    assert round((params.total - 2 * 153600 * 6144) / 1e9) == 235  # 234.7B without the untied embeddings


def test_release_config_as_transformers_saves_it_imports_to_the_same_plan():
    saved = hf_model_on_meta(K_EXAONE).config.to_dict()
    assert plan_differences(hf_to_model(saved), hf_to_model(K_EXAONE)) == []


def test_global_layers_have_no_window_and_no_rope():
    layers = hf_to_model(K_EXAONE).layers
    assert [(lp.attention.window, lp.attention.rope) for lp in layers[:4]] == [(128, True)] * 3 + [(None, False)]
    assert [lp.ffn.kind for lp in layers[:2]] == ["dense", "moe"]


def test_pre_transformers_layer_fields_that_agree_are_named_and_change_nothing():
    """is_moe_layer and first_last_k_dense_replace, as the TensorRT-LLM copy of the config spells the layers."""
    older = {**K_EXAONE, "is_moe_layer": [False] + [True] * 47, "first_last_k_dense_replace": 1}
    assert plan_differences(hf_to_model(older), hf_to_model(K_EXAONE)) == []
    note = next(line for line in import_hf_config(older).splitlines() if "ffn: moe" in line)
    assert "is_moe_layer: agrees; transformers ignores it" in note and "first_last_k_dense_replace: agrees" in note


@pytest.mark.parametrize(
    "change,field",
    [
        ({"layer_types": None}, "sliding_window_pattern"),  # "LLLG": transformers' (i+1) % pattern fails
        ({"sliding_window": None}, "sliding_window"),  # ExaoneMoeConfig requires an integer
        ({"mlp_layer_types": ["dense"] + ["moe"] * 47}, "mlp_layer_types"),  # transformers builds a dense MLP
        ({"scoring_func": "softmax"}, "scoring_func"),
        ({"attention_bias": True}, "attention_bias"),  # ExaoneMoeAttention has none; not read, so not guessed
        ({"is_moe_layer": [True] * 48}, "is_moe_layer"),  # layer 0 is a dense MLP in transformers
        ({"first_last_k_dense_replace": 2}, "first_last_k_dense_replace"),
    ],
)
def test_fields_transformers_cannot_build_or_would_build_otherwise_are_refused(change, field):
    assert refused_fields({**K_EXAONE, **change}) == [field]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    hf = tiny_hf("exaone_moe", TINY)
    return saved_checkpoint(hf, tmp_path_factory, "exaone_moe")


def test_tiny_checkpoint_gives_transformers_logits_and_router_choices(checkpoint):
    hf, folder = checkpoint
    assert "model.layers.1.mlp.e_score_correction_bias" in load_file(folder / "model.safetensors")  # K-EXAONE's name
    model = moec.from_hf(folder)
    assert [(lp.attention.window, lp.attention.rope) for lp in model.plan.layers] == [(4, True), (None, False)] * 2
    assert assert_same(hf, model) <= 1e-4


def test_in_memory_names_and_an_mtp_layer_load_to_the_same_logits(checkpoint, tmp_path):
    """transformers' in-memory layout (stacked experts, the bias under the router) loads too; K-EXAONE's mtp.*
    tensors are let go, as transformers lets them go."""
    hf, folder = checkpoint
    tensors = {k: v.detach().clone().contiguous() for k, v in hf.state_dict().items()}
    assert "model.layers.1.mlp.gate.e_score_correction_bias" in tensors
    tensors["mtp.0.eh_proj.weight"] = torch.zeros(64, 128)
    (tmp_path / "config.json").write_text((folder / "config.json").read_text())
    save_file(tensors, tmp_path / "model.safetensors")
    assert_same(hf, moec.from_hf(tmp_path))


def test_generated_model_py_gives_the_library_logits(checkpoint, tmp_path):
    model = moec.from_hf(checkpoint[1])
    assert_generated_model_gives_the_library_logits(model, TOKENS, tmp_path)
