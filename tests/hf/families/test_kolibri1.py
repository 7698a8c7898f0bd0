"""Kolibri 1 (model_type kolibri1, Aleph Alpha): on Kolibri1Config's defaults (Kolibri 1's shapes) the analyzer's total
and active equal transformers' model built on meta; a tiny save_pretrained checkpoint (sandwich norms under Kolibri's
names, NoPE global layers, the selection bias added to the router logits, a shared expert) loads with moec.from_hf to
transformers' logits and router choices; what transformers would not run as the config says is refused, located."""

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
    hf_counts,
    refused_fields,
    saved_checkpoint,
    tiny_hf,
)
from tests.hf.test_weights import assert_same  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# Kolibri1Config's defaults are Kolibri 1's shapes, as public ports pin them (50 layers of which every fifth is
# global, 48 heads over 4 KV heads of 128, hidden 2560, a 513-token window, 384 experts of 512, top-6, one shared
# expert of 512, a 128000-token vocabulary); written out as the release spells the fields it carries
KOLIBRI_1 = {
    "architectures": ["Kolibri1ForCausalLM"], "model_type": "kolibri1", "hidden_size": 2560, "num_hidden_layers": 50,
    "num_attention_heads": 48, "num_key_value_heads": 4, "head_dim": 128, "hidden_act": "silu",
    "max_position_embeddings": 262144, "rms_norm_eps": 1e-06, "vocab_size": 128000, "rope_theta": 10000.0,
    "num_experts": 384, "num_experts_per_tok": 6, "moe_intermediate_size": 512, "shared_expert_intermediate_size": 512,
    "norm_topk_prob": False, "attention_dropout": 0.0, "tie_word_embeddings": False, "sliding_window": 513,
    "layer_types": ["full_attention" if i % 5 == 4 else "sliding_attention" for i in range(50)],
}  # fmt: skip


def test_release_counts_equal_transformers_model_on_meta():
    params = analyze(hf_to_model(KOLIBRI_1)).params
    assert (params.total, params.active) == hf_counts(KOLIBRI_1)
    assert round(params.total / 1e9, 1) == 78.1 and round(params.active / 1e9, 1) == 3.8


def test_release_config_as_transformers_saves_it_imports_to_the_same_plan():
    saved = hf_model_on_meta(KOLIBRI_1).config.to_dict()
    assert "num_local_experts" in saved and "num_experts" not in saved  # the attribute map's canonical name
    assert plan_differences(hf_to_model(saved), hf_to_model(KOLIBRI_1)) == []


def test_global_layers_are_nope_unless_nothing_slides():
    plan = hf_to_model(KOLIBRI_1)
    assert [(lp.attention.window, lp.attention.rope) for lp in plan.layers[:5]] == [(513, True)] * 4 + [(None, False)]
    full = {**KOLIBRI_1, "sliding_window": None, "layer_types": ["full_attention"] * 50}
    assert all(lp.attention.rope and lp.attention.window is None for lp in hf_to_model(full).layers)


@pytest.mark.parametrize(
    "change,field",
    [
        ({"sliding_window": None}, "sliding_window"),  # sliding layers without a window: Kolibri1Config refuses
        ({"head_dim": None}, "head_dim"),  # the attention reads it as given: transformers builds no model
        ({"layer_types": ["sliding_attention"] * 49 + ["chunked_attention"]}, "layer_types"),
        ({"layer_types": ["full_attention"] * 49}, "layer_types"),
        ({"attention_bias": True}, "attention_bias"),  # Kolibri1Attention has none; not read, so not guessed
    ],
)
def test_what_transformers_would_not_run_as_said_is_refused_located(change, field):
    assert field in refused_fields({**KOLIBRI_1, **change})


def test_defaults_are_transformers_class_defaults():
    from moec.hf.families.kolibri1 import DEFAULTS

    table = {("num_experts" if k == "num_local_experts" else k): v for k, v in DEFAULTS.items()}
    assert_table_holds_class_defaults(table, transformers.Kolibri1Config, at_least=15)
    assert DEFAULTS["default_theta"] == transformers.Kolibri1Config.default_theta


# 5 layers: four sliding (window 4 < the 12 test tokens, with rope), a global NoPE one; top-2 of 8 experts chosen
# with the selection bias on the logits, renormalised, one shared expert
TINY = {
    "vocab_size": 128, "hidden_size": 64, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16,
    "max_position_embeddings": 64, "rms_norm_eps": 1e-6, "num_hidden_layers": 5, "moe_intermediate_size": 16,
    "num_experts": 8, "num_experts_per_tok": 2, "shared_expert_intermediate_size": 24, "sliding_window": 4,
    "norm_topk_prob": True,
}  # fmt: skip


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    hf = tiny_hf("kolibri1", TINY)
    with torch.no_grad():  # a selection bias of the logits' order, so that it changes choices
        for layer in hf.model.layers:
            layer.mlp.gate.e_score_correction_bias.copy_(torch.randn(8, generator=torch.Generator().manual_seed(1)))
    return saved_checkpoint(hf, tmp_path_factory, "kolibri1")


def test_tiny_checkpoint_gives_transformers_logits_and_router_choices(checkpoint):
    hf, folder = checkpoint
    model = moec.from_hf(folder)
    assert [(lp.attention.window, lp.attention.rope) for lp in model.plan.layers] == [(4, True)] * 4 + [(None, False)]
    assert model.plan.layers[0].ffn.router.selection_bias_on == "logits"
    assert assert_same(hf, model) <= 1e-4


def test_in_memory_names_load_to_the_same_logits(checkpoint, tmp_path):
    """transformers' in-memory names (post_self_attn_layernorm, post_mlp_layernorm, the bias under the router,
    stacked experts) load too."""
    from safetensors.torch import save_file

    hf, folder = checkpoint
    tensors = {k: v.detach().clone().contiguous() for k, v in hf.state_dict().items()}
    assert {"model.layers.0.post_self_attn_layernorm.weight", "model.layers.0.mlp.gate.e_score_correction_bias"} <= set(
        tensors
    )
    (tmp_path / "config.json").write_text((folder / "config.json").read_text())
    save_file(tensors, tmp_path / "model.safetensors")
    assert assert_same(hf, moec.from_hf(tmp_path)) <= 1e-4


def test_the_generated_model_py_gives_the_library_logits(checkpoint, tmp_path):
    """moec build renders sandwich norms and the selection bias on the logits: the generated model.py holding the
    imported weights gives moec.nn's logits and aux bit for bit."""
    assert_generated_model_gives_the_library_logits(moec.from_hf(checkpoint[1]), None, tmp_path)


def test_the_release_exports_as_kolibri1_with_transformers_count():
    from moec.hf import export_hf_config
    from tests.hf.configs import hf_params

    plan = hf_to_model(KOLIBRI_1)
    cfg = export_hf_config(plan)
    assert cfg["model_type"] == "kolibri1"
    assert plan_differences(plan, hf_to_model(cfg)) == []
    assert hf_params(cfg) == analyze(plan).params.total


def test_tiny_model_exports_to_a_checkpoint_transformers_runs_to_its_logits(checkpoint, tmp_path):
    model = moec.from_hf(checkpoint[1])
    moec.export_hf(model, tmp_path / "out", family="kolibri1")
    hf = transformers.Kolibri1ForCausalLM.from_pretrained(tmp_path / "out", attn_implementation="eager").eval()
    assert assert_same(hf, model) <= 1e-4
