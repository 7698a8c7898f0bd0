"""A.X-K1 (model_type axk1, SK Telecom): on AXK1Config's defaults (A.X-K1's shapes) the analyzer's total and active
equal transformers' model built on meta; a tiny save_pretrained checkpoint (DeepSeek-V3's MLA and router, the norm on
the MoE block's output) loads with moec.from_hf to transformers' logits and router choices; what transformers would not
run as the config says is refused, located."""

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

# AXK1Config's defaults, which are A.X-K1's shapes (61 layers, the first dense, MLA of 64 heads with ranks 1536 / 512,
# 192 experts of 2048 in 8 groups, top-8, one shared expert, a 163840-token vocabulary); published: 519B total, 33B
# active
A_X_K1 = {"architectures": ["AXK1ForCausalLM"], "model_type": "axk1", "first_k_dense_replace": 1}


def test_release_counts_equal_transformers_model_on_meta():
    params = analyze(hf_to_model(A_X_K1)).params
    assert (params.total, params.active) == hf_counts(A_X_K1)
    assert round(params.total / 1e9) == 519 and round(params.active / 1e9) == 33


def test_release_config_as_transformers_saves_it_imports_to_the_same_plan():
    saved = hf_model_on_meta(A_X_K1).config.to_dict()
    assert "first_k_dense_replace" not in saved and saved["mlp_layer_types"][:2] == ["dense", "sparse"]
    assert plan_differences(hf_to_model(saved), hf_to_model(A_X_K1)) == []


def test_legacy_layer_fields_place_the_moe_layers_as_transformers_does():
    layers = hf_to_model({**A_X_K1, "first_k_dense_replace": 3, "moe_layer_freq": 2}).layers
    assert [lp.ffn.kind for lp in layers[:7]] == ["dense"] * 4 + ["moe", "dense", "moe"]


@pytest.mark.parametrize(
    "change,field",
    [
        ({"q_lora_rank": None}, "q_lora_rank"),  # AXK1Attention always builds q_a_proj
        ({"rope_interleave": False}, "rope_interleave"),
        ({"mlp_layer_types": ["dense"] + ["moe"] * 60}, "mlp_layer_types"),
        ({"scoring_func": "softmax"}, "scoring_func"),  # AXK1TopkRouter always scores with sigmoid
        ({"num_nextn_predict_layers": 1}, "num_nextn_predict_layers"),  # transformers builds no MTP layer
    ],
)
def test_what_transformers_would_not_run_as_said_is_refused_located(change, field):
    assert field in refused_fields({**A_X_K1, **change})


def test_defaults_are_transformers_class_defaults():
    from moec.hf.families.axk1 import DEFAULTS

    assert_table_holds_class_defaults(DEFAULTS, transformers.AXK1Config, at_least=25)
    assert DEFAULTS["default_theta"] == transformers.AXK1Config.default_theta


# 3 layers, the first dense; MLA with ranks 16 / 16, top-2 of 8 experts in 2 groups (one kept), a shared expert
TINY = {
    "vocab_size": 128, "hidden_size": 64, "intermediate_size": 96, "moe_intermediate_size": 16,
    "num_hidden_layers": 3, "num_attention_heads": 4, "num_key_value_heads": 4, "n_routed_experts": 8,
    "n_shared_experts": 1, "n_group": 2, "topk_group": 1, "num_experts_per_tok": 2, "first_k_dense_replace": 1,
    "kv_lora_rank": 16, "q_lora_rank": 16, "qk_nope_head_dim": 8, "qk_rope_head_dim": 8, "v_head_dim": 8,
    "max_position_embeddings": 64,
}  # fmt: skip


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return saved_checkpoint(tiny_hf("axk1", TINY), tmp_path_factory, "axk1")


def test_tiny_checkpoint_gives_transformers_logits_and_router_choices(checkpoint):
    hf, folder = checkpoint
    model = moec.from_hf(folder)
    assert [lp.ffn.kind for lp in model.plan.layers] == ["dense", "moe", "moe"]
    assert assert_same(hf, model) <= 1e-4
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in hf.parameters())


def test_in_memory_names_and_the_releases_dense_layer_norm_load_to_the_same_logits(checkpoint, tmp_path):
    """The norm inside the block (mlp.post_mlp_layernorm, transformers' in-memory name) loads too, and a
    post_mlp_layernorm on a dense layer, which A.X-K1's releases carry and transformers builds no module for, is let
    go; one on no layer at all is still refused."""
    from safetensors.torch import save_file

    from moec.hf.checkpoint import CheckpointError

    hf, folder = checkpoint
    tensors = {k: v.detach().clone().contiguous() for k, v in hf.state_dict().items()}
    assert "model.layers.1.mlp.post_mlp_layernorm.weight" in tensors
    tensors["model.layers.0.post_mlp_layernorm.weight"] = torch.ones(64)
    (tmp_path / "config.json").write_text((folder / "config.json").read_text())
    save_file(tensors, tmp_path / "model.safetensors")
    assert assert_same(hf, moec.from_hf(tmp_path)) <= 1e-4
    tensors["model.layers.3.post_mlp_layernorm.weight"] = torch.ones(64)
    save_file(tensors, tmp_path / "model.safetensors")
    with pytest.raises(CheckpointError, match="layers.3.post_mlp_layernorm"):
        moec.from_hf(tmp_path)


def test_the_generated_model_py_gives_the_library_logits(checkpoint, tmp_path):
    """moec build renders the MoE output norm: the generated model.py holding the imported weights gives moec.nn's
    logits and aux bit for bit."""
    assert_generated_model_gives_the_library_logits(moec.from_hf(checkpoint[1]), None, tmp_path)


def test_the_release_exports_as_axk1_with_transformers_count():
    """A.X-K1's plan is DeepSeek-V3's with the MoE output norm, which deepseek_v3's config cannot say: export tries
    the families in order and writes axk1's, which imports back to the identical plan."""
    from moec.hf import export_hf_config
    from tests.hf.configs import hf_params

    plan = hf_to_model(A_X_K1)
    cfg = export_hf_config(plan)
    assert cfg["model_type"] == "axk1" and cfg["mlp_layer_types"][:2] == ["dense", "sparse"]
    assert plan_differences(plan, hf_to_model(cfg)) == []
    assert hf_params(cfg) == analyze(plan).params.total


def test_a_plan_without_the_moe_output_norm_is_not_exported_as_axk1():
    from moec.hf.draft import CannotExport
    from moec.hf.families.axk1 import FAMILY

    deepseek_like = hf_to_model({**A_X_K1, "model_type": "deepseek_v3", "num_nextn_predict_layers": 0})
    with pytest.raises(CannotExport, match="moe.output_norm"):
        FAMILY.export(deepseek_like)


def test_tiny_model_exports_to_a_checkpoint_transformers_runs_to_its_logits(checkpoint, tmp_path):
    """Config and weights written by moec (the norm on the MoE output under the name save_pretrained uses):
    transformers' AXK1ForCausalLM of them gives moec's logits and router choices."""
    model = moec.from_hf(checkpoint[1])
    moec.export_hf(model, tmp_path / "out", family="axk1")
    hf = transformers.AXK1ForCausalLM.from_pretrained(tmp_path / "out", attn_implementation="eager").eval()
    assert assert_same(hf, model) <= 1e-4
