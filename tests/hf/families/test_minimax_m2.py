"""MiniMax-M2 (model_type minimax_m2): the release config's counts equal transformers' model on meta; a tiny random
checkpoint saved by transformers (q/k norms over whole projections, partial rotary, sigmoid routing with a
selection bias beside the router) loads with moec.from_hf to transformers' logits and router choices; the
generated model.py gives moec.nn's logits; MiniMax's own fields that transformers does not read are accepted
when they agree with what it builds and refused when they do not."""

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
    assert_generated_model_gives_the_library_logits,
    hf_counts,
    refused_fields,
    saved_checkpoint,
    tiny_hf,
)
from tests.hf.test_weights import TOKENS, assert_same  # noqa: E402

# MiniMaxAI/MiniMax-M2 config.json: the fields two public copies agree on (a Go port's fixture of the release
# config, and a vLLM plugin's test config of the same architecture, whose max_position_embeddings 204800 is a
# later release's: M2's 196608 is also transformers' MiniMaxM2Config default); auto_map and the fp8
# quantization_config left out. Published (model card): 230B total, 10B active parameters.
MINIMAX_M2 = {
    "architectures": ["MiniMaxM2ForCausalLM"],
    "model_type": "minimax_m2",
    "vocab_size": 200064,
    "hidden_size": 3072,
    "intermediate_size": 1536,
    "num_hidden_layers": 62,
    "num_attention_heads": 48,
    "num_key_value_heads": 8,
    "head_dim": 128,
    "max_position_embeddings": 196608,
    "num_local_experts": 256,
    "num_experts_per_tok": 8,
    "scoring_func": "sigmoid",
    "use_routing_bias": True,
    "use_mtp": True,
    "num_mtp_modules": 3,
    "mtp_transformer_layers": 1,
    "use_qk_norm": True,
    "qk_norm_type": "per_layer",
    "rotary_dim": 64,
    "rope_theta": 5000000,
    "hidden_act": "silu",
    "shared_intermediate_size": 0,
    "rms_norm_eps": 1e-06,
    "attention_dropout": 0.0,
    "router_jitter_noise": 0.0,
    "output_router_logits": False,
    "attention_bias": False,
    "tie_word_embeddings": False,
    "attn_type_list": [1] * 62,
}

# q/k norms over whole projections, 4 of each 16-dim head rotated, 8 experts top-2 by sigmoid with a selection
# bias that moves choices, always renormalised.
TINY = {
    "vocab_size": 128, "hidden_size": 64, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16,
    "max_position_embeddings": 64, "rms_norm_eps": 1e-5, "num_hidden_layers": 2, "intermediate_size": 16,
    "num_local_experts": 8, "num_experts_per_tok": 2, "rotary_dim": 4, "rope_theta": 1e4,
    "bos_token_id": 1, "eos_token_id": 2,
}  # fmt: skip

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_release_counts_equal_transformers_model_on_meta():
    params = analyze(hf_to_model(MINIMAX_M2)).params
    assert (params.total, params.active) == hf_counts(MINIMAX_M2)
    # 228.7B total; 11.0B active counting the input embedding and the untied head (10.4B without the embedding)
    assert round(params.total / 1e8) == 2287 and round(params.active / 1e8) == 110


def test_shipped_spec_is_the_import_of_the_release_config():
    assert plan_differences(load_model("minimax-m2"), hf_to_model(MINIMAX_M2)) == []


def test_release_config_as_transformers_saves_it_imports_to_the_same_plan():
    """save_pretrained's spelling: rope_parameters with partial_rotary_factor 0.5 beside rotary_dim 64."""
    saved = hf_model_on_meta(MINIMAX_M2).config.to_dict()
    assert saved["rope_parameters"]["partial_rotary_factor"] == 0.5 and saved["rotary_dim"] == 64
    assert plan_differences(hf_to_model(saved), hf_to_model(MINIMAX_M2)) == []


@pytest.mark.parametrize(
    "change,rotated",
    [
        ({}, 64),
        ({"rotary_dim": None}, 128),  # MiniMaxM2Config then sets no factor: whole heads
        ({"rotary_dim": 32}, 32),
        ({"rotary_dim": None, "rope_parameters": {"rope_theta": 5e6, "partial_rotary_factor": 0.25}}, 32),
    ],
)
def test_rotated_dims_are_transformers(change, rotated):
    cfg = {k: v for k, v in {**MINIMAX_M2, **change}.items() if v is not None}
    if "rope_parameters" in change:
        del cfg["rope_theta"]
    hf_dim = hf_model_on_meta(cfg).model.rotary_emb.inv_freq.numel() * 2
    assert hf_to_model(cfg).rope_dim == hf_dim == rotated


def test_fields_transformers_ignores_are_named_where_they_agree():
    text = import_hf_config(MINIMAX_M2)
    assert "scoring_func 'sigmoid': agrees (transformers ignores it)" in text
    assert "qk_norm_type 'per_layer': agrees" in text
    assert "attn_type_list all 1 (softmax attention): agrees" in text
    assert "transformers builds no MTP module (ignored)" in text


@pytest.mark.parametrize(
    "change,field",
    [
        ({"scoring_func": "softmax"}, "scoring_func"),
        ({"use_routing_bias": False}, "use_routing_bias"),
        ({"use_qk_norm": False}, "use_qk_norm"),
        ({"qk_norm_type": "per_head"}, "qk_norm_type"),
        ({"shared_intermediate_size": 512}, "shared_intermediate_size"),
        ({"attn_type_list": [0] + [1] * 61}, "attn_type_list"),  # MiniMax-01's lightning attention
        ({"attn_type_list": [1] * 61}, "attn_type_list"),
        ({"rope_parameters": {"rope_theta": 5e6, "partial_rotary_factor": 0.25}}, "rotary_dim"),  # 32 vs 64
        ({"router_jitter_noise": 0.1}, "router_jitter_noise"),  # jitter on the experts' input too
    ],
)
def test_fields_that_disagree_with_what_transformers_runs_are_refused(change, field):
    cfg = {**MINIMAX_M2, **change}
    if "rope_parameters" in change:
        del cfg["rope_theta"]
    assert refused_fields(cfg) == [field]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    hf = tiny_hf("minimax_m2", TINY)
    return saved_checkpoint(hf, tmp_path_factory, "minimax_m2")


def test_tiny_checkpoint_gives_transformers_logits_and_router_choices(checkpoint):
    hf, folder = checkpoint
    model = moec.from_hf(folder)
    assert model.plan.rope_dim == 4 and hf.model.rotary_emb.inv_freq.numel() == 2
    assert assert_same(hf, model) <= 1e-4


def test_tiny_counts_equal_transformers_model_on_meta():
    params = analyze(hf_to_model({**TINY, "model_type": "minimax_m2"})).params
    assert (params.total, params.active) == hf_counts({**TINY, "model_type": "minimax_m2"})


def test_generated_model_py_gives_the_library_logits(checkpoint, tmp_path):
    model = moec.from_hf(checkpoint[1])
    assert_generated_model_gives_the_library_logits(model, TOKENS, tmp_path)
