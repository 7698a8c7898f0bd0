"""DeepSeek-V3.2-Exp (model_type deepseek_v32): the release config's counts equal transformers' model on meta; a tiny
random checkpoint saved by transformers (MLA, a lightning indexer of 16 heads keeping 4 of the 12 tokens' keys,
DeepSeek-V3's grouped sigmoid routing, fused shared experts, a dense first layer) loads with moec.from_hf to
transformers' logits and router choices; its plan exports back to the same config; fields moec cannot follow are
refused by name."""

from __future__ import annotations

import pytest

from moec.analyze import analyze
from moec.hf import hf_to_model, import_hf_config
from moec.hf.config import plan_differences
from moec.hf.export_config import family_config
from tests.hf.configs import DEEPSEEK_V3, without

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import moec  # noqa: E402
from tests.hf.families._harness import (  # noqa: E402
    assert_cached_decode_gives_transformers_logits,
    hf_counts,
    refused_fields,
    saved_checkpoint,
    tiny_hf,
)
from tests.hf.test_weights import TOKENS, assert_same  # noqa: E402

# deepseek-ai/DeepSeek-V3.2-Exp config.json: DeepSeek-V3's release config (tests/hf/configs.py, its FP8
# quantization_config left out: a storage format) under the deepseek_v32 names, plus the indexer's three fields as
# public copies of the release config give them (a Rust inference engine's model-config fixture, an FP8 serving
# project's DSA dims table): index_n_heads 64, index_head_dim 128, index_topk 2048. Published: 671B total, 37B active.
DEEPSEEK_V3_2_EXP = {
    **without(DEEPSEEK_V3, "quantization_config"),
    "architectures": ["DeepseekV32ForCausalLM"],
    "model_type": "deepseek_v32",
    "index_n_heads": 64,
    "index_head_dim": 128,
    "index_topk": 2048,
}

# MLA (q latent 24, kv latent 16, 8 nope + 8 rope dims, v 8); an indexer of 16 heads of 16 (its first 8 dims
# rotated in halves) keeping 4 keys: the 12-token test sequence has queries that see up to 12 (16 heads: a key
# scores exactly 0 only when all 16 ReLUs are 0, so the choice never rests on a tie); a dense first layer; 8
# experts in 4 groups (the best 2) by sigmoid with a selection bias, two shared experts fused.
TINY = {
    "vocab_size": 128, "hidden_size": 64, "num_attention_heads": 4, "num_key_value_heads": 4,
    "max_position_embeddings": 64, "rms_norm_eps": 1e-6, "num_hidden_layers": 3, "intermediate_size": 96,
    "q_lora_rank": 24, "kv_lora_rank": 16, "qk_nope_head_dim": 8, "qk_rope_head_dim": 8, "v_head_dim": 8,
    "n_routed_experts": 8, "n_shared_experts": 2, "moe_intermediate_size": 16, "num_experts_per_tok": 2,
    "n_group": 4, "topk_group": 2, "norm_topk_prob": True, "routed_scaling_factor": 2.5, "rope_theta": 1e4,
    "first_k_dense_replace": 1, "index_n_heads": 16, "index_head_dim": 16, "index_topk": 4,
}  # fmt: skip

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_release_counts_equal_transformers_model_on_meta():
    params = analyze(hf_to_model(DEEPSEEK_V3_2_EXP)).params
    assert (params.total, params.active) == hf_counts(DEEPSEEK_V3_2_EXP)
    # DeepSeek-V3's 671.03B + 61 indexers of 1536·64·128 + 7168·128 + 7168·64 + 2·128 = 13,959,424 each
    v3 = analyze(hf_to_model({**DEEPSEEK_V3, "num_nextn_predict_layers": 0})).params
    assert params.total - v3.total == 61 * 13_959_424 == params.active - v3.active


def test_tiny_counts_equal_transformers_model_on_meta():
    cfg = {**TINY, "model_type": "deepseek_v32"}
    params = analyze(hf_to_model(cfg)).params
    assert (params.total, params.active) == hf_counts(cfg)


def test_release_imports_the_indexer_and_the_layout():
    text = import_hf_config(DEEPSEEK_V3_2_EXP)
    assert "rope_layout: halves" in text and "top_k: 2048" in text
    plan = hf_to_model(DEEPSEEK_V3_2_EXP)
    assert all(lp.attention.indexer_top_k == 2048 for lp in plan.layers)
    assert [lp.ffn.kind for lp in plan.layers[:4]] == ["dense"] * 3 + ["moe"]


def test_release_config_as_transformers_saves_it_imports_to_the_same_plan():
    """save_pretrained's spelling: rope_parameters, mlp_layer_types and layer_types written out."""
    from tests.hf.configs import hf_model_on_meta

    saved = hf_model_on_meta(DEEPSEEK_V3_2_EXP).config.to_dict()
    assert saved["layer_types"] == ["indexed_attention"] * 61
    assert plan_differences(hf_to_model(saved), hf_to_model(DEEPSEEK_V3_2_EXP)) == []


def test_the_plan_exports_to_a_config_that_imports_back_to_it():
    plan = hf_to_model(DEEPSEEK_V3_2_EXP)
    cfg = family_config(plan, "deepseek_v32")
    assert (cfg["index_n_heads"], cfg["index_head_dim"], cfg["index_topk"]) == (64, 128, 2048)
    assert hf_counts(cfg) == hf_counts(DEEPSEEK_V3_2_EXP)


@pytest.mark.parametrize(
    "change,field",
    [
        ({"indexer_rope_interleave": True}, "indexer_rope_interleave"),  # DeepseekV32Indexer rotates halves
        ({"rope_interleave": False}, "rope_interleave"),
        ({"index_head_dim": 32}, "index_head_dim"),  # narrower than the 64 rotary dims
        ({"index_head_dim": -1}, "index_head_dim"),  # refused once, not also as narrower than the rotary dims
        ({"moe_layer_freq": 2}, "moe_layer_freq"),
        ({"attention_bias": True}, "attention_bias"),
        ({"layer_types": ["full_attention"] * 61}, "layer_types"),
    ],
)
def test_fields_moec_cannot_follow_or_that_disagree_are_refused(change, field):
    assert refused_fields({**DEEPSEEK_V3_2_EXP, **change}) == [field]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    hf = tiny_hf("deepseek_v32", TINY)
    return saved_checkpoint(hf, tmp_path_factory, "deepseek_v32")


def test_tiny_checkpoint_gives_transformers_logits_and_router_choices(checkpoint):
    hf, folder = checkpoint
    model = moec.from_hf(folder)
    assert model.layers[0].attn.indexer.top_k == 4
    assert assert_same(hf, model) <= 1e-4
    with torch.no_grad():  # the indexer's choice shows: attending every key gives other logits
        want = hf(TOKENS).logits
        for layer in model.layers:
            layer.attn.indexer.top_k = 64
        assert not torch.allclose(model(TOKENS)[0], want, atol=1e-3)


def test_a_cached_decode_gives_transformers_logits(checkpoint):
    """A prefill of 5 tokens and one token at a time: transformers' own full forward, through moec's cache (the
    indexer's keys ride in it)."""
    hf, folder = checkpoint
    assert_cached_decode_gives_transformers_logits(hf, moec.from_hf(folder), TOKENS)


def test_the_shipped_spec_is_the_release_config():
    """specs/deepseek-v3.2-exp.yaml describes the release: its import, plus the MTP module transformers does not
    build (balancing coefficients aside: training only)."""
    from moec.spec import load_model

    shipped = load_model("specs/deepseek-v3.2-exp.yaml")
    assert plan_differences(shipped.replace(mtp=()), hf_to_model(DEEPSEEK_V3_2_EXP), training=False) == []
    assert len(shipped.mtp) == DEEPSEEK_V3_2_EXP["num_nextn_predict_layers"]
