"""dots.llm1 (model_type dots1): the release config's counts equal transformers' model on meta; a tiny random
checkpoint saved by transformers loads with moec.from_hf to transformers' logits and router choices; the
generated model.py gives moec.nn's logits; the DeepSeek-style fields transformers' Dots1 does not read are
accepted when they agree with it and refused when they do not."""

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

# rednote-hilab/dots.llm1.inst config.json: the fields of the copy a public port's tests hold (a Rust port of
# dots1, "a trimmed dots.llm1.inst config carrying the fields the loader reads"; its mlx quantization block is
# left out, and n_group / topk_group, which it notes the release leaves null, are absent there as here).
# Published (model card): 142B total, 14B activated parameters.
DOTS_LLM1_INST = {
    "architectures": ["Dots1ForCausalLM"],
    "model_type": "dots1",
    "hidden_size": 4096,
    "num_hidden_layers": 62,
    "intermediate_size": 10944,
    "num_attention_heads": 32,
    "num_key_value_heads": 32,
    "rms_norm_eps": 1e-05,
    "vocab_size": 152064,
    "first_k_dense_replace": 1,
    "moe_intermediate_size": 1408,
    "n_routed_experts": 128,
    "n_shared_experts": 2,
    "num_experts_per_tok": 6,
    "norm_topk_prob": True,
    "routed_scaling_factor": 2.5,
    "max_position_embeddings": 32768,
    "rope_theta": 10000000,
    "scoring_func": "sigmoid",
    "attention_bias": False,
    "tie_word_embeddings": False,
    "eos_token_id": 151649,
}

# A dense first layer, group-limited sigmoid routing (4 groups, the best 2) with a selection bias that moves
# choices, renormalised and scaled weights, two shared experts fused into one MLP, q/k norms, and a sliding
# window of 4 (< the 12 test tokens) on the layers from max_window_layers on.
TINY = {
    "vocab_size": 128, "hidden_size": 64, "num_attention_heads": 4, "num_key_value_heads": 2,
    "max_position_embeddings": 64, "rms_norm_eps": 1e-5, "num_hidden_layers": 3, "intermediate_size": 96,
    "first_k_dense_replace": 1, "n_routed_experts": 8, "n_shared_experts": 2, "moe_intermediate_size": 16,
    "num_experts_per_tok": 2, "n_group": 4, "topk_group": 2, "norm_topk_prob": True, "routed_scaling_factor": 2.5,
    "sliding_window": 4, "max_window_layers": 2, "rope_theta": 1e4,
}  # fmt: skip

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_release_counts_equal_transformers_model_on_meta():
    params = analyze(hf_to_model(DOTS_LLM1_INST)).params
    assert (params.total, params.active) == hf_counts(DOTS_LLM1_INST)
    assert round(params.total / 1e9) == 143 and round(params.active / 1e9) == 14  # 142.8B, 14.0B


def test_shipped_spec_is_the_import_of_the_release_config():
    assert plan_differences(load_model("dots-llm1"), hf_to_model(DOTS_LLM1_INST)) == []


def test_release_config_as_transformers_saves_it_imports_to_the_same_plan():
    """save_pretrained's spelling: rope_parameters, layer_types, the class defaults written out."""
    saved = hf_model_on_meta(DOTS_LLM1_INST).config.to_dict()
    assert plan_differences(hf_to_model(saved), hf_to_model(DOTS_LLM1_INST)) == []


def test_fields_transformers_ignores_are_named_where_they_agree():
    text = import_hf_config({**DOTS_LLM1_INST, "topk_method": "noaux_tc", "use_sliding_window": False})
    score = next(line for line in text.splitlines() if line.strip().startswith("score:"))
    assert "scoring_func 'sigmoid', topk_method 'noaux_tc': agree; transformers ignores it" in score
    assert "use_sliding_window false: agrees (transformers ignores it)" in text


@pytest.mark.parametrize(
    "change,field",
    [
        ({"scoring_func": "softmax"}, "scoring_func"),
        ({"topk_method": "greedy"}, "topk_method"),
        ({"moe_layer_freq": 2}, "moe_layer_freq"),
        ({"use_sliding_window": True}, "use_sliding_window"),  # no layer slides: the switch says otherwise
        ({"n_group": 8, "topk_group": None}, "topk_group"),  # one of the pair null
    ],
)
def test_fields_that_disagree_with_what_transformers_runs_are_refused(change, field):
    assert refused_fields({**DOTS_LLM1_INST, **change}) == [field]


def test_null_groups_route_as_one_group():
    """The release's null n_group / topk_group: no group limit, the plan of transformers' default (1, 1)."""
    null = hf_to_model({**DOTS_LLM1_INST, "n_group": None, "topk_group": None})
    assert plan_differences(null, hf_to_model({**DOTS_LLM1_INST, "n_group": 1, "topk_group": 1})) == []


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    hf = tiny_hf("dots1", TINY)
    return saved_checkpoint(hf, tmp_path_factory, "dots1")


def test_tiny_checkpoint_gives_transformers_logits_and_router_choices(checkpoint):
    hf, folder = checkpoint
    model = moec.from_hf(folder)
    assert [lp.attention.window for lp in model.plan.layers] == [None, None, 4]  # the window bites
    assert assert_same(hf, model) <= 1e-4


def test_generated_model_py_gives_the_library_logits(checkpoint, tmp_path):
    model = moec.from_hf(checkpoint[1])
    assert_generated_model_gives_the_library_logits(model, TOKENS, tmp_path)
