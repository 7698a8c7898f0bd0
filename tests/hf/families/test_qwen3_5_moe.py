"""Qwen3.5-MoE (model_type qwen3_5_moe): the multimodal wrapper imports its text model, Qwen3-Next's hybrid with
multimodal RoPE and every layer MoE. On a release config the analyzer's total and active equal transformers' causal
LM built on meta (AutoModelForCausalLM builds the text model), and the note counts the vision tower left out
exactly; a tiny save_pretrained checkpoint of the whole wrapper loads with moec.from_hf to transformers' logits and
router choices on text; release fields transformers ignores are named when they agree and refused when not."""

from __future__ import annotations

import copy

import pytest

from moec.analyze import analyze
from moec.hf import hf_to_model, import_hf_config

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from safetensors.torch import load_file  # noqa: E402

import moec  # noqa: E402
from tests.hf.families._harness import (  # noqa: E402
    TextView,
    assert_table_holds_class_defaults,
    away_from_init,
    hf_counts,
    refused_fields,
    saved_checkpoint,
)
from tests.hf.test_weights import assert_same  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")

_TYPES = ["linear_attention"] * 3 + ["full_attention"]
# Qwen3.6-35B-A3B's config.json (model_type qwen3_5_moe) as another project's test transcribes it: the text config
# in full, with the release's own attn_output_gate; the vision config at Qwen3_5MoeVisionConfig's defaults but for
# out_hidden_size, the text width it projects to. Published: 35B total, 3B active.
QWEN3_5_35B_A3B = {
    "architectures": ["Qwen3_5MoeForConditionalGeneration"], "model_type": "qwen3_5_moe", "tie_word_embeddings": False,
    "text_config": {
        "attention_bias": False, "attention_dropout": 0.0, "attn_output_gate": True, "bos_token_id": 248044,
        "dtype": "bfloat16", "eos_token_id": 248044, "full_attention_interval": 4, "head_dim": 256,
        "hidden_act": "silu", "hidden_size": 2048, "initializer_range": 0.02, "layer_types": _TYPES * 10,
        "linear_conv_kernel_dim": 4, "linear_key_head_dim": 128, "linear_num_key_heads": 16,
        "linear_num_value_heads": 32, "linear_value_head_dim": 128, "max_position_embeddings": 262144,
        "model_type": "qwen3_5_moe_text", "moe_intermediate_size": 512, "num_attention_heads": 16,
        "num_experts": 256, "num_experts_per_tok": 8, "num_hidden_layers": 40, "num_key_value_heads": 2,
        "output_router_logits": False, "partial_rotary_factor": 0.25, "rms_norm_eps": 1e-06,
        "rope_parameters": {"mrope_interleaved": True, "mrope_section": [11, 11, 10], "partial_rotary_factor": 0.25,
                            "rope_theta": 10000000, "rope_type": "default"},
        "router_aux_loss_coef": 0.001, "shared_expert_intermediate_size": 512, "tie_word_embeddings": False,
        "use_cache": True, "vocab_size": 248320,
    },
    "vision_config": {"out_hidden_size": 2048},
}  # fmt: skip


def test_release_counts_equal_transformers_model_on_meta():
    params = analyze(hf_to_model(QWEN3_5_35B_A3B)).params
    assert (params.total, params.active) == hf_counts(QWEN3_5_35B_A3B)
    assert round(params.total / 1e9) == 35 and round(params.active / 1e9) == 3  # the text model of "35B-A3B"
    plan = hf_to_model(QWEN3_5_35B_A3B)
    assert [lp.mixer_kind for lp in plan.layers[:4]] == ["gated_deltanet"] * 3 + ["attention"]
    assert list(plan.positions.mrope_sections) == [11, 11, 10] and plan.positions.rotary_dim == 64


def test_the_vision_tower_left_out_is_counted_exactly():
    with torch.device("meta"):
        kw = {k: v for k, v in copy.deepcopy(QWEN3_5_35B_A3B).items() if k != "model_type"}
        wrapper = transformers.Qwen3_5MoeForConditionalGeneration(transformers.Qwen3_5MoeConfig(**kw))
    tower = sum(p.numel() for p in wrapper.model.visual.parameters())
    assert f"the vision tower (vision_config: {tower:,} parameters)" in import_hf_config(QWEN3_5_35B_A3B)


def with_text(**change) -> dict:
    cfg = copy.deepcopy(QWEN3_5_35B_A3B)
    cfg["text_config"].update(change)
    return cfg


_T = "text_config."


@pytest.mark.parametrize(
    "cfg,field",
    [
        (with_text(norm_topk_prob=False), _T + "norm_topk_prob"),  # the router always renormalises
        (with_text(attn_output_gate=False), _T + "attn_output_gate"),  # the attention always gates
        (with_text(mlp_only_layers=[0]), _T + "mlp_only_layers"),  # every layer is MoE
        (with_text(mamba_ssm_dtype="bfloat16"), _T + "mamba_ssm_dtype"),
        (with_text(tie_word_embeddings=True), _T + "tie_word_embeddings"),  # the wrapper says false
        (with_text(layer_types=_TYPES * 9 + ["sliding_attention"] * 4), _T + "layer_types"),
        (with_text(rope_parameters={"rope_type": "default", "rope_theta": 1e7, "partial_rotary_factor": 0.25,
                                    "mrope_section": [11, 11, 10], "mrope_interleaved": False}),
         _T + "rope_parameters.mrope_interleaved"),
        (with_text(model_type="qwen3_next"), _T + "model_type"),
    ],
)  # fmt: skip
def test_what_transformers_would_not_run_as_said_is_refused_located(cfg, field):
    assert field in refused_fields(cfg)


def test_release_fields_that_agree_are_named():
    text = import_hf_config(with_text(norm_topk_prob=True, mtp_num_hidden_layers=1, mamba_ssm_dtype="float32"))
    assert "mtp_num_hidden_layers 1: transformers builds none" in text
    assert "norm_topk_prob true: transformers ignores it" in text


# the text model: GQA 4/2 heads of 16 with a quarter rotating in sections [1, 1, 0], the delta net with 2 key heads
# of 16 over 4 value heads of 8, top-2 of 8 experts and a shared expert, layer 3 attention; a vision tower of one
# block
TINY = {
    "text_config": {
        "hidden_size": 64, "num_hidden_layers": 4, "num_attention_heads": 4, "num_key_value_heads": 2,
        "head_dim": 16, "vocab_size": 128, "moe_intermediate_size": 16, "shared_expert_intermediate_size": 24,
        "num_experts": 8, "num_experts_per_tok": 2, "linear_num_key_heads": 2, "linear_num_value_heads": 4,
        "linear_key_head_dim": 16, "linear_value_head_dim": 8, "linear_conv_kernel_dim": 4,
        "max_position_embeddings": 64, "rms_norm_eps": 1e-5,
        "rope_parameters": {"rope_type": "default", "rope_theta": 1e4, "partial_rotary_factor": 0.25,
                            "mrope_section": [1, 1, 0], "mrope_interleaved": True},
    },
    "vision_config": {"depth": 1, "hidden_size": 32, "intermediate_size": 48, "num_heads": 2, "out_hidden_size": 64,
                      "patch_size": 4, "num_position_embeddings": 16},
}  # fmt: skip


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    cfg = transformers.Qwen3_5MoeConfig(**copy.deepcopy(TINY))
    cfg.text_config._attn_implementation = "eager"
    torch.manual_seed(0)
    hf = transformers.Qwen3_5MoeForConditionalGeneration(cfg).eval()
    away_from_init(hf, keep=lambda name: name.startswith(("model.language_model.", "lm_head.")))
    return saved_checkpoint(hf, tmp_path_factory, "qwen3_5_moe")


def test_tiny_checkpoint_gives_transformers_logits_and_router_choices(checkpoint):
    hf, folder = checkpoint
    names = load_file(folder / "model.safetensors").keys()
    assert {"model.language_model.layers.0.linear_attn.in_proj_qkv.weight", "model.visual.merger.norm.weight"} <= names
    model = moec.from_hf(folder)
    assert [lp.mixer_kind for lp in model.plan.layers] == ["gated_deltanet"] * 3 + ["attention"]
    assert assert_same(TextView(hf), model) <= 1e-4


def test_defaults_are_transformers_class_defaults():
    from moec.hf.families.qwen3_5_moe import DEFAULTS, TEXT_DEFAULTS

    assert_table_holds_class_defaults(TEXT_DEFAULTS, transformers.Qwen3_5MoeTextConfig, at_least=20)
    assert_table_holds_class_defaults(DEFAULTS, transformers.Qwen3_5MoeConfig, at_least=5)
    assert TEXT_DEFAULTS["default_theta"] == transformers.Qwen3_5MoeTextConfig.default_theta


def test_generated_model_py_gives_the_library_logits(checkpoint, tmp_path):
    from tests.hf.families._harness import assert_generated_model_gives_the_library_logits
    from tests.hf.test_weights import TOKENS

    assert_generated_model_gives_the_library_logits(moec.from_hf(checkpoint[1]), TOKENS, tmp_path)
