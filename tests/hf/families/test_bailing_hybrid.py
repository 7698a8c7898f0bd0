"""Ling 3.0 (model_type bailing_hybrid): its attention layers (MLA with a sigmoid gate per head on the output) are
refused naming that feature, and the spec drafted without the gate plus the parameters the refusal names is
transformers' count on meta; its KDA layers (full-rank projections, the bounded decay) and MoE translate; a tiny
checkpoint of KDA layers only, saved by transformers under Ling's names, loads with moec.from_hf to transformers'
logits and router choices, also decoding token by token; the generated model.py gives moec.nn's logits."""

from __future__ import annotations

import pytest

from moec.analyze import analyze
from moec.hf.config import render_yaml, translate
from moec.spec import load_spec, resolve

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import moec  # noqa: E402
from moec.hf.families.bailing_hybrid import DEFAULTS  # noqa: E402
from tests.hf.families._harness import (  # noqa: E402
    assert_generated_model_gives_the_library_logits,
    assert_table_holds_class_defaults,
    hf_counts,
    refused_fields,
    saved_checkpoint,
    tiny_hf,
)
from tests.hf.test_weights import TOKENS, assert_same  # noqa: E402

# BailingHybridConfig's defaults, which its docstring names inclusionAI/Ling-3.0-Flash's (no release config.json is
# reachable here): 42 layers of width 2560, MLA every 6th layer, KDA 32 heads of 128 elsewhere, 512 experts top-8
DEFAULT_CONFIG = {"model_type": "bailing_hybrid", "architectures": ["BailingHybridForCausalLM"]}

# three KDA layers (layer_group_size 4 puts no attention layer among them); the first dense; 8 experts top-2 in two
# groups of which one is chosen. use_cache false: transformers' cache of a model without attention layers cannot
# say its length (its forward would fail), which moec's test of the logits does not need.
TINY = {
    "vocab_size": 128, "hidden_size": 64, "num_hidden_layers": 3, "layer_group_size": 4, "num_attention_heads": 2,
    "num_key_value_heads": 2, "head_dim": 8, "intermediate_size": 48, "moe_intermediate_size": 16, "num_experts": 8,
    "num_experts_per_token": 2, "num_shared_experts": 1, "num_expert_group": 2, "topk_group": 1,
    "first_k_dense_replace": 1, "kv_lora_rank": 16, "qk_nope_head_dim": 8, "qk_rope_head_dim": 4, "v_head_dim": 8,
    "short_conv_kernel_size": 3, "kda_lower_bound": -3.0, "num_nextn_predict_layers": 0, "model_max_length": 64,
    "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2, "use_cache": False,
}  # fmt: skip

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def nearest_counts(cfg: dict) -> tuple[tuple[int, int], int]:
    """(total, active) of the spec the importer drafts for ``cfg``, and the parameters its refusals name."""
    t = translate(cfg)
    assert not t.problems(gaps=False)
    params = analyze(resolve(load_spec("draft", text=render_yaml(t)))).params
    return (params.total, params.active), sum(g.param_delta for g in t.gaps)


def test_the_attention_output_gate_is_refused_by_exactly_its_count():
    assert refused_fields(DEFAULT_CONFIG) == ["layer_types"]
    (total, active), gate = nearest_counts(DEFAULT_CONFIG)
    assert gate == 7 * 2560 * 32  # layers 5, 11, ..., 41: g_proj (d → heads) each
    assert (total + gate, active + gate) == hf_counts(DEFAULT_CONFIG)


def test_the_kda_layers_translate():
    t = translate(DEFAULT_CONFIG)
    kda = {k.removeprefix("mixers.kda."): v for k, (v, _) in t.draft.fields.items() if k.startswith("mixers.kda.")}
    assert kda == {
        "n_heads": 32, "head_dim": 128, "conv_kernel": 4, "decay_rank": 0, "gate_rank": 0, "decay": "bounded_sigmoid",
        "decay_lower_bound": -5.0, "norm_eps": 1e-6,
    }  # fmt: skip
    assert [i for i, m in enumerate(t.draft.mixer) if m == "attention"] == [5, 11, 17, 23, 29, 35, 41]
    plain = translate({**DEFAULT_CONFIG, "kda_safe_gate": False}).draft.fields
    assert plain["mixers.kda.decay"][0] == "softplus" and "mixers.kda.decay_lower_bound" not in plain


def test_tiny_counts_equal_transformers_model_on_meta():
    cfg = {**TINY, "model_type": "bailing_hybrid"}
    (total, active), gate = nearest_counts(cfg)
    assert gate == 0 and (total, active) == hf_counts(cfg)


@pytest.mark.parametrize(
    ("change", "field"), [({"hidden_act": "gelu"}, "hidden_act"), ({"layer_types": ["x"] * 3}, "layer_types")]
)
def test_what_moec_cannot_say_is_refused(change, field):
    assert field in refused_fields({**TINY, "model_type": "bailing_hybrid", **change})


def test_defaults_table_holds_transformers_class_defaults():
    assert_table_holds_class_defaults(DEFAULTS, transformers.BailingHybridConfig, at_least=30)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return saved_checkpoint(tiny_hf("bailing_hybrid", TINY), tmp_path_factory, "bailing_hybrid")


def test_tiny_checkpoint_gives_transformers_logits_and_router_choices(checkpoint):
    hf, folder = checkpoint
    names = set(__import__("safetensors.torch").torch.load_file(folder / "model.safetensors"))
    assert {"model.word_embeddings.weight", "model.layers.0.attention.q_conv1d.weight"} <= names  # Ling's names
    model = moec.from_hf(folder)
    # save_pretrained writes head_dim as the MLA rope width (4) and the KDA width as linear_head_dim (8)
    kda = model.plan.layers[0].mixer
    assert (kda.head_dim, kda.decay, kda.decay_lower_bound, kda.decay_rank) == (8, "bounded_sigmoid", -3.0, 0)
    assert assert_same(hf, model) <= 1e-4


def test_tiny_checkpoint_decodes_token_by_token_to_transformers_logits(checkpoint):
    hf, folder = checkpoint
    model = moec.from_hf(folder)
    cache, outs, start = model.new_cache(2, TOKENS.shape[1]), [], 0
    with torch.no_grad():
        for n in [5] + [1] * (TOKENS.shape[1] - 5):
            outs.append(model(TOKENS[:, start : start + n], cache=cache, start=start)[0])
            start += n
        want = hf(TOKENS).logits
    assert (torch.cat(outs, dim=1) - want).abs().max() <= 1e-4


def test_generated_model_py_gives_the_library_logits(checkpoint, tmp_path):
    model = moec.from_hf(checkpoint[1])
    assert_generated_model_gives_the_library_logits(model, TOKENS, tmp_path)
