"""GLM-4.5V (``model_type`` glm4v_moe): moec imports the text model of the multimodal wrapper and names the vision
tower it leaves out. Oracles: transformers' Glm4vMoeForConditionalGeneration built on the meta device (its
language_model and lm_head for the counts, its visual tower for the count left out), and a tiny checkpoint saved
with save_pretrained for the logits and router choices."""

from __future__ import annotations

import copy

import pytest

from moec.analyze import analyze
from moec.hf import hf_to_model, import_hf_config
from moec.hf.config import plan_differences
from moec.spec import load_model

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import moec  # noqa: E402
from tests.hf.families._harness import (  # noqa: E402
    assert_generated_model_gives_the_library_logits,
    away_from_init,
    model_counts,
    refused_fields,
    saved_checkpoint,
)
from tests.hf.test_weights import TOKENS, assert_same  # noqa: E402

# zai-org/GLM-4.5V: the configuration as transformers 5.7 prints it after loading the release config.json (a
# GitHub copy, 2026; the Hugging Face repository is not reachable from here), nested rope_parameters included.
# The same report counts the release's safetensors: 107,710,933,120 parameters, the vision tower included.
GLM_45V: dict = {
    "architectures": ["Glm4vMoeForConditionalGeneration"], "dtype": "bfloat16", "image_end_token_id": 151340,
    "image_start_token_id": 151339, "image_token_id": 151363, "model_type": "glm4v_moe",
    "text_config": {
        "attention_bias": True, "attention_dropout": 0.0, "bos_token_id": None, "dtype": "bfloat16",
        "eos_token_id": [151329, 151336, 151338], "first_k_dense_replace": 1, "head_dim": 128, "hidden_act": "silu",
        "hidden_size": 4096, "image_end_token_id": 151340, "image_start_token_id": 151339, "image_token_id": 151363,
        "initializer_range": 0.02, "intermediate_size": 10944, "max_position_embeddings": 65536,
        "model_type": "glm4v_moe_text", "moe_intermediate_size": 1408, "n_group": 1, "n_routed_experts": 128,
        "n_shared_experts": 1, "norm_topk_prob": True, "num_attention_heads": 96, "num_experts_per_tok": 8,
        "num_hidden_layers": 46, "num_key_value_heads": 8, "pad_token_id": 151329, "partial_rotary_factor": 0.5,
        "rms_norm_eps": 1e-05,
        "rope_parameters": {"mrope_section": [8, 12, 12], "partial_rotary_factor": 0.5, "rope_theta": 10000.0,
                            "rope_type": "default"},
        "routed_scaling_factor": 1.0, "router_aux_loss_coef": 0.0001, "tie_word_embeddings": False, "topk_group": 1,
        "use_cache": True, "use_qk_norm": False, "vocab_size": 151552,
    },
    "tie_word_embeddings": False, "transformers_version": "5.7.0", "video_end_token_id": 151342,
    "video_start_token_id": 151341, "video_token_id": 151364,
    "vision_config": {
        "attention_bias": False, "attention_dropout": 0.0, "depth": 24, "hidden_act": "silu", "hidden_size": 1536,
        "image_size": 336, "in_channels": 3, "initializer_range": 0.02, "intermediate_size": 10944,
        "model_type": "glm4v_moe_vision", "num_heads": 12, "out_hidden_size": 4096, "patch_size": 14,
        "rms_norm_eps": 1e-05, "spatial_merge_size": 2, "temporal_patch_size": 2,
    },
}  # fmt: skip
RELEASE_TOTAL = 107_710_933_120

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def on_meta(cfg: dict):
    kw = {k: v for k, v in copy.deepcopy(cfg).items() if k != "model_type"}
    with torch.device("meta"):
        return transformers.Glm4vMoeForConditionalGeneration(transformers.Glm4vMoeConfig(**kw))


def test_release_counts_equal_transformers_model_on_meta():
    hf = on_meta(GLM_45V)
    params = analyze(hf_to_model(GLM_45V)).params
    tc = hf.config.text_config
    text = model_counts(
        hf, tc.n_routed_experts, tc.num_experts_per_tok, keep=lambda n: not n.startswith("model.visual.")
    )
    assert (params.total, params.active) == text
    tower = sum(p.numel() for p in hf.model.visual.parameters())
    # the release's own count: the tower included, and the 45 MoE layers' selection bias (128 each), which
    # transformers holds as buffers, not parameters
    assert params.total + tower + 45 * 128 == RELEASE_TOTAL
    assert f"left out: the vision tower (vision_config: {tower:,} parameters)" in import_hf_config(GLM_45V)


def test_release_fields_transformers_ignores_are_named():
    text = import_hf_config(GLM_45V)
    assert "use_qk_norm false: transformers ignores it" in text
    assert "text_config.tie_word_embeddings false: agrees" in text


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"use_qk_norm": True}, "text_config.use_qk_norm"),
        ({"rope_parameters": {**GLM_45V["text_config"]["rope_parameters"], "mrope_section": [8, 12]}},
         "text_config.rope_parameters.mrope_section"),
        ({"model_type": "glm4_moe"}, "text_config.model_type"),
        ({"tie_word_embeddings": True}, "text_config.tie_word_embeddings"),
        ({"num_local_experts": 64}, "text_config.num_local_experts"),
    ],
)  # fmt: skip
def test_text_fields_that_would_change_the_model_are_refused(change, field):
    cfg = copy.deepcopy(GLM_45V)
    cfg["text_config"].update(change)
    assert refused_fields(cfg) == [field]


@pytest.mark.parametrize(("key", "value"), [("hidden_size", "x"), ("patch_size", 0), ("depth", -1)])
def test_a_vision_size_transformers_would_refuse_is_refused_at_its_field(key, value):
    # the tower is left out, but its count is in the note: a size it cannot read was an import with exit 0 and the
    # count silently dropped
    cfg = copy.deepcopy(GLM_45V)
    cfg["vision_config"][key] = value
    assert refused_fields(cfg) == [f"vision_config.{key}"]


def test_a_tower_of_no_blocks_is_counted_as_transformers_builds_it():
    cfg = copy.deepcopy(GLM_45V)
    cfg["vision_config"]["depth"] = 0
    tower = sum(p.numel() for p in on_meta(cfg).model.visual.parameters())
    assert f"left out: the vision tower (vision_config: {tower:,} parameters)" in import_hf_config(cfg)


# A tiny GLM-4.5V: one dense layer then MoE with groups (4 groups, top 2), a routed scale, a shared expert,
# partial rotary (half of head_dim 16) in mrope sections [2, 1, 1], q/k/v biases, a two-block tower.
TINY = {
    "model_type": "glm4v_moe", "tie_word_embeddings": False,
    "text_config": {
        "vocab_size": 128, "hidden_size": 64, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16,
        "intermediate_size": 96, "max_position_embeddings": 64, "num_hidden_layers": 3, "first_k_dense_replace": 1,
        "n_routed_experts": 8, "n_shared_experts": 1, "moe_intermediate_size": 16, "num_experts_per_tok": 2,
        "n_group": 4, "topk_group": 2, "routed_scaling_factor": 2.5, "norm_topk_prob": True,
        "rope_parameters": {"rope_type": "default", "rope_theta": 1e4, "mrope_section": [2, 1, 1],
                            "partial_rotary_factor": 0.5},
    },
    "vision_config": {"depth": 2, "hidden_size": 32, "num_heads": 2, "intermediate_size": 48, "out_hidden_size": 64,
                      "image_size": 28, "patch_size": 14},
}  # fmt: skip


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    kw = {k: v for k, v in copy.deepcopy(TINY).items() if k != "model_type"}
    cfg = transformers.Glm4vMoeConfig(**kw)
    cfg.text_config._attn_implementation = "eager"
    torch.manual_seed(0)
    hf = transformers.Glm4vMoeForConditionalGeneration(cfg).eval()
    away_from_init(hf)
    return saved_checkpoint(hf, tmp_path_factory, "glm4v_moe")


class _TextView(torch.nn.Module):
    """The wrapper run on token ids alone, its config the text config (what assert_same reads)."""

    def __init__(self, hf):
        super().__init__()
        self.hf, self.config = hf, hf.config.text_config

    def forward(self, ids):
        return self.hf(input_ids=ids)


def test_tiny_checkpoint_gives_transformers_logits_and_router_choices(checkpoint):
    hf, folder = checkpoint
    model = moec.from_hf(folder)
    assert list(model.plan.positions.mrope_sections) == [2, 1, 1]
    assert assert_same(_TextView(hf), model) <= 1e-4


def test_generated_model_py_gives_the_library_logits(checkpoint, tmp_path):
    model = moec.from_hf(checkpoint[1])
    assert_generated_model_gives_the_library_logits(model, TOKENS, tmp_path)


def test_shipped_spec_is_the_import_of_the_release_config():
    assert plan_differences(load_model("glm-4.5v"), hf_to_model(GLM_45V)) == []
