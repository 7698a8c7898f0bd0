"""Granite-MoE-SWA (model_type granitemoe_swa): the release's counts equal transformers' model on meta; which
layers slide and which rotate with which base follow transformers' modules; a tiny random checkpoint saved by
transformers loads with moec.from_hf to transformers' logits and router choices (sinks, windows, a layer's own
rope base, a NoPE layer, the shared MLP); the generated model.py gives moec.nn's logits."""

from __future__ import annotations

import pytest

from moec.analyze import analyze
from moec.errors import SpecError
from moec.hf import hf_to_model
from moec.hf.config import plan_differences
from tests.hf.configs import hf_model_on_meta

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import moec  # noqa: E402
import tests.hf.test_weights as weights  # noqa: E402
from tests.hf.families._harness import assert_generated_source_matches_the_library, saved_tiny  # noqa: E402
from tests.hf.families.test_granitemoeshared import GRANITE_EXPERTS  # noqa: E402

FULL = (0, 3, 7, 11, 15, 19, 23, 27)

# ibm-granite/granite-swash-3b-a600m config.json, the fields a public port pins against the release (the
# mlx2 adapter's `inspect_artifact` refuses any config that differs in them: sizes, experts, the μP
# multipliers, the full-attention layers). The fields it does not pin (rope_parameters, rms_norm_eps,
# hidden_act, attention_bias) are left to the transformers class defaults; they change no count.
# Published (a third-party model table): 3.02B total, 0.598B active.
GRANITE_SWASH_3B_A600M = {
    "architectures": ["GraniteMoeSWAForCausalLM"],
    "model_type": "granitemoe_swa",
    "vocab_size": 100352,
    "hidden_size": 1280,
    "intermediate_size": 512,
    "num_hidden_layers": 28,
    "num_attention_heads": 20,
    "num_key_value_heads": 4,
    "num_local_experts": 48,
    "num_experts_per_tok": 4,
    "shared_intermediate_size": 1280,
    "sliding_window": 128,
    "max_position_embeddings": 8192,
    "tie_word_embeddings": True,
    "embedding_multiplier": 12,
    "attention_multiplier": 0.015625,
    "residual_multiplier": 0.26,
    "logits_scaling": 5,
    "layer_types": ["full_attention" if i in FULL else "sliding_attention" for i in range(28)],
}

# Sinks, a window of 4 (< the 12 test tokens) on the default layer_types (full on i % 4 == 0), a layer of its own
# rope base and a NoPE layer (layer_rope_theta 500 and 0), the shared MLP and the μP multipliers.
TINY = {**weights.TINY, "num_hidden_layers": 4, "intermediate_size": 32, "num_local_experts": 4,
        "num_experts_per_tok": 2, "shared_intermediate_size": 48, "sliding_window": 4,
        "layer_rope_theta": [1e4, 500.0, 0, 1e4], "embedding_multiplier": 6.0, "residual_multiplier": 0.5,
        "logits_scaling": 4.0, "attention_multiplier": 0.1}  # fmt: skip

from tests.hf.families._harness import hf_counts  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_release_counts_equal_transformers_model_on_meta():
    params = analyze(hf_to_model(GRANITE_SWASH_3B_A600M)).params
    assert (params.total, params.active) == hf_counts(GRANITE_SWASH_3B_A600M, experts=GRANITE_EXPERTS)
    assert round(params.total / 1e7) == 302 and round(params.active / 1e6) == 598  # 3.02B, 0.598B


def test_release_config_as_transformers_saves_it_imports_to_the_same_plan():
    """save_pretrained writes rope_parameters and layer_rope_theta (every layer at the global base)."""
    saved = hf_model_on_meta(GRANITE_SWASH_3B_A600M).config.to_dict()
    assert saved["layer_rope_theta"] == [10000.0] * 28
    assert plan_differences(hf_to_model(saved), hf_to_model(GRANITE_SWASH_3B_A600M)) == []


@pytest.mark.parametrize(
    "change",
    [
        {},  # the release's layer_types
        {"layer_types": None, "num_hidden_layers": 6},  # the default: full attention where i % 4 == 0
        {"layer_rope_theta": [0 if i in FULL else 5e4 for i in range(28)]},  # NoPE on the full layers
        {"layer_rope_theta": [1e6 if i in FULL else 1e4 for i in range(28)]},  # a base per kind of layer
        {"layer_rope_theta": [0, 1e4, 2e4, 3e4] * 7},  # three bases and NoPE
    ],
)
def test_windows_and_rope_bases_per_layer_follow_transformers_modules(change):
    cfg = {**GRANITE_SWASH_3B_A600M, **change}
    hf = hf_model_on_meta(cfg)
    thetas = hf.config.layer_rope_theta
    want = [(a.self_attn.sliding_window, thetas[i] or None) for i, a in enumerate(hf.model.layers)]
    plan = hf_to_model(cfg)
    ours = [(lp.attention.window, (lp.attention.rope_theta or plan.positions.theta) if lp.attention.rope else None)
            for lp in plan.layers]  # fmt: skip
    assert ours == want


@pytest.mark.parametrize(
    "thetas,message",
    [
        ([1e4] * 27, "27 entries for 28 layers"),
        ([1e4] * 27 + [-1.0], "non-negative numbers"),
        ([1e13] * 3 + [1e4] * 25, "less than or equal to"),  # a base out of the spec's range, on a few layers
    ],
)
def test_a_malformed_layer_rope_theta_is_refused_at_that_field(thetas, message):
    with pytest.raises(SpecError, match=message) as e:
        hf_to_model({**GRANITE_SWASH_3B_A600M, "layer_rope_theta": thetas})
    assert [p.path for p in e.value.problems] == ["layer_rope_theta"]


def test_a_null_window_is_refused_while_layers_slide():
    """transformers cannot build a null window's mask (its forward fails); with no sliding layer it is unused."""
    with pytest.raises(SpecError) as e:
        hf_to_model({**GRANITE_SWASH_3B_A600M, "sliding_window": None})
    assert [p.path for p in e.value.problems] == ["sliding_window"]
    full = hf_to_model({**GRANITE_SWASH_3B_A600M, "sliding_window": None, "layer_types": ["full_attention"] * 28})
    assert {lp.attention.window for lp in full.layers} == {None}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    folder = tmp_path_factory.mktemp("granitemoe_swa")
    return saved_tiny("granitemoe_swa", TINY, folder), folder


def test_tiny_checkpoint_gives_transformers_logits_and_router_choices(checkpoint):
    hf, folder = checkpoint
    model = moec.from_hf(folder)
    plan = [(lp.attention.window, lp.attention.rope, lp.attention.rope_theta) for lp in model.plan.layers]
    assert plan == [(None, True, None), (4, True, 500.0), (4, False, None), (4, True, None)]
    weights.assert_same(hf, model)


def test_generated_model_gives_the_library_logits(tmp_path):
    assert_generated_source_matches_the_library({**TINY, "model_type": "granitemoe_swa"}, tmp_path)
