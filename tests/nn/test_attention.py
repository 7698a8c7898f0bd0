"""Attention, RoPE and norms against independent references: a hand-written eager attention (explicit
softmax(QKᵀ/√d + mask)·V with repeated KV heads), rotations as complex multiplication, transformers'
RoPE frequency functions and DeepseekV3Attention on identical weights."""

from __future__ import annotations

import math

import pytest
import torch

from moec.analyze.counts import attention_part
from moec.nn.attention import Attention
from moec.nn.mla import MLA
from moec.nn.norms import LayerNorm, RMSNorm
from moec.nn.rope import RotaryEmbedding, apply_rope, apply_rope_interleaved, inv_frequencies, softmax_scale_factor
from moec.spec.plan import AttentionPlan, NormPlan, PositionsPlan, RopeScalingPlan

RMS = NormPlan("rmsnorm", 1e-6, "pre")
ROPE = PositionsPlan("rope", 10000.0, None)
D = 32


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def gqa_plan(h=4, kv=2, hd=8, *, qk_norm=False, bias=False, out_bias=False, sinks=False, window=None, rope=True):
    return AttentionPlan("gqa", h, kv, hd, qk_norm, bias, out_bias, sinks, window, rope)


def mla_plan(*, q_lora_rank=16, window=None, sinks=False, rope=True):
    return AttentionPlan(
        "mla", 4, 4, 12, False, False, False, sinks, window, rope,
        q_lora_rank=q_lora_rank, kv_lora_rank=8, qk_nope_head_dim=8, qk_rope_head_dim=4, v_head_dim=6,
    )  # fmt: skip


def randomize(module: torch.nn.Module, seed: int = 0) -> None:
    """Non-trivial values everywhere (norm weights, biases and sinks included)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (0.3 if p.dim() > 1 else 1.0))


def complex_rotate(x: torch.Tensor, inv_freq: torch.Tensor, *, interleaved: bool = False) -> torch.Tensor:
    """x (..., S, dim): rotate each pair by pos·θ_j as a complex product; output in the half layout."""
    S, half = x.shape[-2], x.shape[-1] // 2
    re, im = (x[..., 0::2], x[..., 1::2]) if interleaved else (x[..., :half], x[..., half:])
    angle = torch.arange(S, dtype=torch.float64)[:, None] * inv_freq.double()[None, :]  # (S, dim/2)
    z = torch.complex(re.double(), im.double()) * torch.polar(torch.ones_like(angle), angle)
    return torch.cat((z.real, z.imag), dim=-1).to(x.dtype)


def plain_inv_freq(dim: int, theta: float = 10000.0) -> torch.Tensor:
    return torch.tensor([theta ** (-2 * j / dim) for j in range(dim // 2)], dtype=torch.float64)


def eager_reference(mod: Attention, x: torch.Tensor) -> torch.Tensor:
    """softmax(QKᵀ/√d + mask [, sink])·V, one head at a time, written independently of the module."""
    p = mod.plan
    B, S, _ = x.shape
    h, kv, hd = p.n_heads, p.n_kv_heads, p.head_dim

    def proj(lin, n):
        y = x @ lin.weight.T + (lin.bias if lin.bias is not None else 0)
        return y.view(B, S, n, hd)

    q, k, v = proj(mod.q_proj, h), proj(mod.k_proj, kv), proj(mod.v_proj, kv)
    if p.qk_norm:
        q = q / torch.sqrt(q.pow(2).mean(-1, keepdim=True) + RMS.eps) * mod.q_norm.weight
        k = k / torch.sqrt(k.pow(2).mean(-1, keepdim=True) + RMS.eps) * mod.k_norm.weight
    q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # (B, heads, S, hd)
    if p.rope:
        q, k = complex_rotate(q, plain_inv_freq(hd)), complex_rotate(k, plain_inv_freq(hd))
    out = torch.empty(B, h, S, hd)
    for head in range(h):
        g = head // (h // kv)  # repeat_kv: consecutive query heads share a KV head
        scores = q[:, head] @ k[:, g].transpose(-1, -2) / math.sqrt(hd)  # (B, S, S)
        for i in range(S):
            for j in range(S):
                if j > i or (p.window is not None and j <= i - p.window):
                    scores[:, i, j] = float("-inf")
        if p.sinks:
            sink = mod.sinks[head].expand(B, S, 1)
            probs = torch.cat((scores, sink), -1).softmax(-1)[..., :-1]
        else:
            probs = scores.softmax(-1)
        out[:, head] = probs @ v[:, g]
    y = out.transpose(1, 2).reshape(B, S, h * hd) @ mod.o_proj.weight.T
    return y + (mod.o_proj.bias if mod.o_proj.bias is not None else 0)


def rope_tables(dim: int, S: int, positions: PositionsPlan = ROPE):
    return RotaryEmbedding(positions, dim, 64)(S, torch.device("cpu"), torch.float32)


GQA_CASES = {
    "mha": gqa_plan(4, 4),
    "gqa": gqa_plan(4, 2),
    "mqa": gqa_plan(4, 1),
    "window": gqa_plan(4, 2, window=3),
    "sinks": gqa_plan(4, 2, sinks=True),
    "sinks+window": gqa_plan(4, 1, sinks=True, window=2),
    "qk_norm+biases": gqa_plan(4, 2, qk_norm=True, bias=True, out_bias=True),
    "no rope": gqa_plan(4, 2, rope=False),
    "window longer than seq": gqa_plan(4, 2, window=64),
}


@pytest.mark.parametrize("plan", GQA_CASES.values(), ids=GQA_CASES.keys())
def test_gqa_matches_the_eager_reference(plan):
    torch.manual_seed(0)
    mod = Attention(plan, D, norm=RMS, positions=ROPE)
    randomize(mod)
    x = torch.randn(2, 7, D)
    y = mod(x, rope_tables(plan.head_dim, 7))
    torch.testing.assert_close(y, eager_reference(mod, x), atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("plan", [*GQA_CASES.values(), mla_plan(), mla_plan(q_lora_rank=None, sinks=True, window=3)])
def test_parameter_count_equals_the_analyzer(plan):
    cls = MLA if plan.kind == "mla" else Attention
    mod = cls(plan, D, norm=RMS, positions=ROPE, device="meta")
    assert sum(p.numel() for p in mod.parameters()) == attention_part(plan, D, RMS.params_per_dim).params


@pytest.mark.parametrize(
    "plan", [gqa_plan(window=3, sinks=True), gqa_plan(4, 1), mla_plan(), mla_plan(window=2, sinks=True)],
    ids=["gqa window+sinks", "mqa", "mla", "mla window+sinks"],
)  # fmt: skip
def test_changing_a_future_token_does_not_change_the_past(plan):
    torch.manual_seed(0)
    cls = MLA if plan.kind == "mla" else Attention
    mod = cls(plan, D, norm=RMS, positions=ROPE)
    randomize(mod)
    rope_dim = plan.qk_rope_head_dim if plan.kind == "mla" else plan.head_dim
    rope = rope_tables(rope_dim, 9)
    x = torch.randn(1, 9, D)
    x2 = x.clone()
    x2[:, 5:] += torch.randn(1, 4, D)
    y, y2 = mod(x, rope), mod(x2, rope)
    torch.testing.assert_close(y2[:, :5], y[:, :5], atol=1e-6, rtol=0)
    assert not torch.allclose(y2[:, 5:], y[:, 5:])


def test_a_sliding_window_forgets_what_left_it():
    torch.manual_seed(0)
    mod = Attention(gqa_plan(window=2), D, norm=RMS, positions=ROPE)
    x = torch.randn(1, 6, D)
    x2 = x.clone()
    x2[:, 0] += 1.0  # position 0 is outside the window of positions 2..5
    rope = rope_tables(8, 6)
    y, y2 = mod(x, rope), mod(x2, rope)
    assert not torch.allclose(y2[:, 1], y[:, 1])
    torch.testing.assert_close(y2[:, 2:], y[:, 2:], atol=1e-6, rtol=0)


# --- RoPE ------------------------------------------------------------------------------------------


def test_rope_is_a_complex_rotation_of_half_pairs():
    x = torch.randn(2, 3, 11, 16)
    cos, sin = rope_tables(16, 11)
    torch.testing.assert_close(apply_rope(x, cos, sin), complex_rotate(x, plain_inv_freq(16)), atol=1e-5, rtol=1e-5)


def test_interleaved_rope_is_a_complex_rotation_of_adjacent_pairs():
    x = torch.randn(2, 3, 11, 16)
    cos, sin = rope_tables(16, 11)
    got = apply_rope_interleaved(x, cos, sin)
    torch.testing.assert_close(got, complex_rotate(x, plain_inv_freq(16), interleaved=True), atol=1e-5, rtol=1e-5)


def test_rope_preserves_relative_position_only():
    """⟨rot(q, m), rot(k, n)⟩ depends on m − n alone: the property RoPE exists for."""
    q, k = torch.randn(16), torch.randn(16)
    cos, sin = rope_tables(16, 12)
    rq = apply_rope(q.expand(12, 16), cos, sin)
    rk = apply_rope(k.expand(12, 16), cos, sin)
    torch.testing.assert_close(rq[7] @ rk[3], rq[10] @ rk[6], atol=1e-4, rtol=1e-4)


HF_ROPE = {
    "linear": ({"rope_type": "linear", "factor": 4.0}, RopeScalingPlan("linear", 4.0), 512, 100),
    "dynamic, within": ({"rope_type": "dynamic", "factor": 2.0}, RopeScalingPlan("dynamic", 2.0, 256), 256, 100),
    "dynamic, beyond": ({"rope_type": "dynamic", "factor": 2.0}, RopeScalingPlan("dynamic", 2.0, 256), 256, 1000),
    "yarn": (
        {"rope_type": "yarn", "factor": 8.0, "original_max_position_embeddings": 4096, "beta_fast": 32, "beta_slow": 1},
        RopeScalingPlan("yarn", 8.0, 4096, beta_fast=32, beta_slow=1),
        32768,
        100,
    ),
    "yarn, deepseek mscale": (
        {
            "rope_type": "yarn",
            "factor": 40.0,
            "original_max_position_embeddings": 4096,
            "beta_fast": 32,
            "beta_slow": 1,
            "mscale": 0.707,
            "mscale_all_dim": 1.0,
        },
        RopeScalingPlan("yarn", 40.0, 4096, beta_fast=32, beta_slow=1, mscale=0.707, mscale_all_dim=1.0),
        163840,
        100,
    ),  # fmt: skip
    "yarn, gpt-oss (untruncated, stated factor)": (
        {
            "rope_type": "yarn",
            "factor": 32.0,
            "original_max_position_embeddings": 4096,
            "beta_fast": 32,
            "beta_slow": 1,
            "truncate": False,
            "attention_factor": 1.2,
        },
        RopeScalingPlan("yarn", 32.0, 4096, beta_fast=32, beta_slow=1, truncate=False, attention_factor=1.2),
        131072,
        100,
    ),  # fmt: skip
    "llama3": (
        {
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192,
        },
        RopeScalingPlan("llama3", 8.0, 8192, low_freq_factor=1.0, high_freq_factor=4.0),
        131072,
        100,
    ),  # fmt: skip
}


@pytest.mark.parametrize("hf_params, scaling, max_len, seq_len", HF_ROPE.values(), ids=HF_ROPE.keys())
def test_rope_frequencies_match_transformers(hf_params, scaling, max_len, seq_len):
    from transformers import LlamaConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    theta = 500000.0
    cfg = LlamaConfig(hidden_size=512, num_attention_heads=4, max_position_embeddings=max_len,
                      rope_parameters={"rope_theta": theta, **hf_params})  # fmt: skip
    want, want_factor = ROPE_INIT_FUNCTIONS[hf_params["rope_type"]](cfg, None, seq_len=seq_len)
    got, factor = inv_frequencies(PositionsPlan("rope", theta, scaling), 128, max_len, seq_len)
    torch.testing.assert_close(got, want, atol=0, rtol=1e-6)
    assert factor == pytest.approx(want_factor)


def test_yarn_softmax_scale_carries_deepseeks_mscale_squared():
    sc = RopeScalingPlan("yarn", 40.0, 4096, beta_fast=32, beta_slow=1, mscale=1.0, mscale_all_dim=1.0)
    assert softmax_scale_factor(PositionsPlan("rope", 1e4, sc)) == pytest.approx((0.1 * math.log(40) + 1) ** 2)
    assert softmax_scale_factor(ROPE) == 1.0


# --- MLA against transformers ------------------------------------------------------------------------


MLA_SCALINGS = {
    "no scaling": None,
    "yarn mscale 1/1": RopeScalingPlan("yarn", 4.0, 16, beta_fast=32, beta_slow=1, mscale=1.0, mscale_all_dim=1.0),
    "yarn mscale .707/1": RopeScalingPlan("yarn", 4.0, 16, beta_fast=32, beta_slow=1, mscale=0.707, mscale_all_dim=1.0),
}


@pytest.mark.parametrize("q_lora_rank", [16, None], ids=["q_lora", "q_proj"])
@pytest.mark.parametrize("scaling", MLA_SCALINGS.values(), ids=MLA_SCALINGS.keys())
def test_mla_matches_transformers_deepseek_v3_attention(q_lora_rank, scaling):
    from transformers import DeepseekV3Config
    from transformers.models.deepseek_v3.modeling_deepseek_v3 import DeepseekV3Attention, DeepseekV3RotaryEmbedding

    plan = mla_plan(q_lora_rank=q_lora_rank)
    positions = PositionsPlan("rope", 10000.0, scaling)
    rope_params = {"rope_type": "default", "rope_theta": 10000.0}
    if scaling is not None:
        rope_params = {"rope_type": "yarn", "rope_theta": 10000.0, "factor": scaling.factor,
                       "original_max_position_embeddings": scaling.original_max_seq_len, "beta_fast": 32,
                       "beta_slow": 1, "mscale": scaling.mscale, "mscale_all_dim": scaling.mscale_all_dim}  # fmt: skip
    cfg = DeepseekV3Config(
        hidden_size=D, num_attention_heads=4, num_key_value_heads=4, q_lora_rank=q_lora_rank, kv_lora_rank=8,
        qk_nope_head_dim=8, qk_rope_head_dim=4, v_head_dim=6, max_position_embeddings=64, attention_bias=False,
        rope_parameters=rope_params, attn_implementation="eager",
    )  # fmt: skip
    ref = DeepseekV3Attention(cfg, layer_idx=0).eval()
    ours = MLA(plan, D, norm=RMS, positions=positions)
    randomize(ours)
    ref.load_state_dict(ours.state_dict())  # same names, same layouts

    S = 9
    x = torch.randn(2, S, D)
    pos_ids = torch.arange(S)[None]
    cos_sin = DeepseekV3RotaryEmbedding(cfg)(x, pos_ids)
    mask = torch.full((S, S), float("-inf")).triu(1)[None, None]  # eager attention takes an additive mask
    want, _ = ref(x, position_embeddings=cos_sin, attention_mask=mask)
    got = ours(x, RotaryEmbedding(positions, 4, 64)(S, x.device, x.dtype))
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)


# --- norms and bad inputs ----------------------------------------------------------------------------


def test_norms_match_their_formulas():
    x = torch.randn(3, 5, 16)
    rms, ln = RMSNorm(16, 1e-5), LayerNorm(16, 1e-5)
    randomize(rms)
    randomize(ln, seed=1)
    torch.testing.assert_close(rms(x), x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5) * rms.weight)
    mu, var = x.mean(-1, keepdim=True), x.var(-1, unbiased=False, keepdim=True)
    torch.testing.assert_close(ln(x), (x - mu) / torch.sqrt(var + 1e-5) * ln.weight + ln.bias, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("cls, plan", [(Attention, gqa_plan()), (MLA, mla_plan())], ids=["gqa", "mla"])
@pytest.mark.parametrize(
    "x, message",
    [(torch.randn(7, D), "batch, seq, d_model"), (torch.randn(1, 7, D + 1), "d_model"),
     (torch.ones(1, 7, D, dtype=torch.long), "floating")],
    ids=["rank", "d_model", "dtype"],
)  # fmt: skip
def test_bad_inputs_raise_clear_errors(cls, plan, x, message):
    mod = cls(plan, D, norm=RMS, positions=ROPE)
    with pytest.raises(ValueError, match=message):
        mod(x, rope_tables(4 if cls is MLA else 8, 7))


# --- Llama-4: chunked attention, weightless L2 qk-norm, NoPE temperature tuning ---------------------


def test_chunked_attention_sees_only_its_own_chunk():
    torch.manual_seed(0)
    plan = AttentionPlan("gqa", 4, 2, 8, False, False, False, False, None, True, chunk=3)
    mod = Attention(plan, D, norm=RMS, positions=ROPE)
    x = torch.randn(1, 8, D)
    x2 = x.clone()
    x2[:, 3] += 1.0  # the first token of chunk [3, 6)
    rope = rope_tables(8, 8)
    y, y2 = mod(x, rope), mod(x2, rope)
    torch.testing.assert_close(y2[:, :3], y[:, :3], atol=1e-6, rtol=0)  # earlier chunk: causal
    assert all(not torch.allclose(y2[:, i], y[:, i]) for i in (3, 4, 5))
    torch.testing.assert_close(y2[:, 6:], y[:, 6:], atol=1e-6, rtol=0)  # later chunk: out of reach


def test_l2_qk_norm_is_weightless_and_normalises_each_head():
    from moec.nn.attention import l2_norm

    plan = AttentionPlan("gqa", 4, 2, 8, True, False, False, False, None, True, qk_norm_kind="l2")
    mod = Attention(plan, D, norm=RMS, positions=ROPE, device="meta")
    assert (
        sum(p.numel() for p in mod.parameters()) == attention_part(plan, D, 1).params == 4 * D * 8 * 2 + 2 * D * 8 * 2
    )
    x = torch.randn(3, 8) * 5
    y = l2_norm(x, 1e-5)
    torch.testing.assert_close(y.pow(2).mean(-1), torch.ones(3), atol=1e-4, rtol=0)


def test_temperature_tuning_is_llama4_formula():
    from moec.nn.attention import temperature

    t = temperature(10, 4.0, 0.5, torch.device("cpu"))
    want = torch.tensor([1 + 0.5 * math.log1p(math.floor((p + 1) / 4)) for p in range(10)])
    torch.testing.assert_close(t, want)
    assert t[2] == 1.0 and t[3] > 1.0  # position 3 is the first with floor((pos+1)/4) = 1


@pytest.mark.parametrize("seq_len", [12, 40])
def test_longrope_uses_short_factors_then_long_ones_past_the_trained_length(seq_len):
    """LongRoPE against transformers' own frequencies (its longrope function picks long factors past
    original_max_position_embeddings) and Phi-MoE's mscale."""
    rope_utils = pytest.importorskip("transformers.modeling_rope_utils")
    from transformers import PhimoeConfig

    short, long = [1.0 + i / 4 for i in range(8)], [2.0 + i for i in range(8)]
    cfg = PhimoeConfig(
        hidden_size=64, num_attention_heads=4, max_position_embeddings=64, original_max_position_embeddings=16,
        rope_parameters={"rope_type": "longrope", "rope_theta": 1e4, "short_factor": short, "long_factor": long,
                         "short_mscale": 1.2, "long_mscale": 1.5, "original_max_position_embeddings": 16},
    )  # fmt: skip
    want, _ = rope_utils.ROPE_INIT_FUNCTIONS["longrope"](cfg, "cpu", seq_len=seq_len)
    sc = RopeScalingPlan("longrope", 4.0, 16, short_factor=short, long_factor=long, short_mscale=1.2, long_mscale=1.5)
    inv, mscale = inv_frequencies(PositionsPlan("rope", 1e4, sc), 16, 64, seq_len)
    torch.testing.assert_close(inv, want)
    assert mscale == (1.5 if seq_len > 16 else 1.2)
