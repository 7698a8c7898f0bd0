"""The sparse-attention indexer in MLA (moec/nn/indexer.py): against a naive oracle that builds the attention mask
from the indexer's scores by hand, against dense MLA where no query sees more than top_k keys, and its cached
decode against the full forward."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from moec.analyze import analyze
from moec.analyze.counts import attention_part
from moec.nn import build_model
from moec.nn.mla import MLA
from moec.nn.rope import RotaryEmbedding
from moec.smoke.scale import fit
from moec.spec import load_model
from moec.spec.plan import AttentionPlan, NormPlan, PositionsPlan
from tests.nn._decode import decoded, prefill_then_ones

pytestmark = pytest.mark.usefixtures("one_torch_thread")

RMS = NormPlan("rmsnorm", 1e-6, "pre")
ROPE = PositionsPlan("rope", 10000.0, None)
D, S = 32, 10
NOPE, R, V, Q_R, KV_R, H = 8, 4, 6, 16, 8, 4


def plan(*, top_k=3, layout="halves", window=None, heads=4, index_dim=8, rope_key_norm=False, dims="first"):
    return AttentionPlan(
        "mla", H, H, NOPE + R, False, False, False, False, window, True,
        q_lora_rank=Q_R, kv_lora_rank=KV_R, qk_nope_head_dim=NOPE, qk_rope_head_dim=R, v_head_dim=V,
        indexer_n_heads=heads, indexer_head_dim=index_dim, indexer_top_k=top_k, indexer_rope_layout=layout,
        rope_key_norm=rope_key_norm, indexer_rope_dims=dims,
    )  # fmt: skip


def randomized(mod: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in mod.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (0.4 if p.dim() > 1 else 1.0))
    return mod


def rotate(x: torch.Tensor, *, interleaved: bool) -> torch.Tensor:
    """x (..., S, R) rotated by position·θ_j as complex numbers, θ_j = 10000^(−2j/R); output in the half layout."""
    half = x.shape[-1] // 2
    re, im = (x[..., 0::2], x[..., 1::2]) if interleaved else (x[..., :half], x[..., half:])
    theta = torch.tensor([10000.0 ** (-2 * j / x.shape[-1]) for j in range(half)], dtype=torch.float64)
    angle = torch.arange(x.shape[-2], dtype=torch.float64)[:, None] * theta[None, :]
    z = torch.complex(re.double(), im.double()) * torch.polar(torch.ones_like(angle), angle)
    return torch.cat((z.real, z.imag), dim=-1).to(x.dtype)


def rms(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + RMS.eps) * w


def oracle(mod: MLA, x: torch.Tensor, p: AttentionPlan, chooser: tuple[MLA, torch.Tensor, AttentionPlan] | None = None):
    """MLA written out (one batch row, one head, one query at a time), the keys each query attends picked by sorting
    the indexer's scores by hand: I(t, s) = Σ_j w_j·ReLU(q_j·k_s/√d_I), w = weights_proj(x)/√H_I. With
    rope_key_norm (Dots3) the rotary key is RMS-normed before its rotation; with query_gate (A.X-K2) the queries and
    a sigmoid gate of the values come from one projection of the normed and the raw query latent. ``chooser``: the
    layer, input and plan whose indexer chooses the keys (a layer sharing an earlier one's choice, GLM-5.2)."""
    B, n = x.shape[0], x.shape[1]
    raw = x @ mod.q_a_proj.weight.T
    c_q = rms(raw, mod.q_a_layernorm.weight)  # (B, n, Q_R)
    gate = torch.ones(B, n, H, V)
    if p.query_gate:  # A.X-K2: per head [query | a gate per value element] from [norm(c) | c]
        qg = (torch.cat((c_q, raw), -1) @ mod.q_gate_proj.weight.T).view(B, n, H, NOPE + R + V)
        q, gate = qg[..., : NOPE + R].transpose(1, 2), torch.sigmoid(qg[..., NOPE + R :])
    else:
        q = (c_q @ mod.q_b_proj.weight.T).view(B, n, H, NOPE + R).transpose(1, 2)  # (B, H, n, NOPE+R)
    q = torch.cat((q[..., :NOPE], rotate(q[..., NOPE:], interleaved=True)), -1)
    kv_a = x @ mod.kv_a_proj_with_mqa.weight.T
    k_r = rms(kv_a[..., KV_R:], mod.k_rope_only_layernorm.weight) if p.rope_key_norm else kv_a[..., KV_R:]
    latent, k_rot = rms(kv_a[..., :KV_R], mod.kv_a_layernorm.weight), rotate(k_r, interleaved=True)
    kv = (latent @ mod.kv_b_proj.weight.T).view(B, n, H, NOPE + V).transpose(1, 2)  # (B, H, n, NOPE+V)
    k = torch.cat((kv[..., :NOPE], k_rot[:, None].expand(B, H, n, R)), -1)
    v = kv[..., NOPE:]
    # the indexer: of this layer, or of the one whose choice it shares
    src, x_ix, p_ix = chooser or (mod, x, p)
    ix, c_q = src.indexer, rms(x_ix @ src.q_a_proj.weight.T, src.q_a_layernorm.weight)
    H_I, d_I, interleaved = p_ix.indexer_n_heads, p_ix.indexer_head_dim, p_ix.indexer_rope_layout == "interleaved"
    iq = (c_q @ ix.wq_b.weight.T).view(B, n, H_I, d_I).transpose(1, 2)  # (B, H_I, n, d_I)
    if p_ix.indexer_rope_dims == "last":  # HY-V4: the last R dims rotate
        iq = torch.cat((iq[..., : d_I - R], rotate(iq[..., d_I - R :], interleaved=interleaved)), -1)
    else:
        iq = torch.cat((rotate(iq[..., :R], interleaved=interleaved), iq[..., R:]), -1)
    ik = x_ix @ ix.wk.weight.T  # (B, n, d_I)
    ik = (ik - ik.mean(-1, keepdim=True)) / torch.sqrt(ik.var(-1, unbiased=False, keepdim=True) + 1e-6)
    ik = ik * ix.k_norm.weight + ix.k_norm.bias
    if p_ix.indexer_rope_dims == "last":
        ik = torch.cat((ik[..., : d_I - R], rotate(ik[..., d_I - R :], interleaved=interleaved)), -1)
    else:
        ik = torch.cat((rotate(ik[..., :R], interleaved=interleaved), ik[..., R:]), -1)
    w = (x_ix @ ix.weights_proj.weight.T) / math.sqrt(H_I)  # (B, n, H_I)
    out = torch.zeros(B, n, H, V)
    for b in range(B):
        for t in range(n):
            visible = [s for s in range(t + 1) if p.window is None or s > t - p.window]
            score = {
                s: sum(w[b, t, j] * torch.relu(iq[b, j, t] @ ik[b, s] / math.sqrt(d_I)) for j in range(H_I))
                for s in visible
            }
            ranked = sorted(visible, key=lambda s: -score[s])
            if len(ranked) > p.indexer_top_k:  # the choice must not hang on a tie
                assert score[ranked[p.indexer_top_k - 1]] > score[ranked[p.indexer_top_k]]
            keys = ranked[: p.indexer_top_k]
            for h in range(H):
                logits = torch.stack([q[b, h, t] @ k[b, h, s] for s in keys]) / math.sqrt(NOPE + R)
                out[b, t, h] = logits.softmax(-1) @ v[b, h, keys]
    return (out * gate).reshape(B, n, H * V) @ mod.o_proj.weight.T


def rope_tables(n: int):
    return RotaryEmbedding(ROPE, R, 64)(n, torch.device("cpu"), torch.float32)


CASES = {
    "halves (DeepSeek-V3.2)": plan(),
    "interleaved (GLM-5)": plan(layout="interleaved"),
    "window and top_k": plan(top_k=3, window=5),
    "top_k 1, d_I = the rotary width": plan(top_k=1, heads=8, index_dim=4),
    "interleaved, rotary key normed (Dots3)": plan(layout="interleaved", rope_key_norm=True),
    "halves, the last dims rotating (HY-V4)": plan(dims="last"),
    "a fused query and value gate (A.X-K2)": dataclasses.replace(plan(), query_gate=True),
}


@pytest.mark.parametrize("p", CASES.values(), ids=CASES.keys())
def test_mla_attends_the_top_k_keys_the_indexer_scores_best(p):
    mod = randomized(MLA(p, D, norm=RMS, positions=ROPE))
    x = torch.randn(2, S, D, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(mod(x, rope_tables(S)), oracle(mod, x, p), atol=2e-5, rtol=1e-5)


def test_with_at_most_top_k_keys_the_output_is_dense_mla_exactly():
    sparse = randomized(MLA(plan(top_k=S), D, norm=RMS, positions=ROPE))
    dense = MLA(dataclasses.replace(plan(), indexer_n_heads=None), D, norm=RMS, positions=ROPE)
    dense.load_state_dict({k: v for k, v in sparse.state_dict().items() if not k.startswith("indexer.")})
    x = torch.randn(2, S, D, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert torch.equal(sparse(x, rope_tables(S)), dense(x, rope_tables(S)))
        sparse.indexer.top_k = 3  # and fewer keys than it sees changes it: the choice is real
        assert not torch.allclose(sparse(x, rope_tables(S)), dense(x, rope_tables(S)), atol=1e-3)


def test_parameter_count_equals_the_analyzer():
    p = plan()
    mod = MLA(p, D, norm=RMS, positions=ROPE, device="meta")
    assert sum(t.numel() for t in mod.parameters()) == attention_part(p, D, 1).params
    # by hand: wq_b 16·4·8, wk 32·8, k_norm 2·8, weights_proj 32·4
    bare = MLA(dataclasses.replace(p, indexer_n_heads=None), D, norm=RMS, positions=ROPE, device="meta")
    extra = sum(t.numel() for t in mod.parameters()) - sum(t.numel() for t in bare.parameters())
    assert extra == 16 * 4 * 8 + 32 * 8 + 2 * 8 + 32 * 4


def test_the_rotary_key_norm_adds_its_width_and_changes_the_output():
    """attention.rope_key_norm (Dots3): one weight of qk_rope_head_dim (R = 4), counted by the analyzer; the norm is
    not a no-op on the same weights (the oracle above checks what it computes)."""
    normed_plan = plan(rope_key_norm=True)
    normed = randomized(MLA(normed_plan, D, norm=RMS, positions=ROPE))
    assert sum(t.numel() for t in normed.parameters()) == attention_part(normed_plan, D, 1).params
    assert attention_part(normed_plan, D, 1).params - attention_part(plan(), D, 1).params == R
    plain = MLA(plan(), D, norm=RMS, positions=ROPE)
    plain.load_state_dict({k: v for k, v in normed.state_dict().items() if "k_rope_only" not in k})
    x = torch.randn(2, S, D, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        assert not torch.allclose(normed(x, rope_tables(S)), plain(x, rope_tables(S)), atol=1e-3)


# --- the whole model: DeepSeek-V3's tiny copy with an indexer, decoded through the cache -------------------------

SEQ, BATCH = 12, 2


def indexed_tiny(top_k: int, window: int | None = None):  # type: ignore[no-untyped-def]
    """16 indexer heads: a key's score is exactly 0 when every head's ReLU is (2^-16 here), and two such keys at
    the top-k boundary would make the choice a tie that the full forward and the decode may break differently."""
    base = fit(load_model("specs/deepseek-v3.yaml"), scale="tiny", budget_bytes=None, batch=BATCH, seq=SEQ).plan
    extra = {"indexer_n_heads": 16, "indexer_head_dim": 8, "indexer_top_k": top_k, "window": window}
    layers = tuple(dataclasses.replace(lp, attention=dataclasses.replace(lp.attention, **extra)) for lp in base.layers)
    return base.replace(layers=layers, mtp=())


def model_of(plan):  # type: ignore[no-untyped-def]
    model = build_model(plan, device="cpu", dtype=torch.float32, seed=0)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            fan_in = p.shape[-1] if p.dim() == 2 else (p.shape[1] if p.dim() == 3 else 1)
            noise = torch.randn(p.shape, generator=g)
            p.copy_(noise * 0.3 + 1.0 if p.dim() == 1 else noise / fan_in**0.5)
    return model.eval()


PREFILL_THEN_ONES = prefill_then_ones(5, SEQ)  # a 5-token prompt, then one token a step


@pytest.mark.parametrize("window", [None, 6])
@pytest.mark.parametrize("steps", [PREFILL_THEN_ONES, [3, 2, 3, 1, 3]], ids=["5+1s", "mixed"])
def test_cached_decode_gives_the_full_forward_logits(steps, window):
    torch.manual_seed(0)
    plan = indexed_tiny(top_k=3, window=window)
    model = model_of(plan)
    tokens = torch.randint(plan.vocab_size, (BATCH, SEQ), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        full = model(tokens)[0]
    torch.testing.assert_close(decoded(model, tokens, steps), full, atol=1e-5, rtol=0)
    with torch.no_grad():  # the indexer matters here: all the keys give other logits
        dense = model_of(indexed_tiny(top_k=SEQ, window=window))
        assert not torch.allclose(dense(tokens)[0], full, atol=1e-3)


def test_the_cache_holds_what_the_analyzer_counts():
    """MLA's entry per token and layer: kv_lora_rank + qk_rope_head_dim, and the indexer's key of d_I."""
    plan = indexed_tiny(top_k=3)
    cache = build_model(plan, device="meta").new_cache(3, SEQ, device="cpu")
    a = plan.layers[0].attention
    assert cache.nbytes() == 3 * SEQ * len(plan.layers) * 4 * (a.kv_lora_rank + a.qk_rope_head_dim + 8)
    assert cache.nbytes() == analyze(plan, seq=SEQ, batch=3, dtype="fp32").memory.kv_cache_bytes


def test_training_reaches_the_attention_and_not_the_indexers_discrete_choice():
    mod = randomized(MLA(plan(), D, norm=RMS, positions=ROPE))
    x = torch.randn(2, S, D, generator=torch.Generator().manual_seed(3))
    mod(x, rope_tables(S)).square().sum().backward()
    assert mod.q_b_proj.weight.grad is not None and mod.q_b_proj.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in mod.indexer.parameters())


@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::torch.jit.TracerWarning")
def test_torch_jit_traces_the_sparse_path():
    """fvcore (analyze --verify) counts FLOPs through a torch.jit trace, which the top-k scatter must survive."""
    mod = randomized(MLA(plan(), D, norm=RMS, positions=ROPE)).eval()
    x = torch.randn(1, S, D, generator=torch.Generator().manual_seed(4))
    cos, sin = rope_tables(S)

    class Call(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.mla = mod

        def forward(self, x, cos, sin):
            return self.mla(x, (cos, sin))

    with torch.no_grad():
        traced = torch.jit.trace(Call(), (x, cos, sin), check_trace=False)
        torch.testing.assert_close(traced(x, cos, sin), mod(x, (cos, sin)), atol=0, rtol=0)


RKN = """
name: rkn
model: {vocab_size: 64, d_model: 32, n_layers: 2, max_seq_len: 32}
attention: {kind: mla, n_heads: 4, q_lora_rank: 16, kv_lora_rank: 8, qk_nope_head_dim: 8, qk_rope_head_dim: 4,
  v_head_dim: 6, rope_key_norm: true}
ffn: {d_ff: 24}
"""


def test_a_spec_with_the_rotary_key_norm_builds_what_the_analyzer_counts():
    from moec.spec import load_spec, resolve

    plan = resolve(load_spec("rkn.yaml", text=RKN))
    assert all(lp.attention.rope_key_norm for lp in plan.layers)
    model = build_model(plan, device="meta")
    assert sum(t.numel() for t in model.parameters()) == analyze(plan).params.total


@pytest.mark.parametrize(
    "change,message",
    [
        (("kind: mla, n_heads: 4, q_lora_rank: 16, kv_lora_rank: 8, qk_nope_head_dim: 8, qk_rope_head_dim: 4,\n"
          "  v_head_dim: 6,", "n_heads: 4,"), "only meaningful with attention.kind: mla"),
        (("qk_rope_head_dim: 4", "qk_rope_head_dim: 0"), "needs a rotary key to norm"),
    ],
)  # fmt: skip
def test_the_rotary_key_norm_is_refused_where_there_is_no_mla_rotary_key(change, message):
    from moec.errors import SpecError
    from moec.spec import load_spec

    with pytest.raises(SpecError) as e:
        load_spec("rkn.yaml", text=RKN.replace(*change))
    assert any(p.path == "attention.rope_key_norm" and message in p.message for p in e.value.problems)


@pytest.mark.parametrize(
    "where,path",
    [
        ("  v_head_dim: 6, window: 6,", "attention.window"),
        ("  v_head_dim: 6,", "layers.overrides[0].attention.window"),
    ],
)
def test_a_sliding_window_beside_the_indexer_is_refused_where_it_is_written(where, path):
    """A windowed decode ranks its ring of cache slots, whose order is not the keys': the indexer's tied scores
    would fall to other keys than in the full forward."""
    from moec.errors import SpecError
    from moec.spec import load_spec

    text = RKN.replace("  v_head_dim: 6,", where).replace(
        "rope_key_norm: true}", "indexer: {n_heads: 2, head_dim: 8, top_k: 4}}"
    )
    if "overrides" in path:
        text += "layers: {overrides: [{select: [1], attention: {window: 6}}]}\n"
    load_spec("ok.yaml", text=RKN.replace("rope_key_norm: true}", "indexer: {n_heads: 2, head_dim: 8, top_k: 4}}"))
    with pytest.raises(SpecError) as e:
        load_spec("rkn.yaml", text=text)
    assert [p.path for p in e.value.problems] == [path]
    assert "not with attention.indexer" in e.value.problems[0].message


def test_which_dims_rotate_changes_no_count_and_needs_rotary_positions():
    """attention.indexer.rope_dims (HY-V4: last): planned, 0 parameters and 0 FLOPs more; without rope, refused."""
    from moec.errors import SpecError
    from moec.spec import load_spec, resolve

    indexed = RKN.replace("rope_key_norm: true}", "indexer: {n_heads: 2, head_dim: 8, top_k: 4}}")
    last = indexed.replace("top_k: 4}", "top_k: 4, rope_dims: last}")
    first_plan, last_plan = (resolve(load_spec("x.yaml", text=t)) for t in (indexed, last))
    assert {lp.attention.indexer_rope_dims for lp in last_plan.layers} == {"last"}
    a, b = analyze(first_plan, seq=64), analyze(last_plan, seq=64)
    assert (a.params.total, a.flops.forward) == (b.params.total, b.flops.forward)
    with pytest.raises(SpecError) as e:
        load_spec("x.yaml", text=last.replace("max_seq_len: 32}", "max_seq_len: 32, positions: {kind: none}}"))
    assert "attention.indexer.rope_dims" in [p.path for p in e.value.problems]


# --- a layer of its own MLA geometry and without the indexer (Dots3's sliding layers) ------------------------------

MIXED = (
    RKN.replace("n_layers: 2", "n_layers: 3").replace(
        "rope_key_norm: true}", "indexer: {n_heads: 16, head_dim: 8, top_k: 3}}"
    )
    + "layers: {overrides: [{select: [1], attention: {n_heads: 2, kv_lora_rank: 12, qk_nope_head_dim: 6, v_head_dim: 4,"
    + " indexer: false, window: 5, rope_theta: 50000.0}}]}\n"
)


def test_a_layer_of_its_own_geometry_without_the_indexer_builds_what_the_analyzer_counts():
    from moec.spec import load_spec, resolve

    plan = resolve(load_spec("mixed.yaml", text=MIXED))
    a0, a1 = plan.layers[0].attention, plan.layers[1].attention
    assert (a0.has_indexer, a0.kv_lora_rank, a0.n_heads, a0.window) == (True, 8, 4, None)
    assert (a1.has_indexer, a1.kv_lora_rank, a1.qk_nope_head_dim, a1.v_head_dim, a1.n_heads) == (False, 12, 6, 4, 2)
    assert a1.head_dim == 6 + 4 and a1.n_kv_heads == 2 and a1.window == 5
    model = build_model(plan, device="meta")
    assert sum(t.numel() for t in model.parameters()) == analyze(plan).params.total
    # by hand, layer 1's MLA: q_a 32·16 + q_a norm 16 + q_b 16·2·10 + kv_a 32·(12+4) + kv_a norm 12 + kv_b 12·2·(6+4)
    # + o 2·4·32, and no indexer
    assert sum(t.numel() for t in model.layers[1].attn.parameters()) == 512 + 16 + 320 + 512 + 12 + 240 + 256
    cache = model.new_cache(1, 16, device="cpu")  # layer 1: its window of 5 tokens' latent 12 + rope 4; the others
    assert cache.nbytes() == 4 * (5 * (12 + 4) + 2 * 16 * (8 + 4 + 8))  # 16 tokens' latent 8 + rope 4 + d_I 8
    assert cache.nbytes() == analyze(plan, seq=16, batch=1, dtype="fp32").memory.kv_cache_bytes


def test_a_layer_of_its_own_geometry_decodes_to_the_full_forward_logits():
    from moec.spec import load_spec, resolve

    plan = resolve(load_spec("mixed.yaml", text=MIXED))
    model = model_of(plan)
    tokens = torch.randint(plan.vocab_size, (BATCH, SEQ), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        full = model(tokens)[0]
    torch.testing.assert_close(decoded(model, tokens, PREFILL_THEN_ONES), full, atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    "text,path,why",
    [
        (RKN.replace("kind: mla, n_heads: 4, q_lora_rank: 16, kv_lora_rank: 8, qk_nope_head_dim: 8, qk_rope_head_dim: 4,\n"
                     "  v_head_dim: 6, rope_key_norm: true}", "n_heads: 4}")
         + "layers: {overrides: [{select: [1], attention: {kv_lora_rank: 12}}]}\n",
         "layers.overrides[0].attention.kv_lora_rank", "only meaningful with attention.kind: mla"),
        (RKN + "layers: {overrides: [{select: [1], attention: {indexer: false}}]}\n",
         "layers.overrides[0].attention.indexer", "it turns the indexer off"),
        (RKN + "layers: {overrides: [{select: [1], attention: {indexer: shared}}]}\n",
         "layers.overrides[0].attention.indexer", "it shares an earlier layer's indexer choice"),
    ],
)  # fmt: skip
def test_per_layer_mla_geometry_and_indexer_are_refused_where_they_mean_nothing(text, path, why):
    from moec.errors import SpecError
    from moec.spec import load_spec

    with pytest.raises(SpecError) as e:
        load_spec("x.yaml", text=text)
    assert any(p.path == path and why in p.message for p in e.value.problems)


def test_the_query_gate_takes_its_sigmoid_in_float32_at_least():
    """The gate's sigmoid in float32 at least, the product cast back: a bfloat16 model's gated outputs are the
    float32 product rounded once (not bfloat16 arithmetic throughout), and a float64 model's stay float64."""
    from moec.nn.attention import sigmoid_gated

    y, g = (torch.randn(2, 4, 3, 6, generator=torch.Generator().manual_seed(s), dtype=torch.float64) for s in (1, 2))
    wide = sigmoid_gated(y, g)
    assert wide.dtype == torch.float64
    torch.testing.assert_close(wide, y / (1 + torch.exp(-g)), rtol=1e-14, atol=1e-15)  # not float32's ~1e-7
    y16, g16 = y.bfloat16(), g.bfloat16()
    got = sigmoid_gated(y16, g16)
    assert got.dtype == torch.bfloat16
    assert torch.equal(got, (y16.float() * torch.sigmoid(g16.float())).bfloat16())
    assert not torch.equal(got, y16 * torch.sigmoid(g16))  # bfloat16 throughout rounds twice: another result


def test_the_query_gate_counts_its_fused_projection():
    """attention.query_gate (A.X-K2): q_gate_proj (2·q_lora_rank → h·(qk + v)) instead of q_b_proj, no other
    parameter; the analyzer's count is the module's, and by hand the difference is 2·16·4·(12 + 6) − 16·4·12."""
    gated_plan = dataclasses.replace(plan(), query_gate=True)
    mod = MLA(gated_plan, D, norm=RMS, positions=ROPE, device="meta")
    assert mod.q_gate_proj.weight.shape == (H * (NOPE + R + V), 2 * Q_R) and mod.q_b_proj is None
    assert sum(t.numel() for t in mod.parameters()) == attention_part(gated_plan, D, 1).params
    assert (
        attention_part(gated_plan, D, 1).params - attention_part(plan(), D, 1).params == 2 * 16 * 4 * 18 - 16 * 4 * 12
    )


# --- layers that attend an earlier layer's choice (GLM-5.2's IndexShare, HY-V4) ----------------------------------


def test_a_shared_layer_attends_the_keys_the_last_indexer_chose():
    """Its own MLA over the keys the source layer's indexer chose from the source's input."""
    from moec.nn.indexer import share_indexer_choices

    source = randomized(MLA(plan(), D, norm=RMS, positions=ROPE), seed=1)
    shared_plan = dataclasses.replace(plan(), indexer_n_heads=None, indexer_shared=True)
    shared = randomized(MLA(shared_plan, D, norm=RMS, positions=ROPE), seed=2)
    assert shared.indexer is None and shared_plan.sparse
    share_indexer_choices([source, None, shared])
    x0, x1 = (torch.randn(2, S, D, generator=torch.Generator().manual_seed(s)) for s in (7, 8))
    with torch.no_grad():
        source(x0, rope_tables(S))
        got = shared(x1, rope_tables(S))
        want = oracle(shared, x1, shared_plan, chooser=(source, x0, plan()))
    torch.testing.assert_close(got, want, atol=2e-5, rtol=1e-5)


SHARED = MIXED.replace(
    " indexer: false, window: 5, rope_theta: 50000.0}}",
    " indexer: shared}}, {select: [2], attention: {indexer: false}}",
)


def test_a_shared_layer_has_no_indexer_and_decodes_to_the_full_forward_logits():
    from moec.spec import load_spec, resolve

    plan = resolve(load_spec("shared.yaml", text=SHARED))
    a = [lp.attention for lp in plan.layers]
    assert [(x.has_indexer, x.indexer_shared, x.sparse) for x in a] == [
        (True, False, True), (False, True, True), (False, False, False)
    ]  # fmt: skip
    model = model_of(plan)
    assert sum(t.numel() for t in model.parameters()) == analyze(plan).params.total
    assert model.layers[1].attn.indexer is None and model.layers[1].attn.choice_of == [model.layers[0].attn]
    tokens = torch.randint(plan.vocab_size, (BATCH, SEQ), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        full = model(tokens)[0]
        torch.testing.assert_close(decoded(model, tokens, PREFILL_THEN_ONES), full, atol=1e-5, rtol=0)
        dense = model_of(resolve(load_spec("x.yaml", text=SHARED.replace("indexer: shared", "indexer: false"))))
        assert not torch.allclose(dense(tokens)[0], full, atol=1e-3)  # the shared choice matters


def test_only_a_layer_whose_choice_is_shared_keeps_it_past_its_call():
    """A layer's (B, 1, S, S) choice outlives the call only where a later layer attends it: in GLM-5.2's pattern the
    source keeps it (the shared layer reads it), a layer whose choice nobody reads (here layer 0 of an indexed model
    without shared layers) drops it, and a shared layer never holds a copy."""
    from moec.spec import load_spec, resolve

    tokens = torch.randint(64, (BATCH, SEQ), generator=torch.Generator().manual_seed(1))
    alone = model_of(resolve(load_spec("alone.yaml", text=SHARED.replace("indexer: shared", "indexer: false"))))
    shared = model_of(resolve(load_spec("shared.yaml", text=SHARED)))
    with torch.no_grad():
        alone(tokens), shared(tokens)
    assert SEQ > shared.layers[0].attn.indexer.top_k  # the sparse path ran
    assert [m.layers[i].attn.chosen is None for m in (alone, shared) for i in range(3)] == [
        True, True, True, False, True, True
    ]  # fmt: skip
    assert shared.layers[0].attn.chosen.shape == (BATCH, 1, SEQ, SEQ)


def test_a_shared_layer_needs_an_earlier_indexer():
    from moec.errors import SpecError
    from moec.spec import load_spec

    with pytest.raises(SpecError, match="no layer before it runs one"):
        load_spec("x.yaml", text=SHARED.replace("select: [1]", "select: [0]"))
