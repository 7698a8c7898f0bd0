"""FlexOlmo (model_type flex_olmo): the release config's counts equal transformers' model on meta; a tiny random
checkpoint saved by transformers loads with moec.from_hf to transformers' logits and router choices (norms after
each sublayer, whole-projection q/k norms); the generated model.py gives moec.nn's logits; a sliding window,
which transformers' FlexOlmo ignores, is refused."""

from __future__ import annotations

import pytest

from moec.analyze import analyze
from moec.errors import SpecError
from moec.hf import hf_to_model
from moec.hf.config import plan_differences
from tests.hf.configs import hf_model_on_meta

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import moec  # noqa: E402
from tests.hf.families._harness import (  # noqa: E402
    assert_generated_model_gives_the_library_logits,
    hf_counts,
    saved_checkpoint,
    tiny_hf,
)
from tests.hf.test_weights import TOKENS, assert_same  # noqa: E402

# allenai/FlexOlmo-7x7B-1T config.json, the architectural fields as a public analysis of the release reports them
# (OLMo 2 7B's block: 32 layers, d 4096, FFN 11008, 32-head MHA, vocab 100352, rope theta 5e5; num_experts 7,
# num_experts_per_tok 7, norm_topk_prob false); the rest are OLMo 2 7B's (max_position_embeddings 4096,
# rms_norm_eps 1e-6). Published (model card): 33B total; every expert is active.
FLEXOLMO_7X7B = {
    "architectures": ["FlexOlmoForCausalLM"],
    "model_type": "flex_olmo",
    "vocab_size": 100352,
    "hidden_size": 4096,
    "intermediate_size": 11008,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 32,
    "max_position_embeddings": 4096,
    "rms_norm_eps": 1e-06,
    "rope_theta": 500000,
    "attention_bias": False,
    "num_experts": 7,
    "num_experts_per_tok": 7,
    "norm_topk_prob": False,
    "router_aux_loss_coef": 0.01,
    "tie_word_embeddings": False,
    "pad_token_id": 100277,
    "eos_token_id": 100257,
}

# top-2 of 8 experts, renormalised; GQA (whole-projection k norm narrower than q's)
TINY = {
    "vocab_size": 128, "hidden_size": 64, "num_attention_heads": 4, "num_key_value_heads": 2,
    "max_position_embeddings": 64, "rms_norm_eps": 1e-5, "num_hidden_layers": 2, "intermediate_size": 32,
    "num_experts": 8, "num_experts_per_tok": 2, "norm_topk_prob": True, "rope_theta": 1e4, "pad_token_id": None,
}  # fmt: skip

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_release_counts_equal_transformers_model_on_meta():
    params = analyze(hf_to_model(FLEXOLMO_7X7B)).params
    assert (params.total, params.active) == hf_counts(FLEXOLMO_7X7B)
    assert round(params.total / 1e9, 1) == 33.3 and params.active == params.total  # 33B, all 7 experts active


def test_top_k_below_the_expert_count_counts_as_transformers_does():
    cfg = {**FLEXOLMO_7X7B, "num_experts_per_tok": 4}
    params = analyze(hf_to_model(cfg)).params
    assert (params.total, params.active) == hf_counts(cfg)
    assert params.active < params.total


def test_release_config_as_transformers_saves_it_imports_to_the_same_plan():
    saved = hf_model_on_meta(FLEXOLMO_7X7B).config.to_dict()
    assert plan_differences(hf_to_model(saved), hf_to_model(FLEXOLMO_7X7B)) == []


def test_sliding_window_transformers_ignores_is_refused_as_ambiguous():
    with pytest.raises(SpecError) as e:
        hf_to_model({**FLEXOLMO_7X7B, "sliding_window": 4096})
    assert [p.path for p in e.value.problems] == ["sliding_window"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    hf = tiny_hf("flex_olmo", TINY)
    return saved_checkpoint(hf, tmp_path_factory, "flex_olmo")


def test_tiny_checkpoint_gives_transformers_logits_and_router_choices(checkpoint):
    hf, folder = checkpoint
    model = moec.from_hf(folder)
    assert model.plan.norm.placement == "after_sublayer"
    assert assert_same(hf, model) <= 1e-4


def test_generated_model_py_gives_the_library_logits(checkpoint, tmp_path):
    model = moec.from_hf(checkpoint[1])
    assert_generated_model_gives_the_library_logits(model, TOKENS, tmp_path)
