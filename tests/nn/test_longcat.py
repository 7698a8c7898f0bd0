"""Zero-computation experts and LongCat-Flash's shortcut-MoE pair layers (model.block: shortcut_moe_pair): the MoE
against a float64 per-slot loop written from the definition (a slot on a zero expert adds w·x), the pair layer
against its equations written out by hand, a token-by-token decode against the full forward, the analyzer's
parameters and KV bytes against hand counts, and the combinations moec does not compute refused by name. The
transformers comparison is in tests/hf/families/test_longcat_flash.py."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from moec.analyze import analyze  # noqa: E402
from moec.errors import SpecError  # noqa: E402
from moec.nn import build_model  # noqa: E402
from moec.nn.moe import MoE  # noqa: E402
from moec.spec import load_spec, resolve  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")

D, F, E, Z, K, H = 16, 8, 4, 3, 3, 2
PAIR = f"""
name: pair
model: {{vocab_size: 64, d_model: {D}, n_layers: 2, max_seq_len: 32, block: shortcut_moe_pair}}
attention: {{kind: mla, n_heads: {H}, q_lora_rank: 12, kv_lora_rank: 10, qk_nope_head_dim: 4, qk_rope_head_dim: 4,
  v_head_dim: 6, latent_scales: true}}
ffn: {{d_ff: 24}}
moe:
  n_experts: {E}
  n_zero_experts: {Z}
  d_ff: {F}
  router: {{top_k: {K}, score: softmax, scale: 2.0, selection_bias: true}}
  balance: {{load_balance_coeff: 0.0}}
layers: {{default: {{ffn: moe}}}}
"""


def plan_of(text: str):  # type: ignore[no-untyped-def]
    return resolve(load_spec("pair.yaml", text=text))


def randomised(model, dtype=torch.float64):  # type: ignore[no-untyped-def]
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=dtype) * (0.3 if p.dim() == 1 else 0.4) + (p.dim() == 1))
        for name, b in model.named_buffers():
            if name.endswith("expert_bias"):
                b.copy_(torch.randn(b.shape, generator=g, dtype=b.dtype) * 0.2)
    return model.eval()


def test_zero_experts_match_a_per_slot_loop_from_the_definition():
    """Softmax over the E + Z experts, top-k by score + selection bias, weight = scale · score; an FFN expert adds
    w·down(silu(gate x)·up x), a zero expert w·x."""
    moe_plan = plan_of(PAIR).layers[0].ffn
    moe = randomised(MoE(moe_plan, D, backend="naive", dtype=torch.float64))
    x = torch.randn(40, D, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    y, _ = moe(x)

    scores = (x @ moe.router.weight.T).softmax(-1)  # (T, E + Z)
    chosen = (scores + moe.router.expert_bias).topk(K, dim=-1).indices  # (T, K)
    w_gu, w_down = moe.experts.w_gate_up, moe.experts.w_down
    want = torch.zeros_like(x)
    for t in range(x.shape[0]):
        for e in chosen[t].tolist():
            g = 2.0 * scores[t, e]
            if e >= E:
                want[t] += g * x[t]
            else:
                gate, up = (x[t] @ w_gu[e]).split(F)
                want[t] += g * ((torch.nn.functional.silu(gate) * up) @ w_down[e])
    assert (chosen >= E).any() and (chosen < E).any()  # both kinds of slot taken
    torch.testing.assert_close(y, want, rtol=1e-12, atol=1e-12)


def test_pair_layer_is_two_attention_ffn_pairs_with_the_moe_from_the_first_ffn_norm_added_last():
    model = randomised(build_model(plan_of(PAIR), device="cpu", dtype=torch.float64, seed=0))
    blk = model.layers[0]
    x = torch.randn(2, 7, D, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    rope = model.rotary(7, x.device, x.dtype)  # (7, rope_dim) ×2
    got, _ = blk(x, rope)
    a = x + blk.attn[0](blk.attn_norm[0](x), rope)
    h = blk.ffn_norm[0](a)
    b = a + blk.pair_ffn[0](h)
    c = b + blk.attn[1](blk.attn_norm[1](b), rope)
    want = c + blk.pair_ffn[1](blk.ffn_norm[1](c)) + blk.ffn(h)[0]
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_token_by_token_decode_gives_the_full_forward_and_the_cache_holds_two_attentions_per_layer():
    plan = plan_of(PAIR)
    model = randomised(build_model(plan, device="cpu", dtype=torch.float64, seed=0))
    tokens = torch.randint(64, (2, 9), generator=torch.Generator().manual_seed(4))
    full, _ = model(tokens)
    cache = model.new_cache(2, 9)
    steps = [model(tokens[:, :4], cache=cache, start=0)[0]]
    steps += [model(tokens[:, i : i + 1], cache=cache, start=i)[0] for i in range(4, 9)]
    torch.testing.assert_close(torch.cat(steps, 1), full, rtol=1e-10, atol=1e-10)
    # MLA keeps [latent | rope key] per token: (10 + 4) values, two attentions per layer, two layers
    assert cache.nbytes() == 2 * 9 * 2 * 2 * (10 + 4) * 8
    assert analyze(plan, dtype="fp32").memory.kv_cache_bytes_per_token == 2 * 2 * (10 + 4) * 4


def test_analyzer_counts_a_pair_layer_by_hand():
    """Per layer: two MLAs, two dense SwiGLU FFNs, four norms of d, a router over E + Z, E FFN experts; the zero
    experts have no weights; active counts all k slots as FFN experts (the upper bound)."""
    a = analyze(plan_of(PAIR))
    mla = D * 12 + 12 + 12 * H * 8 + D * (10 + 4) + 10 + 10 * H * (4 + 6) + H * 6 * D
    dense, expert = 3 * D * 24, 3 * D * F
    layer = 2 * mla + 2 * dense + 4 * D + D * (E + Z) + E * expert
    edges = 64 * D + D + D * 64
    assert a.params.total == 2 * layer + edges
    assert a.params.active == a.params.total - 2 * (E - K) * expert
    model = build_model(plan_of(PAIR), device="meta")
    assert sum(p.numel() for p in model.parameters()) == a.params.total
    assert {c.name: (c.trainable, c.frozen) for c in a.components if c.params} == model.param_counts()


def test_latent_scales_equal_the_same_factors_folded_into_q_b_proj_and_the_kv_latent_norm():
    """attention.latent_scales (LongCat-Flash): q · sqrt(d/q_lora_rank) and the normed kv latent · sqrt(d/kv_lora_rank)
    are what an unscaled MLA computes with q_b_proj and kv_a_layernorm's weight multiplied by those factors, in the
    full forward and in the absorbed decode alike."""
    from moec.nn.block import make_attention

    scaled_plan = plan_of(PAIR)
    plain_plan = plan_of(PAIR.replace(", latent_scales: true", ""))
    scaled = randomised(make_attention(scaled_plan.layers[0], scaled_plan, dtype=torch.float64))
    plain = make_attention(plain_plan.layers[0], plain_plan, dtype=torch.float64)
    plain.load_state_dict(scaled.state_dict())
    x = torch.randn(2, 5, D, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    model = build_model(scaled_plan, device="meta")
    rope = tuple(t.to(torch.float64) for t in model.rotary(5, torch.device("cpu"), torch.float64))
    assert not torch.allclose(scaled(x, rope), plain(x, rope))  # the same weights unscaled differ
    with torch.no_grad():
        plain.q_b_proj.weight.mul_((D / 12) ** 0.5)
        plain.kv_a_layernorm.weight.mul_((D / 10) ** 0.5)
    want = plain(x, rope)
    torch.testing.assert_close(scaled(x, rope), want, rtol=1e-12, atol=1e-12)
    # the absorbed decode, one token at a time: the cache holds the scaled latent and the queries are scaled
    cache = scaled.new_cache(2, 5, device=torch.device("cpu"), dtype=torch.float64)
    with torch.no_grad():
        steps = [scaled(x[:, t : t + 1], tuple(r[t : t + 1] for r in rope), cache, torch.tensor([t])) for t in range(5)]
    torch.testing.assert_close(torch.cat(steps, dim=1), want, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize(
    "change,named",
    [
        ("  capacity_factor: 1.0\n", "capacity_factor"),
        ("  granularity: 2\n", "granularity"),
    ],
)
def test_zero_experts_with_what_moec_does_not_compute_are_refused_by_name(change, named):
    text = PAIR.replace("  n_zero_experts:", change + "  n_zero_experts:")
    with pytest.raises(SpecError) as e:
        plan_of(text)
    assert any(p.path == "moe.n_zero_experts" and named in p.message for p in e.value.problems)


@pytest.mark.parametrize(
    "change,path",
    [
        (("ffn: {d_ff: 24}\n", ""), "model.block"),
        (
            ("layers: {default: {ffn: moe}}", "layers: {default: {ffn: moe}, overrides: [{select: [0], ffn: dense}]}"),
            "layers.overrides[0]",
        ),
        (("block: shortcut_moe_pair}", "block: shortcut_moe_pair, norm: {placement: post}}"), "model.norm.placement"),
    ],
)
def test_a_pair_block_that_is_not_every_layer_alike_is_refused_located(change, path):
    with pytest.raises(SpecError) as e:
        plan_of(PAIR.replace(*change))
    assert path in [p.path for p in e.value.problems]
