"""DeepSeek-OCR-2 (``model_type`` deepseek_ocr2): moec imports the text model of the multimodal wrapper and names
the vision side it leaves out. Oracles: transformers' DeepseekOcr2ForConditionalGeneration on the meta device (its
language model and head for the counts) and a tiny wrapper checkpoint saved with save_pretrained (logits and
router choices)."""

from __future__ import annotations

import copy

import pytest

from moec.analyze import analyze
from moec.hf import hf_to_model, import_hf_config

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import moec  # noqa: E402
from tests.hf.families._harness import (  # noqa: E402
    TextView,
    assert_generated_model_gives_the_library_logits,
    away_from_init,
    model_counts,
    refused_fields,
    saved_checkpoint,
)
from tests.hf.test_weights import TOKENS, assert_same  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# deepseek-ai/DeepSeek-OCR-2's text model as another project's tests copy it (GitHub; the Hugging Face repository
# is not reachable from here): 12 layers of 1280, layer 0 dense, 64 experts of 896 top-6 and 2 shared.
OCR2: dict = {
    "model_type": "deepseek_ocr2", "tie_word_embeddings": False,
    "text_config": {
        "model_type": "deepseek_ocr2_text", "vocab_size": 129280, "hidden_size": 1280, "intermediate_size": 6848,
        "num_hidden_layers": 12, "num_attention_heads": 10, "num_key_value_heads": 10, "hidden_act": "silu",
        "max_position_embeddings": 8192, "rms_norm_eps": 1e-6,
        "rope_parameters": {"rope_theta": 10000.0, "rope_type": "default"}, "attention_bias": False,
        "mlp_bias": False, "head_dim": 128, "n_group": 1, "n_routed_experts": 64, "n_shared_experts": 2,
        "routed_scaling_factor": 1.0, "topk_group": 1, "topk_method": "greedy", "num_experts_per_tok": 6,
        "moe_intermediate_size": 896, "mlp_layer_types": ["dense"] + ["sparse"] * 11,
    },
}  # fmt: skip


def is_text(name: str) -> bool:
    return "language_model." in name or name == "lm_head.weight"


def on_meta(cfg: dict):
    kw = {k: v for k, v in copy.deepcopy(cfg).items() if k != "model_type"}
    with torch.device("meta"):
        return transformers.DeepseekOcr2ForConditionalGeneration(transformers.DeepseekOcr2Config(**kw))


def test_release_counts_equal_transformers_model_on_meta():
    hf = on_meta(OCR2)
    assert not all(is_text(n) for n, _ in hf.named_parameters())  # the vision side exists, and is left out
    params = analyze(hf_to_model(OCR2)).params
    assert (params.total, params.active) == model_counts(hf, 64, 6, keep=is_text)
    assert "left out, not counted: the vision encoders and projector" in import_hf_config(OCR2)


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"head_dim": 64}, "text_config.head_dim"),
        ({"mlp_layer_types": None}, "text_config.mlp_layer_types"),
        ({"mlp_layer_types": ["dense"] * 3}, "text_config.mlp_layer_types"),
        ({"mlp_bias": True}, "text_config.mlp_bias"),
        ({"model_type": "deepseek_v2"}, "text_config.model_type"),
        ({"tie_word_embeddings": True}, "text_config.tie_word_embeddings"),
        # the router's refusals name the nested key too, not a top-level one
        ({"scoring_func": "sigmoid"}, "text_config.scoring_func"),
        ({"norm_topk_prob": True}, "text_config.norm_topk_prob"),
        ({"num_nextn_predict_layers": 1}, "text_config.num_nextn_predict_layers"),
    ],
)
def test_text_fields_that_would_change_the_model_are_refused(change, field):
    cfg = copy.deepcopy(OCR2)
    cfg["text_config"].update(change)
    assert refused_fields(cfg) == [field]


# tiny: layer 0 dense, then 8 experts top-2 in 4 groups (top 2 groups by their best expert), a routed scale,
# 2 shared experts; a vision side as small as its encoders allow
TINY = {
    "model_type": "deepseek_ocr2", "tie_word_embeddings": False,
    "text_config": {
        "model_type": "deepseek_ocr2_text", "vocab_size": 128, "hidden_size": 64, "intermediate_size": 96,
        "num_hidden_layers": 3, "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 64,
        "n_routed_experts": 8, "n_shared_experts": 2, "num_experts_per_tok": 2, "moe_intermediate_size": 16,
        "topk_method": "group_limited_greedy", "n_group": 4, "topk_group": 2, "routed_scaling_factor": 2.5,
        "mlp_layer_types": ["dense", "sparse", "sparse"],
    },
    "vision_config": {
        "sam_config": {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "image_size": 64,
                       "patch_size": 16, "window_size": 2, "global_attn_indexes": [1], "output_channels": 16,
                       "downsample_channels": [32, 64]},
        "encoder_config": {"vocab_size": 16, "hidden_size": 64, "intermediate_size": 64, "num_hidden_layers": 1,
                           "num_attention_heads": 2, "num_key_value_heads": 2},
    },
}  # fmt: skip


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    kw = {k: v for k, v in copy.deepcopy(TINY).items() if k != "model_type"}
    cfg = transformers.DeepseekOcr2Config(**kw)
    cfg.text_config._attn_implementation = "eager"
    torch.manual_seed(0)
    hf = transformers.DeepseekOcr2ForConditionalGeneration(cfg).eval()
    away_from_init(hf, keep=is_text)
    return saved_checkpoint(hf, tmp_path_factory, "deepseek_ocr2")


def test_tiny_checkpoint_gives_transformers_logits_and_router_choices(checkpoint):
    hf, folder = checkpoint
    assert assert_same(TextView(hf), moec.from_hf(folder)) <= 1e-4


def test_generated_model_py_gives_the_library_logits(checkpoint, tmp_path):
    model = moec.from_hf(checkpoint[1])
    assert_generated_model_gives_the_library_logits(model, TOKENS, tmp_path)
