"""MiMo-V2-Flash (model_type mimo_v2_flash, Xiaomi): on the release config.json and on MiMoV2FlashConfig's class
defaults the analyzer's total and active equal transformers' model built on meta; the fields of Xiaomi's own code
that transformers ignores are named where they agree with what it builds and refused by name where they do not;
a tiny save_pretrained checkpoint (per-layer KV heads and sinks, value heads narrower than q/k, the value scale,
rope per layer type with its own base and width, windows, grouped sigmoid routing) loads with moec.from_hf to
transformers' logits and router choices, and decodes token by token to its full logits."""

from __future__ import annotations

import pytest

from moec.analyze import analyze
from moec.hf import hf_to_model

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import moec  # noqa: E402
from tests.hf.families._harness import (  # noqa: E402
    assert_generated_model_gives_the_library_logits,
    assert_stepwise_decode_is_the_full_forward,
    assert_table_holds_class_defaults,
    hf_counts,
    refused_fields,
    saved_checkpoint,
    tiny_hf,
)
from tests.hf.test_weights import assert_same  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CLASS_DEFAULTS = {"model_type": "mimo_v2_flash", "architectures": ["MiMoV2FlashForCausalLM"]}
FULL = (0, 5, 11, 17, 23, 29, 35, 41, 47)  # the release's full-attention layers: the first and every sixth

# XiaomiMiMo/MiMo-V2-Flash's config.json in the hub's spelling (Xiaomi's own code's fields), as public loaders
# quote it: NVIDIA Megatron-Bridge's MiMo-V2-Flash bridge test and a Rust serving loader's hub-config test, which
# agree on every value below (the hub itself is not reachable from here; the quantization block, which describes
# the stored fp8 weights, left out)
RELEASE = {
    "architectures": ["MiMoV2FlashForCausalLM"], "model_type": "mimo_v2_flash", "vocab_size": 152576,
    "hidden_size": 4096, "intermediate_size": 16384, "num_hidden_layers": 48, "num_attention_heads": 64,
    "num_key_value_heads": 4, "head_dim": 192, "v_head_dim": 128, "swa_num_attention_heads": 64,
    "swa_num_key_value_heads": 8, "swa_head_dim": 192, "swa_v_head_dim": 128, "max_position_embeddings": 262144,
    "hybrid_layer_pattern": [0 if i in FULL else 1 for i in range(48)], "moe_layer_freq": [0] + [1] * 47,
    "partial_rotary_factor": 0.334, "rope_theta": 5000000, "swa_rope_theta": 10000, "sliding_window": 128,
    "sliding_window_size": 128, "attention_chunk_size": 128, "add_swa_attention_sink_bias": True,
    "add_full_attention_sink_bias": False, "attention_value_scale": 0.707, "n_routed_experts": 256,
    "num_experts_per_tok": 8, "moe_intermediate_size": 2048, "n_shared_experts": None, "routed_scaling_factor": None,
    "scoring_func": "sigmoid", "topk_method": "noaux_tc", "n_group": 1, "topk_group": 1, "norm_topk_prob": True,
    "layernorm_epsilon": 1e-5, "hidden_act": "silu", "attention_bias": False, "attention_dropout": 0.0,
    "tie_word_embeddings": False, "initializer_range": 0.02, "use_cache": True, "torch_dtype": "bfloat16",
}  # fmt: skip


def test_release_counts_equal_transformers_model_on_meta():
    plan = hf_to_model(RELEASE)
    params = analyze(plan).params
    # 309B total, 15B active, as Xiaomi announces them
    assert (params.total, params.active) == hf_counts(RELEASE) == (308_778_768_832, 15_445_924_288)
    full = [i for i, lp in enumerate(plan.layers) if lp.attention.window is None]
    assert full == list(FULL)
    layers = {(lp.attention.n_kv_heads, lp.attention.sinks, lp.attention.window, lp.attention.rope_theta)
              for lp in plan.layers}  # fmt: skip
    assert layers == {(4, False, None, None), (8, True, 129, 10000.0)}  # window: sliding_window_size + 1
    a = plan.layers[0].attention
    assert (a.head_dim, a.v_dim, a.value_scale, plan.positions.theta, plan.rope_dim) == (192, 128, 0.707, 5e6, 64)
    assert [lp.ffn.kind for lp in plan.layers[:2]] == ["dense", "moe"]


def test_class_default_counts_equal_transformers_model_on_meta():
    params = analyze(hf_to_model(CLASS_DEFAULTS)).params
    assert (params.total, params.active) == hf_counts(CLASS_DEFAULTS)


def test_the_release_as_transformers_saves_it_imports_to_the_same_plan():
    from moec.hf.config import plan_differences
    from tests.hf.configs import hf_model_on_meta

    saved = hf_model_on_meta(RELEASE).config.to_dict()  # layer_types, rope_parameters, sliding_window 129 written
    assert plan_differences(hf_to_model(RELEASE), hf_to_model(saved)) == []


def test_xiaomis_fields_are_named_where_they_agree():
    from moec.hf.config import import_hf_config

    text = import_hf_config(RELEASE)
    for key in ("hybrid_layer_pattern", "swa_num_key_value_heads 8", "add_swa_attention_sink_bias true",
                "layernorm_epsilon", "swa_rope_theta 10000", "moe_layer_freq", "attention_chunk_size 128"):  # fmt: skip
        assert key in text, key


@pytest.mark.parametrize(
    "change,field",
    [
        ({"hybrid_layer_pattern": [0] * 48}, "hybrid_layer_pattern"),  # transformers would still slide
        ({"swa_num_key_value_heads": 4}, "swa_num_key_value_heads"),  # transformers doubles the KV heads
        ({"add_full_attention_sink_bias": True}, "add_full_attention_sink_bias"),
        ({"layernorm_epsilon": 1e-6}, "layernorm_epsilon"),  # transformers reads rms_norm_eps (1e-5)
        ({"swa_rope_theta": 20000}, "swa_rope_theta"),
        ({"partial_rotary_factor": 0.5}, "partial_rotary_factor"),
        ({"attention_chunk_size": 8192}, "attention_chunk_size"),  # chunked attention, in Llama-4's sense?
        ({"n_shared_experts": 1}, "n_shared_experts"),  # MiMoV2FlashMoE has none
        ({"moe_layer_freq": [1] * 48}, "moe_layer_freq"),
        ({"scoring_func": "softmax"}, "scoring_func"),
        ({"mlp_layer_types": ["dense"] * 47 + ["moe"]}, "mlp_layer_types"),
        ({"attention_value_scale": -1.0}, "attention_value_scale"),
        ({"rope_parameters": {"full_attention": {"rope_type": "dynamic", "rope_theta": 5e6, "factor": 4.0,
                                                 "partial_rotary_factor": 0.334},
                              "sliding_attention": {"rope_type": "default", "rope_theta": 1e4}}},
         "rope_parameters.full_attention"),  # a layer's own scaling cannot depend on the live length
    ],
)  # fmt: skip
def test_what_transformers_would_not_run_as_said_is_refused_located(change, field):
    assert field in refused_fields({**RELEASE, **change})


@pytest.mark.parametrize(
    "change,field",
    [
        ({"num_key_value_heads": "x"}, "num_key_value_heads"),  # not also swa_num_key_value_heads
        ({"num_attention_heads": []}, "num_attention_heads"),  # not also swa_num_attention_heads
        ({"v_head_dim": True}, "v_head_dim"),  # not also swa_v_head_dim
        ({"num_hidden_layers": [1]}, "num_hidden_layers"),  # not also the per-layer patterns
    ],
)
def test_a_refused_field_is_not_also_refused_through_xiaomis_copy_of_it(change, field):
    assert refused_fields({**RELEASE, **change}) == [field]


def test_a_kv_head_count_past_moecs_bound_is_located_at_num_key_value_heads():
    """The sliding layers' own count (twice it) is refused by the spec's bound too: at the field it comes from."""
    cfg = {**TINY, "model_type": "mimo_v2_flash", "num_key_value_heads": 10**12}
    assert set(refused_fields(cfg)) == {"num_key_value_heads"}


def test_defaults_are_transformers_class_defaults():
    from moec.hf.families.mimo_v2_flash import DEFAULT_ROPE, DEFAULTS

    assert_table_holds_class_defaults(DEFAULTS, transformers.MiMoV2FlashConfig, at_least=20)
    assert DEFAULTS["default_theta"] == transformers.MiMoV2FlashConfig.default_theta
    assert DEFAULT_ROPE == transformers.MiMoV2FlashConfig().rope_parameters


# 4 layers: full, sliding, sliding, full; q/k heads of 16 dims and value heads of 8, 1 KV head on full layers and
# 2 on sliding ones (with sinks), a window of 3 + 1 < the test's 12 tokens, a base and rotated width per type
# (8 of 16 on full layers, 4 on sliding ones); a dense first layer, top-2 of 8 experts in 2 groups (1 kept),
# weights renormalised and scaled by 2.5
TINY = {
    "vocab_size": 128, "hidden_size": 64, "num_attention_heads": 4, "num_key_value_heads": 1, "head_dim": 16,
    "v_head_dim": 8, "max_position_embeddings": 64, "num_hidden_layers": 4, "intermediate_size": 96,
    "moe_intermediate_size": 16, "n_routed_experts": 8, "num_experts_per_tok": 2, "n_group": 2, "topk_group": 1,
    "routed_scaling_factor": 2.5, "attention_value_scale": 0.6, "sliding_window_size": 3,
    "layer_types": ["full_attention", "sliding_attention", "sliding_attention", "full_attention"],
    "rope_parameters": {
        "full_attention": {"rope_type": "default", "rope_theta": 50000.0, "partial_rotary_factor": 0.5},
        "sliding_attention": {"rope_type": "default", "rope_theta": 1000.0, "partial_rotary_factor": 0.25},
    },
}  # fmt: skip


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return saved_checkpoint(tiny_hf("mimo_v2_flash", TINY), tmp_path_factory, "mimo_v2_flash")


def test_tiny_checkpoint_gives_transformers_logits_and_router_choices(checkpoint):
    hf, folder = checkpoint
    model = moec.from_hf(folder)
    got = [(lp.attention.n_kv_heads, lp.attention.sinks, lp.attention.window, lp.attention.rotary_dim)
           for lp in model.plan.layers]  # fmt: skip
    assert got == [(1, False, None, None), (2, True, 4, 4), (2, True, 4, 4), (1, False, None, None)]
    assert model.plan.rope_dim == 8 and model.plan.layers[0].attention.value_scale == 0.6
    assert assert_same(hf, model) <= 1e-4
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in hf.parameters())


def test_tiny_model_decodes_token_by_token_to_its_full_logits(checkpoint):
    """The cache holds each layer's own KV heads (scaled values, narrower than the keys) and rope tables."""
    assert_stepwise_decode_is_the_full_forward(moec.from_hf(checkpoint[1]), vocab=128)


def test_the_generated_model_py_gives_the_library_logits(checkpoint, tmp_path):
    """moec build renders per-layer heads and sinks, v_head_dim and the value scale: the generated model.py holding the
    imported weights gives moec.nn's logits and aux bit for bit."""
    model = moec.from_hf(checkpoint[1])
    assert_generated_model_gives_the_library_logits(model, None, tmp_path)


def test_the_shipped_spec_is_the_release_as_imported():
    from moec.hf.config import plan_differences
    from moec.spec import load_model

    shipped = load_model("mimo-v2-flash")
    assert plan_differences(shipped, hf_to_model(RELEASE), training=False) == []
    params = analyze(shipped).params
    assert (params.total, params.active) == (308_778_768_832, 15_445_924_288)


def test_the_shipped_spec_exports_as_mimo_v2_flash_with_transformers_count():
    from moec.hf import export_hf_config
    from moec.hf.config import plan_differences
    from moec.spec import load_model
    from tests.hf.configs import hf_params

    plan = load_model("mimo-v2-flash")
    cfg = export_hf_config(plan)
    assert cfg["model_type"] == "mimo_v2_flash" and cfg["sliding_window"] == 129
    assert plan_differences(plan, hf_to_model(cfg)) == []
    assert hf_params(cfg) == analyze(plan).params.total


def test_tiny_model_exports_to_a_checkpoint_transformers_runs_to_its_logits(checkpoint, tmp_path):
    model = moec.from_hf(checkpoint[1])
    moec.export_hf(model, tmp_path / "out", family="mimo_v2_flash")
    hf = transformers.MiMoV2FlashForCausalLM.from_pretrained(tmp_path / "out", attn_implementation="eager").eval()
    assert (hf.config.sliding_window, hf.config.attention_value_scale) == (4, 0.6)
    assert assert_same(hf, model) <= 1e-4
