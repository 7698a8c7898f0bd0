"""Aria's text model (``model_type`` aria_text, AriaTextForCausalLM). No release config of Aria's text model was
found to copy (rhymes-ai/Aria is not reachable from here), so the realistic config is AriaTextConfig's class
defaults. Oracles: transformers' model on the meta device (counts) and a tiny checkpoint saved with
save_pretrained (logits and router choices)."""

from __future__ import annotations

import copy

import pytest

from moec.analyze import analyze
from moec.hf import hf_to_model
from tests.hf.configs import hf_model_on_meta

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import moec  # noqa: E402
from tests.hf.families._harness import (  # noqa: E402
    assert_generated_model_gives_the_library_logits,
    away_from_init,
    model_counts,
    refused_fields,
    saved_checkpoint,
)
from tests.hf.test_weights import TOKENS, assert_same  # noqa: E402

CLASS_DEFAULTS = {"model_type": "aria_text"}  # AriaTextConfig(): 32 layers, 8 experts top-2, 2 shared

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_release_counts_equal_transformers_model_on_meta():
    params = analyze(hf_to_model(CLASS_DEFAULTS)).params
    hf = hf_model_on_meta(CLASS_DEFAULTS)  # its E and k: moe_num_experts, moe_topk
    assert (params.total, params.active) == model_counts(hf, 8, 2)


@pytest.mark.parametrize(
    ("change", "field"),
    [({"hidden_act": "gelu_pytorch_tanh"}, "hidden_act"), ({"mlp_bias": True}, "mlp_bias")],
)
def test_what_moec_cannot_express_is_refused_by_name(change, field):
    assert refused_fields({**CLASS_DEFAULTS, **change}) == [field]


# tiny: GQA with biases on q, k, v and o, 8 experts top-2 with 2 shared experts of width 16 each
TINY = {"vocab_size": 128, "hidden_size": 64, "num_attention_heads": 4, "num_key_value_heads": 2,
        "intermediate_size": 16, "num_hidden_layers": 2, "moe_num_experts": 8, "moe_topk": 2,
        "moe_num_shared_experts": 2, "max_position_embeddings": 64, "attention_bias": True}  # fmt: skip


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    cfg = transformers.AriaTextConfig(**copy.deepcopy(TINY))
    cfg._attn_implementation = "eager"
    torch.manual_seed(0)
    hf = transformers.AriaTextForCausalLM(cfg).eval()
    away_from_init(hf, router="router.weight", small_biases=True)
    return saved_checkpoint(hf, tmp_path_factory, "aria_text")


def test_tiny_checkpoint_gives_transformers_logits_and_router_choices(checkpoint):
    hf, folder = checkpoint
    assert assert_same(hf, moec.from_hf(folder)) <= 1e-4


def test_generated_model_py_gives_the_library_logits(checkpoint, tmp_path):
    model = moec.from_hf(checkpoint[1])
    assert_generated_model_gives_the_library_logits(model, TOKENS, tmp_path)
