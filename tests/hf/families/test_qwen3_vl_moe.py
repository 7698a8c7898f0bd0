"""Qwen3-VL-MoE (model_type qwen3_vl_moe): the wrapper imports its text model; on the release config the
analyzer's total and active equal transformers' model on meta less its vision tower, whose parameter count the
spec's note gives exactly; a tiny random checkpoint saved by transformers (tower included) loads with
moec.from_hf to transformers' logits and router choices on text, in transformers' expert layout and in the
release's; the generated model.py gives moec.nn's logits; fields transformers ignores are named when they agree
and refused when they do not."""

from __future__ import annotations

import copy

import pytest

from moec.analyze import analyze
from moec.hf import hf_to_model, import_hf_config
from moec.hf.config import plan_differences
from moec.spec import load_model

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from safetensors.torch import load_file, save_file  # noqa: E402

import moec  # noqa: E402
from tests.hf.families._harness import (  # noqa: E402
    assert_generated_model_gives_the_library_logits,
    assert_table_holds_class_defaults,
    away_from_init,
    model_counts,
    refused_fields,
    saved_checkpoint,
)
from tests.hf.test_weights import TOKENS, assert_same  # noqa: E402

# Qwen/Qwen3-VL-30B-A3B-Instruct config.json (commit 1fc78ad), the fields a public Rust port transcribes from the
# fetched file (its test says byte for byte); token ids and dtype as released. Published: 30B total, 3B active.
QWEN3_VL_30B_A3B = {
    "architectures": ["Qwen3VLMoeForConditionalGeneration"], "model_type": "qwen3_vl_moe", "image_token_id": 151655,
    "video_token_id": 151656, "vision_start_token_id": 151652, "vision_end_token_id": 151653,
    "tie_word_embeddings": False,
    "text_config": {
        "attention_bias": False, "decoder_sparse_step": 1, "head_dim": 128, "hidden_size": 2048,
        "intermediate_size": 6144, "max_position_embeddings": 262144, "mlp_only_layers": [],
        "model_type": "qwen3_vl_moe_text", "moe_intermediate_size": 768, "norm_topk_prob": True,
        "num_attention_heads": 32, "num_experts": 128, "num_experts_per_tok": 8, "num_hidden_layers": 48,
        "num_key_value_heads": 4, "rms_norm_eps": 1e-06,
        "rope_scaling": {"mrope_interleaved": True, "mrope_section": [24, 20, 20], "rope_type": "default"},
        "rope_theta": 5000000, "vocab_size": 151936,
    },
    "vision_config": {
        "deepstack_visual_indexes": [8, 16, 24], "depth": 27, "hidden_act": "gelu_pytorch_tanh", "hidden_size": 1152,
        "in_channels": 3, "intermediate_size": 4304, "model_type": "qwen3_vl_moe", "num_heads": 16,
        "num_position_embeddings": 2304, "out_hidden_size": 2048, "patch_size": 16, "spatial_merge_size": 2,
        "temporal_patch_size": 2,
    },
}  # fmt: skip

# a dense layer among MoE ones, top-2 of 8, mrope sections of a 16-wide head, untied; a one-block tower
TINY = {
    "text_config": {
        "hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 3, "num_attention_heads": 4,
        "num_key_value_heads": 2, "head_dim": 16, "vocab_size": 128, "moe_intermediate_size": 16, "num_experts": 8,
        "num_experts_per_tok": 2, "mlp_only_layers": [1], "max_position_embeddings": 64, "rms_norm_eps": 1e-5,
        "rope_scaling": {"rope_type": "default", "mrope_interleaved": True, "mrope_section": [4, 2, 2]},
        "rope_theta": 1e4,
    },
    "vision_config": {"depth": 1, "hidden_size": 32, "intermediate_size": 48, "num_heads": 2, "out_hidden_size": 64,
                      "patch_size": 4, "deepstack_visual_indexes": [0], "num_position_embeddings": 16},
}  # fmt: skip

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def hf_model(cfg: dict, device: str = "meta"):
    kw = {k: v for k, v in copy.deepcopy(cfg).items() if k != "model_type"}
    with torch.device(device):
        return transformers.Qwen3VLMoeForConditionalGeneration(transformers.Qwen3VLMoeConfig(**kw))


def test_release_counts_equal_transformers_model_on_meta():
    hf = hf_model(QWEN3_VL_30B_A3B)
    vision = sum(p.numel() for p in hf.model.visual.parameters())
    params = analyze(hf_to_model(QWEN3_VL_30B_A3B)).params
    assert (params.total, params.active) == model_counts(hf, 128, 8, keep=lambda n: not n.startswith("model.visual."))
    assert round(params.total / 1e9, 1) == 30.5 and round(params.active / 1e9, 2) == 3.35  # 30B-A3B
    assert f"left out: the vision tower (vision_config: {vision:,} parameters)" in import_hf_config(QWEN3_VL_30B_A3B)


def test_shipped_spec_is_the_import_of_the_release_config():
    assert plan_differences(load_model("qwen3-vl-30b-a3b"), hf_to_model(QWEN3_VL_30B_A3B)) == []


def test_release_config_as_transformers_saves_it_imports_to_the_same_plan():
    """save_pretrained's spelling: rope_parameters, num_local_experts, sliding_window null, the text config's
    tie_word_embeddings true (which transformers ignores: the wrapper's decides)."""
    saved = hf_model(QWEN3_VL_30B_A3B).config.to_dict()
    assert saved["text_config"]["tie_word_embeddings"] is True
    assert plan_differences(hf_to_model(saved), hf_to_model(QWEN3_VL_30B_A3B)) == []
    assert not hf_to_model(saved).tie_embeddings


def with_text(**change) -> dict:
    return {**QWEN3_VL_30B_A3B, "text_config": {**QWEN3_VL_30B_A3B["text_config"], **change}}


@pytest.mark.parametrize(
    "cfg,field",
    [
        (with_text(norm_topk_prob=False), "text_config.norm_topk_prob"),  # the router renormalises whatever it says
        (with_text(rope_scaling={"rope_type": "default", "mrope_section": [24, 20, 20], "mrope_interleaved": False}),
         "text_config.rope_scaling.mrope_interleaved"),
        (with_text(layer_types=["sliding_attention"] * 48), "text_config.layer_types"),
        (with_text(rope_scaling={"rope_type": "default", "mrope_section": [24, 20]}), "text_config.rope_scaling.mrope_section"),
        (with_text(model_type="qwen3_moe"), "text_config.model_type"),
    ],
)  # fmt: skip
def test_fields_transformers_would_not_run_as_said_are_refused_located(cfg, field):
    assert refused_fields(cfg) == [field]


def tiny_hf():
    """transformers' tiny model with every weight random and away from its init (norms around 1)."""
    torch.manual_seed(0)
    model = hf_model(TINY, device="cpu").eval()
    model.config._attn_implementation = "eager"
    model.config.text_config._attn_implementation = "eager"
    away_from_init(model)
    return model


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    hf = tiny_hf()
    return saved_checkpoint(hf, tmp_path_factory, "qwen3_vl_moe")


def test_tiny_checkpoint_gives_transformers_logits_and_router_choices(checkpoint):
    hf, folder = checkpoint
    model = moec.from_hf(folder)
    assert [lp.ffn.kind for lp in model.plan.layers] == ["moe", "dense", "moe"]
    assert list(model.plan.positions.mrope_sections) == [4, 2, 2] and model.plan.positions.mrope_interleaved
    assert assert_same(hf, model) <= 1e-4


def test_release_expert_layout_gives_the_same_logits(checkpoint, tmp_path):
    """Qwen's released files stack experts as (E, d, 2f) and (E, f, d): the same model, transposed."""
    hf, folder = checkpoint
    (file,) = folder.glob("*.safetensors")
    tensors = {n: t.transpose(1, 2).contiguous() if ".mlp.experts." in n else t for n, t in load_file(file).items()}
    save_file(tensors, tmp_path / file.name, metadata={"format": "pt"})
    (tmp_path / "config.json").write_text((folder / "config.json").read_text())
    assert assert_same(hf, moec.from_hf(tmp_path)) <= 1e-4


def test_generated_model_py_gives_the_library_logits(checkpoint, tmp_path):
    model = moec.from_hf(checkpoint[1])
    assert_generated_model_gives_the_library_logits(model, TOKENS, tmp_path)


def test_text_and_vision_defaults_are_transformers_class_defaults():
    """The registry-wide test holds the wrapper's table to Qwen3VLMoeConfig; these hold its parts'."""
    import dataclasses

    from moec.hf.families.qwen3_vl_moe import TEXT_DEFAULTS, VISION_DEFAULTS

    for table, cls in (
        (TEXT_DEFAULTS, transformers.Qwen3VLMoeTextConfig),
        (VISION_DEFAULTS, transformers.Qwen3VLMoeVisionConfig),
    ):
        assert_table_holds_class_defaults(table, cls, at_least=10)
    assert TEXT_DEFAULTS["default_theta"] == transformers.Qwen3VLMoeTextConfig.default_theta
    assert (
        TEXT_DEFAULTS["num_local_experts"]
        == {f.name: f.default for f in dataclasses.fields(transformers.Qwen3VLMoeTextConfig)}["num_experts"]
    )
