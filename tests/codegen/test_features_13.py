"""The generated model.py against the library model (moec.nn) for issue 13's block features: identical logits and
aux loss on identical weights, the same parameter names, shapes and trainable flags (tests/codegen/
test_generated_decode.py decodes every case too), and source that mentions a feature only when the plan uses it."""

from __future__ import annotations

import dataclasses
import re

import pytest
import torch

from moec.codegen import render_model_source
from moec.nn import build_model
from moec.spec.plan import MoEPlan
from tests.codegen.test_codegen import (
    assert_generated_gives_the_library_outputs,
    assert_named_only_with_the_feature,
    assert_same_aux,
    library_and_generated,
    plan_of,
    run_both,
    variant,
)
from tests.tiny_specs import TINY_DEEPSEEK_V3

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# DeepSeek-V3.2's indexer on TINY_DEEPSEEK_V3's MLA: top 4 of the keys, so 12-token calls are sparse
INDEXED = TINY_DEEPSEEK_V3.replace("v_head_dim: 8}", "v_head_dim: 8, indexer: {n_heads: 2, head_dim: 8, top_k: 4}}")

# LongCat-Flash in miniature: shortcut-MoE pair layers, MLA with latent scales, zero experts
LONGCAT = """\
moec: 1
name: tiny-longcat
model: {vocab_size: 64, d_model: 32, n_layers: 2, max_seq_len: 32, block: shortcut_moe_pair,
  norm: {kind: rmsnorm, eps: 1.0e-5}, positions: {kind: rope, theta: 10000.0}}
attention: {kind: mla, n_heads: 4, q_lora_rank: 16, kv_lora_rank: 8, qk_nope_head_dim: 8, qk_rope_head_dim: 4,
            v_head_dim: 8, latent_norm_eps: 1.0e-6, latent_scales: true}
ffn: {d_ff: 48, activation: swiglu}
moe:
  n_experts: 4
  n_zero_experts: 2
  d_ff: 16
  router: {top_k: 3, score: softmax, scale: 6.0, selection_bias: true}
  balance: {load_balance_coeff: 0.01}
layers:
  default: {ffn: moe}
"""

# MiMo-V2-Flash in miniature: windowed layers of 4 KV heads with sinks and a RoPE base of their own, full ones of 2
# KV heads without; values narrower than the queries and keys, and scaled
MIMO = """\
name: tiny-mimo
model: {vocab_size: 64, d_model: 32, n_layers: 3, max_seq_len: 32, positions: {kind: rope, partial_rotary_factor: 0.5}}
attention: {n_heads: 4, n_kv_heads: 2, head_dim: 12, v_head_dim: 8, value_scale: 0.7}
ffn: {d_ff: 48}
moe: {n_experts: 4, d_ff: 16, router: {top_k: 2, score: sigmoid, selection_bias: true, normalize_topk: true}}
layers:
  default: {ffn: moe, attention: {window: 4, n_kv_heads: 4, sinks: true, rope_theta: 1000.0}}
  overrides:
    - {select: [0], ffn: dense}
    - {select: [0, 2], attention: {window: null, n_kv_heads: 2, sinks: false, rope_theta: null}}
"""

# Llama-4 in miniature: chunked rope layers with the weightless L2 qk-norm, NoPE layers with temperature tuning,
# MoE layers whose experts read their gate times the token, a shared expert
LLAMA4 = """\
name: tiny-llama4
model: {vocab_size: 64, d_model: 32, n_layers: 4, max_seq_len: 32, positions: {kind: rope, theta: 500000.0}}
attention: {n_heads: 4, n_kv_heads: 2, qk_norm_kind: l2, temperature_tuning: {floor_scale: 2.0, scale: 0.5}}
ffn: {d_ff: 48}
moe: {n_experts: 4, d_ff: 16, n_shared_experts: 1, router: {top_k: 1, score: sigmoid, apply_to: input}}
layers:
  default: {ffn: dense, attention: {chunk: 4, qk_norm: true, temperature_tuning: false}}
  overrides:
    - {select: {every: 2, start: 1}, ffn: moe, attention: {rope: false, chunk: null, qk_norm: false,
       temperature_tuning: true}}
"""

CASES = {
    "indexer, rotary pairs in halves": INDEXED,
    # (no window: a windowed cache is a ring, where ties among the indexer's ReLU-zero scores fall to other keys)
    "indexer, interleaved, a layer without rope": INDEXED.replace(
        "top_k: 4}", "top_k: 4, rope_layout: interleaved}"
    ).replace("ffn: dense}]", "ffn: dense}, {select: [1], attention: {rope: false}}]"),
    "mixture of attention heads, moe output bias (JetMoE)": variant(
        attn="kind: moa, n_kv_heads: 2, head_dim: 8, out_bias: true, "
        "experts: {n_experts: 3, top_k: 2, softmax_after_topk: true}",
        moe=True,
        moex="output_bias: true",
        router="softmax_after_topk: true",
        balance="balance: {load_balance_coeff: 0.01}",
    ),
    "mixture of attention heads by sigmoid, windows, partial rotary": variant(
        model="positions: {kind: rope, rotary_dim: 4}",
        attn="kind: moa, n_kv_heads: 1, head_dim: 8, window: 4, "
        "experts: {n_experts: 4, top_k: 2, score: sigmoid, normalize_topk: true}",
        overrides="{select: [1], attention: {window: null, rope: false}}",
        moe=True,
    ),
    "shortcut-moe pairs, latent scales, zero experts (LongCat-Flash)": LONGCAT,
    "shortcut-moe pairs, a window and a rope base of its own": LONGCAT.replace(
        "default: {ffn: moe}",
        "default: {ffn: moe}\n  overrides: [{select: [1], attention: {window: 4, rope_theta: 500.0}}]",
    ),
    # GQA pairs: the rope tables of a pair layer are its first attention's (both are alike)
    "shortcut-moe pairs of gqa, a layer's own rotated dims": LONGCAT.replace(
        "attention: {kind: mla, n_heads: 4, q_lora_rank: 16, kv_lora_rank: 8, qk_nope_head_dim: 8, qk_rope_head_dim: 4,\n"
        "            v_head_dim: 8, latent_norm_eps: 1.0e-6, latent_scales: true}",
        "attention: {n_heads: 4, n_kv_heads: 2, head_dim: 8}",
    ).replace("default: {ffn: moe}", "default: {ffn: moe}\n  overrides: [{select: [1], attention: {rotary_dim: 4}}]"),
    # the pair block's forward takes the token ids and no rope: one line, as ruff writes it
    "shortcut-moe pairs routed by a hash of the token ids, no positions": LONGCAT.replace("  n_zero_experts: 2\n", "")
    .replace("router: {top_k: 3, score: softmax, scale: 6.0, selection_bias: true}", "router: {top_k: 2, kind: hash}")
    .replace("balance: {load_balance_coeff: 0.01}", "")
    .replace("positions: {kind: rope, theta: 10000.0}", "positions: {kind: none}"),
    "sandwich norms, mla and mtp": TINY_DEEPSEEK_V3.replace("eps: 1.0e-6}", "eps: 1.0e-6, placement: sandwich}"),
    "sandwich norms, moe and dense": variant(
        model="positions: {kind: rope}, norm: {placement: sandwich}", moe=True, overrides="{select: [0], ffn: dense}"
    ),
    "parallel sublayers, layernorm, residual multiplier": variant(
        model="positions: {kind: rope}, norm: {kind: layernorm, placement: parallel}, residual_multiplier: 0.5",
        attn="n_kv_heads: 2",
        moe=True,
    ),
    "moe output norm between dense layers, frozen norms": variant(
        moe=True, moex="output_norm: true", overrides="{select: [0], ffn: dense}", extra="frozen: [norms]\n"
    ),
    "router logit softcap": variant(
        moe=True,
        router="logit_softcap: 0.5, normalize_topk: true",
        balance="balance: {load_balance_coeff: 0.01, z_loss_coeff: 0.001}",
    ),
    "selection bias on the logits, groups, softcap": variant(
        moe=True,
        n_experts=8,
        router="score: sigmoid, selection_bias: true, selection_bias_on: logits, n_groups: 4, topk_groups: 2, "
        "logit_softcap: 2.0",
        balance="balance: {bias_update_rate: 0.01}",
    ),
    "per-layer head counts, v_head_dim, windows": variant(
        attn="n_kv_heads: 2, head_dim: 12, v_head_dim: 8, window: 4",
        moe=True,
        overrides="{select: [0, 2], attention: {window: null, n_kv_heads: 1, n_heads: 2}}",
    ),
    "softplus output gate per element, v_head_dim": variant(
        attn="n_kv_heads: 2, output_gate: element, output_gate_fn: softplus, v_head_dim: 4"
    ),
    "softplus output gate per head": variant(attn="n_kv_heads: 2, output_gate: head, output_gate_fn: softplus"),
    "layers with and without sinks, value scale (MiMo-V2-Flash)": MIMO,
    "layers of their own rotated dims and rope base (Laguna)": variant(
        model="positions: {kind: rope, rotary_dim: 4}",
        attn="n_kv_heads: 2",
        moe=True,
        overrides="{select: [1], attention: {rotary_dim: 8, window: 4}}, {select: [2], attention: {rope_theta: 500.0}}",
    ),
    "a layer's own rotated dims, yarn, a layer without rope": variant(
        model="positions: {kind: rope, scaling: {kind: yarn, factor: 4.0, original_max_seq_len: 8}}",
        attn="n_kv_heads: 2",
        moe=True,
        overrides="{select: [0], attention: {rotary_dim: 4}}, {select: [2], attention: {rope: false}}",
    ),
    # the sublayer-by-sublayer Block (hybrid_block.j2): a layer's tables looked up only where it has attention
    "a layer without its ffn, a layer's own rotated dims and window": variant(
        model="positions: {kind: rope, rotary_dim: 4}",
        attn="n_kv_heads: 2",
        extra="layers: {overrides: [{select: [1], ffn: none}, {select: [2], attention: {rotary_dim: 8, window: 4}}]}\n",
    ),
    "chunks, l2 qk-norm, temperature tuning, gated expert inputs (Llama-4)": LLAMA4,
    "l2 qk-norm and power temperature on every layer, chunks, windows": variant(
        attn="n_kv_heads: 2, qk_norm: true, qk_norm_kind: l2, chunk: 6, "
        "temperature_tuning: {floor_scale: 4.0, scale: 0.3, form: power}",
        overrides="{select: [1], attention: {window: 3, chunk: null}}",
    ),
    "longrope, sparsemixer (Phi-3.5-MoE)": variant(
        model="positions: {kind: rope, scaling: {kind: longrope, factor: 4.0, original_max_seq_len: 16, "
        "short_factor: [1.0, 1.5, 2.0, 2.5], long_factor: [2.0, 3.0, 4.0, 5.0], short_mscale: 1.0, long_mscale: 1.2}}",
        attn="n_kv_heads: 2",
        moe=True,
        router="kind: sparsemixer, sparsemixer_eps: 0.2",
        n_experts=6,
    ),
    "mla output gate per head (Ling 3)": TINY_DEEPSEEK_V3.replace(
        "v_head_dim: 8}", "v_head_dim: 8, output_gate: head}"
    ),
    "mla output gate per element, indexer": INDEXED.replace("top_k: 4}}", "top_k: 4}, output_gate: element}"),
    "depth-scaled adds, sandwich norms, a gate bias per head (Beam)": variant(
        model="positions: {kind: rope}, norm: {placement: sandwich}, depth_scaled_residual: true",
        attn="n_kv_heads: 2, output_gate: element, output_gate_bias: head, bias: true",
        moe=True,
        overrides="{select: [0], ffn: dense}",
    ),
    "depth-scaled adds after sublayers, a softplus gate without bias": variant(
        model="positions: {kind: rope}, norm: {placement: after_sublayer}, depth_scaled_residual: true",
        attn="n_kv_heads: 2, output_gate: head, output_gate_bias: none, output_gate_fn: softplus, bias: true",
        moe=True,
    ),
    "swiglu_limit dense and routed, plain shared experts (HY-V4)": variant(
        ffn="activation: swiglu_limit, activation_limit: 0.05",
        moe=True,
        moex="activation: swiglu_limit\n  activation_limit: 0.04\n  n_shared_experts: 1\n  shared_activation: swiglu",
        overrides="{select: [0], ffn: dense}",
    ),
    "swiglu_limit_after, the shared experts' own limit (Step-3.7)": variant(
        moe=True,
        moex="activation: swiglu_limit_after\n  activation_limit: 0.03\n  n_shared_experts: 1\n"
        "  shared_activation_limit: 0.06",
    ),
    "mla rotary key norm (Dots3)": TINY_DEEPSEEK_V3.replace(
        "v_head_dim: 8}", "v_head_dim: 8, rope_key_norm: true, latent_norm_eps: 1.0e-3}"
    ),
    "zero experts": variant(moe=True, moex="n_zero_experts: 3", router="selection_bias: true, scale: 2.0", top_k=3),
}


# the cases whose feature touches what a cached decode does differently (attention, its cache, positions, the block
# around it); tests/codegen/test_generated_decode.py decodes these (routing-only features decode as any MoE does)
ROUTING_ONLY = {
    "router logit softcap",
    "selection bias on the logits, groups, softcap",
    "moe output norm between dense layers, frozen norms",
    "swiglu_limit dense and routed, plain shared experts (HY-V4)",
    "swiglu_limit_after, the shared experts' own limit (Step-3.7)",
    "zero experts",
}
DECODE_CASES = {name: text for name, text in CASES.items() if name not in ROUTING_ONLY}


@pytest.mark.parametrize("case", list(CASES))
def test_generated_model_matches_the_library(case, tmp_path):
    """Eval mode: logits, aux and parameters (the helper); then train mode (the routers' training paths) and backward
    through both: every parameter's gradient is the library's, the same ones absent."""
    plan, lib, gen = assert_generated_gives_the_library_outputs(CASES[case], tmp_path)
    tokens = torch.randint(0, plan.vocab_size, (2, 12), generator=torch.Generator().manual_seed(2))
    logits, aux, out = run_both(lib, gen, tokens, train=True)
    assert torch.equal(out[0], logits)
    assert_same_aux(out[1], aux)
    (logits.square().mean() + aux.loss).backward()
    (out[0].square().mean() + out[1].loss).backward()
    lib_grads = {name: p.grad for name, p in lib.named_parameters()}
    for name, p in gen.named_parameters():
        assert (p.grad is None) == (lib_grads[name] is None), name
        if p.grad is not None:
            torch.testing.assert_close(p.grad, lib_grads[name], rtol=1e-5, atol=1e-6, msg=name)


def test_the_indexer_chooses_keys_so_a_dense_attention_would_differ(tmp_path):
    """The comparison above means something: with the indexer dropped (every key attended) the logits change."""
    plan, lib, gen, _ = library_and_generated(CASES["indexer, rotary pairs in halves"], tmp_path)
    tokens = torch.randint(0, plan.vocab_size, (2, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        sparse = gen(tokens)[0]
        for block in gen.layers:
            block.attn.indexer.top_k = 12
        assert not torch.equal(gen(tokens)[0], sparse)


# each case whose feature, left out, leaves a spec that loads the same weights: the feature changes the logits, so
# the comparison above would catch a generated file that ignored it
WITHOUT = {
    "swiglu_limit_after, the shared experts' own limit (Step-3.7)": ("\n  shared_activation_limit: 0.06", ""),
    "depth-scaled adds, sandwich norms, a gate bias per head (Beam)": (", depth_scaled_residual: true", ""),
    "layers of their own rotated dims and rope base (Laguna)": ("rotary_dim: 8, ", ""),
    "layers with and without sinks, value scale (MiMo-V2-Flash)": (", value_scale: 0.7", ""),
    "softplus output gate per head": ("output_gate_fn: softplus", "output_gate_fn: sigmoid"),
    "router logit softcap": ("logit_softcap: 0.5, ", ""),
    "selection bias on the logits, groups, softcap": ("selection_bias_on: logits, ", ""),
}


@pytest.mark.parametrize("case", list(WITHOUT))
def test_the_feature_changes_the_logits(case, tmp_path):
    plan, lib, gen, _ = library_and_generated(CASES[case], tmp_path)
    other = build_model(plan_of(CASES[case].replace(*WITHOUT[case])), device="cpu", dtype=torch.float32, seed=0)
    other.load_state_dict(lib.state_dict(), strict=True)
    tokens = torch.randint(0, plan.vocab_size, (2, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        lib.eval(), other.eval()
        assert not torch.equal(lib(tokens)[0], other(tokens)[0])


def test_longrope_past_its_trained_context_and_its_cache_refusal_match_the_library(tmp_path):
    """20 tokens: the long factors and mscale (12-token calls above stay within the trained 16); a cache past 16
    positions is refused with moec.nn's words."""
    _, lib, gen = assert_generated_gives_the_library_outputs(
        CASES["longrope, sparsemixer (Phi-3.5-MoE)"], tmp_path, seq_len=20
    )
    refusals = []
    for model in (lib, gen):
        with pytest.raises(ValueError) as caught:
            model.new_cache(2, 20)
        refusals.append(str(caught.value))
    assert refusals[0] == refusals[1] and "longrope" in refusals[0]


def test_slots_on_zero_experts_compute_nothing_and_are_not_counted_as_loads(tmp_path):
    """The zero-experts case routes some slots to them (the router scores 4 + 3 experts), so the comparison above
    covers that path: the loads reported are the 4 FFN experts' and sum to fewer than the T·k slots."""
    plan, lib, gen, _ = library_and_generated(CASES["zero experts"], tmp_path)
    tokens = torch.randint(0, plan.vocab_size, (2, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        aux = gen(tokens)[1]
    for layer in aux.layers:
        assert layer.router_logits.shape == (24, 7) and layer.tokens_per_expert.shape == (4,)
        assert 0 < int(layer.tokens_per_expert.sum()) < 24 * 3


@pytest.mark.parametrize(
    "case,words",
    [
        (
            "indexer, rotary pairs in halves",
            ["INDEXER_N_HEADS, INDEXER_HEAD_DIM, INDEXER_TOP_K = 2, 8, 4", "class Indexer", "apply_rope(x[..., :r]"],
        ),
        ("indexer, interleaved, a layer without rope", ["apply_rope_interleaved(x[..., :r]", "if rope is None"]),
        (
            "mixture of attention heads, moe output bias (JetMoE)",
            ["class MoA", "top.softmax(-1)", "+ self.out_bias", "y = y + self.output_bias"],
        ),
        (
            "shortcut-moe pairs, latent scales, zero experts (LongCat-Flash)",
            ["class PairBlock", "shortcut, aux = self.ffn(h)", "self.kv_scale = math.sqrt(d_model / kv_lora_rank)"],
        ),
        ("sandwich norms, moe and dense", ["x + self.attn_post_norm(self.attn(", "x + self.ffn_post_norm(y), aux"]),
        ("parallel sublayers, layernorm, residual multiplier", ["a = self.attn(h, rope, cache, positions)"]),
        ("moe output norm between dense layers, frozen norms", ["y = self.ffn_post_norm(y)"]),
        ("router logit softcap", ["logits = self.logit_softcap * torch.tanh(logits / self.logit_softcap)"]),
        ("selection bias on the logits, groups, softcap", ["idx = self.select(logits.detach())"]),
        (
            "per-layer head counts, v_head_dim, windows",
            [
                "LAYERS = [(None, 2, 1), (4, 4, 2), (None, 2, 1)]",
                "n_heads=n_heads, n_kv_heads=n_kv_heads",
                "head_dim=12, v_head_dim=8",
            ],
        ),
        ("softplus output gate per head", ["gate = F.softplus(g.to(torch.promote_types(g.dtype, torch.float32)))"]),
        (
            "layers with and without sinks, value scale (MiMo-V2-Flash)",
            ["v = v * self.value_scale", "if sinks is not None:", "value_scale=0.7", "sinks=sinks"],
        ),
        (
            "layers of their own rotated dims and rope base (Laguna)",
            [
                "ROPE_TABLES = ((ROPE_THETA, ROPE_DIM), (ROPE_THETA, 8), (500.0, ROPE_DIM))",
                "layer_rope = ropes[block.attn.rope_theta, block.attn.rotary_dim]",
            ],
        ),
        (
            "chunks, l2 qk-norm, temperature tuning, gated expert inputs (Llama-4)",
            [
                "def l2_norm(",
                "if self.temperature_tuning:",
                "allowed & (j // chunk == i // chunk)",
                "xs = (xt[:, None, :]",
            ],
        ),
        (
            "longrope, sparsemixer (Phi-3.5-MoE)",
            [
                "ROPE_SHORT_FACTOR = (1.0, 1.5, 2.0, 2.5)",
                "idx, w = sparsemixer(logits, self.sparsemixer_eps)",
                "sparsemixer_eps=0.2",
            ],
        ),
        ("mla output gate per head (Ling 3)", ["self.gate_proj = Linear(d_model, h, bias=False)"]),
        (
            "depth-scaled adds, sandwich norms, a gate bias per head (Beam)",
            ["def residual_add(", "block.mixer_add, block.ffn_add = 2 * i + 2, 2 * i + 3", "+ self.gate_bias[:, None]"],
        ),
        ("zero experts", ["n_experts=4 + 3", "n_zero_experts=3", "on_zero = topk_idx >= self.n_experts"]),
    ],
)
def test_the_source_names_a_feature_only_when_the_plan_uses_it(case, words):
    assert_named_only_with_the_feature(CASES[case], TINY_DEEPSEEK_V3, words)


@pytest.mark.parametrize(
    "override,feature",
    [
        ("indexer: shared", "layers.*.attention.indexer: shared"),
        ("indexer: false", "layers.*.attention.indexer: false"),
    ],
)
def test_a_layer_without_its_own_indexer_is_refused_naming_what_the_spec_wrote(override, feature):
    """A shared layer has no indexer of its own either: it must not be reported as `indexer: false`."""
    text = INDEXED.replace("ffn: dense}]", "ffn: dense}, {select: [1], attention: {" + override + "}}]")
    with pytest.raises(ValueError, match=f"codegen does not support {re.escape(feature)}"):
        render_model_source(plan_of(text))


# a value no spec can hold, pasted as text it would run code: every field issue 13 prints must be refused by
# moec.codegen.checks before it reaches the file (a number checked as one, a flag as a bool)
INJECTION = "1); import os; (1"


def _in_layers(part: str, **change):
    """The plan with ``change`` made to every layer's attention, MoE or MoE router (``part``)."""

    def changed(lp):
        if part == "attention":
            return dataclasses.replace(lp, attention=dataclasses.replace(lp.attention, **change))
        if not isinstance(lp.ffn, MoEPlan):
            return lp
        if part == "router":
            return dataclasses.replace(
                lp, ffn=dataclasses.replace(lp.ffn, router=dataclasses.replace(lp.ffn.router, **change))
            )
        return dataclasses.replace(lp, ffn=dataclasses.replace(lp.ffn, **change))

    return lambda plan: plan.replace(layers=tuple(map(changed, plan.layers)), mtp=tuple(map(changed, plan.mtp)))


@pytest.mark.parametrize(
    "case,change,field",
    [
        (
            "chunks, l2 qk-norm, temperature tuning, gated expert inputs (Llama-4)",
            _in_layers("attention", chunk=INJECTION),
            "chunk",
        ),
        (
            "chunks, l2 qk-norm, temperature tuning, gated expert inputs (Llama-4)",
            _in_layers("attention", temperature_scale=INJECTION),
            "attention.temperature_tuning.scale",
        ),
        (
            "layers of their own rotated dims and rope base (Laguna)",
            _in_layers("attention", rotary_dim=INJECTION),
            "rotary_dim",
        ),
        (
            "layers with and without sinks, value scale (MiMo-V2-Flash)",
            _in_layers("attention", value_scale=INJECTION),
            "attention.value_scale",
        ),
        (
            "layers with and without sinks, value scale (MiMo-V2-Flash)",
            _in_layers("attention", sinks="True or os"),
            "sinks",
        ),
        ("per-layer head counts, v_head_dim, windows", _in_layers("attention", n_heads=INJECTION), "n_heads"),
        (
            "per-layer head counts, v_head_dim, windows",
            _in_layers("attention", v_head_dim=INJECTION),
            "attention.v_head_dim",
        ),
        (
            "indexer, rotary pairs in halves",
            _in_layers("attention", indexer_top_k=INJECTION),
            "attention.indexer.top_k",
        ),
        (
            "mixture of attention heads, moe output bias (JetMoE)",
            _in_layers("attention", moa_n_experts=INJECTION),
            "attention.experts.n_experts",
        ),
        ("mla rotary key norm (Dots3)", _in_layers("attention", rope_key_norm=1), "attention.rope_key_norm"),
        (
            "shortcut-moe pairs, latent scales, zero experts (LongCat-Flash)",
            _in_layers("attention", latent_scales="True or os"),
            "attention.latent_scales",
        ),
        ("zero experts", _in_layers("moe", n_zero_experts=INJECTION), "moe.n_zero_experts"),
        (
            "swiglu_limit dense and routed, plain shared experts (HY-V4)",
            _in_layers("moe", activation_limit=INJECTION),
            "activation_limit",
        ),
        (
            "swiglu_limit dense and routed, plain shared experts (HY-V4)",
            _in_layers("moe", shared_activation="silu'); (os"),
            "moe.shared_activation",
        ),
        (
            "longrope, sparsemixer (Phi-3.5-MoE)",
            _in_layers("router", sparsemixer_eps=INJECTION),
            "router.sparsemixer_eps",
        ),
        ("router logit softcap", _in_layers("router", logit_softcap=INJECTION), "router.logit_softcap"),
        (
            "longrope, sparsemixer (Phi-3.5-MoE)",
            lambda p: p.replace(
                positions=dataclasses.replace(
                    p.positions, scaling=dataclasses.replace(p.positions.scaling, long_mscale=INJECTION)
                )
            ),
            "scaling.long_mscale",
        ),
        (
            "depth-scaled adds, sandwich norms, a gate bias per head (Beam)",
            lambda p: p.replace(depth_scaled_residual="True or os"),
            "model.depth_scaled_residual",
        ),
    ],
)
def test_a_value_of_the_wrong_type_is_refused_by_name_not_pasted(case, change, field):
    with pytest.raises(ValueError, match=f"^{re.escape(field)} must be"):
        render_model_source(change(plan_of(CASES[case])))
