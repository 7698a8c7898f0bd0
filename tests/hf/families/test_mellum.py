"""Mellum (model_type mellum): the release config (YaRN on its full layers only: each layer its own scaling) and
the same config with one scaling on every layer count as transformers' model on meta; a tiny checkpoint with YaRN
on its full layers only gives transformers' logits; a partial rotary factor, which transformers' forward fails on,
is refused at its layer type; the legacy layer type 'attention' reads as full_attention; a tiny random checkpoint
(sliding and full layers of their own bases, a dense layer among MoE ones, an MTP tensor transformers lets go)
loads with moec.from_hf to transformers' logits and router choices; the generated model.py gives moec.nn's logits;
Qwen's fields MellumConfig deletes are named, not refused."""

from __future__ import annotations

import pytest

from moec.analyze import analyze
from moec.hf import hf_to_model, import_hf_config
from moec.hf.config import plan_differences
from tests.hf.configs import hf_model_on_meta

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from safetensors.torch import load_file, save_file  # noqa: E402

import moec  # noqa: E402
from tests.hf.families._harness import (  # noqa: E402
    assert_generated_model_gives_the_library_logits,
    hf_counts,
    refused_fields,
    tiny_hf,
)
from tests.hf.test_weights import TOKENS, assert_same  # noqa: E402

YARN = {"rope_type": "yarn", "rope_theta": 500000.0, "factor": 16.0, "original_max_position_embeddings": 8192,
        "beta_fast": 32.0, "beta_slow": 1.0, "attention_factor": 1.2772588722239782}  # fmt: skip

# JetBrains/Mellum2.1-12B-A2.5B-Thinking config.json (revision 92ddae9f), as a public MLX adapter's artifact check
# holds it field by field (its layer_types, mlp_layer_types and both rope mappings included); an earlier Mellum 2
# copy in a public Rust port adds max_window_layers 0. Published: 12B total, 2.5B active.
MELLUM21 = {
    "architectures": ["MellumForCausalLM"], "model_type": "mellum", "attention_bias": False, "bos_token_id": 0,
    "dtype": "bfloat16", "eos_token_id": 28, "head_dim": 128, "hidden_act": "silu", "hidden_size": 2304,
    "intermediate_size": 7168, "max_position_embeddings": 131072, "moe_intermediate_size": 896,
    "layer_types": ["full_attention" if i % 4 == 3 else "sliding_attention" for i in range(28)],
    "mlp_layer_types": ["sparse"] * 28, "norm_topk_prob": True, "num_attention_heads": 32, "num_experts": 64,
    "num_experts_per_tok": 8, "num_hidden_layers": 28, "num_key_value_heads": 4, "rms_norm_eps": 1e-6,
    "rope_parameters": {"full_attention": YARN, "sliding_attention": {"rope_type": "default", "rope_theta": 500000.0}},
    "sliding_window": 1024, "tie_word_embeddings": False, "use_sliding_window": True, "max_window_layers": 0,
    "vocab_size": 98304,
}  # fmt: skip

# the release with one scaling on every layer (the sliding ones too): rope changes no count, so it counts as the
# release, and it carries the published totals' check and the refusal cases below
NEAREST = {**MELLUM21, "rope_parameters": {"full_attention": YARN, "sliding_attention": YARN}}

# sliding layers of window 4 (< the 12 test tokens) and base 1e4 beside full layers of base 5e5, a dense layer,
# top-2 of 8 renormalised, an MTP layer transformers does not build
TINY = {
    "vocab_size": 128, "hidden_size": 64, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16,
    "max_position_embeddings": 64, "rms_norm_eps": 1e-5, "num_hidden_layers": 4, "intermediate_size": 96,
    "moe_intermediate_size": 16, "num_experts": 8, "num_experts_per_tok": 2, "norm_topk_prob": True,
    "sliding_window": 4, "layer_types": ["sliding_attention", "full_attention", "sliding_attention", "full_attention"],
    "mlp_layer_types": ["dense", "sparse", "sparse", "sparse"], "num_mtp_layers": 1,
    "rope_parameters": {"full_attention": {"rope_type": "default", "rope_theta": 500000.0},
                        "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0}},
}  # fmt: skip

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_release_counts_equal_transformers_model_on_meta():
    """Mellum 2.1 scales its full layers by YaRN and its sliding ones not at all: each layer its own scaling."""
    plan = hf_to_model(MELLUM21)
    params = analyze(plan).params
    assert (params.total, params.active) == hf_counts(MELLUM21)
    own = {(lp.attention.window, lp.attention.own_rope_scaling, getattr(lp.attention.rope_scaling, "factor", None))
           for lp in plan.layers}  # fmt: skip
    assert own == {(None, True, 16.0), (1024, True, None)}


def test_a_tiny_checkpoint_with_yarn_on_its_full_layers_only_gives_transformers_logits(tmp_path):
    yarn = {**YARN, "factor": 4.0, "original_max_position_embeddings": 16, "attention_factor": 1.2}
    cfg = {**TINY, "rope_parameters": {**TINY["rope_parameters"], "full_attention": yarn}}
    hf = tiny_hf("mellum", cfg)
    hf.save_pretrained(tmp_path)
    model = moec.from_hf(tmp_path)
    assert [lp.attention.rope_scaling is None for lp in model.plan.layers] == [True, False] * 2
    assert assert_same(hf, model) <= 1e-4


@pytest.mark.parametrize("layer_type", ["full_attention", "sliding_attention"])
def test_a_partial_rotary_factor_transformers_cannot_run_is_refused_at_its_type(layer_type):
    """MellumRotaryEmbedding builds tables of int(head_dim · factor) dims, MellumAttention rotates whole heads with
    them: transformers' own forward fails, so the import refuses the factor where its type's mapping holds it."""
    rope = {**TINY["rope_parameters"][layer_type], "partial_rotary_factor": 0.5}
    cfg = {**TINY, "rope_parameters": {**TINY["rope_parameters"], layer_type: rope}}
    with pytest.raises(RuntimeError, match="must match the size"):
        tiny_hf("mellum", cfg)(TOKENS)
    assert refused_fields({"model_type": "mellum", **cfg}) == [f"rope_parameters.{layer_type}.partial_rotary_factor"]


def test_the_legacy_attention_layer_type_is_full_attention_as_transformers_reads_it():
    legacy = ["attention" if t == "full_attention" else t for t in MELLUM21["layer_types"]]
    assert transformers.MellumConfig(num_hidden_layers=28, layer_types=legacy).layer_types == MELLUM21["layer_types"]
    assert plan_differences(hf_to_model({**NEAREST, "layer_types": legacy}), hf_to_model(NEAREST)) == []


def test_nearest_release_counts_equal_transformers_model_on_meta():
    params = analyze(hf_to_model(NEAREST)).params
    assert (params.total, params.active) == hf_counts(NEAREST) == hf_counts(MELLUM21)
    assert round(params.total / 1e9, 2) == 12.15 and round(params.active / 1e9, 2) == 2.44  # named 12B-A2.5B


def test_class_defaults_count_as_transformers_builds_them():
    """Two default-rope bases (5e5 full, 1e4 sliding), the per-layer base moec has."""
    cfg = {"model_type": "mellum", "layer_types": MELLUM21["layer_types"]}
    model = hf_to_model(cfg)
    assert {lp.attention.rope_theta for lp in model.layers} == {None, 10000.0}
    params = analyze(model).params
    assert (params.total, params.active) == hf_counts(cfg)


def test_nearest_release_as_transformers_saves_it_imports_to_the_same_plan():
    saved = hf_model_on_meta(NEAREST).config.to_dict()
    assert plan_differences(hf_to_model(saved), hf_to_model(NEAREST)) == []


def test_qwen_fields_mellum_deletes_are_named_not_refused():
    text = import_hf_config(NEAREST)
    assert "use_sliding_window true, max_window_layers 0: MellumConfig deletes them" in text


@pytest.mark.parametrize(
    "change,field",
    [
        ({"rope_parameters": YARN}, "rope_parameters"),  # flat: transformers looks up each layer type
        ({"rope_parameters": {"full_attention": YARN}}, "rope_parameters"),  # the sliding layers' mapping missing
        ({"rope_parameters": {**NEAREST["rope_parameters"], "chunked": YARN}}, "rope_parameters.chunked"),
        ({"rope_parameters": {"full_attention": YARN, "sliding_attention": {"rope_type": "default"}}},
         "rope_parameters.sliding_attention.rope_theta"),
        ({"rope_parameters": dict.fromkeys(("full_attention", "sliding_attention"), {**YARN, "factor": "16"})},
         "rope_parameters.full_attention.factor"),  # located in its layer type's mapping
        ({"mlp_layer_types": ["sparse"] * 27 + ["shared"]}, "mlp_layer_types"),
        ({"sliding_window": None}, "sliding_window"),  # null while layers slide
        ({"layer_types": [["full_attention"]] * 28}, "layer_types"),  # not names (found by fuzzing: no TypeError)
        ({"layer_types": ["chunked_attention"] * 28}, "layer_types"),  # a type no rope mapping is read for
        ({"num_nextn_predict_layers": 2}, "num_nextn_predict_layers"),  # MellumConfig: a single MTP layer at most
    ],
)  # fmt: skip
def test_configs_transformers_cannot_build_are_refused_located(change, field):
    assert refused_fields({**NEAREST, **change}) == [field]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    hf = tiny_hf("mellum", TINY)
    folder = tmp_path_factory.mktemp("mellum")
    hf.save_pretrained(folder)
    # a released MTP layer's tensor, which MellumPreTrainedModel lets go on load
    (file,) = folder.glob("*.safetensors")
    tensors = load_file(file)
    save_file({**tensors, "mtp.0.eh_proj.weight": torch.zeros(64, 128)}, file, metadata={"format": "pt"})
    return hf, folder


def test_tiny_checkpoint_gives_transformers_logits_and_router_choices(checkpoint):
    hf, folder = checkpoint
    model = moec.from_hf(folder)
    layers = model.plan.layers
    assert [(lp.attention.window, lp.attention.rope_theta) for lp in layers] == [(4, 1e4), (None, None)] * 2
    assert model.plan.positions.theta == 5e5
    assert assert_same(hf, model) <= 1e-4


def test_generated_model_py_gives_the_library_logits(checkpoint, tmp_path):
    model = moec.from_hf(checkpoint[1])
    assert_generated_model_gives_the_library_logits(model, TOKENS, tmp_path)
