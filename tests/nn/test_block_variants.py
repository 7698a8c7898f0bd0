"""The block features the hybrid releases brought (docs/mixers.md), each against a plain oracle written here:
the attention output gate, the unit-offset RMSNorm, normed_residual with its factors, and layers without a
token mixer or without an FFN."""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")

from moec.analyze.report import analyze  # noqa: E402
from moec.errors import SpecError  # noqa: E402
from moec.nn import build_model  # noqa: E402
from moec.nn.norms import RMSNorm  # noqa: E402
from moec.spec import load_spec, resolve  # noqa: E402

SPEC = """\
name: t
model: {vocab_size: 64, d_model: 16, n_layers: 2, max_seq_len: 16MODEL}
attention: {n_heads: 4, n_kv_heads: 2, head_dim: 4ATTN}
ffn: {d_ff: 24}
LAYERS
"""


def plan_of(model: str = "", attn: str = "", layers: str = ""):  # type: ignore[no-untyped-def]
    text = SPEC.replace("MODEL", model).replace("ATTN", attn).replace("LAYERS", layers)
    return resolve(load_spec("t.yaml", text=text))


def built(plan):  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    m = build_model(plan, dtype=torch.float64, seed=0)
    with torch.no_grad():
        for p in m.parameters():  # away from init: gates, offsets and biases all matter
            p.add_(0.3 * torch.randn_like(p))
    return m


def naive_attention(att, x):  # type: ignore[no-untyped-def]
    """Causal GQA with rotary positions off: softmax(q·kᵀ/√d) v per head, written out."""
    B, S, _ = x.shape
    h, kv, hd = 4, 2, 4
    q = att.q_proj(x).view(B, S, h, hd)
    k = att.k_proj(x).view(B, S, kv, hd).repeat_interleave(h // kv, dim=2)
    v = att.v_proj(x).view(B, S, kv, hd).repeat_interleave(h // kv, dim=2)
    scores = torch.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(hd)
    scores = scores.masked_fill(torch.ones(S, S, dtype=torch.bool).triu(1), float("-inf"))
    return torch.einsum("bhqk,bkhd->bqhd", scores.softmax(-1), v)  # (B, S, h, hd)


@pytest.mark.parametrize("gate", ["element", "head"])
def test_the_output_gate_scales_each_head_or_element_by_a_sigmoid_of_its_own_projection(gate):
    plan = plan_of(model=", positions: {kind: none}", attn=f", output_gate: {gate}, bias: true")
    att = built(plan).layers[0].attn
    x = torch.randn(2, 5, 16, dtype=torch.float64)
    y = naive_attention(att, x)
    g = torch.sigmoid(x @ att.gate_proj.weight.T + att.gate_proj.bias)  # (B, S, h·hd) or (B, S, h)
    gated = y * (g.view(2, 5, 4, 4) if gate == "element" else g.view(2, 5, 4, 1))
    want = gated.reshape(2, 5, 16) @ att.o_proj.weight.T
    torch.testing.assert_close(att(x), want, rtol=1e-12, atol=1e-12)
    # its parameters: the gate's projection and bias, d·h·hd + h·hd (element) or d·h + h (head)
    width = 16 if gate == "element" else 4
    plain = analyze(plan_of(model=", positions: {kind: none}", attn=", bias: true")).params.total
    assert analyze(plan).params.total - plain == 2 * (16 * width + width)


def test_a_unit_offset_rmsnorm_scales_by_one_plus_its_weight_which_starts_at_zero():
    norm = RMSNorm(6, 1e-6, unit_offset=True, dtype=torch.float64)
    assert torch.equal(norm.weight, torch.zeros(6, dtype=torch.float64))
    with torch.no_grad():
        norm.weight.copy_(torch.tensor([0.5, -0.25, 0.0, 1.0, 2.0, -1.0]))
    x = torch.randn(3, 6, dtype=torch.float64)
    rms = (x.pow(2).mean(-1, keepdim=True) + 1e-6).sqrt()
    torch.testing.assert_close(
        norm(x), x / rms * torch.tensor([1.5, 0.75, 1.0, 2.0, 3.0, 0.0]), rtol=1e-6, atol=1e-7
    )  # normed in fp32


def test_unit_offset_reaches_every_model_norm():
    model = built(plan_of(model=", norm: {unit_offset: true}", attn=", qk_norm: true"))
    norms = [m for m in model.modules() if isinstance(m, RMSNorm)]
    assert len(norms) == 2 * 4 + 1 and all(n.unit_offset for n in norms)  # per layer: 2 block + q/k norms


def test_normed_residual_carries_the_normed_input_and_scales_both_branches():
    scales = "residual_scales: {attention: {alpha: 2.0, beta: 0.5}, ffn: {alpha: 1.5, beta: 3.0}}"
    plan = plan_of(model=f", norm: {{placement: normed_residual}}, {scales}, positions: {{kind: none}}")
    block = built(plan).layers[0]
    x = torch.randn(2, 5, 16, dtype=torch.float64)
    h = block.attn_norm(x)
    x1 = 2.0 * h + 0.5 * block.attn(h)
    h1 = block.ffn_norm(x1)
    want = 1.5 * h1 + 3.0 * block.ffn(h1)
    torch.testing.assert_close(block(x)[0], want, rtol=1e-13, atol=1e-13)


def test_layers_without_a_mixer_or_an_ffn_hold_only_the_other_sublayer_and_its_norm():
    layers = "layers: {overrides: [{select: [0], mixer: none}, {select: [1], ffn: none}]}"
    plan = plan_of(model=", positions: {kind: none}", layers=layers)
    model = built(plan)
    ffn_only, mixer_only = model.layers
    assert ffn_only.attn is None and ffn_only.attn_norm is None and ffn_only.mixer is None
    assert mixer_only.ffn is None and mixer_only.ffn_norm is None
    x = torch.randn(2, 5, 16, dtype=torch.float64)
    torch.testing.assert_close(ffn_only(x)[0], x + ffn_only.ffn(ffn_only.ffn_norm(x)), rtol=0, atol=0)
    torch.testing.assert_close(mixer_only(x)[0], x + mixer_only.attn(mixer_only.attn_norm(x)), rtol=0, atol=0)
    # the analyzer counts what was built: one norm per sublayer, nothing of the missing ones
    counts = analyze(plan)
    assert counts.params.total == sum(p.numel() for p in model.parameters())
    d, F = 16, 24
    assert counts.params.total == 64 * d * 2 + d + (d + 3 * d * F) + (d + d * 4 * 4 + 2 * d * 2 * 4 + 4 * 4 * d)


def test_mla_takes_a_per_head_output_gate_in_its_full_and_its_absorbed_decode_form():
    text = """\
name: t
model: {vocab_size: 64, d_model: 16, n_layers: 1, max_seq_len: 16}
attention: {kind: mla, n_heads: 4, kv_lora_rank: 8, qk_nope_head_dim: 4, qk_rope_head_dim: 2, v_head_dim: 4,
            output_gate: head}
ffn: {d_ff: 24}
"""
    plan = resolve(load_spec("t.yaml", text=text))
    model = built(plan)
    att = model.layers[0].attn
    assert tuple(att.gate_proj.weight.shape) == (4, 16) and att.gate_proj.bias is None
    assert analyze(plan).params.total == sum(p.numel() for p in model.parameters())
    tokens = torch.randint(64, (2, 7), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        whole = model(tokens)[0]
        cache = model.new_cache(2, 7)
        steps = [model(tokens[:, :3], cache=cache, start=0)[0]]
        steps += [model(tokens[:, i : i + 1], cache=cache, start=i)[0] for i in range(3, 7)]
    torch.testing.assert_close(torch.cat(steps, dim=1), whole, rtol=1e-10, atol=1e-10)
    # the gate changes the output: with gate_proj zeroed every head is halved (σ(0) = 1/2) before o_proj,
    # which is linear and bias-free, so the layer's output halves
    x = torch.randn(1, 5, 16, dtype=torch.float64)
    rope = model.rotary(5, x.device, x.dtype)
    with torch.no_grad():
        att.gate_proj.weight.zero_()
        gated = att(x, rope)
        att.gate_proj = None
        torch.testing.assert_close(gated, 0.5 * att(x, rope), rtol=1e-12, atol=1e-12)


def test_sandwich_norms_wrap_each_sublayer_and_count_two_norms_per_sublayer():
    plan = plan_of(model=", norm: {placement: sandwich}, positions: {kind: none}")
    model = built(plan)
    block = model.layers[0]
    x = torch.randn(2, 5, 16, dtype=torch.float64)
    x1 = x + block.attn_post_norm(block.attn(block.attn_norm(x)))
    want = x1 + block.ffn_post_norm(block.ffn(block.ffn_norm(x1)))
    torch.testing.assert_close(block(x)[0], want, rtol=1e-13, atol=1e-13)
    counts = analyze(plan)
    assert counts.params.total == sum(p.numel() for p in model.parameters())
    assert next(c for c in counts.components if c.name == "norms").params == 2 * 4 * 16 + 16  # 4 per layer + final


def test_a_parallel_block_feeds_one_norm_to_attention_and_ffn_and_adds_both():
    plan = plan_of(model=", norm: {placement: parallel}, positions: {kind: none}")
    model = built(plan)
    block = model.layers[0]
    assert block.ffn_norm is None and block.attn_post_norm is None
    x = torch.randn(2, 5, 16, dtype=torch.float64)
    h = block.attn_norm(x)
    torch.testing.assert_close(block(x)[0], x + block.attn(h) + block.ffn(h), rtol=1e-13, atol=1e-13)
    counts = analyze(plan)
    assert counts.params.total == sum(p.numel() for p in model.parameters())
    assert next(c for c in counts.components if c.name == "norms").params == 2 * 16 + 16  # 1 per layer + final


def test_a_parallel_block_needs_both_sublayers():
    with pytest.raises(SpecError, match="parallel needs a token mixer and an FFN in every layer"):
        plan_of(model=", norm: {placement: parallel}", layers="layers: {overrides: [{select: [0], ffn: none}]}")


def test_layers_may_have_their_own_head_counts_and_gqa_its_own_value_width():
    # MiMo-V2-Flash's shape: q/k heads of 6, values of 4; layer 1 (its sliding layers) with twice the KV heads
    layers = "layers: {overrides: [{select: [1], attention: {n_kv_heads: 4}}]}"
    text = SPEC.replace("head_dim: 4ATTN", "head_dim: 6, v_head_dim: 4").replace(
        "16MODEL", "16, positions: {kind: none}"
    )
    plan = resolve(load_spec("t.yaml", text=text.replace("LAYERS", layers)))
    assert [(lp.attention.n_heads, lp.attention.n_kv_heads, lp.attention.v_dim) for lp in plan.layers] == [
        (4, 2, 4),
        (4, 4, 4),
    ]
    model = built(plan)
    att = model.layers[1].attn
    assert [tuple(getattr(att, p).weight.shape) for p in ("q_proj", "k_proj", "v_proj", "o_proj")] == [
        (24, 16), (24, 16), (16, 16), (16, 16),
    ]  # fmt: skip
    d = 16
    per_layer = [d * (6 * (4 + kv) + 4 * kv) + 4 * 4 * d for kv in (2, 4)]  # q, k: 6 wide; v: 4; o: h·4 → d
    norms, ffn = 2 * d, 3 * d * 24
    assert analyze(plan).params.total == 64 * d * 2 + d + sum(per_layer) + 2 * (norms + ffn)
    assert analyze(plan).params.total == sum(p.numel() for p in model.parameters())
    assert analyze(plan).memory.kv_cache_bytes_per_token == 2 * (
        2 * (6 + 4) + 4 * (6 + 4)
    )  # bf16, per layer kv·(hd+vd)
    x = torch.randn(2, 5, 16, dtype=torch.float64)
    want = naive_attention_shapes(att, x, h=4, kv=4, hd=6)
    torch.testing.assert_close(att(x), want, rtol=1e-12, atol=1e-12)
    tokens = torch.randint(64, (2, 6), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        cache = model.new_cache(2, 6)
        steps = [model(tokens[:, :2], cache=cache, start=0)[0]]
        steps += [model(tokens[:, i : i + 1], cache=cache, start=i)[0] for i in range(2, 6)]
        torch.testing.assert_close(torch.cat(steps, 1), model(tokens)[0], rtol=1e-10, atol=1e-10)


def naive_attention_shapes(att, x, *, h, kv, hd):  # type: ignore[no-untyped-def]
    B, S, _ = x.shape
    q = att.q_proj(x).view(B, S, h, hd)
    k = att.k_proj(x).view(B, S, kv, hd).repeat_interleave(h // kv, dim=2)
    v = att.v_proj(x).view(B, S, kv, -1).repeat_interleave(h // kv, dim=2)
    scores = torch.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(hd)
    scores = scores.masked_fill(torch.ones(S, S, dtype=torch.bool).triu(1), float("-inf"))
    return torch.einsum("bhqk,bkhd->bqhd", scores.softmax(-1), v).reshape(B, S, -1) @ att.o_proj.weight.T


def test_uneven_per_layer_heads_are_reported_where_they_are_written():
    layers = "layers: {overrides: [{select: [1], attention: {n_heads: 3}}]}"
    with pytest.raises(
        SpecError,
        match=r"layers\.overrides\[0\]\.attention\.n_heads: layer 1: n_heads 3 is not divisible by n_kv_heads 2$",
    ):
        plan_of(layers=layers)


MOE_SPEC = """\
name: t
model: {vocab_size: 64, d_model: 16, n_layers: 2, max_seq_len: 16, positions: {kind: none}}
attention: {n_heads: 4, n_kv_heads: 2}
ffn: {d_ff: 24}
moe: {n_experts: 4, d_ff: 8, router: {top_k: 2, score: sigmoid, selection_bias: trueROUTER}MOE}
layers: {overrides: [{select: [1], ffn: moe}]}
"""


def moe_plan(router: str = "", moe: str = ""):  # type: ignore[no-untyped-def]
    return resolve(load_spec("t.yaml", text=MOE_SPEC.replace("ROUTER", router).replace("MOE", moe)))


def test_an_moe_output_norm_follows_the_moe_block_on_moe_layers_only():
    plan = moe_plan(moe=", output_norm: true")
    model = built(plan)
    dense_layer, moe_layer = model.layers
    assert dense_layer.ffn_post_norm is None and moe_layer.ffn_post_norm is not None
    x = torch.randn(2, 5, 16, dtype=torch.float64)
    with torch.no_grad():
        h = moe_layer.attn_norm(x)
        x1 = x + moe_layer.attn(h)
        want = x1 + moe_layer.ffn_post_norm(moe_layer.ffn(moe_layer.ffn_norm(x1))[0])
        torch.testing.assert_close(moe_layer(x)[0], want, rtol=1e-13, atol=1e-13)
    counts = analyze(plan)
    assert counts.params.total == sum(p.numel() for p in model.parameters())
    assert counts.params.total - analyze(moe_plan()).params.total == 16  # one norm of d, on the one MoE layer


def test_a_selection_bias_on_the_logits_chooses_by_logits_plus_bias_and_weighs_by_the_scores():
    plan = moe_plan(router=", selection_bias_on: logits")
    router = built(plan).layers[1].ffn.router
    with torch.no_grad():
        router.expert_bias.copy_(torch.tensor([0.0, 3.0, -3.0, 0.5], dtype=torch.float64))
    x = torch.randn(6, 16, dtype=torch.float64)
    logits = x @ router.weight.T
    want_idx = (logits + router.expert_bias).topk(2, dim=-1).indices
    out = router(x)
    assert torch.equal(out.topk_idx.sort(-1).values, want_idx.sort(-1).values)
    torch.testing.assert_close(out.topk_w, torch.sigmoid(logits).gather(1, out.topk_idx), rtol=1e-12, atol=1e-12)
    # on the scores, sigmoid squashes the logits before the bias joins them: other experts win for some token
    on_scores = (torch.sigmoid(logits) + router.expert_bias).topk(2, dim=-1).indices
    assert not torch.equal(on_scores.sort(-1).values, want_idx.sort(-1).values)
