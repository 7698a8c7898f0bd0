"""Exporting specs as Hugging Face config.json files: round trips, the family chosen from the plan's
features, transformers' parameter count of what was written, and clear refusals."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from moec.analyze import analyze
from moec.commands.hf import export_hf
from moec.errors import SpecError
from moec.hf import export_hf_config, hf_to_model
from moec.hf.config import plan_differences
from moec.spec import load_model
from tests.hf.configs import EXACT, RELEASES, TINY, hf_params

pytest.importorskip("transformers")


@pytest.mark.parametrize("model_type", EXACT)
def test_import_export_import_gives_the_identical_plan(model_type):
    first = hf_to_model(RELEASES[model_type])
    exported = export_hf_config(first)
    assert exported["model_type"] == model_type
    assert plan_differences(first, hf_to_model(exported)) == []  # training coefficients included


@pytest.mark.parametrize("name", ["mixtral-8x7b", "mixtral-8x22b", "qwen3-30b-a3b", "deepseek-v3", "llama-2-7b"])
def test_exported_shipped_spec_builds_in_transformers_with_the_analyzers_count(name):
    plan = load_model(name)
    cfg = export_hf_config(plan, drop_training=name == "deepseek-v3")
    assert hf_params(cfg) == analyze(plan).params.total
    assert plan_differences(plan, hf_to_model(cfg), training=False) == []


def test_a_training_coefficient_without_a_config_field_needs_drop_training():
    with pytest.raises(SpecError, match="bias_update_rate.*--drop-training"):
        export_hf_config("deepseek-v3")
    cfg = export_hf_config("deepseek-v3", drop_training=True)
    assert cfg["aux_loss_alpha"] == 0.0001 and cfg["seq_aux"] is True  # what has a field is kept


FEATURES = {
    # a tiny plan with one distinguishing feature → the family that can say it
    "llama": {**TINY, "model_type": "llama", "num_hidden_layers": 2, "attention_bias": True, "mlp_bias": True},
    "mistral": {**TINY, "model_type": "mistral", "num_hidden_layers": 2, "sliding_window": 64},
    "qwen2": {**TINY, "model_type": "qwen2", "num_hidden_layers": 3},  # q/k/v bias without an o bias
    "qwen3": {**TINY, "model_type": "qwen3", "num_hidden_layers": 3, "head_dim": 32, "use_sliding_window": True,
              "sliding_window": 32, "max_window_layers": 1},
    "mixtral": {**TINY, "model_type": "mixtral", "num_hidden_layers": 2, "num_local_experts": 4, "tie_word_embeddings": True},
    "qwen3_moe": {**TINY, "model_type": "qwen3_moe", "num_hidden_layers": 4, "num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 32,
                  "mlp_only_layers": [0], "norm_topk_prob": True, "head_dim": 16},
    "qwen2_moe": {**TINY, "model_type": "qwen2_moe", "num_hidden_layers": 2, "num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 32,
                  "shared_expert_intermediate_size": 48},
    "deepseek_v2": {**TINY, "model_type": "deepseek_v2", "num_hidden_layers": 3, "num_key_value_heads": 4,
                    "first_k_dense_replace": 1, "n_routed_experts": 8, "num_experts_per_tok": 2, "n_shared_experts": 1,
                    "moe_intermediate_size": 16, "q_lora_rank": None, "kv_lora_rank": 16, "qk_nope_head_dim": 8,
                    "qk_rope_head_dim": 8, "v_head_dim": 8, "topk_method": "group_limited_greedy", "n_group": 4,
                    "topk_group": 2, "routed_scaling_factor": 16.0},
    "granitemoe": {**TINY, "model_type": "granitemoe", "num_hidden_layers": 2, "num_local_experts": 4,
                   "attention_multiplier": 0.05, "embedding_multiplier": 12.0, "residual_multiplier": 0.22,
                   "logits_scaling": 6.0},  # μP scalars and a softmax scale of its own
    "olmoe": {**TINY, "model_type": "olmoe", "num_hidden_layers": 2, "num_experts": 4, "num_experts_per_tok": 2,
              "clip_qkv": 8.0},  # q/k norms over whole projections
    "gpt_oss": {**TINY, "model_type": "gpt_oss", "num_hidden_layers": 3, "num_local_experts": 4,
                "num_experts_per_tok": 2, "head_dim": 16, "sliding_window": 8, "swiglu_limit": 5.0,
                "rope_parameters": {"rope_type": "default", "rope_theta": 1e4}},  # sinks, clamped SwiGLU
    "dbrx": {"model_type": "dbrx", "vocab_size": 128, "d_model": 64, "n_heads": 4, "n_layers": 2, "max_seq_len": 512,
             "attn_config": {"kv_n_heads": 2, "clip_qkv": 8.0, "rope_theta": 1e4},
             "ffn_config": {"ffn_hidden_size": 96, "moe_num_experts": 4, "moe_top_k": 2}},  # bias-free layernorm
}  # fmt: skip


@pytest.mark.parametrize("model_type", sorted(FEATURES))
def test_the_family_is_chosen_from_the_plans_features(model_type):
    plan = hf_to_model(FEATURES[model_type])
    cfg = export_hf_config(plan)
    assert cfg["model_type"] == model_type
    assert hf_params(cfg) == analyze(plan).params.total
    assert plan_differences(plan, hf_to_model(cfg)) == []


def test_gpt_oss_without_rope_scaling_is_exported_with_explicit_default_rope():
    """GptOssConfig fills in YaRN when a config has no rope parameters, so 'none' must be written out."""
    plan = hf_to_model(FEATURES["gpt_oss"])
    assert plan.positions.scaling is None
    cfg = export_hf_config(plan)
    assert cfg["rope_parameters"] == {"rope_type": "default", "rope_theta": 1e4}


@pytest.mark.parametrize(
    "spec,reason",
    [
        ("switch-base-8", "needs rotary positions"),
        ("lora-moe", "no frozen components"),
        ("textbook-dense", "needs pre-norm RMSNorm"),
        ("deepseek-moe-16b", "qwen2_moe: cannot express"),  # model_type deepseek is not in transformers
    ],
)
def test_specs_no_family_expresses_are_refused_saying_why(spec, reason):
    with pytest.raises(SpecError) as e:
        export_hf_config(spec)
    text = str(e.value)
    assert "no supported Hugging Face family expresses this spec exactly" in text and reason in text


def test_a_feature_no_family_has_is_named():
    plan = hf_to_model(RELEASES["mixtral"])
    moe = plan.layers[0].ffn
    odd = moe.__class__(**{**moe.__dict__, "capacity_factor": 1.25})
    plan = plan.replace(layers=tuple(lp.__class__(lp.index, lp.attention, odd) for lp in plan.layers))
    with pytest.raises(SpecError, match="capacity_factor"):
        export_hf_config(plan)


def test_export_hf_writes_json_and_never_overwrites_without_force(tmp_path):
    runner = CliRunner()
    r = runner.invoke(export_hf, ["mixtral-8x7b"])
    assert r.exit_code == 0 and json.loads(r.output)["num_local_experts"] == 8
    out = tmp_path / "config.json"
    assert runner.invoke(export_hf, ["qwen3-30b-a3b", "-o", str(out)]).exit_code == 0
    assert plan_differences(hf_to_model(out), load_model("qwen3-30b-a3b")) == []
    r = runner.invoke(export_hf, ["mixtral-8x7b", "-o", str(out)])
    assert r.exit_code == 2 and "--force" in r.output
    assert json.loads(out.read_text())["model_type"] == "qwen3_moe"
    assert runner.invoke(export_hf, ["mixtral-8x7b", "-o", str(out), "--force"]).exit_code == 0
    assert json.loads(out.read_text())["model_type"] == "mixtral"


def test_export_hf_applies_set_and_reports_refusals_with_exit_2():
    runner = CliRunner()
    r = runner.invoke(export_hf, ["mixtral-8x7b", "--set", "moe.router.top_k=3"])
    assert r.exit_code == 0 and json.loads(r.output)["num_experts_per_tok"] == 3
    r = runner.invoke(export_hf, ["switch-base-8"])
    assert r.exit_code == 2 and "needs rotary positions" in r.output
