"""Jamba (model_type jamba): the release config's counts equal transformers' model on meta, and the shipped spec is its
import; the layer pattern (attention 1 in attn_layer_period, MoE 1 in expert_layer_period) and the Mamba fields map
to layers and mixers.mamba; a tiny random checkpoint saved by transformers (Mamba and attention layers, dense and MoE
FFNs) loads with moec.from_hf to transformers' logits (its torch fallback) and router choices; the generated model.py
gives moec.nn's logits; what moec cannot say is refused, naming the field."""

from __future__ import annotations

import pytest

from moec.analyze import analyze
from moec.hf import hf_to_model
from moec.hf.config import export_hf_config, plan_differences
from moec.spec import load_model
from moec.spec.plan import MoEPlan

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import moec  # noqa: E402
from moec.hf.draft import CannotExport  # noqa: E402
from moec.hf.families.jamba import DEFAULTS, FAMILY  # noqa: E402
from tests.conftest import SPECS  # noqa: E402
from tests.hf.families._harness import (  # noqa: E402
    assert_generated_model_gives_the_library_logits,
    assert_table_holds_class_defaults,
    hf_counts,
    refused_fields,
    saved_checkpoint,
    tiny_hf,
)
from tests.hf.test_weights import TOKENS, assert_same  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")

EXPERTS = ".feed_forward.experts."

# ai21labs/Jamba-v0.1 config.json (transformers 4.40.0.dev0): these are the values transformers' JambaConfig takes
# as its defaults, which document that checkpoint, and those a public copy of AI21-Jamba-1.5-Mini's config.json
# holds (the same architecture). Published: 52B total, 12B active (arXiv 2403.19887).
RELEASE = {
    "architectures": ["JambaForCausalLM"], "model_type": "jamba", "attention_dropout": 0.0, "attn_layer_offset": 4,
    "attn_layer_period": 8, "bos_token_id": 1, "eos_token_id": 2, "expert_layer_offset": 1, "expert_layer_period": 2,
    "hidden_act": "silu", "hidden_size": 4096, "initializer_range": 0.02, "intermediate_size": 14336,
    "mamba_conv_bias": True, "mamba_d_conv": 4, "mamba_d_state": 16, "mamba_dt_rank": 256, "mamba_expand": 2,
    "mamba_proj_bias": False, "max_position_embeddings": 262144, "num_attention_heads": 32, "num_experts": 16,
    "num_experts_per_tok": 2, "num_hidden_layers": 32, "num_key_value_heads": 8, "num_logits_to_keep": 1,
    "output_router_logits": False, "pad_token_id": 0, "rms_norm_eps": 1e-06, "router_aux_loss_coef": 0.001,
    "sliding_window": None, "tie_word_embeddings": False, "torch_dtype": "bfloat16", "use_cache": True,
    "use_mamba_kernels": True, "vocab_size": 65536,
}  # fmt: skip

# Mamba on layers 0, 1, 3, 4 and attention on layer 2 (attn period 3, offset 2); MoE on the odd layers; 4 experts
# top-2; a time-step rank of its own; the 12 test tokens span one chunk of the scan (tests/mixers cover chunking).
TINY = {
    "vocab_size": 128, "hidden_size": 32, "num_attention_heads": 4, "num_key_value_heads": 2, "num_hidden_layers": 5,
    "intermediate_size": 24, "num_experts": 4, "num_experts_per_tok": 2, "attn_layer_period": 3,
    "attn_layer_offset": 2, "expert_layer_period": 2, "expert_layer_offset": 1, "mamba_d_state": 4,
    "mamba_d_conv": 3, "mamba_expand": 2, "mamba_dt_rank": 5, "max_position_embeddings": 64,
}  # fmt: skip


def test_release_counts_equal_transformers_model_on_meta():
    params = analyze(hf_to_model(RELEASE)).params
    assert (params.total, params.active) == hf_counts(RELEASE, experts=EXPERTS)
    assert round(params.total / 1e9) == 52 and round(params.active / 1e9) == 12  # 52B total, 12B active


def test_release_config_as_transformers_saves_it_imports_to_the_same_plan():
    """save_pretrained's spelling: every field written out, the time-step rank resolved, the scan choices added."""
    kw = {k: v for k, v in RELEASE.items() if k != "model_type"}
    saved = transformers.JambaConfig(**kw).to_dict()
    assert saved["use_mambapy"] is False and saved["mamba_dt_rank"] == 256
    assert plan_differences(hf_to_model(saved), hf_to_model(RELEASE)) == []


def test_shipped_spec_is_the_release_import():
    shipped = load_model("jamba-v0.1")
    assert plan_differences(shipped, hf_to_model(RELEASE)) == []
    assert (analyze(shipped).params.total, analyze(shipped).params.active) == hf_counts(RELEASE, experts=EXPERTS)


def test_the_layer_pattern_and_the_mamba_fields():
    plan = hf_to_model(RELEASE)
    assert [i for i, lp in enumerate(plan.layers) if lp.has_attention] == [4, 12, 20, 28]
    assert [i for i, lp in enumerate(plan.layers) if isinstance(lp.ffn, MoEPlan)] == list(range(1, 32, 2))
    mixer = plan.layers[0].mixer
    fields = (mixer.inner_dim, mixer.state_size, mixer.conv_kernel, mixer.dt_rank, mixer.conv_bias, mixer.proj_bias)
    assert fields == (8192, 16, 4, 256, True, False)
    assert mixer.inner_norms and mixer.norm_eps == 1e-6
    assert plan.positions.kind == "none"  # JambaAttention has no rotary positions
    auto = hf_to_model({**RELEASE, "mamba_dt_rank": "auto", "hidden_size": 1000, "num_attention_heads": 8})
    assert auto.layers[0].mixer.dt_rank == 63  # ⌈1000 / 16⌉, transformers' "auto"


@pytest.mark.parametrize(
    "change",
    [
        {"num_experts": 1},  # JambaMLP on every layer
        {"attn_layer_period": 1, "attn_layer_offset": 0},  # attention on every layer, no Mamba at all
        {"attn_layer_period": 9, "attn_layer_offset": 7},  # no layer reaches the offset: Mamba on every layer
    ],
)
def test_tiny_variants_count_as_transformers_builds_them(change):
    cfg = {**TINY, "model_type": "jamba", **change}
    params = analyze(hf_to_model(cfg)).params
    assert (params.total, params.active) == hf_counts(cfg, experts=EXPERTS)


def test_the_scan_choices_change_nothing():
    """Which of transformers' scans runs (fused kernels, mamba.py, its loop) changes no value."""
    chosen = {**RELEASE, "use_mamba_kernels": False, "use_mambapy": True, "use_associative_scan": False}
    assert plan_differences(hf_to_model(chosen), hf_to_model(RELEASE)) == []


@pytest.mark.parametrize(
    "change,field",
    [
        ({"hidden_act": "gelu"}, "hidden_act"),  # the convolution's activation is hidden_act; moec's is silu
        ({"sliding_window": 4096}, "sliding_window"),  # transformers 5 attends to every token
        ({"attn_layer_offset": 8}, "attn_layer_offset"),  # offset ≥ period: transformers refuses it too
        ({"expert_layer_offset": 2}, "expert_layer_offset"),
        ({"mamba_dt_rank": "half"}, "mamba_dt_rank"),
    ],
)
def test_what_moec_cannot_say_is_refused(change, field):
    assert field in refused_fields({**RELEASE, **change})


def test_export_round_trip_of_the_shipped_spec():
    """import(export(spec)) is the spec, and transformers builds the exported config.json with the spec's counts."""
    shipped = load_model("jamba-v0.1")
    cfg = export_hf_config(shipped)
    assert cfg["model_type"] == "jamba" and (cfg["attn_layer_period"], cfg["attn_layer_offset"]) == (8, 4)
    assert plan_differences(hf_to_model(cfg), shipped) == []
    assert (analyze(shipped).params.total, analyze(shipped).params.active) == hf_counts(cfg, experts=EXPERTS)


@pytest.mark.parametrize(
    "old,new,reason",
    [
        ("positions: {kind: none}", "positions: {kind: rope}", "no position encoding"),
        ("inner_norms: true", "inner_norms: false", "inner_norms"),
        ("ffn: {d_ff: 14336,", "ffn: {d_ff: 1024,", "one intermediate_size"),
        ("select: {every: 8, start: 4}", "select: {layers: [4, 12, 28]}", "attention layers"),
        ("ffn: dense, mixer: mamba", "ffn: dense, mixer: short_conv", "Mamba and attention layers only"),
    ],
)
def test_export_refuses_what_a_jamba_config_cannot_say(old, new, reason, tmp_path):
    text = (SPECS / "jamba-v0.1.yaml").read_text()
    assert old in text
    text = text.replace(old, new)
    if "short_conv" in new:  # its section, and layer 0 kept Mamba so that mixers.mamba is still used
        text = text.replace("mixers:\n  mamba:", "mixers:\n  short_conv: {}\n  mamba:").replace(
            "    - select: {every: 8", "    - {select: {layers: [0]}, mixer: mamba}\n    - select: {every: 8"
        )
    (tmp_path / "spec.yaml").write_text(text)
    with pytest.raises(CannotExport, match=reason):
        FAMILY.export(load_model(str(tmp_path / "spec.yaml")))


def test_defaults_table_holds_transformers_class_defaults():
    assert_table_holds_class_defaults(DEFAULTS, transformers.JambaConfig, at_least=25)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    hf = tiny_hf("jamba", TINY)
    return saved_checkpoint(hf, tmp_path_factory, "jamba")


def test_tiny_checkpoint_gives_transformers_logits_and_router_choices(checkpoint):
    hf, folder = checkpoint
    model = moec.from_hf(folder)
    assert [lp.mixer_kind for lp in model.plan.layers] == ["mamba", "mamba", "attention", "mamba", "mamba"]
    assert assert_same(hf, model) <= 1e-4


def test_tiny_checkpoint_decodes_to_transformers_logits(checkpoint):
    """The Mamba layers' convolution inputs and state, and the attention layer's KV cache, carried through a prefill
    of 5 tokens, one token, then 6 at once, give transformers' logits of the whole sequence at once."""
    hf, folder = checkpoint
    model = moec.from_hf(folder)
    cache, outs, start = model.new_cache(2, TOKENS.shape[1]), [], 0
    with torch.no_grad():
        for n in (5, 1, 6):
            outs.append(model(TOKENS[:, start : start + n], cache=cache, start=start)[0])
            start += n
        want = hf(TOKENS).logits
    assert (torch.cat(outs, dim=1) - want).abs().max().item() <= 1e-4


def test_tiny_counts_equal_transformers_model_on_meta():
    params = analyze(hf_to_model({**TINY, "model_type": "jamba"})).params
    assert (params.total, params.active) == hf_counts({**TINY, "model_type": "jamba"}, experts=EXPERTS)


def test_generated_model_py_gives_the_library_logits(checkpoint, tmp_path):
    model = moec.from_hf(checkpoint[1])
    assert_generated_model_gives_the_library_logits(model, TOKENS, tmp_path)
