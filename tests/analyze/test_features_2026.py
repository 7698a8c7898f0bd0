"""The analyzer on the 2025–26 MoE features (issue 11): the count-neutral ones leave every parameter, FLOP and
KV byte where the hand formulas of docs/conventions.md put them, and the conventions say so; the ones that count
are counted by hand here."""

from __future__ import annotations

import pytest

from moec.analyze import analyze
from moec.spec import load_spec, resolve

BASE = """
moec: 1
name: t
model: {vocab_size: 1000, d_model: 64, n_layers: 4, max_seq_len: 512, positions: {kind: rope}}
attention: {n_heads: 8, n_kv_heads: 2}
ffn: {d_ff: 128, activation: swiglu}
"""
D, L, V, H, KV, HD, F = 64, 4, 1000, 8, 2, 8, 128


def analysis(text: str = BASE, *sets: str, seq: int = 64):
    return analyze(resolve(load_spec("t.yaml", text=text, sets=sets)), seq=seq)


def hand_counted_dense() -> tuple[int, int, int]:
    """(params, forward linear FLOPs, KV bytes per token in bf16) of BASE from the conventions' formulas."""
    attn = D * HD * (H + 2 * KV) + H * HD * D
    ffn = 3 * D * F
    norms = 2 * D * L + D  # two per layer and the final one
    params = V * D + L * (attn + ffn) + norms + V * D
    flops = L * 2 * (attn + ffn) + 2 * D * V
    kv_bytes = L * 2 * KV * HD * 2
    return params, flops, kv_bytes


COUNT_NEUTRAL = {
    "partial rotary": ("model.positions.rotary_dim=4",),
    "partial rotary factor": ("model.positions.partial_rotary_factor=0.5",),
    "norms after each sublayer": ("model.norm.placement=after_sublayer",),  # two per layer and a final one
    "logit softcap and scaling": ("model.logit_softcap=30.0", "model.logits_scaling=8.0"),
    "per-layer rope theta": ("layers.default.attention.rope_theta=1.0e6",),
    "ntk alpha": ("model.positions.scaling={kind: ntk_alpha, alpha: 1000.0}",),
    "mrope sections": ("model.positions.mrope_sections=[2, 1, 1]", "model.positions.mrope_interleaved=true"),
}


@pytest.mark.parametrize("sets", COUNT_NEUTRAL.values(), ids=COUNT_NEUTRAL.keys())
def test_count_neutral_features_leave_the_hand_counts(sets):
    a = analysis(BASE, *sets)
    params, flops, kv_bytes = hand_counted_dense()
    assert a.params.total == a.params.active == a.params.trainable == params
    assert a.flops.forward_linear == flops
    assert a.flops.forward_attention == L * 2 * H * 64 * (2 * HD)  # full mode, S = 64
    assert a.memory.kv_cache_bytes_per_token == kv_bytes


def test_post_norm_alone_drops_the_final_norm():
    params, _, _ = hand_counted_dense()
    assert analysis(BASE, "model.norm.placement=post").params.total == params - D


MOE = (
    BASE
    + """moe:
  n_experts: 8
  d_ff: 32
  router: {top_k: 2, score: sigmoid, selection_bias: true, selection_bias_parameter: true}
layers: {default: {ffn: moe}, overrides: [{select: [0], ffn: dense}]}
"""
)


@pytest.mark.parametrize("as_parameter", [True, False])
def test_a_selection_bias_counts_only_as_a_parameter(as_parameter):
    E, k, f, moe_layers = 8, 2, 32, 3
    attn = D * HD * (H + 2 * KV) + H * HD * D
    router = D * E + (E if as_parameter else 0)  # the bias: E per MoE layer, always active
    experts = E * 3 * D * f
    norms = 2 * D * L + D
    total = V * D + L * attn + (3 * D * F) + moe_layers * (router + experts) + norms + V * D
    a = analysis(MOE if as_parameter else MOE.replace(", selection_bias_parameter: true", ""))
    assert a.params.total == a.params.trainable == total
    assert a.params.active == total - moe_layers * (experts - k * 3 * D * f)
    router_row = next(c for c in a.components if c.name == "router")
    assert (router_row.params, router_row.active, router_row.flops) == (moe_layers * router,) * 2 + (
        moe_layers * 2 * D * E,
    )


CONVENTIONS = {
    "rope_variants": [
        "partial rotary",
        "rope_theta",
        "ntk_alpha",
        "mrope",
        "0 FLOPs",
        "0 parameters",
        "KV bytes unchanged",
    ],
    "mla_latent_norm_eps": ["0 FLOPs", "0 parameters", "KV bytes unchanged"],
    "norm_placement": ["after_sublayer", "one norm of d per sublayer", "a final norm of d except with post"],
    "logits": ["logit_softcap", "logits_scaling", "0 FLOPs", "0 parameters"],
    "selection_bias": ["not counted", "selection_bias_parameter", "E router parameters per MoE layer"],
}


@pytest.mark.parametrize("key,says", CONVENTIONS.items(), ids=CONVENTIONS.keys())
def test_the_conventions_state_what_each_feature_changes(key, says):
    """The JSON's conventions name each feature and what it changes; the tests above hold the numbers to it."""
    text = analysis().to_dict()["conventions"][key]
    assert all(phrase in text for phrase in says), text


MLA = """
moec: 1
name: t
model: {vocab_size: 1000, d_model: 64, n_layers: 4, max_seq_len: 512, norm: {eps: 1.0e-5}}
attention: {kind: mla, n_heads: 8, q_lora_rank: 32, kv_lora_rank: 16, qk_nope_head_dim: 8, qk_rope_head_dim: 4,
            v_head_dim: 8, latent_norm_eps: 1.0e-6}
ffn: {d_ff: 128, activation: swiglu}
"""


def test_mla_latent_norm_eps_leaves_the_conventions_formula():
    q_r, kv_r, nope, rope, v = 32, 16, 8, 4, 8
    attn_mm = D * q_r + q_r * H * (nope + rope) + D * (kv_r + rope) + kv_r * H * (nope + v) + H * v * D
    latent_norms = q_r + kv_r
    a = analysis(MLA)
    assert a.params.total == V * D + L * (attn_mm + latent_norms + 3 * D * F) + (2 * D * L + D) + V * D
    assert a.flops.forward_linear == L * 2 * (attn_mm + 3 * D * F) + 2 * D * V
    assert a.memory.kv_cache_bytes_per_token == L * (kv_r + rope) * 2  # the latent and the rope key, bf16
