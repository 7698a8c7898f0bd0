"""AFMoE (model_type afmoe, Arcee's Trinity): on the Trinity-Nano release config the analyzer's total and active
equal transformers' model built on meta; a tiny save_pretrained checkpoint (sandwich norms, the gated attention, NoPE
global layers, the selection bias as a parameter, mup's embedding scale) loads with moec.from_hf to transformers'
logits and router choices; what transformers would not run as the config says is refused, located."""

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
    assert_same_routed_logits,
    assert_table_holds_class_defaults,
    away_from_init,
    hf_counts,
    refused_fields,
    saved_checkpoint,
    tiny_hf,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# arcee-ai/Trinity-Nano-Preview config.json, as a public port's test fixture copies it (transformers 4.57.3, Arcee's
# remote code: route_norm, score_func and the group fields are that code's, which transformers does not read).
# Published: 6B total, 1B active.
TRINITY_NANO = {
    "architectures": ["AfmoeForCausalLM"], "attention_dropout": 0.0, "dtype": "bfloat16",
    "global_attn_every_n_layers": 4, "head_dim": 128, "hidden_act": "silu", "hidden_size": 1024,
    "initializer_range": 0.02, "intermediate_size": 3072, "max_position_embeddings": 131072, "model_type": "afmoe",
    "moe_intermediate_size": 256, "mup_enabled": True, "n_group": 1, "num_attention_heads": 8, "num_dense_layers": 2,
    "num_expert_groups": 1, "num_experts": 128, "num_experts_per_tok": 8, "num_hidden_layers": 56,
    "num_key_value_heads": 2, "num_limited_groups": 1, "num_shared_experts": 1, "rms_norm_eps": 1e-05,
    "rope_scaling": None, "rope_theta": 10000, "route_norm": True, "route_scale": 2.826, "score_func": "sigmoid",
    "sliding_window": 2048, "tie_word_embeddings": False, "topk_group": 1, "transformers_version": "4.57.3",
    "use_cache": True, "use_grouped_mm": True, "vocab_size": 200192,
}  # fmt: skip
# Trinity-Mini's sizes in the same fixture (published: 26B total, 3B active)
TRINITY_MINI = {
    **TRINITY_NANO, "hidden_size": 2048, "intermediate_size": 6144, "moe_intermediate_size": 1024,
    "num_attention_heads": 32, "num_dense_layers": 2, "num_hidden_layers": 32, "num_key_value_heads": 4,
}  # fmt: skip


def test_release_counts_equal_transformers_model_on_meta():
    params = analyze(hf_to_model(TRINITY_NANO)).params
    assert (params.total, params.active) == hf_counts(TRINITY_NANO)
    assert round(params.total / 1e9) == 6 and round(params.active / 1e9) == 1  # 6.12B, 1.02B
    mini = analyze(hf_to_model(TRINITY_MINI)).params
    assert (mini.total, mini.active) == hf_counts(TRINITY_MINI)
    assert round(mini.total / 1e9) == 26 and round(mini.active / 1e9) == 3


def test_release_config_as_transformers_saves_it_imports_to_the_same_plan():
    saved = hf_model_on_meta(TRINITY_NANO).config.to_dict()
    assert "layer_types" in saved and "rope_parameters" in saved
    assert plan_differences(hf_to_model(saved), hf_to_model(TRINITY_NANO)) == []


def test_layers_slide_and_rotate_three_of_four_and_start_dense():
    plan = hf_to_model(TRINITY_NANO)
    assert [(lp.attention.window, lp.attention.rope) for lp in plan.layers[:4]] == [(2048, True)] * 3 + [(None, False)]
    assert [lp.ffn.kind for lp in plan.layers[:3]] == ["dense", "dense", "moe"]
    assert plan.norm.placement == "sandwich" and plan.embedding_multiplier == 32.0  # √1024


@pytest.mark.parametrize(
    "change,field",
    [
        ({"route_norm": False}, "route_norm"),  # AfmoeTokenChoiceRouter always renormalises
        ({"score_func": "softmax"}, "score_func"),
        ({"n_group": 2, "topk_group": 1}, "n_group"),  # transformers routes without groups
        ({"layer_types": ["sliding_attention"] * 55 + ["chunked_attention"]}, "layer_types"),
        ({"num_dense_layers": None}, "num_dense_layers"),
        ({"head_dim": None}, "head_dim"),  # the attention reads it as given: transformers builds no model
        ({"layer_types": ["sliding_attention", "full_attention"] * 28}, "global_attn_every_n_layers"),  # disagree
        ({"moe_router_bias": True}, "moe_router_bias"),  # a field nobody reads
    ],
)
def test_what_transformers_would_not_run_as_said_is_refused_located(change, field):
    assert field in refused_fields({**TRINITY_NANO, **change})


def test_with_attention_biases_the_gate_has_none_and_counts_equal_transformers():
    """q, k, v and o_proj take biases and AfmoeAttention.gate_proj does not (attention.output_gate_bias: none)."""
    cfg = {**TRINITY_NANO, "attention_bias": True}
    plan = hf_to_model(cfg)
    assert {lp.attention.output_gate_bias for lp in plan.layers} == {"none"}
    params = analyze(plan).params
    assert (params.total, params.active) == hf_counts(cfg)


def test_with_attention_biases_a_tiny_checkpoint_gives_transformers_logits(tmp_path_factory):
    hf = tiny_hf("afmoe", {**TINY, "attention_bias": True})
    away_from_init(hf, small_biases=True)  # biases around 1 would send every token to the same experts
    _, folder = saved_checkpoint(hf, tmp_path_factory, "afmoe_bias")
    model = moec.from_hf(folder)
    assert model.layers[0].attn.gate_proj.bias is None and model.layers[0].attn.q_proj.bias is not None
    assert assert_same_routed_logits(hf, model, "AfmoeTokenChoiceRouter") <= 1e-4


def test_defaults_are_transformers_class_defaults():
    from moec.hf.families.afmoe import DEFAULTS

    assert_table_holds_class_defaults(DEFAULTS, transformers.AfmoeConfig, at_least=20)
    assert DEFAULTS["default_theta"] == transformers.AfmoeConfig.default_theta


# 4 layers: sliding (window 4 < the 12 test tokens, with rope) and global NoPE in turn, a dense first layer, top-2 of
# 8 experts with one shared, route_scale and mup's √d embedding scale
TINY = {
    "vocab_size": 128, "hidden_size": 64, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16,
    "max_position_embeddings": 64, "rms_norm_eps": 1e-5, "num_hidden_layers": 4, "intermediate_size": 96,
    "moe_intermediate_size": 16, "num_experts": 8, "num_experts_per_tok": 2, "num_shared_experts": 1,
    "num_dense_layers": 1, "global_attn_every_n_layers": 2, "sliding_window": 4, "route_scale": 2.5,
    "mup_enabled": True,
}  # fmt: skip


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return saved_checkpoint(tiny_hf("afmoe", TINY), tmp_path_factory, "afmoe")


def test_tiny_checkpoint_gives_transformers_logits_and_router_choices(checkpoint):
    hf, folder = checkpoint
    model = moec.from_hf(folder)
    assert [(lp.attention.window, lp.attention.rope) for lp in model.plan.layers] == [(4, True), (None, False)] * 2
    assert [lp.ffn.kind for lp in model.plan.layers] == ["dense", "moe", "moe", "moe"]
    bias = hf.model.layers[1].mlp.expert_bias
    assert torch.equal(model.layers[1].ffn.router.expert_bias, bias) and bias.std() > 0.1  # it changes choices
    assert assert_same_routed_logits(hf, model, "AfmoeTokenChoiceRouter") <= 1e-4
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in hf.parameters())


def test_the_generated_model_py_gives_the_library_logits(checkpoint, tmp_path):
    """Sandwich norms, the element gate and NoPE global layers as moec build renders them."""
    tokens = torch.randint(0, TINY["vocab_size"], (2, 12), generator=torch.Generator().manual_seed(3))
    assert_generated_model_gives_the_library_logits(moec.from_hf(checkpoint[1]), tokens, tmp_path)


def test_the_release_exports_as_afmoe_with_transformers_count():
    from moec.hf import export_hf_config
    from tests.hf.configs import hf_params

    plan = hf_to_model(TRINITY_NANO)
    cfg = export_hf_config(plan)
    assert cfg["model_type"] == "afmoe" and cfg["mup_enabled"] and cfg["num_dense_layers"] == 2
    assert plan_differences(plan, hf_to_model(cfg)) == []
    assert hf_params(cfg) == analyze(plan).params.total


def test_tiny_model_exports_to_a_checkpoint_transformers_runs_to_its_logits(checkpoint, tmp_path):
    model = moec.from_hf(checkpoint[1])
    moec.export_hf(model, tmp_path / "out", family="afmoe")
    hf = transformers.AfmoeForCausalLM.from_pretrained(tmp_path / "out", attn_implementation="eager").eval()
    assert assert_same_routed_logits(hf, model, "AfmoeTokenChoiceRouter") <= 1e-4


def test_refused_layer_types_are_the_one_problem_not_the_window_they_would_place():
    assert refused_fields({**TINY, "model_type": "afmoe", "layer_types": ["x"] * 4}) == ["layer_types"]
