"""A.X-K2 (model_type axk2): AXK2Config's defaults (A.X-K2-Light's sizes, the class docstring says; no release
config.json was found) count as transformers' model on meta, with and without expert groups; a tiny random checkpoint
saved by transformers (the fused query and value gate, gated norms, DeepSeek-V3.2's indexer) loads with moec.from_hf
to transformers' logits and router choices; what transformers refuses or moec cannot say is refused by name."""

from __future__ import annotations

import pytest

from moec.analyze import analyze
from moec.hf import hf_to_model
from moec.hf.config import import_hf_config
from moec.spec import load_spec, resolve

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import moec  # noqa: E402
from tests.hf.families._harness import hf_counts, refused_fields, saved_checkpoint, tiny_hf  # noqa: E402
from tests.hf.test_weights import TOKENS, assert_same  # noqa: E402

# 3 layers (one dense), MLA of 4 heads (q latent 16, kv latent 12, nope 8, rope 4, v 8), an indexer of 16 heads of 8
# keeping 4 keys of the 12-token test sequence, 8 experts of 16 (top-2) + 2 shared, gates of rank 4 on the norms
TINY = {
    "vocab_size": 128, "hidden_size": 32, "intermediate_size": 48, "moe_intermediate_size": 16,
    "num_hidden_layers": 3, "num_attention_heads": 4, "num_key_value_heads": 4, "n_routed_experts": 8,
    "n_shared_experts": 2, "num_experts_per_tok": 2, "q_lora_rank": 16, "kv_lora_rank": 12, "qk_nope_head_dim": 8,
    "qk_rope_head_dim": 4, "v_head_dim": 8, "index_n_heads": 16, "index_head_dim": 8, "index_topk": 4,
    "gated_norm_rank": 4, "max_position_embeddings": 64, "rms_norm_eps": 1e-5, "bos_token_id": 1, "eos_token_id": 2,
}  # fmt: skip

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.parametrize(
    "cfg",
    [{}, {"n_group": 8, "topk_group": 4}, {**TINY, "n_group": 4, "topk_group": 2}],
    ids=["class defaults", "class defaults, grouped routing", "tiny, grouped"],
)
def test_counts_equal_transformers_model_on_meta(cfg):
    cfg = {**cfg, "model_type": "axk2"}
    params = analyze(hf_to_model(cfg)).params
    assert (params.total, params.active) == hf_counts(cfg)


def test_class_defaults_by_hand_beyond_deepseek_v32():
    """Beyond the same import with a plain MLA query (q_b_proj) and ungated norms: per layer q_gate_proj's
    2·384·32·(96 + 64) − 384·32·96 more; gates of 2·2048·16 on 48 input norms and 47 MoE post-attention norms. All
    of it in total and in active alike (none of it is a routed expert)."""
    plan = hf_to_model({"model_type": "axk2"})
    a = plan.layers[0].attention
    assert a.query_gate and a.has_indexer and plan.norm_gate.rank == 16
    assert [plan.norm_gate.gates(lp) for lp in plan.layers[:2]] == [("mixer",), ("mixer", "moe_ffn")]
    text = import_hf_config({"model_type": "axk2"})
    plain = resolve(load_spec("axk2.yaml", text=text, sets=["attention.query_gate=false", "model.norm_gate=null"]))
    full, without = analyze(plan).params, analyze(plain).params
    by_hand = 48 * (2 * 384 * 32 * (96 + 64) - 384 * 32 * 96) + (48 + 47) * 2 * 2048 * 16
    assert full.total - without.total == full.active - without.active == by_hand == 138_346_496


@pytest.mark.parametrize(
    "change,field",
    [
        ({"q_lora_rank": None}, "q_lora_rank"),
        ({"n_group": 4}, "n_group"),
        ({"layer_types": ["indexed_attention", "full_attention", "indexed_attention"]}, "layer_types"),
        ({"rope_interleave": False}, "rope_interleave"),
        ({"attention_bias": True}, "attention_bias"),
    ],
)
def test_what_moec_cannot_express_is_refused_by_name(change, field):
    assert field in refused_fields({**TINY, "model_type": "axk2", **change})


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return saved_checkpoint(tiny_hf("axk2", TINY), tmp_path_factory, "axk2")


def test_tiny_checkpoint_gives_transformers_logits_and_router_choices(checkpoint):
    hf, folder = checkpoint
    model = moec.from_hf(folder)
    assert assert_same(hf, model) <= 1e-4
    with torch.no_grad():  # the gates matter: without the MoE layers' FFN-norm gates, other logits
        want = hf(TOKENS).logits
        for layer in model.layers[1:]:
            layer.ffn_norm = layer.ffn_norm.norm
        assert not torch.allclose(model(TOKENS)[0], want, atol=1e-3)
