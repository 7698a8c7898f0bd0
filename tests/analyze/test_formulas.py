"""The analyzer against formulas derived by hand from docs/conventions.md, on small specs."""

from __future__ import annotations

from fractions import Fraction

import pytest

from moec.analyze import analyze
from moec.spec import load_spec, resolve

BASE = """
moec: 1
name: t
model: {vocab_size: 1000, d_model: 64, n_layers: 4, max_seq_len: 512}
attention: {n_heads: 8, n_kv_heads: 2}
ffn: {d_ff: 128, activation: swiglu}
"""


def plan(extra: str = "", sets: tuple[str, ...] = ()):
    return resolve(load_spec("t.yaml", text=BASE + extra, sets=sets))


def test_dense_gqa_counts_by_hand():
    d, L, V, h, kv, hd, F = 64, 4, 1000, 8, 2, 8, 128
    a = analyze(plan(), seq=1)
    attn = d * hd * (h + 2 * kv) + h * hd * d
    ffn = 3 * d * F
    norms = 2 * d * L + d
    assert a.params.total == V * d + L * (attn + ffn) + norms + V * d
    assert a.flops.forward_linear == L * 2 * (attn + ffn) + 2 * d * V
    # attention scores: 2·h·S·(d_qk + d_v) per layer at S = 1
    assert a.flops.forward_attention == L * 2 * h * 1 * (2 * hd)


def test_tied_head_counts_once_but_still_costs_flops():
    a = analyze(plan(sets=("model.tie_embeddings=true",)))
    b = analyze(plan())
    assert b.params.total - a.params.total == 1000 * 64
    assert a.flops.forward_linear == b.flops.forward_linear


@pytest.mark.parametrize("seq", [1, 7, 512])
def test_causal_mode_averages_over_positions(seq: int):
    full = analyze(plan(), seq=seq, attention="full").flops.forward_attention
    causal = analyze(plan(), seq=seq, attention="causal").flops.forward_attention
    assert Fraction(causal).limit_denominator() == Fraction(full) * Fraction(seq + 1, 2 * seq)


def test_sliding_window_caps_attention_and_kv_cache():
    W, S = 16, 256
    p = plan(sets=(f"attention.window={W}",))
    a = analyze(p, seq=S, attention="full")
    h, hd, L = 8, 8, 4
    assert a.flops.forward_attention == L * 2 * h * W * 2 * hd
    # causal with a window: mean over positions of min(i, W)
    c = analyze(p, seq=S, attention="causal").flops.forward_attention
    mean_keys = Fraction(sum(min(i, W) for i in range(1, S + 1)), S)
    assert c == pytest.approx(float(L * 2 * h * mean_keys * 2 * hd))
    per_token = L * 2 * 2 * hd * 2  # K and V, 2 KV heads, bf16
    assert a.memory.kv_cache_bytes_per_token == per_token
    assert a.memory.kv_cache_bytes == per_token * W  # capped at the window


def test_per_layer_window_override():
    p = plan("layers:\n  overrides:\n    - {select: {every: 2, start: 0}, attention: {window: 4}}\n")
    assert [l.attention.window for l in p.layers] == [4, None, 4, None]
    a = analyze(p, seq=100)
    h, hd = 8, 8
    assert a.flops.forward_attention == 2 * (2 * h * 4 * 2 * hd) + 2 * (2 * h * 100 * 2 * hd)


def test_mla_matches_the_conventions_formula():
    text = BASE.replace(
        "attention: {n_heads: 8, n_kv_heads: 2}",
        "attention: {kind: mla, n_heads: 4, q_lora_rank: 24, kv_lora_rank: 16, qk_nope_head_dim: 8, qk_rope_head_dim: 4, v_head_dim: 6}",
    )
    p = resolve(load_spec("t.yaml", text=text))
    d, h, qr, kvr, dn, dr, dv = 64, 4, 24, 16, 8, 4, 6
    mm = d * qr + qr * h * (dn + dr) + d * (kvr + dr) + kvr * h * (dn + dv) + h * dv * d
    a = analyze(p, seq=10)
    ffn = 3 * 64 * 128
    assert a.flops.forward_linear == 4 * 2 * (mm + ffn) + 2 * 64 * 1000
    assert a.flops.forward_attention == 4 * 2 * h * 10 * ((dn + dr) + dv)
    assert a.memory.kv_cache_bytes_per_token == 4 * (kvr + dr) * 2
    comp = {c.name: c for c in a.components}
    assert comp["attention"].params == 4 * (mm + qr + kvr)  # + q_a and kv_a norms


MOE = """
moe:
  n_experts: 8
  d_ff: 32
  router: {top_k: 2}
layers:
  default: {ffn: moe}
"""


def test_moe_active_params_and_flops_by_hand():
    a = analyze(plan(MOE))
    d, E, k, f, L = 64, 8, 2, 32, 4
    comp = {c.name: c for c in a.components}
    assert comp["routed_experts"].params == L * E * 3 * d * f
    assert comp["routed_experts"].active == L * k * 3 * d * f
    assert comp["routed_experts"].flops == L * k * 6 * d * f
    assert comp["router"].flops == L * 2 * d * E
    assert a.params.active == a.params.total - L * (E - k) * 3 * d * f


@pytest.mark.parametrize("bias", [False, True], ids=["plain", "biased"])
@pytest.mark.parametrize("shared_gate", [False, True], ids=["no-gate", "gated-shared"])
def test_active_counts_include_expert_biases_and_the_shared_gate(bias: bool, shared_gate: bool):
    """gpt-oss's experts carry biases (each token touches k experts' weights and biases); Qwen2-MoE's
    shared expert has a d→1 sigmoid gate that every token passes. Swiglu expert of width f: gate and up
    biases of f each, a down bias of d; one shared expert of width 16 with the same layout."""
    moe = MOE.replace("d_ff: 32", f"d_ff: 32\n  bias: {str(bias).lower()}\n  n_shared_experts: 1\n  d_ff_shared: 16")
    a = analyze(plan(moe.replace("router:", f"shared_gate: {str(shared_gate).lower()}\n  router:")))
    d, E, k, f, fs, L = 64, 8, 2, 32, 16, 4
    expert = 3 * d * f + (2 * f + d if bias else 0)
    shared = 3 * d * fs + (2 * fs + d if bias else 0) + (d if shared_gate else 0)
    comp = {c.name: c for c in a.components}
    assert (comp["routed_experts"].params, comp["routed_experts"].active) == (L * E * expert, L * k * expert)
    assert comp["shared_experts"].params == comp["shared_experts"].active == L * shared
    # biases are elementwise (0 FLOPs); the gate is a d→1 matmul
    assert comp["routed_experts"].flops == L * k * 6 * d * f
    assert comp["shared_experts"].flops == L * 2 * (3 * d * fs + (d if shared_gate else 0))
    assert a.params.active == a.params.total - L * (E - k) * expert


def test_dense_routing_makes_every_expert_active():
    a = analyze(plan(MOE.replace("router: {top_k: 2}", "router: {dense: true}")))
    assert a.params.active == a.params.total
    comp = {c.name: c for c in a.components}
    assert comp["routed_experts"].flops == 4 * 8 * 6 * 64 * 32


def test_fine_grained_segmentation_resolves_to_plain_numbers():
    p = plan(MOE.replace("d_ff: 32", "d_ff: 32\n  granularity: 4"))
    f = p.layers[0].ffn
    assert (f.n_experts, f.d_ff, f.top_k) == (32, 8, 8)
    base, fine = analyze(plan(MOE)), analyze(p)
    cb = {c.name: c for c in base.components}
    cf = {c.name: c for c in fine.components}
    # same expert parameters and same expert FLOPs; only the router grows (E·m outputs)
    assert cf["routed_experts"].params == cb["routed_experts"].params
    assert cf["routed_experts"].flops == cb["routed_experts"].flops
    assert cf["router"].params == 4 * cb["router"].params


def test_shared_experts_always_active():
    a = analyze(plan(MOE.replace("d_ff: 32", "d_ff: 32\n  n_shared_experts: 2\n  d_ff_shared: 16")))
    comp = {c.name: c for c in a.components}
    assert comp["shared_experts"].params == comp["shared_experts"].active == 4 * 2 * 3 * 64 * 16
    assert comp["shared_experts"].flops == 4 * 2 * 6 * 64 * 16


def test_lora_experts_frozen_base_and_training_flops():
    text = MOE.replace("d_ff: 32", "d_ff: 128\n  expert_kind: lora\n  lora: {rank: 4, alpha: 8}")
    a = analyze(plan(text))
    d, F, r, E, k, L = 64, 128, 4, 8, 2, 4
    comp = {c.name: c for c in a.components}
    per_expert = 3 * r * (d + F)
    assert comp["base_ffn"].params == comp["base_ffn"].frozen == L * 3 * d * F
    assert comp["routed_experts"].params == L * E * per_expert
    assert comp["routed_experts"].active == L * k * per_expert
    assert a.params.frozen == L * 3 * d * F
    # training: 3x forward for trainable weights and attention scores, 2x for the frozen base
    frozen_fwd = comp["base_ffn"].flops
    assert a.flops.training == 3 * (a.flops.forward - frozen_fwd) + 2 * frozen_fwd


def test_training_memory_is_16_bytes_per_trainable_and_2_per_frozen():
    """A frozen embedding: V·d = 64,000 parameters at 2 bytes, the rest at 16 (the dense total is derived
    in test_dense_gqa_counts_by_hand)."""
    d, L, V, h, kv, hd, F = 64, 4, 1000, 8, 2, 8, 128
    total = V * d + L * (d * hd * (h + 2 * kv) + h * hd * d + 3 * d * F) + 2 * d * L + d + V * d
    a = analyze(plan("frozen: [embedding]\n"))
    assert (a.params.total, a.params.frozen, a.params.trainable) == (total, V * d, total - V * d)
    assert a.memory.training_state_bytes == 16 * (total - V * d) + 2 * V * d
    assert analyze(plan()).memory.training_state_bytes == 16 * total
    assert a.memory.weights_bytes_by_dtype["fp32"] == 4 * total
    assert a.memory.weights_bytes == 2 * total  # bf16, the default


def test_layer_patterns_name_their_start():
    # Megatron's "every 2" puts MoE on layer 0; Hugging Face's on layer 1: a spec says which.
    megatron = plan(
        MOE.replace(
            "default: {ffn: moe}", "default: {ffn: dense}\n  overrides: [{select: {every: 2, start: 0}, ffn: moe}]"
        )
    )
    hf = plan(
        MOE.replace(
            "default: {ffn: moe}", "default: {ffn: dense}\n  overrides: [{select: {every: 2, start: 1}, ffn: moe}]"
        )
    )
    assert megatron.moe_layers == [0, 2]
    assert hf.moe_layers == [1, 3]
    first_k = plan(
        MOE.replace(
            "default: {ffn: moe}", "default: {ffn: moe}\n  overrides: [{select: {first: 0, last: 1}, ffn: dense}]"
        )
    )
    assert first_k.moe_layers == [2, 3]
    listed = plan(MOE.replace("default: {ffn: moe}", "default: {ffn: dense}\n  overrides: [{select: [3], ffn: moe}]"))
    assert listed.moe_layers == [3]


def test_per_layer_rows_sum_to_the_totals():
    a = analyze(plan(MOE), seq=33)
    edges = {c.name: c for c in a.components}
    layer_params = sum(r.params for r in a.layers)
    assert layer_params + edges["embedding"].params + edges["head"].params + 64 == a.params.total
    assert sum(r.flops_attention for r in a.layers) == a.flops.forward_attention


def _keys_by_enumeration(S: int, window: int | None, chunk: int | None) -> Fraction:
    """Mean over queries i of the keys j ≤ i it may attend, counted one by one."""
    total = 0
    for i in range(S):
        for j in range(i + 1):
            in_window = window is None or j > i - window
            in_chunk = chunk is None or j // chunk == i // chunk
            total += in_window and in_chunk
    return Fraction(total, S)


@pytest.mark.parametrize("S,window,chunk", [(10, None, 4), (12, None, 4), (3, None, 4), (11, 3, 5), (9, 6, 4)])
def test_chunked_attention_kv_len_by_hand(S, window, chunk):
    from moec.analyze.counts import kv_len

    # causal: query i sees (i mod C) + 1 keys, capped at W; S = 10, C = 4: (10 + 10 + 3) / 10
    if (S, window, chunk) == (10, None, 4):
        assert kv_len(S, window, "causal", chunk) == Fraction(1 + 2 + 3 + 4 + 1 + 2 + 3 + 4 + 1 + 2, 10)
    assert kv_len(S, window, "causal", chunk) == _keys_by_enumeration(S, window, chunk)
    assert kv_len(S, window, "full", chunk) == min([S, chunk] + ([window] if window else []))


def test_chunked_layers_cap_attention_flops_and_kv_cache_but_not_params():
    h, hd, S, C = 8, 8, 512, 64
    chunked = plan("\nlayers:\n  overrides:\n    - {select: [1, 3], attention: {chunk: 64}}\n")
    assert [lp.attention.chunk for lp in chunked.layers] == [None, C, None, C]
    a, b = analyze(chunked, seq=S), analyze(plan(), seq=S)
    assert a.params.total == b.params.total
    # full mode: S_kv = S on two layers, C on two
    assert a.flops.forward_attention == 2 * (2 * h * S * 2 * hd) + 2 * (2 * h * C * 2 * hd)
    per_layer_token = 2 * 2 * hd * 2  # K and V, kv heads 2, bf16
    assert a.memory.kv_cache_bytes == per_layer_token * (2 * S + 2 * C)


def test_weightless_l2_qk_norm_adds_no_parameters():
    with_norm = analyze(plan("", sets=("attention.qk_norm=true",)))
    l2 = analyze(plan("", sets=("attention.qk_norm=true", "attention.qk_norm_kind=l2")))
    base = analyze(plan())
    assert with_norm.params.total - base.params.total == 4 * 2 * 8  # q and k weights of head_dim, 4 layers
    assert l2.params.total == base.params.total
