"""The analysis as a whole against values derived by hand: per-layer rows, the MoE and MTP summaries, the
6·N shortcut, training FLOPs with frozen parts, memory (KV cache, activation estimate) and the conventions
every output carries.

The model is test_formulas.BASE: V = 1000, d = 64, 4 layers, GQA with h = 8, kv = 2, head_dim = 8, RMSNorm
(one weight per dim), SwiGLU; with MOE, E = 8 experts of width 32, top-2. Per layer, by hand:
attention 64·8·(8 + 2·2) + 8·8·64 = 10,240 weights; two norms 128; a dense SwiGLU FFN 3·64·128 = 24,576;
a router 64·8 = 512; an expert 3·64·32 = 6,144.
"""

from __future__ import annotations

from fractions import Fraction

import pytest

from moec.analyze import analyze, convention_line
from tests.analyze.test_formulas import MOE, plan

ATTN, NORMS, DENSE, ROUTER, EXPERT = 10_240, 128, 24_576, 512, 6_144
EMB = HEAD = 1000 * 64
FINAL_NORM = 64
LORA = MOE.replace("d_ff: 32", "d_ff: 32\n  expert_kind: lora\n  lora: {rank: 4}")
MOE_PARAMS = ATTN + NORMS + ROUTER + 8 * EXPERT  # 60,032
MOE_ACTIVE = ATTN + NORMS + ROUTER + 2 * EXPERT  # 23,168
MOE_FLOPS = 2 * (ATTN + ROUTER + 2 * EXPERT)  # 46,080


def score_flops(keys: int | Fraction) -> int | Fraction:
    """QKᵀ and AV per token for one layer: 2·h·S_kv·(d_qk + d_v)."""
    return 2 * 8 * keys * (8 + 8)


MIXED = MOE.replace(
    "default: {ffn: moe}",
    "default: {ffn: moe}\n  overrides:\n    - {select: [0], ffn: dense}\n"
    "    - {select: {every: 2, start: 1}, attention: {window: 16}}",
)


def test_layer_rows_and_totals_by_hand():
    a = analyze(plan(MIXED), seq=100)
    dense = ATTN + NORMS + DENSE
    rows = [
        (r.index, r.ffn, r.attention, r.window, r.params, r.active, r.flops_linear, r.flops_attention) for r in a.layers
    ]
    assert rows == [
        (0, "dense", "gqa", None, dense, dense, 2 * (ATTN + DENSE), score_flops(100)),
        (1, "moe", "gqa", 16, MOE_PARAMS, MOE_ACTIVE, MOE_FLOPS, score_flops(16)),
        (2, "moe", "gqa", None, MOE_PARAMS, MOE_ACTIVE, MOE_FLOPS, score_flops(100)),
        (3, "moe", "gqa", 16, MOE_PARAMS, MOE_ACTIVE, MOE_FLOPS, score_flops(16)),
    ]
    edges = EMB + HEAD + FINAL_NORM
    total, active = dense + 3 * MOE_PARAMS + edges, dense + 3 * MOE_ACTIVE + edges
    assert (a.params.total, a.params.active, a.params.embedding) == (total, active, EMB)
    assert (a.params.trainable, a.params.frozen) == (total, 0)
    assert a.params.active_non_embedding == active - EMB
    assert a.flops.six_n_active == 6 * (active - EMB)
    linear = 2 * (ATTN + DENSE) + 3 * MOE_FLOPS + 2 * 64 * 1000
    scores = 2 * score_flops(100) + 2 * score_flops(16)
    assert (a.flops.forward_linear, a.flops.forward_attention, a.flops.forward) == (linear, scores, linear + scores)
    assert a.flops.training == 3 * (linear + scores)


def test_moe_summary_by_hand():
    a = analyze(plan(MIXED))
    s = a.moe
    assert (s.moe_layers, s.dense_layers, s.n_experts, s.top_k, s.n_shared_experts, s.granularity) == (3, 1, 8, 2, 0, 1)
    assert s.active_expert_fraction == 2 / 8
    total = ATTN + NORMS + DENSE + 3 * MOE_PARAMS + EMB + HEAD + FINAL_NORM
    assert s.routed_expert_params_share == pytest.approx(3 * 8 * EXPERT / total, rel=1e-12)
    assert analyze(plan()).moe is None  # no MoE layer, no summary
    fine = analyze(plan(MIXED.replace("d_ff: 32", "d_ff: 32\n  granularity: 2\n  n_shared_experts: 1"))).moe
    assert (fine.n_experts, fine.top_k, fine.granularity, fine.n_shared_experts) == (16, 4, 2, 1)


def test_frozen_components_split_params_and_cost_2x_in_training():
    a = analyze(plan(MOE + "frozen: [attention, router]\n"), seq=10)
    comp = {c.name: c for c in a.components}
    assert (comp["attention"].frozen, comp["attention"].trainable) == (4 * ATTN, 0)
    assert (comp["router"].frozen, comp["router"].trainable) == (4 * ROUTER, 0)
    assert (comp["routed_experts"].frozen, comp["routed_experts"].trainable) == (0, 4 * 8 * EXPERT)
    assert a.params.frozen == 4 * (ATTN + ROUTER)
    frozen_fwd = 4 * 2 * (ATTN + ROUTER)
    rest = 4 * 2 * 2 * EXPERT + 2 * 64 * 1000 + 4 * score_flops(10)  # attention scores are never frozen
    assert a.flops.training == 2 * frozen_fwd + 3 * rest


@pytest.mark.parametrize(
    ("setting", "keys"),
    [("attention.window=16", 16), ("attention.chunk=10", 10), ("attention.qk_norm=false", 100)],
    ids=["window", "chunk", "plain"],
)
def test_mtp_modules_by_hand(setting: str, keys: int):
    """Each MTP module: its block, three extra norms (two inputs, one output), a 2d→d projection, and the
    shared head's matmul again (its weights are the main model's: 0 parameters)."""
    a = analyze(plan(MOE + "mtp: {n_layers: 2}\n", sets=(setting,)), seq=100)
    extra = 3 * 64 + 2 * 64 * 64
    one_flops = MOE_FLOPS + 4 * 64 * 64 + 2 * 64 * 1000 + score_flops(keys)
    assert (a.mtp.n_layers, a.mtp.params, a.mtp.active) == (2, 2 * (MOE_PARAMS + extra), 2 * (MOE_ACTIVE + extra))
    assert a.mtp.forward_flops == 2 * one_flops
    assert a.params.total == 4 * MOE_PARAMS + EMB + HEAD + FINAL_NORM  # not in the headline
    assert analyze(plan(MOE)).mtp is None
    causal = analyze(plan(MOE + "mtp: {n_layers: 1}\n", sets=(setting,)), seq=100, attention="causal").mtp
    mean_keys = Fraction(
        sum(min(i, keys) if setting != "attention.chunk=10" else (i - 1) % 10 + 1 for i in range(1, 101)), 100
    )
    assert causal.forward_flops == pytest.approx(float(one_flops - score_flops(keys) + score_flops(mean_keys)))


def test_mtp_norms_under_layernorm_by_hand():
    """LayerNorm doubles every norm: the block's two (4·64) and the module's three (6·64)."""
    mtp = analyze(plan(MOE + "mtp: {n_layers: 1}\n", sets=("model.norm.kind=layernorm",))).mtp
    block = ATTN + 2 * NORMS + ROUTER
    assert (mtp.params, mtp.active) == (
        block + 8 * EXPERT + 6 * 64 + 2 * 64 * 64,
        block + 2 * EXPERT + 6 * 64 + 2 * 64 * 64,
    )


def test_layernorm_and_learned_positions_and_head_bias_by_hand():
    """LayerNorm has a weight and a bias per dim; learned positions add max_seq_len·d to the embedding; a
    post-norm model has no final norm."""
    p = plan(
        "",
        sets=(
            "model.norm.kind=layernorm",
            "model.positions.kind=learned",
            "model.head_bias=true",
            "model.norm.placement=post",
        ),
    )
    a = analyze(p)
    comp = {c.name: c for c in a.components}
    assert comp["norms"].params == comp["norms"].active == 4 * 2 * 2 * 64  # two per layer, no final norm
    assert comp["embedding"].params == 1000 * 64 + 512 * 64
    assert comp["head"].params == 1000 * 64 + 1000
    assert comp["head"].flops == 2 * 64 * 1000


MLA = (
    "attention.kind=mla", "attention.n_kv_heads=null", "attention.kv_lora_rank=16", "attention.qk_nope_head_dim=8",
    "attention.qk_rope_head_dim=4", "attention.v_head_dim=6", "model.norm.kind=layernorm",
)  # fmt: skip


def test_mla_latent_norms_under_layernorm_by_hand():
    """MLA's q_a and kv_a norms normalise the latents: 2·(q_lora_rank + kv_lora_rank) under LayerNorm."""
    d, h, qr, kvr, dn, dr, dv = 64, 8, 24, 16, 8, 4, 6
    kv_mm = d * (kvr + dr) + kvr * h * (dn + dv) + h * dv * d  # kv down, kv up, output
    with_q_lora = {c.name: c for c in analyze(plan(sets=(*MLA, "attention.q_lora_rank=24"))).components}
    q_mm = d * qr + qr * h * (dn + dr)
    assert with_q_lora["attention"].params == 4 * (q_mm + kv_mm + 2 * (qr + kvr))
    assert with_q_lora["attention"].flops == 4 * 2 * (q_mm + kv_mm)
    plain = {c.name: c for c in analyze(plan(sets=MLA)).components}
    assert plain["attention"].params == 4 * (d * h * (dn + dr) + kv_mm + 2 * kvr)
    assert analyze(plan(sets=MLA)).memory.kv_cache_bytes_per_token == 4 * (kvr + dr) * 2


@pytest.mark.parametrize(
    ("setting", "extra"),
    [
        ("attention.bias=true", 8 * (8 + 2 * 2)),  # q, k, v biases
        ("attention.out_bias=true", 64),
        ("attention.sinks=true", 8),  # one sink logit per head
        ("attention.qk_norm=true", 2 * 8),  # one head_dim weight for q, one for k
    ],
)
def test_attention_extras_by_hand(setting: str, extra: int):
    base = {c.name: c for c in analyze(plan()).components}["attention"]
    got = {c.name: c for c in analyze(plan(sets=(setting,))).components}["attention"]
    assert (got.params - base.params, got.active - base.active, got.flops - base.flops) == (4 * extra, 4 * extra, 0)


def test_projection_scope_qk_norm_under_layernorm_by_hand():
    sets = ("attention.qk_norm=true", "attention.qk_norm_scope=projection", "model.norm.kind=layernorm")
    base = {c.name: c for c in analyze(plan(sets=sets[2:])).components}["attention"]
    got = {c.name: c for c in analyze(plan(sets=sets)).components}["attention"]
    assert got.params - base.params == 4 * 2 * 8 * (8 + 2)  # weight and bias over q (h·hd) and k (kv·hd)


@pytest.mark.parametrize("expert_kind", ["ffn", "lora"])
def test_biased_ffns_by_hand(expert_kind: str):
    """A dense FFN with biases (llama's mlp_bias), a router bias (gpt-oss), LoRA over a biased base."""
    dense = analyze(plan(sets=("ffn.bias=true",)))
    assert dense.params.total - analyze(plan()).params.total == 4 * (2 * 128 + 64)
    moe = MOE if expert_kind == "ffn" else LORA
    plain = {c.name: c for c in analyze(plan(moe)).components}
    biased = {c.name: c for c in analyze(plan(moe, sets=("moe.bias=true", "moe.router.bias=true"))).components}
    assert biased["router"].params - plain["router"].params == 4 * 8
    if expert_kind == "lora":
        assert biased["base_ffn"].params - plain["base_ffn"].params == 4 * (2 * 32 + 64)
        assert biased["base_ffn"].flops == plain["base_ffn"].flops == 4 * 2 * 3 * 64 * 32
        # LoRA experts: rank 4 adapters on each matrix, 2 FLOPs per multiply-add, k = 2 of 8 experts
        per_expert = 4 * (64 + 32) * 3
        assert plain["routed_experts"].flops == 4 * 2 * 2 * per_expert


# --- memory -------------------------------------------------------------------------------------------


def test_kv_cache_by_hand():
    """GQA: K and V, 2 heads of 8 per layer = 32 values per token and layer; bf16 2 bytes, fp32 4."""
    a = analyze(plan(sets=("attention.window=16",)), seq=8, batch=3, dtype="fp32")
    assert a.memory.kv_cache_bytes_per_token == 4 * 32 * 4
    assert a.memory.kv_cache_bytes == 4 * 32 * 4 * 8 * 3  # the window (16) is longer than the context (8)
    # a window and a chunk both longer than the context: the context caps the cache
    a = analyze(plan(sets=("attention.window=16", "attention.chunk=12")), seq=8, batch=3)
    assert a.memory.kv_cache_bytes == 4 * 32 * 2 * 8 * 3
    a = analyze(plan(sets=("attention.window=16",)), seq=100, batch=3)
    assert a.memory.kv_cache_bytes == 4 * 32 * 2 * 16 * 3
    assert a.memory.dtype == "bf16" and a.memory.weights_bytes == 2 * a.params.total
    assert a.memory.weights_bytes_by_dtype == {
        k: n * a.params.total for k, n in (("fp32", 4), ("bf16", 2), ("fp16", 2), ("fp8", 1))
    }


def test_unknown_dtype_and_bad_sizes_are_value_errors():
    with pytest.raises(ValueError, match=r"^unknown dtype 'fp64'; choose from fp32, bf16, fp16, fp8$"):
        analyze(plan(), dtype="fp64")
    for seq, batch in ((0, 1), (1, 0), (-3, 2)):
        with pytest.raises(ValueError, match=r"^seq and batch must be positive$"):
            analyze(plan(), seq=seq, batch=batch)


# Activation estimate, per token: bf16 (2 bytes) tensors saved for backward plus fp32 (4 bytes) extras.
# Attention per layer: residual and normed inputs 2·64, q 8·8, k and v 2·(8 + 8), output 8·8: 288 values,
# and a logsumexp per head (8 fp32). The FFN: residual and normed inputs 2·64, then its intermediates.
# After the layers: the final norm's input (64 values) and the fp32 logits (1000).
ATTN_BYTES = 2 * 288 + 4 * 8
FFN_IN = 2 * 128
TAIL = 2 * 64 + 4 * 1000


@pytest.mark.parametrize(
    ("extra", "sets", "ffn_bytes"),
    [
        ("", (), 2 * 3 * 128),  # SwiGLU: gate, up, their product
        ("", ("ffn.activation=gelu",), 2 * 2 * 128),  # GELU: up and its activation
        # MoE, SwiGLU: fp32 router probabilities over 8 experts; per chosen expert (k = 2) the gathered
        # input (64) and the expert's 3·32 intermediates; 2 shared experts of width 16 (3·16 each)
        (MOE, ("moe.n_shared_experts=2", "moe.d_ff_shared=16"), 4 * 8 + 2 * 2 * (64 + 96) + 2 * 2 * 48),
        # the same with GELU experts: 2·32 intermediates per expert, 2·16 per shared expert
        (
            MOE,
            ("moe.n_shared_experts=2", "moe.d_ff_shared=16", "moe.activation=gelu"),
            4 * 8 + 2 * 2 * (64 + 64) + 2 * 2 * 32,
        ),
        # LoRA over a base of width 32: the base's 3·32 intermediates, and per chosen expert 3 rank-4 products
        (LORA, (), 4 * 8 + 2 * 96 + 2 * 2 * 3 * 4),
    ],
    ids=["swiglu", "gelu", "moe-shared", "moe-gelu-shared", "lora"],
)
def test_activation_estimate_by_hand(extra: str, sets: tuple[str, ...], ffn_bytes: int):
    a = analyze(plan(extra, sets=sets), seq=10, batch=3)
    per_token = 4 * (ATTN_BYTES + FFN_IN + ffn_bytes) + TAIL
    assert a.memory.activation_bytes_estimate == per_token * 10 * 3


def test_training_state_is_16_bytes_per_trainable_and_2_per_frozen_parameter():
    a = analyze(plan(MOE + "frozen: [routed_experts]\n"), seq=4, batch=2)
    frozen = 4 * 8 * EXPERT
    assert a.params.frozen == frozen
    assert a.memory.training_state_bytes == 16 * (a.params.total - frozen) + 2 * frozen


# --- what every output carries ------------------------------------------------------------------------


@pytest.mark.parametrize(("mode", "kv_len"), [("full", "S"), ("causal", "(S+1)/2 average (causal)")])
def test_conventions_carry_the_run_settings(mode: str, kv_len: str):
    a = analyze(plan(), seq=77, batch=2, attention=mode, dtype="fp8")
    c = a.conventions
    assert (c["seq"], c["attention"], c["dtype"], c["attention_kv_len"]) == (77, mode, "fp8", kv_len)
    assert (c["embedding_lookup_flops"], c["elementwise_flops"]) == (0, 0)
    assert (a.seq, a.batch, a.attention_mode, a.dtype, a.name) == (77, 2, mode, "fp8", "t")
    assert a.spec_hash and a.spec_hash == plan().spec_hash


def test_default_context_is_one_token():
    a = analyze(plan())
    assert a.seq == 1 and a.conventions["seq"] == 1
    assert a.flops.forward_attention == 4 * score_flops(1)


def test_json_dict_has_the_schema_and_every_section():
    d = analyze(plan(MOE + "mtp: {n_layers: 1}\n"), seq=3).to_dict()
    assert d["schema"] == "moec.analysis/1"
    assert {"params", "flops", "memory", "components", "layers", "moe", "mtp", "conventions"} <= set(d)
    assert d["params"]["total"] == 4 * MOE_PARAMS + EMB + HEAD + FINAL_NORM
    assert d["layers"][1]["flops_attention"] == score_flops(3)


def test_fractional_flops_are_floats_and_whole_ones_ints():
    """Causal S = 2: 1.5 keys on average, 4·256·1.5 = 1536 FLOPs, a whole number: an int. A window of 2 at
    S = 3: (1 + 2 + 2)/3 keys, 4·256·5/3 FLOPs: a float."""
    whole = analyze(plan(), seq=2, attention="causal").flops.forward_attention
    assert whole == 1536 and isinstance(whole, int)
    frac = analyze(plan(sets=("attention.window=2",)), seq=3, attention="causal").flops.forward_attention
    assert isinstance(frac, float) and frac == pytest.approx(4 * 256 * 5 / 3, rel=1e-15)


def test_the_table_header_line_names_the_run_settings():
    line = convention_line(analyze(plan(), seq=77, attention="causal", dtype="fp8").conventions)
    assert "attention causal (S_kv = (S+1)/2 average (causal), windows capped) · S=77 · " in line
    assert line.endswith(" · memory in fp8")
