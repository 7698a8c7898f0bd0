"""Beam (model_type beam, Reflection AI's Beam-1.0): on BeamConfig's class defaults (the config its docstring ties to
reflection/Beam-1.0-501B-A23B; no release config.json is reachable) the analyzer's total and active equal
transformers' model built on meta; tiny save_pretrained checkpoints (sandwich norms with depth-scaled residual adds,
the gated attention with its per-head gate bias, NoPE full layers with the power query scale or a rope base per
layer type, the grouped sigmoid router, the logit soft-cap) load with moec.from_hf to transformers' logits and router
choices; what transformers would not run as the config says, or runs otherwise than moec reads it, is refused,
located."""

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
    hf_counts,
    refused_fields,
    saved_checkpoint,
    tiny_hf,
)
from tests.hf.test_weights import TOKENS  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# BeamConfig's defaults written out (model_type alone would do): 52 layers of d 5120, 48 query and 8 KV heads of 128,
# 256 experts of 2560 (top-8 in 4 of 8 groups), 3 dense layers of 20480, sliding window 512 with full attention on
# every sixth layer and the last. The name says 501B total, 23B active.
RELEASE = {"model_type": "beam", "architectures": ["BeamForCausalLM"], "hidden_size": 5120, "num_hidden_layers": 52}


def test_release_counts_equal_transformers_model_on_meta():
    params = analyze(hf_to_model(RELEASE)).params
    assert (params.total, params.active) == hf_counts(RELEASE)
    assert round(params.total / 1e9) == 501 and round(params.active / 1e9) == 23  # 501.27B, 23.43B


def test_release_config_as_transformers_saves_it_imports_to_the_same_plan():
    saved = hf_model_on_meta(RELEASE).config.to_dict()
    assert "layer_types" in saved and "rope_parameters" in saved and "mlp_layer_types" in saved
    assert plan_differences(hf_to_model(saved), hf_to_model(RELEASE)) == []


def test_every_sixth_layer_and_the_last_attend_in_full_without_positions():
    plan = hf_to_model(RELEASE)
    full = [lp.index for lp in plan.layers if lp.attention.window is None]
    assert full == [5, 11, 17, 23, 29, 35, 41, 47, 51]
    assert all(lp.attention.rope == (lp.index not in full) for lp in plan.layers)
    assert all((lp.attention.temperature_form == "power") == (lp.index in full) for lp in plan.layers)
    assert [lp.ffn.kind for lp in plan.layers[:4]] == ["dense"] * 3 + ["moe"]
    assert plan.depth_scaled_residual and plan.norm.placement == "sandwich" and plan.logit_softcap == 30.0


# 4 layers: sliding (window 4 < the 12 test tokens) and full in turn, a dense first layer, top-2 of 8 experts in 2 of
# 4 groups; NOPE: the full layers without positions (the default), ROTATING: every layer rotates, each type its base.
# The depth-scaled adds leave the stream the plain sum of the branches over √n, which the next norm undoes but for
# its eps: a large eps makes them show (without them the logits move by 1.7 here; without the gate bias by 2, without
# the NoPE query scale by 7e-4)
TINY = {
    "vocab_size": 128, "hidden_size": 64, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16,
    "max_position_embeddings": 64, "rms_norm_eps": 0.05, "num_hidden_layers": 4, "intermediate_size": 96,
    "moe_intermediate_size": 16, "num_experts": 8, "num_experts_per_tok": 2, "n_group": 4, "topk_group": 2,
    "sliding_window": 4, "routed_scaling_factor": 2.5, "final_logit_softcapping": 3.0,
    "layer_types": ["sliding_attention", "full_attention"] * 2, "mlp_layer_types": ["dense"] + ["sparse"] * 3,
}  # fmt: skip
ROPE = {"rope_type": "default", "rope_theta": 10000.0}
VARIANTS = {
    "nope": {},
    "rotating": {"rope_parameters": {"sliding_attention": ROPE, "full_attention": {**ROPE, "rope_theta": 500.0}}},
}


@pytest.fixture(scope="module", params=sorted(VARIANTS))
def checkpoint(request, tmp_path_factory):
    return saved_checkpoint(tiny_hf("beam", {**TINY, **VARIANTS[request.param]}), tmp_path_factory, "beam")


def assert_same_logits_and_choices(hf, model) -> None:
    """transformers' logits and router choices on the MoE layers 1 to 3 (BeamMoE scales the weights after its
    router, moec's router scales them), with the soft-cap biting."""
    assert [lp.index for lp in model.plan.layers if lp.ffn.kind == "moe"] == [1, 2, 3]
    assert assert_same_routed_logits(hf, model, "BeamTopKRouter", scale=2.5) <= 1e-4
    with torch.no_grad():
        want = hf(TOKENS).logits
    assert want.abs().max() < 3.0 and want.abs().max() > 2.0  # the soft-cap bites


def test_tiny_checkpoint_gives_transformers_logits_and_router_choices(checkpoint):
    hf, folder = checkpoint
    model = moec.from_hf(folder)
    rotating = hf.config.rope_parameters["full_attention"] is not None
    assert [lp.attention.rope for lp in model.plan.layers] == [True, rotating] * 2
    assert torch.equal(model.layers[0].attn.gate_bias, hf.model.layers[0].self_attn.gate_bias)
    assert_same_logits_and_choices(hf, model)
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in hf.parameters())


def test_the_release_exports_as_beam_with_transformers_count():
    from moec.hf import export_hf_config
    from tests.hf.configs import hf_params

    plan = hf_to_model(RELEASE)
    cfg = export_hf_config(plan)
    assert cfg["model_type"] == "beam" and cfg["rope_parameters"]["full_attention"] is None
    assert plan_differences(plan, hf_to_model(cfg)) == []
    assert hf_params(cfg) == analyze(plan).params.total


def test_tiny_model_exports_to_a_checkpoint_transformers_runs_to_its_logits(checkpoint, tmp_path):
    model = moec.from_hf(checkpoint[1])
    moec.export_hf(model, tmp_path / "out", family="beam")
    hf = transformers.BeamForCausalLM.from_pretrained(tmp_path / "out", attn_implementation="eager").eval()
    assert_same_logits_and_choices(hf, model)


def test_the_generated_model_py_gives_the_library_logits(checkpoint, tmp_path):
    """moec build renders Beam's power-form NoPE query scale, its per-head gate bias and its depth-scaled adds: the
    generated model.py holding the imported weights gives moec.nn's logits and aux bit for bit."""
    assert_generated_model_gives_the_library_logits(moec.from_hf(checkpoint[1]), TOKENS, tmp_path)


@pytest.mark.parametrize(
    "change,field",
    [
        ({"layer_types": ["sliding_attention"] * 51 + ["chunked_attention"]}, "layer_types"),
        ({"layer_types": ["full_attention"] * 3}, "layer_types"),  # 3 entries for 52 layers
        ({"mlp_layer_types": ["dense"] * 51 + ["moe"]}, "mlp_layer_types"),
        ({"rope_parameters": {"sliding_attention": {**ROPE, "rope_type": "yarn", "factor": 2.0},
                              "full_attention": None}}, "rope_parameters.sliding_attention.rope_type"),
        ({"rope_parameters": {"sliding_attention": {**ROPE, "partial_rotary_factor": 0.5}, "full_attention": None}},
         "rope_parameters.sliding_attention.partial_rotary_factor"),  # the default rope ignores it
        ({"rope_parameters": {"sliding_attention": ROPE}}, "rope_parameters"),  # the full layers' entry missing
        ({"sliding_window": None}, "sliding_window"),
        ({"head_dim": None}, "head_dim"),
        ({"n_group": None}, "n_group"),
        ({"final_logit_softcapping": 0.0}, "final_logit_softcapping"),
        ({"hidden_act": "relu"}, "hidden_act"),
        ({"router_aux_loss_coef": 0.01}, "router_aux_loss_coef"),  # a Qwen3-MoE field Beam does not have
    ],
)  # fmt: skip
def test_what_transformers_would_not_run_as_said_is_refused_located(change, field):
    assert field in refused_fields({**RELEASE, **change})


def test_a_refused_rope_entry_is_the_one_problem_not_the_window_it_would_place():
    """The sliding window is judged with the layer types and their rope; once those are refused, a window away from
    its default is no second, unrelated problem ("does not map this field")."""
    bad = {"sliding_attention": {**ROPE, "rope_theta": -1.0}, "full_attention": None}
    assert refused_fields({**TINY, "model_type": "beam", "rope_parameters": bad}) == [
        "rope_parameters.sliding_attention.rope_theta"
    ]


def test_defaults_are_transformers_class_defaults():
    from moec.hf.families.beam import DEFAULTS, default_layer_types

    assert_table_holds_class_defaults(DEFAULTS, transformers.BeamConfig, at_least=25)
    assert DEFAULTS["default_theta"] == transformers.BeamConfig.default_theta
    assert default_layer_types(13) == transformers.BeamConfig(num_hidden_layers=13).layer_types
