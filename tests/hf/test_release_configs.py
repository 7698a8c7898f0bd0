"""Release configs of families moec already supports, as published (issue 11): Llama-4-Scout's multimodal
wrapper, its ``attn_temperature_tuning: 4``, and the fields of Qwen's own code that Qwen3-Coder-480B carries.
Oracles: transformers' models built from the same configs on the meta device, and their parameter
counts of its parts (the vision tower's, summed from transformers' modules)."""

from __future__ import annotations

import copy
import json

import pytest
from click.testing import CliRunner

from moec.analyze import analyze
from moec.cli import cli
from moec.errors import SpecError
from moec.hf import hf_to_model, import_hf_config
from moec.hf.config import plan_differences
from tests.hf.configs import hf_model_on_meta

# meta-llama/Llama-4-Scout-17B-16E config.json as Llama4Config prints it (a GitHub copy of the release; the
# Hugging Face repository is gated): the multimodal wrapper, attn_temperature_tuning 4, for_llm_compressor.
SCOUT: dict = {
    "architectures": ["Llama4ForConditionalGeneration"], "boi_token_index": 200080, "eoi_token_index": 200081,
    "image_token_index": 200092, "model_type": "llama4", "tie_word_embeddings": False,
    "transformers_version": "4.51.0",
    "text_config": {
        "attention_bias": False, "attention_chunk_size": 8192, "attention_dropout": 0.0, "attn_scale": 0.1,
        "attn_temperature_tuning": 4, "bos_token_id": 200000, "eos_token_id": [200001, 200007, 200008],
        "floor_scale": 8192, "for_llm_compressor": False, "head_dim": 128, "hidden_act": "silu",
        "hidden_size": 5120, "initializer_range": 0.02, "interleave_moe_layer_step": 1, "intermediate_size": 8192,
        "intermediate_size_mlp": 16384, "max_position_embeddings": 262144, "model_type": "llama4_text",
        "moe_layers": list(range(48)), "no_rope_layers": [0 if i % 4 == 3 else 1 for i in range(48)],
        "num_attention_heads": 40, "num_experts_per_tok": 1, "num_hidden_layers": 48, "num_key_value_heads": 8,
        "num_local_experts": 16, "output_router_logits": False, "pad_token_id": 200018, "rms_norm_eps": 1e-05,
        "rope_scaling": {"factor": 8.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                         "original_max_position_embeddings": 8192, "rope_type": "llama3"},
        "rope_theta": 500000.0, "router_aux_loss_coef": 0.001, "router_jitter_noise": 0.0,
        "torch_dtype": "bfloat16", "use_cache": True, "use_qk_norm": True, "vocab_size": 202048,
    },
    "vision_config": {
        "attention_dropout": 0.0, "hidden_act": "gelu", "hidden_size": 1408, "image_size": 336,
        "initializer_range": 0.02, "intermediate_size": 5632, "model_type": "llama4_vision_model",
        "multi_modal_projector_bias": False, "norm_eps": 1e-05, "num_attention_heads": 16, "num_channels": 3,
        "num_hidden_layers": 34, "patch_size": 14, "pixel_shuffle_ratio": 0.5, "projector_dropout": 0.0,
        "projector_input_dim": 4096, "projector_output_dim": 4096, "rope_theta": 10000, "vision_feature_layer": -1,
        "vision_feature_select_strategy": "default", "vision_output_dim": 4096,
    },
}  # fmt: skip


def as_transformers_5_loads_it(cfg: dict) -> dict:
    """transformers 5.24's strict Llama4TextConfig refuses the integer 4 (4.51, the release's, took it); its
    attention tests the flag for truth, so the oracle gets ``True`` (the flag has no parameters either way)."""
    out = copy.deepcopy(cfg)
    text = out.get("text_config", out)
    text["attn_temperature_tuning"] = bool(text["attn_temperature_tuning"])
    return out


# Qwen/Qwen3-Coder-480B-A35B-Instruct config.json: qkv_bias, use_qk_norm and shared_expert_intermediate_size
# are fields of Qwen's own code that Qwen3MoeConfig keeps and Qwen3MoeForCausalLM never reads.
QWEN3_CODER_480B: dict = {
    "architectures": ["Qwen3MoeForCausalLM"], "attention_dropout": 0.0, "decoder_sparse_step": 1,
    "eos_token_id": 151645, "head_dim": 128, "hidden_act": "silu", "hidden_size": 6144, "initializer_range": 0.02,
    "intermediate_size": 8192, "max_position_embeddings": 262144, "max_window_layers": 62, "mlp_only_layers": [],
    "model_type": "qwen3_moe", "moe_intermediate_size": 2560, "norm_topk_prob": True, "num_attention_heads": 96,
    "num_experts": 160, "num_experts_per_tok": 8, "num_hidden_layers": 62, "num_key_value_heads": 8,
    "output_router_logits": False, "qkv_bias": False, "rms_norm_eps": 1e-06, "rope_scaling": None,
    "rope_theta": 10000000, "router_aux_loss_coef": 0.0, "shared_expert_intermediate_size": 0,
    "sliding_window": None, "tie_word_embeddings": False, "torch_dtype": "bfloat16", "transformers_version": "4.51.0",
    "use_cache": True, "use_qk_norm": True, "use_sliding_window": False, "vocab_size": 151936,
}  # fmt: skip


def moec(*args: object) -> object:
    return CliRunner().invoke(cli, [str(a) for a in args])


def counts(model, experts: int, top_k: int) -> tuple[int, int]:
    """(total, active) of a transformers model; active = total − (E−k)/E of the routed experts' tensors."""
    total = sum(p.numel() for p in model.parameters())
    routed = sum(p.numel() for n, p in model.named_parameters() if ".experts." in n)
    return total, total - routed * (experts - top_k) // experts


def test_integer_temperature_tuning_is_read_for_truth_with_a_note():
    text_cfg = SCOUT["text_config"]
    as_bool = {**text_cfg, "attn_temperature_tuning": True}
    assert plan_differences(hf_to_model(text_cfg), hf_to_model(as_bool)) == []
    off = hf_to_model({**text_cfg, "attn_temperature_tuning": 0})
    assert plan_differences(off, hf_to_model({**text_cfg, "attn_temperature_tuning": False})) == []
    assert plan_differences(off, hf_to_model(as_bool)) != []  # the flag matters: 0 really turns tuning off
    assert "attn_temperature_tuning 4: Llama4TextAttention tests it for truth, so true" in import_hf_config(text_cfg)
    with pytest.raises(SpecError) as e:
        hf_to_model({**text_cfg, "attn_temperature_tuning": "4"})  # a string is not a flag transformers reads
    assert [p.path for p in e.value.problems] == ["attn_temperature_tuning"]


def test_qwen3_coder_release_counts_equal_transformers_model_on_meta():
    pytest.importorskip("transformers")
    params = analyze(hf_to_model(QWEN3_CODER_480B)).params
    assert (params.total, params.active) == counts(hf_model_on_meta(QWEN3_CODER_480B), 160, 8)
    assert round(params.total / 1e9) == 480 and round(params.active / 1e9) == 35


def test_qwen3_coder_fields_transformers_ignores_are_named_not_refused():
    spec = import_hf_config(QWEN3_CODER_480B)
    for said in ("qkv_bias false", "use_qk_norm true", "shared_expert_intermediate_size 0"):
        assert f"{said}: transformers ignores it" in spec
    plain = {k: v for k, v in QWEN3_CODER_480B.items() if k not in ("qkv_bias", "use_qk_norm")}
    plain.pop("shared_expert_intermediate_size")
    assert plan_differences(hf_to_model(QWEN3_CODER_480B), hf_to_model(plain)) == []


@pytest.mark.parametrize(
    "change",
    [{"qkv_bias": True}, {"use_qk_norm": False}, {"shared_expert_intermediate_size": 2560}],
)
def test_qwen3_coder_fields_that_disagree_with_what_transformers_builds_are_refused(change, tmp_path):
    config = tmp_path / "config.json"
    config.write_text(json.dumps({**QWEN3_CODER_480B, **change}, indent=2))
    result = moec("import-hf", config, "-o", tmp_path / "spec.yaml")
    (field,) = change
    assert result.exit_code == 2 and f"{field}: " in result.output and "ambiguous" in result.output
    assert "config.json:" in result.output and "Traceback" not in result.output
