"""HY-V4 (model_type hy_v4): hyper-connections without the stream mix, MLA with sinks, an element gate and a
lightning indexer (most layers reusing an earlier layer's choice), clamped SwiGLU routed experts beside plain shared
ones. The release config's counts equal transformers' model on meta (total and active); a tiny checkpoint saved by
transformers loads with moec.from_hf to transformers' logits and router choices, MLA's rotary rows re-laid on load,
the indexer's last rotary dims and a shared indexer layer included; fields that disagree are refused by name."""

from __future__ import annotations

import pytest

from moec.analyze import analyze
from moec.hf import hf_to_model, import_hf_config

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import moec  # noqa: E402
from tests.hf.families._harness import (  # noqa: E402
    assert_cached_decode_gives_transformers_logits,
    hf_counts,
    refused_fields,
    saved_checkpoint,
    tiny_hf,
)
from tests.hf.test_weights import TOKENS, assert_same  # noqa: E402

# tencent/Hy4-preview config.json, its 59 keys (as vLLM's plugin for it lists them) with the values a dataflow page
# transcribes from the release file: 78 layers of 6144, MLA with 64 heads (q latent 2048, kv latent 512, nope 192,
# rope 64, v 256) with sinks and an element gate, an indexer of 32 heads of 128 keeping 2048 keys on layers 0, 1,
# 5, 9, …, 77 (the other 57 share), a dense first layer of 18432, then 256 experts of 2048 (top-8) + 1 shared,
# 4 hyper-connection streams.
N = 78
HY4_PREVIEW = {
    "architectures": ["HYV4ForCausalLM"], "model_type": "hy_v4", "dtype": "bfloat16", "torch_dtype": "bfloat16",
    "transformers_version": "5.16.2", "vocab_size": 120832, "hidden_size": 6144, "num_hidden_layers": N,
    "max_position_embeddings": 1048576, "tie_word_embeddings": False, "num_attention_heads": 64,
    "num_key_value_heads": 8, "head_dim": 64, "q_lora_rank": 2048, "kv_lora_rank": 512, "qk_nope_head_dim": 192,
    "qk_rope_head_dim": 64, "qk_head_dim": 256, "v_head_dim": 256, "gated_mla": True, "gating_type": "elementwise",
    "learnable_sink": True, "learnable_sink_init": 0.0, "attention_bias": False, "attention_dropout": 0.0,
    "use_mla": True, "use_dsa": True, "index_n_heads": 32, "index_head_dim": 128, "index_topk": 2048,
    "indexer_types": ["full" if i == 0 or (i - 1) % 4 == 0 else "shared" for i in range(N)],
    "enable_ihc": True, "hc_mult": 4, "hc_magnitude": 2.0, "hc_eps": 1e-06, "rms_norm_eps": 1e-05,
    "mlp_layer_types": ["dense"] + ["sparse"] * (N - 1), "intermediate_size": 18432, "moe_intermediate_size": 2048,
    "n_routed_experts": 256, "n_shared_experts": 1, "num_experts_per_tok": 8, "n_group": 1, "topk_group": 1,
    "norm_topk_prob": True, "routed_scaling_factor": 2.827, "swiglu_limit": 10.0, "hidden_act": "silu",
    "layer_types": ["deepseek_sparse_attention"] * N,
    "rope_parameters": {"rope_theta": 10000000.0, "rope_type": "default"},
    "bos_token_id": 120000, "eos_token_id": 120025, "pad_token_id": 120002, "use_cache": True,
    "num_nextn_predict_layers": 1, "mtp_loss_factor": 0.1, "initializer_range": 0.006,
    "bitwise_backward_align": False, "enable_lm_head_fp32": True,
}  # fmt: skip
EVERY_LAYER_FULL = {**HY4_PREVIEW, "indexer_types": ["full"] * N}

# 3 layers (a dense one, then MoE), 4 streams, an indexer of 4 heads of 8 whose last 4 dims rotate, keeping 4 keys
# of the 12-token test sequence (the last layer reusing the second's choice); a swiglu_limit low enough to bind
TINY = {
    "vocab_size": 128, "hidden_size": 32, "num_attention_heads": 4, "max_position_embeddings": 64,
    "rms_norm_eps": 1e-5, "num_hidden_layers": 3, "intermediate_size": 48, "q_lora_rank": 24, "kv_lora_rank": 16,
    "qk_nope_head_dim": 8, "qk_rope_head_dim": 4, "v_head_dim": 8, "n_routed_experts": 8, "n_shared_experts": 1,
    "moe_intermediate_size": 16, "num_experts_per_tok": 2, "routed_scaling_factor": 2.5, "index_n_heads": 4,
    "index_head_dim": 8, "index_topk": 4, "indexer_types": ["full", "full", "shared"], "hc_mult": 4, "hc_magnitude": 1.5,
    "hc_eps": 1e-3, "swiglu_limit": 0.5, "pad_token_id": None, "bos_token_id": None, "eos_token_id": None,
    "rope_parameters": {"rope_theta": 10000.0, "rope_type": "default"},
}  # fmt: skip

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_release_counts_equal_transformers_model_on_meta():
    """The release as transformers builds it: 21 layers run the indexer, 57 reuse their choice and hold none."""
    params = analyze(hf_to_model(HY4_PREVIEW)).params
    assert (params.total, params.active) == hf_counts(HY4_PREVIEW)
    # each of 78·2 connections: (4·6144)·8 + 8 + 2 = 196,618; the head (4·6144)·4 + 4 + 1 = 98,309
    (row,) = [c for c in analyze(hf_to_model(HY4_PREVIEW)).components if c.name == "hyper_connections"]
    assert row.params == 156 * 196_618 + 98_309 == 30_770_717


def test_every_layer_indexing_adds_57_indexers():
    """indexer_types all full: 57 more indexers of 2048·32·128 + 6144·128 + 2·128 + 6144·32 = 9,371,904 each."""
    full, shared = (analyze(hf_to_model(c)).params.total for c in (EVERY_LAYER_FULL, HY4_PREVIEW))
    assert full - shared == 57 * 9_371_904
    assert (full, analyze(hf_to_model(EVERY_LAYER_FULL)).params.active) == hf_counts(EVERY_LAYER_FULL)


def test_release_imports_the_streams_and_names_the_release_fields():
    text = import_hf_config(EVERY_LAYER_FULL)
    assert "residual: identity" in text and "post_eps: true" in text and "head: dynamic" in text
    assert "enable_ihc true: transformers ignores it" in text and "use_dsa true: transformers ignores it" in text
    hc = hf_to_model(EVERY_LAYER_FULL).hyper_connections
    assert (hc.n_streams, hc.post_scale, hc.eps) == (4, 2.0, 1e-6)


@pytest.mark.parametrize(
    "change,field",
    [
        ({"indexer_types": ["shared"] + ["full"] * (N - 1)}, "indexer_types"),  # no indexer before layer 0
        ({**EVERY_LAYER_FULL, "enable_ihc": False}, "enable_ihc"),
        ({**EVERY_LAYER_FULL, "gating_type": "headwise"}, "gating_type"),
        ({**EVERY_LAYER_FULL, "layer_types": ["full_attention"] * N}, "layer_types"),
        # one bad field, one problem: not also the KV heads set from it, nor indexer_types left unjudged
        ({"num_attention_heads": 0.5}, "num_attention_heads"),
        ({"num_attention_heads": -1}, "num_attention_heads"),
        (
            {"num_key_value_heads": [1]},
            "num_key_value_heads",
        ),  # overwritten by HYV4Config, but typed: it refuses a list
        ({"num_hidden_layers": "x"}, "num_hidden_layers"),
    ],
)
def test_disagreeing_fields_are_refused_by_name(change, field):
    cfg = {k: v for k, v in {**HY4_PREVIEW, **change}.items() if v is not None}
    assert refused_fields(cfg) == [field]


def test_a_refused_indexer_key_norm_eps_is_located_at_rms_norm_eps():
    """The indexer's key norm takes rms_norm_eps: the spec's refusal of it names that field, not a class name."""
    assert set(refused_fields({**HY4_PREVIEW, "rms_norm_eps": 0.0})) == {"rms_norm_eps"}


def test_the_shared_layers_are_the_class_schedule_when_unset():
    unset = {k: v for k, v in HY4_PREVIEW.items() if k != "indexer_types"}
    plan = hf_to_model(unset)
    assert plan == hf_to_model(HY4_PREVIEW)
    assert [i for i, lp in enumerate(plan.layers) if not lp.attention.indexer_shared] == [0, *range(1, N, 4)]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return saved_checkpoint(tiny_hf("hy_v4", TINY), tmp_path_factory, "hy_v4")


def test_tiny_counts_equal_transformers_model_on_meta():
    cfg = {**TINY, "model_type": "hy_v4"}
    params = analyze(hf_to_model(cfg)).params
    assert (params.total, params.active) == hf_counts(cfg)


def test_tiny_checkpoint_gives_transformers_logits_and_router_choices(checkpoint):
    hf, folder = checkpoint
    model = moec.from_hf(folder)
    assert model.plan.hyper_connections.residual == "identity"
    assert assert_same(hf, model) <= 1e-4
    with torch.no_grad():  # the re-laid rotary rows matter: MLA's query rows as stored give other logits
        want = hf(TOKENS).logits
        for i, layer in enumerate(model.layers):
            layer.attn.q_b_proj.weight.copy_(hf.model.layers[i].self_attn.q_b_proj.weight)
        assert not torch.allclose(model(TOKENS)[0], want, atol=1e-3)


def test_the_indexer_rotates_its_last_dims(checkpoint):
    """attention.indexer.rope_dims: last, and it matters: rotating the first dims instead gives other logits."""
    hf, folder = checkpoint
    model = moec.from_hf(folder)
    assert {lp.attention.indexer_rope_dims for lp in model.plan.layers if lp.attention.has_indexer} == {"last"}
    with torch.no_grad():
        want = hf(TOKENS).logits
        for layer in model.layers[:2]:  # the third reuses the second's choice
            layer.attn.indexer.rope_last = False
        assert not torch.allclose(model(TOKENS)[0], want, atol=1e-3)


def test_a_cached_decode_gives_transformers_logits(checkpoint):
    """A prefill of 5 tokens, then one token at a time through moec's cache: transformers' full forward."""
    hf, folder = checkpoint
    assert_cached_decode_gives_transformers_logits(hf, moec.from_hf(folder), TOKENS)
