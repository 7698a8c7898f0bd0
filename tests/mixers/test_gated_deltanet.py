"""The gated_deltanet mixer: the chunked form against the token-by-token recurrence (float64, gradients
included), a cached decode against the full forward, the module against transformers' own Qwen3.5 module on
the same weights, and the analyzer's counts against the modules and against hand-derived formulas."""

from __future__ import annotations

from fractions import Fraction

import pytest
from pydantic import ValidationError

from moec.mixers import gated_deltanet as gdn

torch = pytest.importorskip("torch")

from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from moec.kernels.mixers.gated_deltanet import GatedDeltaNet, chunked_delta_rule  # noqa: E402
from tests.mixers._compare import relative  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")

D = 16
# grouped heads (two value heads per key head), dk ≠ dv, a chunk that 11 tokens do not fill evenly
SMALL = gdn.Section(n_key_heads=2, n_value_heads=4, key_head_dim=8, value_head_dim=6, conv_kernel=3, chunk=4)


def _module(section: gdn.Section = SMALL, dtype=torch.float64, seed: int = 0) -> GatedDeltaNet:
    """Random weights everywhere, the decays and norm included, so that no part is an identity."""
    torch.manual_seed(seed)
    m = GatedDeltaNet(D, **gdn.module_kwargs(gdn.plan(section, D, 1e-6)), dtype=dtype)
    with torch.no_grad():
        for name, p in m.named_parameters():
            if name not in ("A_log", "dt_bias"):
                p.normal_(0, 0.4)
        m.dt_bias.uniform_(-1, 1)
    return m


def test_chunked_equals_recurrent_in_float64_outputs_and_gradients():
    m = _module()
    x = torch.randn(2, 11, D, dtype=torch.float64, requires_grad=True)
    weights = torch.randn(2, 11, D, dtype=torch.float64)
    chunked = m(x)
    recurrent, _ = m.recurrent(x)
    assert relative(chunked, recurrent) <= 1e-10
    inputs = [x, *m.parameters()]
    names = ["x", *(n for n, _ in m.named_parameters())]
    grads_chunked = torch.autograd.grad((chunked * weights).sum(), inputs)
    grads_recurrent = torch.autograd.grad((recurrent * weights).sum(), inputs)
    for name, a, b in zip(names, grads_chunked, grads_recurrent, strict=True):
        assert b.abs().max() > 0, name
        assert relative(a, b) <= 1e-10, name


def test_chunked_from_a_state_equals_the_recurrence_from_it():
    """An initial state and a length that is a whole number of chunks, on the rule alone."""
    torch.manual_seed(1)
    B, H, S, dk, dv = 2, 3, 8, 5, 4
    q, k = torch.randn(B, H, S, dk, dtype=torch.float64), torch.randn(B, H, S, dk, dtype=torch.float64)
    k = k / k.norm(dim=-1, keepdim=True)
    v = torch.randn(B, H, S, dv, dtype=torch.float64)
    beta, g = torch.rand(B, H, S, dtype=torch.float64), -torch.rand(B, H, S, dtype=torch.float64)
    state = torch.randn(B, H, dk, dv, dtype=torch.float64)
    o, final = chunked_delta_rule(q, k, v, beta, g, 4, state)
    S_ = state.clone()
    for t in range(S):  # the rule written out as the paper states it: S ← e^g (I − β k kᵀ) S + β k vᵀ
        kt = k[:, :, t, :, None]
        eye = torch.eye(dk, dtype=torch.float64)
        S_ = g[:, :, t, None, None].exp() * (eye - beta[:, :, t, None, None] * kt @ kt.transpose(-1, -2)) @ S_
        S_ = S_ + beta[:, :, t, None, None] * kt @ v[:, :, t, None, :]
        assert relative(o[:, :, t], (S_.transpose(-1, -2) @ q[:, :, t, :, None])[..., 0]) <= 1e-10
    assert relative(final, S_) <= 1e-10


def test_cached_prefill_then_single_tokens_equals_the_full_forward():
    m = _module()
    x = torch.randn(2, 11, D, dtype=torch.float64)
    full = m(x)
    cache = m.new_cache(2, 11, dtype=torch.float64)
    parts = [m(x[:, :6], cache=cache), m(x[:, 6:9], cache=cache)]  # a prefill, then a second one mid-chunk
    parts += [m(x[:, t : t + 1], cache=cache) for t in range(9, 11)]
    assert relative(torch.cat(parts, dim=1), full) <= 1e-12
    _, state = m.recurrent(x)
    for name in ("conv", "recurrent"):
        assert relative(cache[name], state[name]) <= 1e-12, name


def _transformers_module(section: gdn.Section):
    cfg_mod = pytest.importorskip("transformers.models.qwen3_5_moe.configuration_qwen3_5_moe")
    modeling = pytest.importorskip("transformers.models.qwen3_5_moe.modeling_qwen3_5_moe")
    cfg = cfg_mod.Qwen3_5MoeTextConfig(
        hidden_size=D,
        num_hidden_layers=1,
        layer_types=["linear_attention"],
        linear_num_key_heads=section.n_key_heads,
        linear_num_value_heads=section.n_value_heads,
        linear_key_head_dim=section.key_head_dim,
        linear_value_head_dim=section.value_head_dim,
        linear_conv_kernel_dim=section.conv_kernel,
        rms_norm_eps=1e-6,
    )
    return cfg, modeling.Qwen3_5MoeGatedDeltaNet(cfg, 0)


def test_module_equals_transformers_module_forward_and_cached_decode():
    from transformers import DynamicCache

    section = SMALL.model_copy(update={"chunk": 64})  # transformers' chunk, so the rounding is alike too
    m = _module(section, dtype=torch.float32)
    cfg, ref = _transformers_module(section)
    ref.load_state_dict(m.state_dict())  # the same names and shapes, nothing renamed
    x = torch.randn(2, 70, D)
    with torch.no_grad():
        assert (m(x) - ref(x)).abs().max() <= 1e-5
        cache, ref_cache = m.new_cache(2, 8, dtype=torch.float32), DynamicCache(config=cfg)
        ours = [m(x[:, :5], cache=cache)] + [m(x[:, t : t + 1], cache=cache) for t in range(5, 8)]
        theirs = [ref(x[:, :5], cache=ref_cache)] + [ref(x[:, t : t + 1], cache=ref_cache) for t in range(5, 8)]
        assert (torch.cat(ours, dim=1) - torch.cat(theirs, dim=1)).abs().max() <= 1e-5
        assert (cache["recurrent"] - ref_cache.get_recurrent_state(0)).abs().max() <= 1e-5
        # transformers keeps the last K inputs of the convolution, of which only the last K − 1 are ever read
        assert torch.equal(cache["conv"], ref_cache.get_conv_state(0)[..., 1:])


def test_params_equal_the_module_and_transformers():
    plan = gdn.plan(SMALL, D, 1e-6)
    ours = sum(p.numel() for p in _module().parameters())
    theirs = sum(p.numel() for p in _transformers_module(SMALL)[1].parameters())
    assert gdn.params(plan, D) == ours == theirs


def test_state_elements_are_the_cache_tensors():
    plan = gdn.plan(SMALL, D, 1e-6)
    cache = _module().new_cache(1, 1000)
    assert gdn.state_elements(plan, D) == {name: t.numel() for name, t in cache.tensors.items()}


def test_matmul_weights_are_the_matrices():
    plan = gdn.plan(SMALL, D, 1e-6)
    m = _module()
    linears = [mod for mod in m.modules() if isinstance(mod, torch.nn.Linear)]
    assert gdn.matmul_weights(plan, D) == sum(mod.weight.numel() for mod in linears)


def test_mixing_flops_by_hand():
    """Hk=2, Hv=4, dk=8, dv=6, K=3, chunk 4: channels 2·16 + 24 = 56, convolution 2·3·56 = 336 per token.
    Recurrent: 4 heads × 3 products of 8×6 = 576 multiply-adds = 1152 FLOPs.
    A chunk of c tokens, per head: 2c²·8 (βKKᵀ, QKᵀ) + c(c−1)/2·14 (the solve) + c²·6 (scores·U)
    + 3c·48 (the S₀ reads and the update). c=4: 256 + 84 + 96 + 576 = 1012; c=3: 144 + 42 + 54 + 432 = 672;
    c=1: 16 + 0 + 6 + 144 = 166."""
    plan = gdn.plan(SMALL, D, 1e-6)
    conv = 336
    per_chunk = {4: 1012, 3: 672, 1: 166}
    expected = {
        1: per_chunk[1],
        4: per_chunk[4],
        11: 2 * per_chunk[4] + per_chunk[3],
        13: 3 * per_chunk[4] + per_chunk[1],
    }
    for seq, macs in expected.items():
        flops = gdn.mixing_flops(plan, D, seq)
        assert flops["recurrent"] == conv + 1152
        assert flops["chunked"] == conv + Fraction(2 * 4 * macs, seq), seq


def test_mixing_flops_chunked_matches_torchs_count_of_the_matmuls():
    """torch's FlopCounterMode sees every matmul of the chunked form but not the triangular solve, whose
    forward substitution costs c(c−1)/2 multiply-adds per right-hand column (dk + dv columns)."""
    plan = gdn.plan(SMALL, D, 1e-6)
    B, H, S, dk, dv, c = 1, 4, 12, 8, 6, 4
    q, k = torch.randn(B, H, S, dk), torch.randn(B, H, S, dk)
    v, beta, g = torch.randn(B, H, S, dv), torch.rand(B, H, S), -torch.rand(B, H, S)
    with FlopCounterMode(display=False) as counter:
        chunked_delta_rule(q, k, v, beta, g, c, torch.zeros(B, H, dk, dv))
    solve = 2 * (S // c) * H * (c * (c - 1) // 2) * (dk + dv)
    conv = 2 * plan.conv_kernel * 56
    assert gdn.mixing_flops(plan, D, S)["chunked"] * S == counter.get_total_flops() + solve + conv * S


def test_problems_and_bounds():
    bad = gdn.Section(n_key_heads=3, n_value_heads=4)
    found = gdn.problems(bad, D)
    assert len(found) == 1 and found[0][0] == ("n_value_heads",) and "multiple of n_key_heads" in found[0][1]
    assert gdn.problems(SMALL, D) == []
    for field, value in (("conv_kernel", 0), ("chunk", 0), ("n_key_heads", 0), ("norm_eps", 0.0)):
        with pytest.raises(ValidationError):
            gdn.Section(**{field: value})


def test_plan_takes_the_model_eps_unless_the_section_sets_one():
    assert gdn.plan(SMALL, D, 1e-5).norm_eps == 1e-5
    assert gdn.plan(SMALL.model_copy(update={"norm_eps": 1e-3}), D, 1e-5).norm_eps == 1e-3


def test_init_decays_as_transformers_and_nothing_on_meta():
    torch.manual_seed(0)
    kwargs = gdn.module_kwargs(gdn.plan(gdn.Section(n_value_heads=256), D, 1e-6))
    m = GatedDeltaNet(D, **kwargs)
    A = m.A_log.exp()
    assert A.min() >= 0.01 and A.max() <= 16 and A.max() > 8 and A.min() < 1  # spread over [0.01, 16]
    assert torch.equal(m.dt_bias, torch.ones(256)) and torch.equal(m.norm.weight, torch.ones(128))
    meta = GatedDeltaNet(D, **kwargs, device="meta")
    assert all(p.is_meta for p in meta.parameters())


def test_the_analyzer_counts_the_state_bytes_the_module_allocates_in_bf16():
    from moec.analyze.memory import state_bytes_per_sequence
    from moec.spec import load_spec, resolve

    spec = f"""
moec: 1
name: t
model: {{vocab_size: 64, d_model: {D}, n_layers: 2, max_seq_len: 64}}
attention: {{n_heads: 2}}
mixers: {{gated_deltanet: {{n_key_heads: 2, n_value_heads: 4, key_head_dim: 8, value_head_dim: 6, conv_kernel: 3}}}}
layers: {{default: {{mixer: gated_deltanet, ffn: none}}}}
"""
    plan = resolve(load_spec("t.yaml", text=spec))
    cache = _module(dtype=torch.bfloat16).new_cache(1, 64, dtype=torch.bfloat16)
    assert cache["recurrent"].dtype == torch.float32 and cache["conv"].dtype == torch.bfloat16
    assert state_bytes_per_sequence(plan, 2) == 2 * cache.nbytes()
