"""Kimi Delta Attention (moec.mixers.kda, moec.kernels.mixers.kda) against its oracles: the token-by-token
recurrence (float64, gradients included), a cached decode against the whole sequence at once, transformers' own
KimiLinearDeltaAttention and BailingHybridDeltaAttention on the same weights (with and without their cache), and
counts derived by hand."""

from __future__ import annotations

import dataclasses
import math
from fractions import Fraction

import pytest
import torch
from pydantic import ValidationError

from moec.kernels.mixers.kda import KimiDeltaAttention
from moec.mixers import kda
from tests.mixers._compare import relative

pytestmark = pytest.mark.usefixtures("one_torch_thread")

D, H, HD = 12, 2, 4

# Kimi-Linear's layout (low-rank decay and gate, softplus decay) and Ling 3.0's (full rank, bounded decay)
KIMI = {"n_heads": H, "head_dim": HD, "conv_kernel": 3, "chunk": 4}
LING = {**KIMI, "decay_rank": 0, "gate_rank": 0, "decay": "bounded_sigmoid", "decay_lower_bound": -3.0}


def make(fields: dict, dtype=torch.float64, seed: int = 0) -> KimiDeltaAttention:
    """The module with every matrix random and the vectors (dt_bias, the norm) away from their init; the decay's
    A_log keeps its init, so the per-channel decays range from about 0.9999 to 0.2 per token."""
    plan = kda.plan(kda.Section(**fields), D, 1e-5)
    torch.manual_seed(seed)
    module = KimiDeltaAttention(D, **kda.module_kwargs(plan), dtype=dtype)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.endswith("A_log"):
                continue
            p.copy_(torch.randn_like(p) * 0.5 + (1.0 if p.dim() == 1 else 0.0))
    return module


@pytest.mark.parametrize(
    ("fields", "seq"),
    [(KIMI, 10), (LING, 9), ({**KIMI, "chunk": 3, "conv_kernel": 1}, 7), (KIMI, 1), ({**KIMI, "chunk": 16}, 5)],
    ids=["kimi-2.5-chunks", "ling-bounded-full-rank", "chunk3-kernel1", "one-token", "shorter-than-a-chunk"],
)
def test_chunked_form_equals_the_recurrence_with_gradients(fields, seq):
    module = make(fields)
    x = torch.randn(2, seq, D, dtype=torch.float64, requires_grad=True)
    upstream = torch.randn(2, seq, D, dtype=torch.float64)

    def outputs_and_grads(run):
        y = run(x)
        return y, torch.autograd.grad((y * upstream).sum(), [x, *module.parameters()])

    y_chunked, g_chunked = outputs_and_grads(module)
    y_rec, g_rec = outputs_and_grads(lambda t: module.recurrent(t)[0])
    assert relative(y_chunked, y_rec) <= 1e-10
    names = ["x", *(n for n, _ in module.named_parameters())]
    for name, a, b in zip(names, g_chunked, g_rec, strict=True):  # x and every parameter
        # every parameter reaches the output, but a first token's decay multiplies a zero state
        assert b.abs().max() > 0 or (seq == 1 and name.startswith("forget_gate.")), name
        assert relative(a, b) <= 1e-10, name


@pytest.mark.parametrize("fields", [KIMI, LING], ids=["kimi", "ling"])
def test_cached_prefill_then_steps_equal_the_whole_sequence(fields):
    module = make(fields)
    x = torch.randn(2, 11, D, dtype=torch.float64)
    whole = module(x)
    cache = module.new_cache(2, 16, dtype=torch.float64)
    pieces = [module(x[:, a:b], cache=cache) for a, b in ((0, 6), (6, 7), (7, 9), (9, 10), (10, 11))]
    assert relative(torch.cat(pieces, dim=1), whole) <= 1e-12
    # the state left behind is the recurrence's, and the convolution's the last kernel − 1 q, k, v inputs
    _, state = module.recurrent(x)
    for name in ("conv", "recurrent"):
        torch.testing.assert_close(cache[name], state[name], rtol=1e-12, atol=1e-12)
    last = x[:, -2:]
    qkv = torch.cat([module.q_proj(last), module.k_proj(last), module.v_proj(last)], dim=-1)
    torch.testing.assert_close(cache["conv"], qkv.transpose(1, 2), rtol=0, atol=1e-12)
    cache.reset()
    torch.testing.assert_close(module(x[:, :3], cache=cache), whole[:, :3], rtol=0, atol=1e-12)


def test_strong_decays_stay_finite_in_float32():
    # decays near e^-16 per token over a 64-token chunk: e^{Γₜ}·e^{−Γₛ} would overflow float32, the pairwise
    # e^{Γₜ−Γₛ} does not
    module = make({**KIMI, "chunk": 64}, dtype=torch.float32)
    with torch.no_grad():
        module.forget_gate.A_log.fill_(math.log(16.0))
        module.forget_gate.dt_bias.fill_(5.0)
    x = torch.randn(1, 64, D)
    y = module(x)
    assert torch.isfinite(y).all()
    torch.testing.assert_close(y, module.recurrent(x)[0], rtol=1e-4, atol=1e-5)


def transformers_kimi():
    from transformers import KimiLinearConfig
    from transformers.models.kimi_linear.modeling_kimi_linear import KimiLinearDeltaAttention

    config = KimiLinearConfig(
        hidden_size=D,
        num_hidden_layers=1,
        linear_num_heads=H,
        linear_head_dim=HD,
        linear_conv_kernel_dim=KIMI["conv_kernel"],
        rms_norm_eps=1e-5,
    )
    return config, KimiLinearDeltaAttention(config, 0)


def transformers_ling(safe_gate: bool):
    from transformers import BailingHybridConfig
    from transformers.models.bailing_hybrid.modeling_bailing_hybrid import BailingHybridDeltaAttention

    config = BailingHybridConfig(
        hidden_size=D,
        num_hidden_layers=1,
        layer_group_size=2,
        num_attention_heads=H,
        head_dim=HD,
        short_conv_kernel_size=LING["conv_kernel"],
        kda_safe_gate=safe_gate,
        kda_lower_bound=LING["decay_lower_bound"],
        rms_norm_eps=1e-5,
    )
    return config, BailingHybridDeltaAttention(config, 0)


def ling_fields(safe_gate: bool) -> dict:
    if safe_gate:
        return LING
    return {k: v for k, v in LING.items() if k != "decay_lower_bound"} | {"decay": "softplus"}


def check_against(ours, theirs, config, to_theirs=lambda sd: sd):
    """``theirs`` given our weights: the whole sequence at once, then prefill and one-token steps through its
    cache (transformers' chunked function pads to 64 tokens; its one-token step is its recurrence)."""
    from transformers.cache_utils import DynamicCache

    theirs.load_state_dict(to_theirs(ours.state_dict()), strict=True)
    ours, theirs = ours.float(), theirs.float()
    x = torch.randn(2, 9, D)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x), rtol=0, atol=1e-5)
        hf_cache, cache = DynamicCache(config=config), ours.new_cache(2, 9, dtype=torch.float32)
        for a, b in ((0, 5), (5, 6), (6, 7), (7, 8), (8, 9)):
            torch.testing.assert_close(
                ours(x[:, a:b], cache=cache), theirs(x[:, a:b], cache=hf_cache), rtol=0, atol=1e-5
            )
    # transformers keeps conv_kernel inputs per channel; the oldest of them is never read again
    torch.testing.assert_close(cache["conv"], hf_cache.layers[0].conv_states[0][:, :, 1:], rtol=0, atol=1e-6)
    torch.testing.assert_close(cache["recurrent"], hf_cache.layers[0].recurrent_states[0], rtol=0, atol=1e-5)


def test_equals_transformers_kimi_linear_delta_attention():
    config, theirs = transformers_kimi()
    check_against(make(KIMI), theirs, config)  # the same names and shapes


@pytest.mark.parametrize("safe_gate", [True, False], ids=["bounded", "softplus"])
def test_equals_transformers_ling_delta_attention(safe_gate):
    config, theirs = transformers_ling(safe_gate)

    def to_ling(sd):  # Ling holds A_log as (H,), Kimi (and moec) as (1, 1, H, 1)
        return sd | {"forget_gate.A_log": sd["forget_gate.A_log"].reshape(H)}

    check_against(make(ling_fields(safe_gate)), theirs, config, to_ling)


@pytest.mark.parametrize("fields", [KIMI, LING, {**KIMI, "decay_rank": 3, "gate_rank": 0}])
def test_params_equal_the_module_and_by_hand(fields):
    plan = kda.plan(kda.Section(**fields), D, 1e-5)
    inner, r_f, r_g, K = H * HD, plan.decay_rank, plan.gate_rank, plan.conv_kernel
    decay_proj = r_f * (D + inner) if r_f else D * inner
    gate_proj = r_g * (D + inner) if r_g else D * inner
    by_hand = 3 * D * inner + 3 * inner * K + decay_proj + inner + H + D * H + gate_proj + HD + inner * D
    assert kda.params(plan, D) == sum(p.numel() for p in make(fields).parameters()) == by_hand
    assert kda.matmul_weights(plan, D) == 3 * D * inner + decay_proj + D * H + gate_proj + inner * D


def test_params_equal_transformers_modules():
    assert kda.params(kda.plan(kda.Section(**KIMI), D, 1e-5), D) == sum(
        p.numel() for p in transformers_kimi()[1].parameters()
    )
    ling = kda.plan(kda.Section(**LING), D, 1e-5)
    assert kda.params(ling, D) == sum(p.numel() for p in transformers_ling(True)[1].parameters())


@pytest.mark.parametrize("fields", [KIMI, {**KIMI, "conv_kernel": 1}, {**LING, "conv_kernel": 6}])
def test_state_elements_are_the_caches_numel(fields):
    plan = kda.plan(kda.Section(**fields), D, 1e-5)
    cache = make(fields).new_cache(1, 4096)
    assert kda.state_elements(plan, D) == {n: t.numel() for n, t in cache.tensors.items()}
    assert kda.state_elements(plan, D) == {"conv": 3 * H * HD * (plan.conv_kernel - 1), "recurrent": H * HD * HD}
    assert cache["recurrent"].dtype == torch.float32  # the delta rule's state never below float32
    assert kda.FP32_STATE == ("recurrent",)  # which the analyzer counts at 4 bytes an element
    assert make(fields).new_cache(1, 1, dtype=torch.bfloat16)["recurrent"].dtype == torch.float32


def hand_chunk_macs(c: int, hd: int) -> int:
    """One chunk of c tokens in one head, term by term, as the chunked form executes them (docs/conventions.md:
    a multiply-add is 2 FLOPs)."""
    key_key = c * c * hd  # kₜ·Diag(decay)·kₛ for every pair of the chunk (a dense block, masked afterwards)
    query_key = c * c * hd  # qₜ·Diag(decay)·kₛ, likewise
    solve = sum(row for row in range(c)) * hd  # forward substitution: row t subtracts t solved rows, hd columns
    intra_out = c * c * hd  # scores (c × c) · U (c × hd)
    with_state = 3 * c * hd * hd  # K̂·S₀, Q̂·S₀, K̃ᵀ·U
    return key_key + query_key + solve + intra_out + with_state


@pytest.mark.parametrize(("seq", "chunk"), [(10, 4), (1, 4), (64, 64), (100, 64), (3, 16)])
def test_flops_by_hand(seq, chunk):
    plan = kda.plan(kda.Section(**{**KIMI, "chunk": chunk}), D, 1e-5)
    conv = 2 * plan.conv_kernel * 3 * H * HD  # kernel multiply-adds per channel of q, k and v
    lengths = [min(chunk, seq - s) for s in range(0, seq, chunk)]
    chunked = conv + Fraction(sum(2 * H * hand_chunk_macs(c, HD) for c in lengths), seq)
    recurrent = conv + 2 * H * (HD * HD + HD * HD + HD * HD)  # Sᵀk, k·uᵀ, Sᵀq per head
    assert kda.mixing_flops(plan, D, seq) == {"chunked": chunked, "recurrent": recurrent}


def test_flops_by_hand_worked_example():
    # seq 10 in chunks 4, 4, 2 of 2 heads of width 4, kernel 3: per head 408 + 408 + 148 multiply-adds; the
    # convolution 3 taps × 24 channels; a decode step 3 · 16 per head
    plan = kda.plan(kda.Section(**KIMI), D, 1e-5)
    assert kda.mixing_flops(plan, D, 10) == {"chunked": 144 + Fraction(2 * 2 * 964, 10), "recurrent": 144 + 192}


def test_chunked_flops_are_constant_over_whole_chunks():
    plan = kda.plan(kda.Section(**{**KIMI, "chunk": 64}), D, 1e-5)
    assert kda.mixing_flops(plan, D, 64) == kda.mixing_flops(plan, D, 64 * 1000)
    assert kda.mixing_flops(plan, D, 64)["chunked"] > kda.mixing_flops(plan, D, 65)["chunked"]


def test_plan_defaults_round_trip_and_build_the_module():
    plan = kda.plan(kda.Section(n_heads=32, head_dim=128), 2304, 1e-5)  # Kimi-Linear-48B-A3B's KDA
    assert (plan.decay_rank, plan.gate_rank, plan.conv_kernel, plan.decay, plan.chunk) == (128, 128, 4, "softplus", 64)
    assert (plan.norm_eps, plan.decay_lower_bound) == (1e-5, None)
    assert kda.Plan(**dataclasses.asdict(plan)) == plan
    ling = kda.plan(kda.Section(n_heads=2, head_dim=4, decay="bounded_sigmoid", norm_eps=1e-6), D, 1e-5)
    assert (ling.decay_lower_bound, ling.norm_eps) == (-5.0, 1e-6)
    built = KimiDeltaAttention(2304, **kda.module_kwargs(plan), device="meta")
    assert sum(p.numel() for p in built.parameters()) == kda.params(plan, 2304)


def test_init_follows_the_decay_scheme():
    module = KimiDeltaAttention(D, **kda.module_kwargs(kda.plan(kda.Section(n_heads=8, head_dim=32), D, 1e-5)))
    A = module.forget_gate.A_log.exp()
    dt = torch.nn.functional.softplus(module.forget_gate.dt_bias)
    assert 1 <= A.min() and A.max() <= 16
    assert 1e-3 * 0.999 <= dt.min() and dt.max() <= 1e-1 * 1.001
    assert (module.o_norm.weight == 1).all()
    std = module.q_proj.weight.std().item()
    assert abs(std - 1 / math.sqrt(D)) < 0.2 / math.sqrt(D)


@pytest.mark.parametrize(
    ("fields", "bad"),
    [
        ({"n_heads": 0, "head_dim": 4}, "n_heads"),
        ({"n_heads": 2, "head_dim": 0}, "head_dim"),
        ({"n_heads": 2, "head_dim": 4, "conv_kernel": 0}, "conv_kernel"),
        ({"n_heads": 2, "head_dim": 4, "decay_rank": -1}, "decay_rank"),
        ({"n_heads": 2, "head_dim": 4, "decay": "sigmoid"}, "decay"),
        ({"n_heads": 2, "head_dim": 4, "decay_lower_bound": 0.5}, "decay_lower_bound"),
        ({"n_heads": 2, "head_dim": 4, "chunk": 0}, "chunk"),
        ({"n_heads": 2}, "head_dim"),
        ({"n_heads": 2, "head_dim": 4, "heads": 2}, "heads"),
    ],
)
def test_bad_sections_are_refused_naming_the_field(fields, bad):
    with pytest.raises(ValidationError) as err:
        kda.Section(**fields)
    assert [e["loc"][0] for e in err.value.errors()] == [bad]


def test_problems_name_the_field():
    stray_bound = kda.Section(n_heads=2, head_dim=4, decay_lower_bound=-5.0)
    [(where, message)] = kda.problems(stray_bound, D)
    assert where == ("decay_lower_bound",) and "bounded_sigmoid" in message
    assert kda.problems(kda.Section(**LING), D) == []
    assert kda.problems(kda.Section(**KIMI), D) == []


def test_a_bad_kda_section_is_one_located_error_through_the_cli(write_spec):
    from click.testing import CliRunner

    from moec.cli import cli

    spec = write_spec(
        "moec: 1\nname: t\nmodel: {vocab_size: 64, d_model: 32, n_layers: 2, max_seq_len: 64}\n"
        "attention: {n_heads: 4}\nffn: {d_ff: 48}\n"
        "mixers:\n  kda: {n_heads: 2, head_dim: 8, decay_lower_bound: -3.0}\n"
        "layers: {default: {mixer: kda}}\n"
    )
    r = CliRunner().invoke(cli, ["validate", str(spec)])
    assert r.exit_code == 2
    [line] = [x for x in r.output.splitlines() if "decay_lower_bound" in x]
    assert line.startswith(f"error: {spec}:7:") and "mixers.kda.decay_lower_bound" in line and "bounded_sigmoid" in line
