"""Aria's multimodal wrapper (``model_type`` aria, AriaForConditionalGeneration): moec imports its text model as
aria_text does and names the vision tower and projector it leaves out. No release config was reachable, so the
realistic config is AriaConfig's class defaults (AriaTextConfig's text model, an Idefics3 tower). Oracles:
transformers' wrapper on the meta device (its text part for the counts) and a tiny wrapper checkpoint saved with
save_pretrained (logits and router choices)."""

from __future__ import annotations

import copy

import pytest

from moec.analyze import analyze
from moec.hf import hf_to_model, import_hf_config
from moec.hf.config import plan_differences

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import moec  # noqa: E402
from tests.hf.families._harness import (  # noqa: E402
    TextView,
    away_from_init,
    model_counts,
    refused_fields,
    saved_checkpoint,
)
from tests.hf.families.test_aria_text import TINY  # noqa: E402
from tests.hf.test_weights import assert_same  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")

LEFT_OUT = ("model.vision_tower.", "model.multi_modal_projector.")
TINY_VISION = {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 48,
               "image_size": 28, "patch_size": 14}  # fmt: skip


def test_release_counts_equal_transformers_model_on_meta():
    with torch.device("meta"):
        hf = transformers.AriaForConditionalGeneration(transformers.AriaConfig())
    assert any(n.startswith(LEFT_OUT) for n, _ in hf.named_parameters())  # the tower and projector, left out
    params = analyze(hf_to_model({"model_type": "aria"})).params
    assert (params.total, params.active) == model_counts(hf, 8, 2, keep=lambda n: not n.startswith(LEFT_OUT))


def test_wrapper_is_its_text_config_imported_alone_and_names_what_it_leaves_out():
    cfg = {"model_type": "aria", "text_config": {**TINY, "model_type": "aria_text"}, "vision_config": TINY_VISION}
    assert plan_differences(hf_to_model(cfg), hf_to_model(cfg["text_config"])) == []
    assert "left out, not counted: the vision tower (vision_config) and multi_modal_projector" in import_hf_config(cfg)


@pytest.mark.parametrize(
    ("change", "field"),
    [({"model_type": "mixtral"}, "text_config.model_type"), ({"tie_word_embeddings": True},
     "text_config.tie_word_embeddings"), ({"mlp_bias": True}, "text_config.mlp_bias")],
)  # fmt: skip
def test_text_fields_that_would_change_the_model_are_refused(change, field):
    assert refused_fields({"model_type": "aria", "text_config": {**TINY, **change}}) == [field]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    cfg = transformers.AriaConfig(text_config=copy.deepcopy(TINY), vision_config=TINY_VISION,
                                  projector_patch_to_query_dict={4: 4})  # fmt: skip
    cfg.text_config._attn_implementation = "eager"
    torch.manual_seed(0)
    hf = transformers.AriaForConditionalGeneration(cfg).eval()
    away_from_init(hf, keep=lambda name: not name.startswith(LEFT_OUT), router="router.weight", small_biases=True)
    return saved_checkpoint(hf, tmp_path_factory, "aria")


def test_tiny_wrapper_checkpoint_gives_transformers_logits_and_router_choices(checkpoint):
    hf, folder = checkpoint
    assert assert_same(TextView(hf), moec.from_hf(folder)) <= 1e-4
