"""HY-V4-VL (model_type hy_v4_vl): the wrapper's text model is HY-V4's (tests/hf/families/test_hy_v4.py), with an
interleaved multimodal RoPE. No copy of the release config.json (tencent/Hy4) was found: the counts use the
configuration classes' defaults, which transformers documents as that checkpoint's. They count as transformers' text
model on meta, the vision tower left out; a tiny checkpoint saved by
transformers (the release's names) loads with moec.from_hf to the wrapper's logits and router choices."""

from __future__ import annotations

import copy

import pytest

from moec.analyze import analyze
from moec.hf import hf_to_model, import_hf_config

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
from tests.hf.families.test_hy_v4 import TINY as HY_V4_TINY  # noqa: E402
from tests.hf.test_weights import assert_same  # noqa: E402

CLASS_DEFAULTS = {"model_type": "hy_v4_vl", "architectures": ["HYV4VLForConditionalGeneration"]}
EVERY_LAYER_FULL = {**CLASS_DEFAULTS, "text_config": {"indexer_types": ["full"] * 78}}
TINY = {
    "model_type": "hy_v4_vl",
    "text_config": {**HY_V4_TINY, "rope_parameters": {"rope_theta": 1e4, "rope_type": "default", "mrope_section": [1, 0, 1]}},
    "vision_config": {"hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 32,
                      "out_hidden_size": 32},
}  # fmt: skip

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def text_counts(cfg: dict) -> tuple[int, int]:
    """transformers' wrapper built on meta: (total, active) of its text model and head, the vision tower left out."""
    kw = {k: v for k, v in copy.deepcopy(cfg).items() if k not in ("model_type", "architectures")}
    with torch.device("meta"):
        hf = transformers.HYV4VLForConditionalGeneration(transformers.HYV4VLConfig(**kw))
    tc = hf.config.text_config
    keep = lambda n: n.startswith(("model.language_model.", "lm_head."))  # noqa: E731
    return model_counts(hf, tc.n_routed_experts, tc.num_experts_per_tok, keep=keep)


def test_class_defaults_counts_equal_transformers_model_on_meta():
    """57 of the 78 layers reuse an earlier layer's indexer choice and hold no indexer of their own."""
    params = analyze(hf_to_model(CLASS_DEFAULTS)).params
    assert (params.total, params.active) == text_counts(CLASS_DEFAULTS)
    assert sum(lp.attention.indexer_shared for lp in hf_to_model(CLASS_DEFAULTS).layers) == 57


def test_every_layer_indexing_counts_equal_transformers_model_on_meta():
    params = analyze(hf_to_model(EVERY_LAYER_FULL)).params
    assert (params.total, params.active) == text_counts(EVERY_LAYER_FULL)


def test_the_text_model_imports_with_its_multimodal_rope_and_the_tower_named():
    text = import_hf_config(EVERY_LAYER_FULL)
    assert "mrope_sections: [12, 10, 10]" in text and "mrope_interleaved: true" in text
    assert "left out: the vision tower and its projector" in text
    assert hf_to_model(EVERY_LAYER_FULL).hyper_connections.residual == "identity"


@pytest.mark.parametrize(
    "text,field",
    [
        ({"indexer_types": ["shared"] + ["full"] * 77}, "text_config.indexer_types"),  # no layer before 0 chose
        ({"num_local_experts": 8, "n_routed_experts": 16}, "text_config.num_local_experts"),  # one field, two values
    ],
)
def test_text_fields_transformers_would_not_run_as_said_are_refused_naming_the_text_field(text, field):
    assert refused_fields({**CLASS_DEFAULTS, "text_config": text}) == [field]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    cfg = transformers.AutoConfig.for_model("hy_v4_vl", **{k: v for k, v in TINY.items() if k != "model_type"})
    cfg.text_config._attn_implementation = "eager"
    torch.manual_seed(0)
    hf = transformers.HYV4VLForConditionalGeneration(cfg).eval()
    away_from_init(hf)
    return saved_checkpoint(hf, tmp_path_factory, "hy_v4_vl")


def test_tiny_checkpoint_gives_transformers_logits_and_router_choices(checkpoint):
    hf, folder = checkpoint
    model = moec.from_hf(folder)
    assert list(model.plan.positions.mrope_sections) == [1, 0, 1]
    assert assert_same(TextView(hf), model) <= 1e-4
