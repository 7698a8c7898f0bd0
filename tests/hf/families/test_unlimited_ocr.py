"""Unlimited-OCR (``model_type`` unlimited_ocr): DeepSeek-OCR-2's text model under another wrapper, imported with
deepseek_ocr2's steps. Its default attention, reference_sliding_attention on every layer, is refused by name; with
layer_types of full_attention it imports. Oracles: transformers' UnlimitedOcrForConditionalGeneration on the meta
device (its language model and head for the counts) and a tiny wrapper checkpoint saved with save_pretrained
(logits and router choices)."""

from __future__ import annotations

import copy

import pytest

from moec.analyze import analyze
from moec.errors import SpecError
from moec.hf import hf_to_model
from moec.hf.config import plan_differences, render_yaml, translate
from moec.spec import load_spec, resolve

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import moec  # noqa: E402
from tests.hf.families._harness import (  # noqa: E402
    TextView,
    assert_generated_model_gives_the_library_logits,
    assert_table_holds_class_defaults,
    away_from_init,
    model_counts,
    refused_fields,
    saved_checkpoint,
)
from tests.hf.test_weights import TOKENS, assert_same  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# No release config.json of baidu/Unlimited-OCR is reachable from here: UnlimitedOcrConfig's defaults are its sizes
# (12 layers of 1280, layer 0 dense, 64 experts of 896 top-6 and 2 shared, reference sliding windows of 128).
RELEASE: dict = {"model_type": "unlimited_ocr"}
# the original checkpoint's spelling, which UnlimitedOcrConfig still reads: language_config, sliding_window on top
ORIGINAL_SPELLING: dict = {"model_type": "unlimited_ocr", "language_config": {"num_hidden_layers": 12},
                           "sliding_window": 128}  # fmt: skip
FULL = ["full_attention"] * 12


def is_text(name: str) -> bool:
    return "language_model." in name or name == "lm_head.weight"


def on_meta(cfg: dict):
    kw = {k: v for k, v in copy.deepcopy(cfg).items() if k != "model_type"}
    with torch.device("meta"):
        return transformers.UnlimitedOcrForConditionalGeneration(transformers.UnlimitedOcrConfig(**kw))


@pytest.mark.parametrize("cfg", [RELEASE, ORIGINAL_SPELLING], ids=["text_config", "language_config"])
def test_the_default_reference_sliding_attention_is_refused_by_name(cfg):
    with pytest.raises(SpecError) as e:
        hf_to_model(cfg)
    (problem,) = e.value.problems
    assert problem.path.endswith("layer_types") and "reference_sliding_attention" in problem.message
    assert "on 12 of 12 layers (layer_types unset" in problem.message


def test_release_counts_equal_transformers_model_on_meta():
    """The refused release's nearest spec (its attention as full, which has the same weights) and the import with
    layer_types of full_attention both count as transformers' text model and head."""
    hf = on_meta(RELEASE)
    assert hf.config.text_config.layer_types == ["reference_sliding_attention"] * 12
    total, active = model_counts(hf, 64, 6, keep=is_text)
    t = translate(RELEASE)
    assert [g.param_delta for g in t.gaps] == [0]
    assert analyze(resolve(load_spec("draft", text=render_yaml(t)))).params.total == total
    params = analyze(hf_to_model({**RELEASE, "text_config": {"layer_types": FULL}})).params
    assert (params.total, params.active) == (total, active)
    assert round(params.total / 1e9, 2) == 2.93 and round(params.active / 1e9, 2) == 0.74


def test_the_original_spelling_imports_as_text_config_does():
    spelt_so = {**ORIGINAL_SPELLING, "language_config": {"layer_types": FULL}}
    assert plan_differences(hf_to_model(spelt_so), hf_to_model({**RELEASE, "text_config": {"layer_types": FULL}})) == []


def with_text(**change) -> dict:
    return {**RELEASE, "text_config": {"layer_types": FULL, **change}}


@pytest.mark.parametrize(
    ("cfg", "field"),
    [
        (with_text(layer_types=["full_attention"] * 11 + ["reference_sliding_attention"]), "text_config.layer_types"),
        (with_text(layer_types=["sliding_attention"] * 12), "text_config.layer_types"),  # not a type it builds
        (with_text(mlp_layer_types=["dense"] * 2 + ["sparse"] * 10, first_k_dense_replace=1),
         "text_config.first_k_dense_replace"),  # unread beside mlp_layer_types, and saying otherwise
        (with_text(head_dim=64), "text_config.head_dim"),  # hidden_size / heads, whatever is given
        (with_text(mlp_bias=True), "text_config.mlp_bias"),
        (with_text(model_type="deepseek_ocr2_text"), "text_config.model_type"),
        ({**with_text(), "language_config": {}}, "language_config"),  # transformers reads text_config only
        ({**with_text(), "sliding_window": 64}, "sliding_window"),
    ],
)  # fmt: skip
def test_fields_that_would_change_the_model_are_refused(cfg, field):
    assert refused_fields(cfg) == [field]


# tiny: mlp_layer_types unset (layer 0 dense: first_k_dense_replace's default), 8 experts top-2 in 4 groups, a
# routed scale, 2 shared experts, full attention with as many kv heads as heads (transformers' eager attention for
# this model does not repeat grouped kv heads); a vision side as small as its encoders allow
TINY = {
    "text_config": {
        "vocab_size": 128, "hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 3,
        "num_attention_heads": 4, "num_key_value_heads": 4, "max_position_embeddings": 64, "n_routed_experts": 8,
        "n_shared_experts": 2, "num_experts_per_tok": 2, "moe_intermediate_size": 16,
        "topk_method": "group_limited_greedy", "n_group": 4, "topk_group": 2, "routed_scaling_factor": 2.5,
        "layer_types": ["full_attention"] * 3,
    },
    "vision_config": {
        "sam_config": {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "image_size": 64,
                       "patch_size": 16, "window_size": 2, "global_attn_indexes": [1], "output_channels": 16,
                       "downsample_channels": [32, 64]},
        "encoder_config": {"hidden_size": 64, "intermediate_size": 64, "num_hidden_layers": 1,
                           "num_attention_heads": 2},
    },
}  # fmt: skip


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    cfg = transformers.UnlimitedOcrConfig(**copy.deepcopy(TINY))
    cfg.text_config._attn_implementation = "eager"
    torch.manual_seed(0)
    hf = transformers.UnlimitedOcrForConditionalGeneration(cfg).eval()
    away_from_init(hf, keep=is_text)
    return saved_checkpoint(hf, tmp_path_factory, "unlimited_ocr")


def test_tiny_checkpoint_gives_transformers_logits_and_router_choices(checkpoint):
    hf, folder = checkpoint
    model = moec.from_hf(folder)
    assert [lp.ffn.kind for lp in model.plan.layers] == ["dense", "moe", "moe"]
    assert assert_same(TextView(hf), model) <= 1e-4


def test_generated_model_py_gives_the_library_logits(checkpoint, tmp_path):
    model = moec.from_hf(checkpoint[1])
    assert_generated_model_gives_the_library_logits(model, TOKENS, tmp_path)


def test_text_defaults_are_transformers_class_defaults():
    from moec.hf.families.unlimited_ocr import TEXT_DEFAULTS

    assert_table_holds_class_defaults(TEXT_DEFAULTS, transformers.UnlimitedOcrTextConfig, at_least=20)
