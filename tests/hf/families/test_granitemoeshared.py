"""Granite-MoE with shared experts (model_type granitemoeshared): the analyzer's counts equal transformers' model
on meta; a tiny random checkpoint saved by transformers loads with moec.from_hf to transformers' logits and
router choices; the generated model.py gives moec.nn's logits; shared_intermediate_size 0 is plain Granite-MoE.

Its tiny checkpoint (test_weights.make_hf's weights) and codegen parity are the harness's (saved_tiny,
assert_generated_source_matches_the_library), shared with granitemoe_swa, flint and ernie4_5_moe."""

from __future__ import annotations

import pytest

from moec.analyze import analyze
from moec.hf import hf_to_model
from moec.hf.config import plan_differences
from tests.hf.configs import hf_model_on_meta

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import moec  # noqa: E402
import tests.hf.test_weights as weights  # noqa: E402

# No release config of this family could be obtained (the Hub is out of reach; its one public checkpoint,
# ibm-research/moe-7b-1b-active-shared-experts, is a test model whose config no public copy holds). So: the
# transformers class defaults, with the shared MLP width GraniteMoeSharedConfig's docstring gives (1024; the
# field's default is 0, which builds no shared MLP at all), and a tied embedding.
CLASS_DEFAULTS = {"model_type": "granitemoeshared", "shared_intermediate_size": 1024, "tie_word_embeddings": True}

# Tied embeddings, the μP multipliers, attention_multiplier as the softmax scale, and the shared MLP.
TINY = {**weights.TINY, "num_hidden_layers": 2, "intermediate_size": 32, "num_local_experts": 4,
        "num_experts_per_tok": 2, "shared_intermediate_size": 48, "tie_word_embeddings": True,
        "embedding_multiplier": 6.0, "residual_multiplier": 0.5, "logits_scaling": 4.0,
        "attention_multiplier": 0.1}  # fmt: skip

from tests.hf.families._harness import (  # noqa: E402
    assert_generated_source_matches_the_library,
    hf_counts,
    saved_tiny,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# Granite's routed experts are block_sparse_moe.experts.* (its shared MLP is shared_mlp.*); granitemoe_swa's too
GRANITE_EXPERTS = ".experts."


# --- granitemoeshared ------------------------------------------------------------------------------


@pytest.mark.parametrize("shared", [1024, 0])
def test_class_default_counts_equal_transformers_model_on_meta(shared):
    cfg = {**CLASS_DEFAULTS, "shared_intermediate_size": shared}
    params = analyze(hf_to_model(cfg)).params
    assert (params.total, params.active) == hf_counts(cfg, experts=GRANITE_EXPERTS)


def test_config_as_transformers_saves_it_imports_to_the_same_plan():
    saved = hf_model_on_meta(CLASS_DEFAULTS).config.to_dict()
    assert plan_differences(hf_to_model(saved), hf_to_model(CLASS_DEFAULTS)) == []


def test_shared_mlp_is_one_ungated_shared_expert_and_width_0_is_none():
    moe = hf_to_model(CLASS_DEFAULTS).layers[0].ffn
    assert (moe.n_shared_experts, moe.d_ff_shared, moe.shared_gate) == (1, 1024, False)
    none = hf_to_model({**CLASS_DEFAULTS, "shared_intermediate_size": 0})
    granite = hf_to_model({"model_type": "granitemoe", "tie_word_embeddings": True})
    assert none.layers[0].ffn.n_shared_experts == 0
    assert plan_differences(none, granite) == []


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    folder = tmp_path_factory.mktemp("granitemoeshared")
    return saved_tiny("granitemoeshared", TINY, folder), folder


def test_tiny_checkpoint_gives_transformers_logits_and_router_choices(checkpoint):
    hf, folder = checkpoint
    model = moec.from_hf(folder)
    weights.assert_same(hf, model)


def test_the_in_memory_layout_loads_to_the_same_logits(checkpoint, tmp_path):
    """transformers' names in memory (stacked block_sparse_moe.experts.gate_up_proj, router.weight), not the ones save_pretrained writes."""
    hf, _ = checkpoint
    weights.assert_same(hf, moec.from_hf(weights._write_state_dict(hf, tmp_path / "in_memory")))


def test_generated_model_gives_the_library_logits(tmp_path):
    assert_generated_source_matches_the_library({**TINY, "model_type": "granitemoeshared"}, tmp_path)
