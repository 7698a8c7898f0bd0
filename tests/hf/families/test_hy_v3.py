"""Hy3 (model_type hy_v3): the release config's counts equal transformers' model on meta; tiny random checkpoints,
in Hy3's released names and in transformers' in-memory ones, load with moec.from_hf to transformers' logits and
router choices; the generated model.py gives moec.nn's logits; the fields of Tencent's code transformers does not
read are accepted when they agree and refused when they do not; biased shared experts are refused, sized."""

from __future__ import annotations

import pytest

from moec.analyze import analyze
from moec.errors import SpecError
from moec.hf import hf_to_model, import_hf_config
from moec.hf.config import plan_differences, render_yaml, translate
from moec.spec import load_spec, resolve
from tests.hf.configs import hf_model_on_meta, hf_params

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from safetensors.torch import load_file, save_file  # noqa: E402

import moec  # noqa: E402
from tests.hf.families._harness import (  # noqa: E402
    assert_generated_model_gives_the_library_logits,
    hf_counts,
    refused_fields,
    saved_checkpoint,
    tiny_hf,
)
from tests.hf.test_weights import TOKENS, assert_same  # noqa: E402

# tencent/Hy3-preview config.json as a public port's test (mistral.rs) holds it. Published: 295B total, 21B
# activated parameters.
HY3_PREVIEW = {
    "architectures": ["HYV3ForCausalLM"],
    "model_type": "hy_v3",
    "vocab_size": 120832,
    "hidden_size": 4096,
    "intermediate_size": 13312,
    "num_hidden_layers": 80,
    "num_attention_heads": 64,
    "num_key_value_heads": 8,
    "hidden_act": "silu",
    "max_position_embeddings": 262144,
    "rms_norm_eps": 1e-5,
    "rope_parameters": {"rope_theta": 11158840.0, "rope_type": "default"},
    "head_dim": 128,
    "tie_word_embeddings": False,
    "moe_intermediate_size": 1536,
    "expert_hidden_dim": 1536,
    "num_experts": 192,
    "num_experts_per_tok": 8,
    "num_shared_experts": 1,
    "first_k_dense_replace": 1,
    "num_nextn_predict_layers": 1,
    "qk_norm": True,
    "route_norm": True,
    "moe_router_use_sigmoid": True,
    "moe_router_enable_expert_bias": True,
    "router_scaling_factor": 2.826,
    "output_router_logits": True,
    "enable_lm_head_fp32": True,
    "use_grouped_mm": False,
}

# A dense first layer (HYV3Config's default), sigmoid routing with a selection bias, renormalised and scaled
# weights, one shared expert; "no shared expert" is HYV3MLP(0), which falls back to intermediate_size.
TINY = {
    "vocab_size": 128, "hidden_size": 64, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16,
    "max_position_embeddings": 64, "rms_norm_eps": 1e-5, "num_hidden_layers": 3, "intermediate_size": 96,
    "num_experts": 8, "num_experts_per_tok": 2, "moe_intermediate_size": 16, "num_shared_experts": 1,
    "rope_parameters": {"rope_theta": 1e4, "rope_type": "default"},
}  # fmt: skip
CASES = {"one shared expert": TINY, "num_shared_experts 0": {**TINY, "num_shared_experts": 0}}

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_release_counts_equal_transformers_model_on_meta():
    params = analyze(hf_to_model(HY3_PREVIEW)).params
    assert (params.total, params.active) == hf_counts(HY3_PREVIEW)
    assert round(params.total / 1e9) == 295 and round(params.active / 1e9) == 21  # 295.0B, 20.7B


def test_release_config_as_transformers_saves_it_imports_to_the_same_plan():
    saved = hf_model_on_meta(HY3_PREVIEW).config.to_dict()
    assert plan_differences(hf_to_model(saved), hf_to_model(HY3_PREVIEW)) == []


def test_fields_transformers_ignores_are_named_beside_what_they_concern():
    notes = {line.split(":")[0].strip(): line for line in import_hf_config(HY3_PREVIEW).splitlines() if "#" in line}
    assert "qk_norm true: transformers ignores it" in notes["qk_norm"]
    assert "expert_hidden_dim 1536" in notes["d_ff"] and "route_norm true" in notes["score"]
    assert "num_nextn_predict_layers 1" in notes["n_layers"] and "enable_lm_head_fp32 true" in notes["tie_embeddings"]


@pytest.mark.parametrize(
    "change,field",
    [
        ({"qk_norm": False}, "qk_norm"),  # HYV3Attention always builds q_norm and k_norm
        ({"route_norm": False}, "route_norm"),  # HYV3TopKRouter always renormalises
        ({"expert_hidden_dim": 1024}, "expert_hidden_dim"),  # the experts are moe_intermediate_size wide
        ({"first_k_dense_replace": 3}, "first_k_dense_replace"),  # the default mlp_layer_types has one dense
        ({"mlp_layer_types": ["dense"] * 2 + ["moe"] * 78}, "mlp_layer_types"),
    ],
)
def test_fields_that_disagree_with_what_transformers_builds_are_refused(change, field):
    assert refused_fields({**HY3_PREVIEW, **change}) == [field]


def test_biased_shared_experts_are_refused_and_their_count_is_the_gap():
    """mlp_bias reaches the dense MLP and the shared experts, not the routed ones: the nearest spec plus the gap's
    stated delta is transformers' count."""
    cfg = {**HY3_PREVIEW, "mlp_bias": True}
    with pytest.raises(SpecError, match="mlp_bias.*moe.shared_bias"):
        hf_to_model(cfg)
    t = translate(cfg)
    nearest = analyze(resolve(load_spec("draft", text=render_yaml(t)))).params.total
    assert nearest + sum(g.param_delta for g in t.gaps) == hf_params(cfg)


@pytest.fixture(scope="module", params=list(CASES))
def checkpoint(request, tmp_path_factory):
    hf = tiny_hf("hy_v3", CASES[request.param])
    return saved_checkpoint(hf, tmp_path_factory, "hy_v3")


def test_tiny_checkpoint_gives_transformers_logits_and_router_choices(checkpoint):
    hf, folder = checkpoint
    names = load_file(folder / "model.safetensors").keys()
    assert {"model.layers.1.mlp.router.gate.weight", "model.layers.1.mlp.expert_bias"} <= names  # Hy3's names
    assert "model.layers.1.mlp.shared_mlp.up_proj.weight" in names
    assert assert_same(hf, moec.from_hf(folder)) <= 1e-4


def test_in_memory_names_and_an_mtp_layer_load_to_the_same_logits(checkpoint, tmp_path):
    """transformers' in-memory names (mlp.gate, e_score_correction_bias, shared_experts, stacked experts) load too;
    the release's MTP layer (decoder layer num_hidden_layers) is let go, as transformers lets it go."""
    hf, folder = checkpoint
    tensors = {k: v.detach().clone().contiguous() for k, v in hf.state_dict().items()}
    assert "model.layers.1.mlp.e_score_correction_bias" in tensors and "model.layers.1.mlp.gate.weight" in tensors
    tensors["model.layers.3.eh_proj.weight"] = torch.zeros(64, 128)
    tensors["model.layers.3.enorm.weight"] = torch.ones(64)
    (tmp_path / "config.json").write_text((folder / "config.json").read_text())
    save_file(tensors, tmp_path / "model.safetensors")
    assert_same(hf, moec.from_hf(tmp_path))


def test_generated_model_py_gives_the_library_logits(checkpoint, tmp_path):
    model = moec.from_hf(checkpoint[1])
    assert_generated_model_gives_the_library_logits(model, TOKENS, tmp_path)


@pytest.mark.parametrize("value,agrees", [(True, True), (False, False)])
def test_an_ignored_field_of_a_nested_config_is_named_by_its_full_key(value, agrees):
    """A wrapper's text config (Qwen3-Omni's thinker_config.text_config) holds such fields too: the note and the
    refusal name them under the nested config's prefix, where the config.json holds them."""
    from moec.hf.draft import Draft, HFConfig
    from moec.hf.families.hy_v3 import equals, ignored

    nested = HFConfig({"qk_norm": value}, {}, prefix="text_config.")
    d = Draft("hy_v3")
    d.put("attention.qk_norm", True, "HYV3Attention")
    ignored(nested, d, "HYV3", "qk_norm", equals(True), "attention.qk_norm")
    if agrees:
        assert d.gaps == [] and "text_config.qk_norm true: transformers ignores it" in d.fields["attention.qk_norm"][1]
    else:
        assert [g.field for g in d.gaps] == ["text_config.qk_norm"]
        assert "remove text_config.qk_norm" in d.gaps[0].proposal
