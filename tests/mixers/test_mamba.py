"""The mamba mixer: the chunked scan against the token-by-token recurrence (float64, gradients included), cached
decoding against the full forward, the module against transformers' JambaMambaMixer on the same weights, and the
counts against the module and hand-derived formulas."""

from __future__ import annotations

import pytest
import torch

from moec.kernels.mixers.mamba import Mamba
from moec.mixers import mamba
from tests.mixers._compare import relative

pytestmark = pytest.mark.usefixtures("one_torch_thread")

D_MODEL = 8


def _module(dtype=torch.float64, **fields) -> Mamba:
    """A small mixer with every parameter perturbed away from its init (norm weights, D, A_log included), so that
    each one's gradient is exercised."""
    section = mamba.Section(**{"state_size": 4, "dt_rank": 3, "chunk": 4, **fields})
    plan = mamba.plan(section, D_MODEL, 1e-6)
    torch.manual_seed(0)
    m = Mamba(D_MODEL, **mamba.module_kwargs(plan), dtype=dtype)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return m


VARIANTS = [
    {"inner_norms": True, "proj_bias": True},  # Jamba's norms, every optional parameter
    {"conv_bias": False, "conv_kernel": 1},  # plain Mamba, no convolution history at all
]


@pytest.mark.parametrize("fields", VARIANTS)
@pytest.mark.parametrize("seq, chunk", [(11, 4), (8, 4), (5, 16), (3, 1)])
def test_chunked_scan_equals_the_recurrence_values_and_gradients(fields, seq, chunk):
    m = _module(chunk=chunk, **fields)
    x = torch.randn(2, seq, D_MODEL, dtype=torch.float64, requires_grad=True)
    cotangent = torch.randn(2, seq, D_MODEL, dtype=torch.float64)

    def grads(y):
        return torch.autograd.grad((y * cotangent).sum(), [x, *m.parameters()])

    y_chunked = m(x)
    y_recurrent, _ = m.recurrent(x)
    assert relative(y_chunked, y_recurrent) <= 1e-10
    names = ["input", *(n for n, _ in m.named_parameters())]
    for name, g_chunked, g_recurrent in zip(names, grads(y_chunked), grads(y_recurrent), strict=True):
        assert relative(g_chunked, g_recurrent) <= 1e-10, name


@pytest.mark.parametrize("fields", VARIANTS)
def test_cached_prefill_then_single_tokens_equals_the_full_forward(fields):
    m = _module(**fields)
    x = torch.randn(2, 10, D_MODEL, dtype=torch.float64)
    with torch.no_grad():
        full = m(x)
        cache = m.new_cache(2, 10, dtype=torch.float64)
        pieces = [m(x[:, :6], cache=cache)] + [m(x[:, t : t + 1], cache=cache) for t in range(6, 10)]
        _, oracle_state = m.recurrent(x)
    assert relative(torch.cat(pieces, dim=1), full) <= 1e-10
    for name in ("conv", "ssm"):
        assert torch.allclose(cache[name], oracle_state[name], rtol=1e-10, atol=1e-12), name


def test_recurrence_continues_from_a_given_state():
    m = _module(inner_norms=True)
    x = torch.randn(1, 9, D_MODEL, dtype=torch.float64)
    with torch.no_grad():
        whole, _ = m.recurrent(x)
        first, state = m.recurrent(x[:, :4])
        rest, _ = m.recurrent(x[:, 4:], state)
    assert relative(torch.cat([first, rest], dim=1), whole) <= 1e-12


# --- transformers' own mixer on the same weights -------------------------------------------------------------------


@pytest.fixture(scope="module")
def jamba_pair():
    transformers = pytest.importorskip("transformers")
    from transformers.models.jamba.modeling_jamba import JambaMambaMixer

    config = transformers.JambaConfig(
        hidden_size=16, mamba_expand=2, mamba_d_state=4, mamba_d_conv=4, mamba_dt_rank=3, num_hidden_layers=1,
        vocab_size=32, num_attention_heads=2, num_key_value_heads=1, intermediate_size=8, num_experts=2,
        rms_norm_eps=1e-6,
    )  # fmt: skip
    torch.manual_seed(1)
    theirs = JambaMambaMixer(config, layer_idx=0)
    with torch.no_grad():
        for p in theirs.parameters():
            p.add_(0.3 * torch.randn_like(p))
    section = mamba.Section(state_size=4, conv_kernel=4, expand=2, dt_rank=3, inner_norms=True, chunk=4)
    plan = mamba.plan(section, 16, config.rms_norm_eps)
    ours = Mamba(16, **mamba.module_kwargs(plan))
    ours.load_state_dict(theirs.state_dict(), strict=True)
    return config, theirs, ours, plan


def test_module_equals_transformers_jamba_mixer(jamba_pair):
    _, theirs, ours, _ = jamba_pair
    x = torch.randn(2, 11, 16)
    with torch.no_grad():
        expected = theirs(x)
        assert (ours(x) - expected).abs().max().item() <= 1e-5
        assert (ours.recurrent(x)[0] - expected).abs().max().item() <= 1e-5


def test_cached_decoding_equals_transformers_cached_decoding(jamba_pair):
    from transformers.cache_utils import DynamicCache

    config, theirs, ours, _ = jamba_pair
    x = torch.randn(2, 9, 16)
    their_cache, our_cache = DynamicCache(config=config), ours.new_cache(2, 9)
    # a prefill, then single tokens: transformers' full-sequence scan restarts from a zero state, so it cannot
    # continue a cache with several tokens at once (moec's can: the test above)
    with torch.no_grad():
        for piece in (x[:, :5], x[:, 5:6], x[:, 6:7], x[:, 7:8]):
            assert (ours(piece, cache=our_cache) - theirs(piece, cache=their_cache)).abs().max().item() <= 1e-5
    their_state = their_cache.get_recurrent_state(0, state_idx=0)
    assert (our_cache["ssm"] - their_state).abs().max().item() <= 1e-5


def test_parameter_count_equals_the_module_and_transformers(jamba_pair):
    _, theirs, ours, plan = jamba_pair
    expected = sum(p.numel() for p in theirs.parameters())
    assert sum(p.numel() for p in ours.parameters()) == expected
    assert mamba.params(plan, 16) == expected


@pytest.mark.parametrize("fields", [{}, *VARIANTS, {"proj_bias": True, "expand": 3}])
def test_counts_equal_the_module(fields):
    plan = mamba.plan(mamba.Section(**{"state_size": 4, "dt_rank": 3, **fields}), D_MODEL, 1e-6)
    with torch.device("meta"):
        m = Mamba(D_MODEL, **mamba.module_kwargs(plan))
    assert mamba.params(plan, D_MODEL) == sum(p.numel() for p in m.parameters())
    linears = (m.in_proj, m.x_proj, m.dt_proj, m.out_proj)
    assert mamba.matmul_weights(plan, D_MODEL) == sum(lin.weight.numel() for lin in linears)
    cache = m.new_cache(1, 4096, device="meta", dtype=torch.bfloat16)
    assert mamba.state_elements(plan, D_MODEL) == {name: t.numel() for name, t in cache.tensors.items()}
    # the parts the analyzer counts in float32 are the ones the cache keeps so
    assert {name for name, t in cache.tensors.items() if t.dtype == torch.float32} == set(mamba.FP32_STATE)


@pytest.mark.parametrize("seq", [7, 16])
def test_flop_counter_sees_the_projections_the_convolution_and_the_readouts(seq):
    """torch's FlopCounterMode on the chunked forward: the projections (2 per matrix weight), the convolution and
    the two readouts (local states, decayed chunk starts) are the chunked count less the state updates, one
    multiply-add per state element per token, which are elementwise multiply and add ops it counts 0."""
    from torch.utils.flop_counter import FlopCounterMode

    plan = mamba.plan(mamba.Section(state_size=4, dt_rank=3, chunk=4, inner_norms=True), D_MODEL, 1e-6)
    m = Mamba(D_MODEL, **mamba.module_kwargs(plan))
    with FlopCounterMode(display=False) as counter:
        m(torch.randn(1, seq, D_MODEL))
    inner, n = plan.inner_dim, plan.state_size
    state_updates = 2 * inner * n
    per_token = 2 * mamba.matmul_weights(plan, D_MODEL) + mamba.mixing_flops(plan, D_MODEL, seq)["chunked"]
    assert counter.get_total_flops() == seq * (per_token - state_updates)
    # a decode step (one token with a cache): its recurrent count less its one state update and its convolution,
    # which a cached call runs as shifted multiply-adds (moec.kernels.mixers.state), elementwise to the counter
    cache = m.new_cache(1, seq + 1)
    with FlopCounterMode(display=False) as counter:
        m(torch.randn(1, 1, D_MODEL), cache=cache)
    step = 2 * mamba.matmul_weights(plan, D_MODEL) + mamba.mixing_flops(plan, D_MODEL, seq)["recurrent"]
    conv = 2 * plan.conv_kernel * inner
    assert counter.get_total_flops() == step - state_updates - conv


def test_default_time_step_rank_is_transformers_auto():
    transformers = pytest.importorskip("transformers")
    for d in (16, 100, 4096):
        expected = transformers.JambaConfig(hidden_size=d).mamba_dt_rank
        assert mamba.plan(mamba.Section(), d, 1e-6).dt_rank == expected


def test_jamba_v0_1_mixer_counts_by_hand():
    """Jamba-v0.1's mixer (d 4096, expand 2, N 16, K 4, rank 256, conv bias, inner norms), written out."""
    d, inner, n, k, r = 4096, 8192, 16, 4, 256
    plan = mamba.plan(mamba.Section(state_size=n, conv_kernel=k, dt_rank=r, inner_norms=True), d, 1e-6)
    matmuls = d * 2 * inner + inner * (r + 2 * n) + r * inner + inner * d
    assert mamba.matmul_weights(plan, d) == matmuls
    # conv weight + bias, dt_proj bias, A_log, D, the three norms
    assert mamba.params(plan, d) == matmuls + inner * k + inner + inner + inner * n + inner + (r + 2 * n)
    # both: the depthwise conv, 2·K·I. recurrent: state update + readout, 2 multiply-adds per state element.
    # chunked: local scan and chunk carry (one per token together), the decayed start, the readout: 3 per element.
    for seq in (1, 7, 64, 4097):
        flops = mamba.mixing_flops(plan, d, seq)
        assert flops["recurrent"] == 2 * k * inner + 2 * 2 * inner * n
        assert flops["chunked"] == 2 * k * inner + 3 * 2 * inner * n
    assert mamba.state_elements(plan, d) == {"conv": inner * (k - 1), "ssm": inner * n}


def test_initial_decay_and_time_step_follow_mamba():
    section = mamba.Section(state_size=4, inner_norms=True, proj_bias=True)
    m = Mamba(D_MODEL, **mamba.module_kwargs(mamba.plan(section, D_MODEL, 1e-6)))
    for bias in (m.in_proj.bias, m.out_proj.bias, m.conv1d.bias):
        assert not bias.any()
    assert all(torch.equal(n.weight, torch.ones_like(n.weight)) for n in (m.dt_layernorm, m.b_layernorm, m.c_layernorm))
    assert torch.equal(m.decay_rates(torch.float32), -torch.arange(1.0, 5.0).expand(2 * D_MODEL, 4))
    assert torch.equal(m.D.detach(), torch.ones(2 * D_MODEL))
    dt = torch.nn.functional.softplus(m.dt_proj.bias.detach())
    assert dt.min().item() >= 1e-3 * (1 - 1e-5) and dt.max().item() <= 0.1 * (1 + 1e-5)


# --- problems ---------------------------------------------------------------------------------------------------------


def test_a_sound_section_has_no_problems():
    assert mamba.problems(mamba.Section(inner_norms=True, norm_eps=1e-6, dt_rank=16), 16) == []


@pytest.mark.parametrize(
    "fields, d_model, path, words",
    [
        ({"dt_rank": 33}, 16, ("dt_rank",), "above the inner width 32"),
        ({"norm_eps": 1e-5}, 16, ("norm_eps",), "inner_norms is false"),
        ({"expand": 64}, 1 << 18, ("expand",), "above the limit"),
    ],
)
def test_problems_name_the_field(fields, d_model, path, words):
    (problem,) = mamba.problems(mamba.Section(**fields), d_model)
    assert problem[0] == path and words in problem[1]


def test_every_problem_is_reported():
    found = mamba.problems(mamba.Section(dt_rank=100, norm_eps=1e-5), 16)
    assert sorted(path for path, _ in found) == [("dt_rank",), ("norm_eps",)]


@pytest.mark.parametrize("field, value", [("state_size", 0), ("conv_kernel", 0), ("chunk", 0), ("expand", 1.5)])
def test_out_of_bounds_fields_are_refused(field, value):
    with pytest.raises(ValueError, match=field):
        mamba.Section(**{field: value})


def test_unset_norm_eps_is_the_model_norms():
    assert mamba.plan(mamba.Section(), 16, 1e-5).norm_eps == 1e-5
    assert mamba.plan(mamba.Section(inner_norms=True, norm_eps=1e-3), 16, 1e-5).norm_eps == 1e-3
