"""GLM-5 (model_type glm_moe_dsa): the release config's counts equal transformers' model on meta; a tiny random
checkpoint saved by transformers (DeepSeek-V3.2's MLA and lightning indexer, the indexer's rotary dims in adjacent
pairs) loads with moec.from_hf to transformers' logits and router choices; GLM-5.2's cross-layer sharing of the
indexer's choice (shared layers with no indexer of their own) counts and runs as transformers' does."""

from __future__ import annotations

import pytest

from moec.analyze import analyze
from moec.hf import hf_to_model, import_hf_config
from moec.hf.export_config import family_config

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import moec  # noqa: E402
from tests.hf.families._harness import hf_counts, refused_fields, saved_checkpoint, tiny_hf  # noqa: E402
from tests.hf.families.test_deepseek_v32 import TINY as DSV32_TINY  # noqa: E402
from tests.hf.test_weights import TOKENS, assert_same  # noqa: E402

# zai-org/GLM-5 config.json, as the xLLM engine's glm_moe_dsa model args read it (each field with the release's
# value as its fallback, the release config cited beside them): 78 layers of 6144, MLA with 64 heads (q latent 2048,
# kv latent 512, nope 192, rope 64, v 256), an indexer of 32 heads of 128 keeping 2048 keys with interleaved
# rotary pairs, 3 dense layers of 12288, then 256 experts of 2048 (top-8, sigmoid, one group) + 1 shared, one MTP
# layer, rope_theta 1e6. Published: 744B total, 40B active.
GLM_5 = {
    "architectures": ["GlmMoeDsaForCausalLM"],
    "model_type": "glm_moe_dsa",
    "torch_dtype": "bfloat16",
    "vocab_size": 154880,
    "hidden_size": 6144,
    "num_hidden_layers": 78,
    "num_attention_heads": 64,
    "num_key_value_heads": 64,
    "intermediate_size": 12288,
    "max_position_embeddings": 202752,
    "rms_norm_eps": 1e-5,
    "eos_token_id": [154820, 154827, 154829],
    "bos_token_id": 0,
    "rope_parameters": {"rope_theta": 1_000_000.0, "rope_type": "default"},
    "first_k_dense_replace": 3,
    "hidden_act": "silu",
    "moe_layer_freq": 1,
    "topk_method": "noaux_tc",
    "n_routed_experts": 256,
    "n_shared_experts": 1,
    "num_experts_per_tok": 8,
    "moe_intermediate_size": 2048,
    "routed_scaling_factor": 2.5,
    "norm_topk_prob": True,
    "n_group": 1,
    "topk_group": 1,
    "scoring_func": "sigmoid",
    "qk_nope_head_dim": 192,
    "qk_rope_head_dim": 64,
    "v_head_dim": 256,
    "q_lora_rank": 2048,
    "kv_lora_rank": 512,
    "num_nextn_predict_layers": 1,
    "index_head_dim": 128,
    "index_n_heads": 32,
    "index_topk": 2048,
    "indexer_rope_interleave": True,
    "tie_word_embeddings": False,
    "attention_bias": False,
}

# deepseek_v32's tiny config (an indexer of 16 heads keeping 4 keys of the 12-token test sequence) at GLM's model
# eps of 1e-5, so the latent norms' own 1e-6 differs from it
TINY = {**DSV32_TINY, "rms_norm_eps": 1e-5}

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_release_counts_equal_transformers_model_on_meta():
    params = analyze(hf_to_model(GLM_5)).params
    assert (params.total, params.active) == hf_counts(GLM_5)
    # the card's 744B; 41.8B active counting the input embedding and the head (40.8B without the embedding)
    assert round(params.total / 1e9) == 744 and round(params.active / 1e8) == 418


def test_release_imports_the_interleaved_indexer_on_every_layer():
    assert "rope_layout: interleaved" in import_hf_config(GLM_5)
    assert {lp.attention.indexer_n_heads for lp in hf_to_model(GLM_5).layers} == {32}


def test_the_plan_exports_to_a_config_that_imports_back_to_it():
    cfg = family_config(hf_to_model(GLM_5), "glm_moe_dsa")
    assert cfg["indexer_types"] == ["full"] * 78
    assert hf_counts(cfg) == hf_counts(GLM_5)


# GLM-5.2's cross-layer sharing: every 4th layer from 3 on runs the indexer, the others reuse its choice
# (transformers' schedule), or as a list or a pattern
SHARED = {
    "schedule": {"index_topk_freq": 4, "index_skip_topk_offset": 3},
    "list": {"indexer_types": ["full"] * 3 + ["shared"] * 75},
    "pattern": {"index_topk_pattern": "F" * 77 + "S"},
}


@pytest.mark.parametrize("change", SHARED.values(), ids=SHARED.keys())
def test_shared_indexer_layers_counts_equal_transformers_model_on_meta(change):
    """A shared layer has no indexer of its own (transformers builds none): the counts still agree."""
    cfg = {**GLM_5, **change}
    plan = hf_to_model(cfg)
    shared = [i for i, lp in enumerate(plan.layers) if lp.attention.indexer_shared]
    assert shared and all(not plan.layers[i].attention.has_indexer for i in shared)
    params = analyze(plan).params
    assert (params.total, params.active) == hf_counts(cfg)


def test_a_plan_with_shared_layers_exports_its_indexer_types():
    cfg = family_config(hf_to_model({**GLM_5, **SHARED["list"]}), "glm_moe_dsa")
    assert cfg["indexer_types"] == ["full"] * 3 + ["shared"] * 75


@pytest.mark.parametrize(
    "change,field",
    [
        ({"indexer_types": ["shared"] * 78}, "indexer_types"),  # nothing before layer 0 to share
        ({"indexer_rope_interleave": False}, "indexer_rope_interleave"),
        ({"indexer_types": ["full"] * 77}, "indexer_types"),
        ({"index_topk_pattern": "F" * 77 + "X"}, "index_topk_pattern"),  # GlmMoeDsaConfig: a KeyError
        ({"num_hidden_layers": "x", "indexer_types": ["full"] * 78}, "num_hidden_layers"),  # not also unread
    ],
)
def test_disagreeing_fields_are_refused_by_name(change, field):
    assert refused_fields({**GLM_5, **change}) == [field]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    hf = tiny_hf("glm_moe_dsa", TINY)
    return saved_checkpoint(hf, tmp_path_factory, "glm_moe_dsa")


def test_tiny_checkpoint_gives_transformers_logits_and_router_choices(checkpoint):
    hf, folder = checkpoint
    model = moec.from_hf(folder)
    assert model.plan.layers[0].attention.indexer_rope_layout == "interleaved"
    assert assert_same(hf, model) <= 1e-4
    with torch.no_grad():  # the interleaved layout matters: rotating halves gives other choices, other logits
        want = hf(TOKENS).logits
        from moec.nn.rope import apply_rope

        for layer in model.layers:
            layer.attn.indexer.rotate = apply_rope
        assert not torch.allclose(model(TOKENS)[0], want, atol=1e-3)


def test_tiny_checkpoint_with_a_shared_layer_gives_transformers_logits_and_router_choices(tmp_path_factory):
    """Layer 1 attends layer 0's choice (transformers' prev_topk_indices): moec's MLA of indexer_shared."""
    hf, folder = saved_checkpoint(
        tiny_hf("glm_moe_dsa", {**TINY, "indexer_types": ["full", "shared", "full"]}), tmp_path_factory, "glm_shared"
    )
    model = moec.from_hf(folder)
    assert [lp.attention.indexer_shared for lp in model.plan.layers] == [False, True, False]
    assert assert_same(hf, model) <= 1e-4


def test_the_shipped_spec_is_the_release_config():
    """specs/glm-5.yaml describes the release: its import, plus the MTP layer transformers does not build."""
    from moec.hf.config import plan_differences
    from moec.spec import load_model

    shipped = load_model("specs/glm-5.yaml")
    assert plan_differences(shipped.replace(mtp=()), hf_to_model(GLM_5), training=False) == []
    assert len(shipped.mtp) == GLM_5["num_nextn_predict_layers"]
