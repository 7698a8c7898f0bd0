"""Granite-4.0-H (model_type granitemoehybrid): Granite-4.0-H-Small's counts equal transformers' model on meta and the
shipped spec is its import; layer_types and the Mamba2 fields map to layers and mixers.mamba2; a tiny random
checkpoint saved by transformers (Mamba2 and attention layers, MoE with the shared MLP, the μP multipliers) loads
with moec.from_hf to transformers' logits (its torch fallback) and router choices, with NoPE and with RoPE; without
experts the shared MLP is a dense FFN; what moec cannot say is refused, naming the field."""

from __future__ import annotations

from pathlib import Path

import pytest

from moec.analyze import analyze
from moec.hf import hf_to_model
from moec.hf.config import export_hf_config, plan_differences
from moec.hf.draft import CannotExport
from moec.spec import load_model
from moec.spec.plan import DenseFFNPlan

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import moec  # noqa: E402
from moec.hf.families.granitemoehybrid import DEFAULTS, FAMILY  # noqa: E402
from tests.hf.configs import hf_model_on_meta  # noqa: E402
from tests.hf.families._harness import (  # noqa: E402
    assert_generated_source_matches_the_library,
    assert_table_holds_class_defaults,
    hf_counts,
    refused_fields,
    saved_checkpoint,
    tiny_hf,
)
from tests.hf.test_weights import TOKENS, assert_same  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")

EXPERTS = ".experts."  # block_sparse_moe.experts.*; the shared MLP is shared_mlp.*

# ibm-granite/granite-4.0-h-small config.json, as public copies quote it (hidden_size 4096, 40 layers, 32/8 heads,
# 72 experts of 768 top-10, shared_intermediate_size 1536, mamba_d_state 128, mamba_d_conv 4, mamba_expand 2,
# tied embeddings, vocab 100352, layer_types 36 mamba and 4 attention), with the Mamba2 head layout of the model
# card (128 heads of 64, one group). The attention layers' places (5, 15, 25, 35) and the μP multipliers change no
# count. Published: 32B total, 9B active.
SMALL = {
    "architectures": ["GraniteMoeHybridForCausalLM"], "model_type": "granitemoehybrid", "attention_bias": False,
    "attention_multiplier": 0.0078125, "embedding_multiplier": 12, "hidden_act": "silu", "hidden_size": 4096,
    "intermediate_size": 768, "layer_types": ["attention" if i % 10 == 5 else "mamba" for i in range(40)],
    "logits_scaling": 8, "mamba_chunk_size": 256, "mamba_conv_bias": True, "mamba_d_conv": 4, "mamba_d_head": 64,
    "mamba_d_state": 128, "mamba_expand": 2, "mamba_n_groups": 1, "mamba_n_heads": 128, "mamba_proj_bias": False,
    "max_position_embeddings": 131072, "num_attention_heads": 32, "num_experts_per_tok": 10, "num_hidden_layers": 40,
    "num_key_value_heads": 8, "num_local_experts": 72, "position_embedding_type": "nope", "residual_multiplier": 0.22,
    "rms_norm_eps": 1e-5, "router_aux_loss_coef": 0.0, "shared_intermediate_size": 1536, "tie_word_embeddings": True,
    "vocab_size": 100352,
}  # fmt: skip

# Mamba2 on layers 0, 2, 3 and attention on layer 1; 4 experts top-2 and the shared MLP; 4 SSM heads of 8 in 2 groups;
# chunks of 5 so that the 12 test tokens end in a short chunk; biases on the projections; the μP multipliers.
TINY = {
    "vocab_size": 128, "hidden_size": 32, "num_attention_heads": 4, "num_key_value_heads": 2, "num_hidden_layers": 4,
    "layer_types": ["mamba", "attention", "mamba", "mamba"], "intermediate_size": 24, "num_local_experts": 4,
    "num_experts_per_tok": 2, "shared_intermediate_size": 16, "mamba_n_heads": 4, "mamba_expand": 1,
    "mamba_n_groups": 2, "mamba_d_state": 8, "mamba_d_conv": 3, "mamba_chunk_size": 5, "mamba_proj_bias": True,
    "embedding_multiplier": 6.0, "residual_multiplier": 0.5, "logits_scaling": 4.0, "attention_multiplier": 0.2,
    "max_position_embeddings": 64, "rms_norm_eps": 1e-5, "tie_word_embeddings": True,
}  # fmt: skip


def test_release_counts_equal_transformers_model_on_meta():
    params = analyze(hf_to_model(SMALL)).params
    assert (params.total, params.active) == hf_counts(SMALL, experts=EXPERTS)
    assert (params.total, params.active) == (32_207_337_984, 8_803_121_664)  # published: 32B total, 9B active


def test_shipped_spec_is_the_release_import():
    shipped = load_model("granite-4.0-h-small")
    assert plan_differences(shipped, hf_to_model(SMALL)) == []
    params = analyze(shipped).params
    assert (params.total, params.active) == hf_counts(SMALL, experts=EXPERTS)


def test_the_decode_state_is_the_mamba2_layers_convolution_inputs_and_float32_scan_state():
    """By hand, per Mamba2 layer: 3 past inputs of the x, B, C channels (8192 + 2·128) in bf16, and 128 heads of
    64 × 128 state entries in float32; 36 such layers; the 4 attention layers keep a KV cache instead."""
    per_layer = 3 * (8192 + 2 * 128) * 2 + 128 * 64 * 128 * 4
    assert analyze(load_model("granite-4.0-h-small")).memory.state_bytes_per_sequence == 36 * per_layer


def test_layer_types_and_the_mamba2_fields():
    plan = hf_to_model(SMALL)
    assert [i for i, lp in enumerate(plan.layers) if lp.has_attention] == [5, 15, 25, 35]
    m = plan.layers[0].mixer
    assert (m.n_heads, m.head_dim, m.state_dim, m.n_groups, m.conv_kernel, m.chunk) == (128, 64, 128, 1, 4, 256)
    assert (m.conv_bias, m.bias, m.step_min, m.step_max, m.norm_eps) == (True, False, 0.0, None, 1e-5)
    assert plan.positions.kind == "none"  # position_embedding_type nope: no rotary embedding
    legacy = {**SMALL, "layer_types": ["full_attention" if i % 10 == 5 else "linear_attention" for i in range(40)]}
    assert plan_differences(hf_to_model(legacy), plan) == []  # transformers' current spelling, the same layers


def test_auto_head_dim_and_class_defaults_count_as_transformers():
    cfg = {"model_type": "granitemoehybrid", "mamba_d_head": "auto", "layer_types": ["mamba"] * 31 + ["attention"]}
    assert hf_to_model(cfg).layers[0].mixer.head_dim == 2 * 4096 // 128
    params = analyze(hf_to_model(cfg)).params
    assert (params.total, params.active) == hf_counts(cfg, experts=EXPERTS)


def test_without_experts_the_shared_mlp_is_a_dense_ffn():
    cfg = {**SMALL, "num_local_experts": 0}
    plan = hf_to_model(cfg)
    assert all(isinstance(lp.ffn, DenseFFNPlan) and lp.ffn.d_ff == 1536 for lp in plan.layers)
    params = analyze(plan).params
    assert params.total == params.active == sum(p.numel() for p in hf_model_on_meta(cfg).parameters())


@pytest.mark.parametrize(
    "change,field",
    [
        ({"hidden_act": "gelu"}, "hidden_act"),  # the convolution's activation is hidden_act; moec's is silu
        ({"layer_types": ["mamba"] * 39 + ["hybrid"]}, "layer_types"),
        ({"layer_types": ["mamba"] * 39}, "layer_types"),  # 39 entries for 40 layers
        ({"mamba_d_head": 32}, "mamba_d_head"),  # 128 × 32 ≠ 2 × 4096
        ({"time_step_limit": [0.5, 0.1]}, "time_step_limit"),
    ],
)
def test_what_moec_cannot_say_is_refused(change, field):
    assert field in refused_fields({**SMALL, **change})


def test_export_round_trip_of_the_shipped_spec():
    """import(export(spec)) is the spec, and transformers builds the exported config.json with the spec's counts."""
    shipped = load_model("granite-4.0-h-small")
    cfg = export_hf_config(shipped)
    assert cfg["model_type"] == "granitemoehybrid" and cfg["position_embedding_type"] == "nope"
    assert [i for i, t in enumerate(cfg["layer_types"]) if t == "attention"] == [5, 15, 25, 35]
    assert (cfg["mamba_n_heads"], cfg["mamba_d_head"], cfg["mamba_expand"]) == (128, 64, 2)
    assert plan_differences(hf_to_model(cfg), shipped) == []
    params = analyze(shipped).params
    assert (params.total, params.active) == hf_counts(cfg, experts=EXPERTS)


@pytest.mark.parametrize(
    "old,new,reason",
    [
        ("head_dim: 64,", "head_dim: 48,", "a multiple of d_model"),  # 128 × 48 = 1.5 × 4096
        ("n_shared_experts: 1 ", "n_shared_experts: 2 ", "one shared MLP"),
        ("bias: false, chunk: 256}", "bias: false, chunk: 256, step_min: 0.01}", "upper clamp"),
        ("bias: false, chunk: 256}", "bias: false, chunk: 256, norm_eps: 1.0e-6}", "model's eps"),
    ],
)
def test_export_refuses_what_a_granite_hybrid_config_cannot_say(old, new, reason, tmp_path):
    text = (Path(__file__).parents[3] / "specs" / "granite-4.0-h-small.yaml").read_text()
    assert old in text
    (tmp_path / "spec.yaml").write_text(text.replace(old, new))
    with pytest.raises(CannotExport, match=reason):
        FAMILY.export(load_model(str(tmp_path / "spec.yaml")))


def test_defaults_table_holds_transformers_class_defaults():
    assert_table_holds_class_defaults(DEFAULTS, transformers.GraniteMoeHybridConfig, at_least=30)


def tiny(cfg: dict):
    """transformers' tiny model, its Mamba2 dynamics moved where a state lasts: decays around 0.9 per token."""
    hf = tiny_hf("granitemoehybrid", cfg)
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for layer in hf.model.layers:
            if layer.mamba is not None:
                layer.mamba.A_log.copy_(torch.randn(layer.mamba.A_log.shape, generator=g) * 0.5 - 1.5)
                layer.mamba.dt_bias.copy_(torch.randn(layer.mamba.dt_bias.shape, generator=g) * 0.5 - 1.0)
            if layer.block_sparse_moe is not None:
                layer.block_sparse_moe.router.weight.normal_(0, 0.5, generator=g)
    return hf


@pytest.fixture(scope="module", params=["nope", "rope"])
def checkpoint(request, tmp_path_factory):
    hf = tiny({**TINY, "position_embedding_type": request.param})
    return saved_checkpoint(hf, tmp_path_factory, f"granitemoehybrid_{request.param}")


def test_tiny_checkpoint_gives_transformers_logits_and_router_choices(checkpoint):
    hf, folder = checkpoint
    model = moec.from_hf(folder)
    assert [lp.mixer_kind for lp in model.plan.layers] == ["mamba2", "attention", "mamba2", "mamba2"]
    assert assert_same(hf, model) <= 1e-4


def test_a_dense_tiny_checkpoint_gives_transformers_logits(tmp_path):
    hf = tiny({**TINY, "num_local_experts": 0})
    hf.save_pretrained(tmp_path)
    model = moec.from_hf(tmp_path)
    with torch.no_grad():
        want, (got, _) = hf(TOKENS).logits, model(TOKENS)
    assert (got - want).abs().max().item() <= 1e-4


def test_tiny_checkpoint_decodes_token_by_token_to_transformers_logits(checkpoint):
    """The Mamba2 layers' convolution inputs and float32 scan state and the attention layers' KV cache carried
    through a prefill and one-token steps give transformers' logits of the whole sequence at once."""
    hf, folder = checkpoint
    model = moec.from_hf(folder)
    cache, outs, start = model.new_cache(2, TOKENS.shape[1]), [], 0
    with torch.no_grad():
        for n in [7] + [1] * (TOKENS.shape[1] - 7):
            outs.append(model(TOKENS[:, start : start + n], cache=cache, start=start)[0])
            start += n
        want = hf(TOKENS).logits
    assert (torch.cat(outs, dim=1) - want).abs().max() <= 1e-4


def test_generated_model_gives_the_library_logits(tmp_path):
    assert_generated_source_matches_the_library({**TINY, "model_type": "granitemoehybrid"}, tmp_path)
