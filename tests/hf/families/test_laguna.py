"""Laguna (model_type laguna, Poolside): on LagunaConfig's class defaults the analyzer's total and active equal
transformers' model built on meta; on Laguna XS 2.1's config (as a public loader's test quotes it, trimmed to 8
layers), with YaRN on the full layers only (each layer its own scaling), likewise, and it exports back; a tiny save_pretrained checkpoint (per-layer heads,
partial rotary on the full layers with their own base, the softplus head gate, the softcapped sigmoid router with
its selection bias, a shared MLP) loads with moec.from_hf to transformers' logits and router choices."""

from __future__ import annotations

import pytest

from moec.analyze import analyze
from moec.hf import hf_to_model

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import moec  # noqa: E402
from tests.hf.families._harness import (  # noqa: E402
    assert_generated_model_gives_the_library_logits,
    assert_same_routed_logits,
    assert_stepwise_decode_is_the_full_forward,
    assert_table_holds_class_defaults,
    hf_counts,
    refused_fields,
    saved_checkpoint,
    tiny_hf,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# LagunaConfig's rope_parameters when unset
LAGUNA_ROPE_DEFAULTS = transformers.LagunaConfig().rope_parameters

CLASS_DEFAULTS = {"model_type": "laguna", "architectures": ["LagunaForCausalLM"]}

# poolside/Laguna-XS-2.1's config.json as the Lablup mlxcel loader's tests quote it ("trimmed to the fields the
# loader reads": 8 layers; the quantization block left out, it describes the stored weights)
XS_2_1 = {
    "model_type": "laguna", "architectures": ["LagunaForCausalLM"], "vocab_size": 100352, "hidden_size": 2048,
    "intermediate_size": 8192, "num_hidden_layers": 8, "num_attention_heads": 48,
    "num_attention_heads_per_layer": [48, 64, 64, 64, 48, 64, 64, 64], "num_key_value_heads": 8, "head_dim": 128,
    "max_position_embeddings": 262144, "rms_norm_eps": 1e-6,
    "layer_types": ["full_attention", "sliding_attention", "sliding_attention", "sliding_attention"] * 2,
    "sliding_window": 512,
    "rope_parameters": {
        "full_attention": {"rope_theta": 500000.0, "rope_type": "yarn", "factor": 32.0,
                           "original_max_position_embeddings": 8192, "beta_slow": 1.0, "beta_fast": 64.0,
                           "attention_factor": 1.3465735902799727, "partial_rotary_factor": 0.5},
        "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 1.0},
    },
    "gating": "per-head", "num_experts": 256, "num_experts_per_tok": 8, "moe_intermediate_size": 512,
    "shared_expert_intermediate_size": 512, "mlp_layer_types": ["dense"] + ["sparse"] * 7,
    "moe_routed_scaling_factor": 2.5, "moe_router_logit_softcapping": 0.0, "tie_word_embeddings": False,
    "bos_token_id": 2, "eos_token_id": [2, 24],
}  # fmt: skip


def test_class_default_counts_equal_transformers_model_on_meta():
    plan = hf_to_model(CLASS_DEFAULTS)
    params = analyze(plan).params
    assert (params.total, params.active) == hf_counts(CLASS_DEFAULTS) == (33_189_975_808, 2_764_494_592)
    a = plan.layers[0].attention
    assert (plan.positions.theta, plan.positions.rotary_dim) == (500000.0, 64)  # all full: 0.5 of 128
    assert (a.output_gate, a.output_gate_fn, a.rotary_dim) == ("head", "softplus", None)
    assert [lp.ffn.kind for lp in plan.layers[:2]] == ["dense", "moe"]


def test_xs_2_1_with_yarn_on_its_full_layers_only_counts_as_transformers_and_exports_back():
    from moec.hf import export_hf_config
    from moec.hf.config import plan_differences

    plan = hf_to_model(XS_2_1)
    params = analyze(plan).params
    assert (params.total, params.active) == hf_counts(XS_2_1)
    # per layer: 48 heads, base 500000, 64 rotated dims and YaRN on the full layers, 64 heads, 10000, 128 and no
    # scaling on the others
    got = [(lp.attention.n_heads, lp.attention.rope_theta, lp.attention.rotary_dim, lp.attention.window,
            getattr(lp.attention.rope_scaling, "factor", None)) for lp in plan.layers[:2]]  # fmt: skip
    assert got == [(48, None, None, None, 32.0), (64, 10000.0, 128, 512, None)]
    assert (plan.positions.theta, plan.positions.rotary_dim) == (500000.0, 64)
    cfg = export_hf_config(plan)
    assert cfg["rope_parameters"]["sliding_attention"]["rope_type"] == "default"
    assert plan_differences(plan, hf_to_model(cfg)) == []


@pytest.mark.parametrize(
    "change,field",
    [
        ({"gating": False}, "gating"),  # transformers would still build a per-element gate
        ({"moe_apply_router_weight_on_input": True}, "moe_apply_router_weight_on_input"),
        ({"mlp_layer_types": ["dense"] * 39 + ["moe"]}, "mlp_layer_types"),
        ({"rope_parameters": {"full_attention": {"rope_theta": 1e4}, "chunked": {"rope_theta": 1e4}}},
         "rope_parameters.chunked"),
        ({"num_attention_heads_per_layer": [48] * 39}, "num_attention_heads_per_layer"),
        ({"layer_types": ["full_attention", "sliding_attention"] * 20,  # a type's own width, not the model's
          "rope_parameters": {**LAGUNA_ROPE_DEFAULTS, "sliding_attention": {"rope_theta": 1e4,
                                                                            "partial_rotary_factor": "a"}}},
         "rope_parameters.sliding_attention.partial_rotary_factor"),
    ],
)  # fmt: skip
def test_what_transformers_would_not_run_as_said_is_refused_located(change, field):
    assert field in refused_fields({**CLASS_DEFAULTS, **change})


def test_the_legacy_attention_layer_type_rotates_as_full_attention():
    """transformers' config reads a layer_types entry 'attention' as full_attention, its legacy name: that layer
    takes the full type's base and rotated width (500000, 64 of 128 dims), the sliding one 10000 and all 128."""
    cfg = {**CLASS_DEFAULTS, "num_hidden_layers": 2, "layer_types": ["attention", "sliding_attention"]}
    assert transformers.LagunaConfig(num_hidden_layers=2, layer_types=cfg["layer_types"]).layer_types == [
        "full_attention",
        "sliding_attention",
    ]
    plan = hf_to_model(cfg)
    got = [(lp.attention.rope_theta or plan.positions.theta, lp.attention.rotary_dim or plan.positions.rotary_dim)
           for lp in plan.layers]  # fmt: skip
    assert got == [(500000.0, 64), (10000.0, 128)]


def test_defaults_are_transformers_class_defaults():
    from moec.hf.families.laguna import DEFAULTS

    assert_table_holds_class_defaults(DEFAULTS, transformers.LagunaConfig, at_least=20)
    assert DEFAULTS["default_theta"] == transformers.LagunaConfig.default_theta


# 4 layers: full (4 heads, base 500000, 8 of 16 dims rotated) and sliding (8 heads, window 4 < the test's tokens,
# base 10000, all 16 dims) in turn, a dense first layer, top-2 of 8 experts with the logits softcapped at 1.5 and
# the weights scaled by 2.5, a shared MLP
TINY = {
    "vocab_size": 128, "hidden_size": 64, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16,
    "max_position_embeddings": 64, "rms_norm_eps": 1e-6, "num_hidden_layers": 4, "intermediate_size": 96,
    "moe_intermediate_size": 16, "shared_expert_intermediate_size": 24, "num_experts": 8, "num_experts_per_tok": 2,
    "layer_types": ["full_attention", "sliding_attention"] * 2, "sliding_window": 4,
    "num_attention_heads_per_layer": [4, 8, 4, 8], "mlp_layer_types": ["dense", "sparse", "sparse", "sparse"],
    "moe_routed_scaling_factor": 2.5, "moe_router_logit_softcapping": 1.5, "gating": "per-head",
}  # fmt: skip


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return saved_checkpoint(tiny_hf("laguna", TINY), tmp_path_factory, "laguna")


def test_tiny_checkpoint_gives_transformers_logits_and_router_choices(checkpoint):
    hf, folder = checkpoint
    model = moec.from_hf(folder)
    got = [(lp.attention.n_heads, lp.attention.rotary_dim, lp.attention.window) for lp in model.plan.layers]
    assert got == [(4, None, None), (8, 16, 4)] * 2 and model.plan.positions.rotary_dim == 8
    assert model.plan.layers[1].ffn.router.logit_softcap == 1.5
    assert assert_same_routed_logits(hf, model, "LagunaTopKRouter", 2.5) <= 1e-4
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in hf.parameters())


def test_a_tiny_checkpoint_with_yarn_on_its_full_layers_only_gives_transformers_logits(tmp_path):
    yarn = {"rope_type": "yarn", "rope_theta": 500000.0, "factor": 4.0, "original_max_position_embeddings": 16,
            "beta_fast": 8.0, "beta_slow": 1.0, "partial_rotary_factor": 0.5}  # fmt: skip
    cfg = {**TINY, "rope_parameters": {**LAGUNA_ROPE_DEFAULTS, "full_attention": yarn}}
    hf = tiny_hf("laguna", cfg)
    hf.save_pretrained(tmp_path)
    model = moec.from_hf(tmp_path)
    assert [getattr(lp.attention.rope_scaling, "kind", None) for lp in model.plan.layers] == ["yarn", None] * 2
    assert assert_same_routed_logits(hf, model, "LagunaTopKRouter", 2.5) <= 1e-4


def test_tiny_model_decodes_token_by_token_to_its_full_logits(checkpoint):
    """The decode cache holds each layer type's own RoPE tables (base and width): stepwise == the full forward."""
    assert_stepwise_decode_is_the_full_forward(moec.from_hf(checkpoint[1]), vocab=128)


def test_the_generated_model_py_gives_the_library_logits(checkpoint, tmp_path):
    """moec build renders the softplus gate and each layer's own rotary width: the generated model.py holding the
    imported weights gives moec.nn's logits and aux bit for bit."""
    model = moec.from_hf(checkpoint[1])
    assert_generated_model_gives_the_library_logits(model, None, tmp_path)


def test_the_class_default_plan_exports_as_laguna_with_transformers_count():
    from moec.hf import export_hf_config
    from moec.hf.config import plan_differences
    from tests.hf.configs import hf_params

    plan = hf_to_model(CLASS_DEFAULTS)
    cfg = export_hf_config(plan)
    assert cfg["model_type"] == "laguna" and cfg["gating"] == "per-head"
    assert cfg["rope_parameters"]["full_attention"]["partial_rotary_factor"] == 0.5
    assert plan_differences(plan, hf_to_model(cfg)) == []
    assert hf_params(cfg) == analyze(plan).params.total


def test_tiny_model_exports_to_a_checkpoint_transformers_runs_to_its_logits(checkpoint, tmp_path):
    model = moec.from_hf(checkpoint[1])
    moec.export_hf(model, tmp_path / "out", family="laguna")
    hf = transformers.LagunaForCausalLM.from_pretrained(tmp_path / "out", attn_implementation="eager").eval()
    assert hf.config.num_attention_heads_per_layer == [4, 8, 4, 8]
    assert assert_same_routed_logits(hf, model, "LagunaTopKRouter", 2.5) <= 1e-4
