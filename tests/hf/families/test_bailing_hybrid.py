"""Ling 3.0 (model_type bailing_hybrid): the class-default config (Ling-3.0-Flash's) counts as transformers' model
on meta; its KDA layers (full-rank projections, the bounded decay) and its MLA layers with a sigmoid gate per head
translate; a tiny checkpoint of both, saved by transformers under Ling's names, loads with moec.from_hf to
transformers' logits and router choices, also decoding token by token; the generated model.py refuses the MLA output
gate by name (codegen does not render it yet); plans export to a config.json transformers builds with their counts."""

from __future__ import annotations

import dataclasses

import pytest

from moec.analyze import analyze
from moec.hf import hf_to_model
from moec.hf.config import export_hf_config, plan_differences

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from safetensors.torch import load_file  # noqa: E402

import moec  # noqa: E402
from moec.hf.families.bailing_hybrid import DEFAULTS  # noqa: E402
from tests.hf.families._harness import (  # noqa: E402
    assert_a_release_mtp_layer_is_let_go,
    assert_generated_model_gives_the_library_logits,
    assert_table_holds_class_defaults,
    hf_counts,
    refused_fields,
    saved_checkpoint,
    tiny_hf,
)
from tests.hf.test_weights import TOKENS, assert_same  # noqa: E402

# BailingHybridConfig's defaults, which its docstring names inclusionAI/Ling-3.0-Flash's (no release config.json is
# reachable here): 42 layers of width 2560, gated MLA every 6th layer, KDA 32 heads of 128 elsewhere, 512 experts top-8
DEFAULT_CONFIG = {"model_type": "bailing_hybrid", "architectures": ["BailingHybridForCausalLM"]}

# KDA on layers 0 and 2, gated MLA on 1 and 3 (layer_group_size 2); the first layer dense; 8 experts top-2 in two
# groups of which one is chosen; one MTP layer, which transformers builds none of
TINY = {
    "vocab_size": 128, "hidden_size": 64, "num_hidden_layers": 4, "layer_group_size": 2, "num_attention_heads": 2,
    "num_key_value_heads": 2, "head_dim": 8, "intermediate_size": 48, "moe_intermediate_size": 16, "num_experts": 8,
    "num_experts_per_token": 2, "num_shared_experts": 1, "num_expert_group": 2, "topk_group": 1,
    "first_k_dense_replace": 1, "kv_lora_rank": 16, "qk_nope_head_dim": 8, "qk_rope_head_dim": 4, "v_head_dim": 8,
    "short_conv_kernel_size": 3, "kda_lower_bound": -3.0, "num_nextn_predict_layers": 1, "model_max_length": 64,
    "rope_theta": 1e4, "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2,
}  # fmt: skip

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_release_counts_equal_transformers_model_on_meta():
    params = analyze(hf_to_model(DEFAULT_CONFIG)).params
    assert (params.total, params.active) == hf_counts(DEFAULT_CONFIG) == (124_414_191_072, 5_505_672_672)


def test_the_kda_and_gated_mla_layers_translate():
    plan = hf_to_model(DEFAULT_CONFIG)
    assert [i for i, lp in enumerate(plan.layers) if lp.mixer_kind == "attention"] == [5, 11, 17, 23, 29, 35, 41]
    kda, attn = plan.layers[0].mixer, plan.layers[5].attention
    assert (kda.n_heads, kda.head_dim, kda.conv_kernel, kda.decay_rank, kda.gate_rank) == (32, 128, 4, 0, 0)
    assert (kda.decay, kda.decay_lower_bound, kda.norm_eps) == ("bounded_sigmoid", -5.0, 1e-6)
    assert (attn.kind, attn.output_gate, plan.positions.theta) == ("mla", "head", 6e6)
    plain = hf_to_model({**DEFAULT_CONFIG, "kda_safe_gate": False}).layers[0].mixer
    assert (plain.decay, plain.decay_lower_bound) == ("softplus", None)


def test_tiny_counts_equal_transformers_model_on_meta():
    cfg = {**TINY, "model_type": "bailing_hybrid"}
    params = analyze(hf_to_model(cfg)).params
    assert (params.total, params.active) == hf_counts(cfg)


@pytest.mark.parametrize(
    ("change", "field"), [({"hidden_act": "gelu"}, "hidden_act"), ({"layer_types": ["x"] * 4}, "layer_types")]
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
    names = set(load_file(folder / "model.safetensors"))
    assert {"model.word_embeddings.weight", "model.layers.0.attention.q_conv1d.weight"} <= names  # Ling's names
    assert {"model.layers.1.attention.g_proj.weight", "model.layers.1.attention.dense.weight"} <= names
    model = moec.from_hf(folder)
    assert [lp.mixer_kind for lp in model.plan.layers] == ["kda", "attention", "kda", "attention"]
    # save_pretrained writes head_dim as the MLA rope width (4) and the KDA width as linear_head_dim (8)
    kda = model.plan.layers[0].mixer
    assert (kda.head_dim, kda.decay, kda.decay_lower_bound, kda.decay_rank) == (8, "bounded_sigmoid", -3.0, 0)
    assert assert_same(hf, model) <= 1e-4


def test_tiny_checkpoint_decodes_token_by_token_to_transformers_logits(checkpoint):
    """KDA's state and the gated MLA's latent cache carried through a prefill and one-token steps."""
    hf, folder = checkpoint
    model = moec.from_hf(folder)
    cache, outs, start = model.new_cache(2, TOKENS.shape[1]), [], 0
    with torch.no_grad():
        for n in [5] + [1] * (TOKENS.shape[1] - 5):
            outs.append(model(TOKENS[:, start : start + n], cache=cache, start=start)[0])
            start += n
        want = hf(TOKENS).logits
    assert (torch.cat(outs, dim=1) - want).abs().max() <= 1e-4


def test_the_release_mtp_layer_is_let_go(checkpoint, tmp_path):
    assert_a_release_mtp_layer_is_let_go(*checkpoint, tmp_path, mtp_layer=4)


def test_the_generated_model_py_gives_the_library_logits(checkpoint, tmp_path):
    """moec build renders MLA's output gate and the hybrid's linear mixers: the generated model.py holding the
    imported weights gives moec.nn's logits and aux bit for bit."""
    assert_generated_model_gives_the_library_logits(moec.from_hf(checkpoint[1]), None, tmp_path)


@pytest.mark.parametrize("safe_gate", [True, False], ids=["bounded", "softplus"])
def test_export_round_trip_counts_as_transformers(safe_gate):
    plan = hf_to_model({**DEFAULT_CONFIG, "kda_safe_gate": safe_gate})
    cfg = export_hf_config(plan)
    assert (cfg["model_type"], cfg["kda_safe_gate"]) == ("bailing_hybrid", safe_gate)
    assert plan_differences(plan, hf_to_model(cfg)) == []
    assert hf_counts(cfg) == (analyze(plan).params.total, analyze(plan).params.active)


@pytest.mark.parametrize(
    ("change", "reason"),
    [({"n_heads": 16}, "as many KDA heads"), ({"decay_rank": 128}, "full rank"), ({"chunk": 32}, "chunk")],
)
def test_export_refuses_kda_that_ling_cannot_say(change, reason):
    from moec.hf.draft import CannotExport
    from moec.hf.families.bailing_hybrid import FAMILY

    plan = hf_to_model(DEFAULT_CONFIG)
    layers = tuple(
        dataclasses.replace(lp, mixer=dataclasses.replace(lp.mixer, **change)) if lp.mixer_kind == "kda" else lp
        for lp in plan.layers
    )
    with pytest.raises(CannotExport, match=reason):
        FAMILY.export(plan.replace(layers=layers))
