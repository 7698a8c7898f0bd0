"""Cohere2-MoE (model_type cohere2_moe, Cohere's North): on North-Mini-Code's config the analyzer's total and active
equal transformers' model built on meta; tiny save_pretrained checkpoints (the parallel block with its one norm, RMSNorm
or the bias-free LayerNorm, interleaved rotary pairs on the sliding and forced dense layers, NoPE global layers,
sigmoid or top-k-softmax routing, a summed shared expert, the logit scale) load with moec.from_hf to transformers'
logits and router choices; what moec cannot say, or transformers would not run as said, is refused, located."""

from __future__ import annotations

import pytest

from moec.analyze import analyze
from moec.hf import hf_to_model
from moec.hf.config import plan_differences
from tests.hf.configs import hf_model_on_meta

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import moec  # noqa: E402
from tests.hf.families._harness import (  # noqa: E402
    assert_generated_model_gives_the_library_logits,
    assert_table_holds_class_defaults,
    away_from_init,
    hf_counts,
    refused_fields,
    tiny_hf,
)
from tests.hf.test_weights import assert_same  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# CohereLabs/North-Mini-Code-1.0 config.json: the fields two public ports pin it by (an MLX server's artifact check
# and a draft-training tool), which list its every architecture field; tie_word_embeddings is absent (the ports read
# it as None; the artifact ties its head), and use_parallel_block / use_qk_norm are Cohere's code's, which transformers
# does not read. 49 layers, global every fourth from layer 0.
NORTH_MINI_CODE = {
    "architectures": ["Cohere2MoeForCausalLM"], "model_type": "cohere2_moe", "hidden_size": 2048, "head_dim": 128,
    "num_hidden_layers": 49, "intermediate_size": 768, "prefix_dense_intermediate_size": 3072,
    "num_attention_heads": 32, "num_key_value_heads": 4, "vocab_size": 262144, "num_experts": 128,
    "num_experts_per_tok": 8, "num_shared_experts": 0, "first_k_dense_replace": 1,
    "prefix_dense_sliding_window_pattern": 1, "expert_selection_fn": "sigmoid", "sliding_window": 4096,
    "rope_theta": 50000, "max_position_embeddings": 500000, "use_parallel_block": True, "use_qk_norm": False,
    "norm_topk_prob": False, "rms_norm_eps": 1e-06, "layer_norm_eps": 1e-05,
    "layer_types": ["full_attention" if i % 4 == 0 else "sliding_attention" for i in range(49)],
}  # fmt: skip


def test_release_counts_equal_transformers_model_on_meta():
    params = analyze(hf_to_model(NORTH_MINI_CODE)).params
    assert (params.total, params.active) == hf_counts(NORTH_MINI_CODE)
    assert round(params.total / 1e9, 1) == 30.5 and round(params.active / 1e9, 1) == 3.3


def test_release_config_as_transformers_saves_it_imports_to_the_same_plan():
    saved = hf_model_on_meta(NORTH_MINI_CODE).config.to_dict()
    assert "first_k_dense_replace" not in saved and saved["mlp_layer_types"][:2] == ["dense", "sparse"]
    assert plan_differences(hf_to_model(saved), hf_to_model(NORTH_MINI_CODE)) == []


def test_the_dense_global_layer_rotates_and_the_other_global_layers_do_not():
    """Layer 0 is global and dense: prefix_dense_sliding_window_pattern 1 forces its rotation (force_rope)."""
    plan = hf_to_model(NORTH_MINI_CODE)
    assert [(lp.attention.window, lp.attention.rope, lp.ffn.kind) for lp in plan.layers[:5]] == [
        (None, True, "dense"), *[(4096, True, "moe")] * 3, (None, False, "moe"),
    ]  # fmt: skip
    assert plan.norm.placement == "parallel" and plan.tie_embeddings and plan.logits_scaling == 16.0


def test_without_rms_norm_eps_the_norm_is_a_layernorm_without_bias():
    plan = hf_to_model({k: v for k, v in NORTH_MINI_CODE.items() if k != "rms_norm_eps"})
    assert (plan.norm.kind, plan.norm.bias, plan.norm.eps) == ("layernorm", False, 1e-5)


def test_the_average_of_shared_and_routed_experts_is_refused_and_their_sum_imports():
    shared = {**NORTH_MINI_CODE, "num_shared_experts": 1}
    assert refused_fields(shared) == ["shared_expert_combination_strategy"]  # "average", the class default
    summed = {**shared, "shared_expert_combination_strategy": "sum"}
    params = analyze(hf_to_model(summed)).params
    assert (params.total, params.active) == hf_counts(summed)


@pytest.mark.parametrize(
    "change,field",
    [
        ({"expert_selection_fn": "relu"}, "expert_selection_fn"),
        ({"shared_expert_combination_strategy": "max"}, "shared_expert_combination_strategy"),
        ({"use_parallel_block": False}, "use_parallel_block"),  # transformers' block is parallel regardless
        ({"use_qk_norm": True}, "use_qk_norm"),  # Cohere2MoeAttention has no q/k norm
        ({"mlp_layer_types": ["dense"] + ["moe"] * 48}, "mlp_layer_types"),
        ({"logit_scale": 0.0}, "logit_scale"),
        ({"head_dim": None}, "head_dim"),  # the attention reads it as given: transformers builds no model
        ({"moe_router_bias": True}, "moe_router_bias"),  # a field nobody reads
    ],
)
def test_what_moec_cannot_say_or_transformers_would_not_run_is_refused_located(change, field):
    assert field in refused_fields({**NORTH_MINI_CODE, **change})


def test_defaults_are_transformers_class_defaults():
    from moec.hf.families.cohere2_moe import DEFAULTS

    assert_table_holds_class_defaults(DEFAULTS, transformers.Cohere2MoeConfig, at_least=25)
    assert DEFAULTS["default_theta"] == transformers.Cohere2MoeConfig.default_theta


# 4 layers: a dense global first layer (rotating: force_rope), then sliding (window 4 < the 12 test tokens), global
# NoPE and sliding again (sliding_window_pattern 2); top-2 of 8 experts
TINY = {
    "vocab_size": 128, "hidden_size": 64, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16,
    "max_position_embeddings": 64, "num_hidden_layers": 4, "intermediate_size": 16,
    "prefix_dense_intermediate_size": 96, "num_experts": 8, "num_experts_per_tok": 2, "first_k_dense_replace": 1,
    "sliding_window": 4, "sliding_window_pattern": 2, "logit_scale": 0.25,
}  # fmt: skip
VARIANTS = {
    # RMSNorm, sigmoid scores renormalised, one shared expert summed, biases on q, k, v and o
    "rmsnorm-sigmoid-shared": {
        "rms_norm_eps": 1e-6, "expert_selection_fn": "sigmoid", "norm_topk_prob": True, "num_shared_experts": 1,
        "shared_expert_combination_strategy": "sum", "attention_bias": True,
    },
    # the bias-free LayerNorm, a softmax over the top-k logits, tied embeddings
    "layernorm-softmax": {"layer_norm_eps": 1e-5, "expert_selection_fn": "softmax"},
}  # fmt: skip


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_tiny_checkpoint_gives_transformers_logits_and_router_choices(variant, tmp_path):
    hf = tiny_hf("cohere2_moe", {**TINY, **VARIANTS[variant]})
    away_from_init(hf, small_biases=True)  # o_proj's bias around 1 would route every token alike
    hf.save_pretrained(tmp_path)
    model = moec.from_hf(tmp_path)
    layers = model.plan.layers
    assert [(lp.attention.window, lp.attention.rope) for lp in layers] == [
        (None, True),
        (4, True),
        (None, False),
        (4, True),
    ]
    assert [lp.ffn.kind for lp in layers] == ["dense", "moe", "moe", "moe"]
    assert assert_same(hf, model) <= 1e-4
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in hf.parameters())


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_the_generated_model_py_gives_the_library_logits(variant, tmp_path):
    """moec build renders the parallel block: the generated model.py holding the imported weights gives moec.nn's
    logits and aux bit for bit."""
    hf = tiny_hf("cohere2_moe", {**TINY, **VARIANTS[variant]})
    away_from_init(hf, small_biases=True)
    hf.save_pretrained(tmp_path / "hf")
    assert_generated_model_gives_the_library_logits(moec.from_hf(tmp_path / "hf"), None, tmp_path)


def test_the_release_exports_as_cohere2_moe_with_transformers_count():
    from moec.hf import export_hf_config
    from tests.hf.configs import hf_params

    plan = hf_to_model(NORTH_MINI_CODE)
    cfg = export_hf_config(plan)
    assert cfg["model_type"] == "cohere2_moe" and cfg["logit_scale"] == 0.0625
    assert plan_differences(plan, hf_to_model(cfg)) == []
    assert hf_params(cfg) == analyze(plan).params.total


def test_tiny_model_exports_to_a_checkpoint_transformers_runs_to_its_logits(tmp_path):
    hf = tiny_hf("cohere2_moe", {**TINY, **VARIANTS["rmsnorm-sigmoid-shared"]})
    away_from_init(hf, small_biases=True)
    hf.save_pretrained(tmp_path / "hf")
    model = moec.from_hf(tmp_path / "hf")
    moec.export_hf(model, tmp_path / "out", family="cohere2_moe")
    back = transformers.Cohere2MoeForCausalLM.from_pretrained(tmp_path / "out", attn_implementation="eager").eval()
    assert assert_same(back, model) <= 1e-4
