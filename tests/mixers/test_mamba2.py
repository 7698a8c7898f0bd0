"""The mamba2 mixer: the chunked (SSD) form against the token-by-token recurrence, the cache, transformers' own
modules (NemotronHMamba2Mixer, GraniteMoeHybridMambaLayer) on the same weights, and the counts of
moec.mixers.mamba2 against the module and against hand-derived formulas."""

from __future__ import annotations

import math
from fractions import Fraction

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from moec.kernels.mixers.mamba2 import Mamba2
from moec.mixers import mamba2
from tests.mixers._compare import relative

D_MODEL = 16
SMALL = dict(n_heads=4, head_dim=4, state_dim=6, n_groups=2, conv_kernel=3, chunk=4)


def section(**fields) -> mamba2.Section:
    return mamba2.Section(**{**SMALL, **fields})


def module(dtype=torch.float64, seed=0, **fields) -> Mamba2:
    """A small module with every parameter random and of order one, so that decays range well inside (0, 1)."""
    torch.manual_seed(seed)
    plan = mamba2.plan(section(**fields), D_MODEL, norm_eps=1e-5)
    m = Mamba2(D_MODEL, **mamba2.module_kwargs(plan), dtype=dtype)
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn_like(p) * (0.5 if p.dim() > 1 else 1.0))
        m.A_log.copy_(torch.empty_like(m.A_log).uniform_(-1, 1))
        m.dt_bias.copy_(torch.empty_like(m.dt_bias).uniform_(-3, 0.5))
    return m


VARIANTS = [
    {},  # 10 tokens in chunks of 4: the last chunk padded
    {"n_groups": 1, "chunk": 16, "bias": True},  # one chunk longer than the sequence
    {"n_groups": 4, "chunk": 3, "step_min": 0.3, "step_max": 2.0, "conv_bias": False},  # Δ clamped both ways
    {"chunk": 1, "conv_kernel": 1},
]


@pytest.mark.parametrize("fields", VARIANTS)
def test_chunked_form_equals_the_recurrence_with_gradients(fields):
    m = module(**fields)
    x = torch.randn(2, 10, D_MODEL, dtype=torch.float64, requires_grad=True)
    weights = torch.randn(2, 10, D_MODEL, dtype=torch.float64)

    def grads(run):
        y = run(x)
        grads = torch.autograd.grad((y * weights).sum(), [x, *m.parameters()])
        return y.detach(), grads

    chunked, chunked_grads = grads(lambda t: m(t))
    recurrent, recurrent_grads = grads(lambda t: m.recurrent(t)[0])
    assert relative(chunked, recurrent) <= 1e-10
    names = ["x", *(n for n, _ in m.named_parameters())]
    for name, a, b in zip(names, chunked_grads, recurrent_grads, strict=True):
        assert relative(a, b) <= 1e-10, name


def test_the_recurrence_leaves_the_state_the_chunked_form_reaches():
    m = module()
    x = torch.randn(2, 9, D_MODEL, dtype=torch.float64)
    cache = m.new_cache(2, 9, dtype=torch.float64)
    m(x, cache=cache)
    _, state = m.recurrent(x)
    for name in ("conv", "ssm"):
        assert relative(cache[name], state[name]) <= 1e-10, name


@pytest.mark.parametrize("split", [[5, 1, 1, 1, 1, 1], [1, 1, 3, 1, 4], [10]])
def test_a_cached_prefill_and_decode_steps_equal_the_full_forward(split):
    m = module()
    x = torch.randn(2, 10, D_MODEL, dtype=torch.float64)
    full = m(x)
    cache = m.new_cache(2, 10, dtype=torch.float64)
    pieces, start = [], 0
    for n in split:
        pieces.append(m(x[:, start : start + n], cache=cache))
        start += n
    assert relative(torch.cat(pieces, dim=1), full) <= 1e-12
    cache.reset()
    assert relative(m(x[:, :3], cache=cache), full[:, :3]) <= 1e-12  # reset starts a fresh sequence


# transformers' two Mamba2 modules, configured like SMALL (Granite derives head_dim from expand·d / n_heads).
def nemotron_mixer(bias: bool, step_min: float):
    from transformers import NemotronHConfig
    from transformers.models.nemotron_h.modeling_nemotron_h import NemotronHMamba2Mixer

    config = NemotronHConfig(
        hidden_size=D_MODEL,
        layers_block_type=["linear_attention"],
        mamba_num_heads=4,
        mamba_head_dim=4,
        ssm_state_size=6,
        n_groups=2,
        conv_kernel=3,
        chunk_size=4,
        use_bias=bias,
        time_step_min=step_min,
        layer_norm_epsilon=1e-5,
    )
    fields = dict(bias=bias, step_min=step_min)
    return config, NemotronHMamba2Mixer(config, layer_idx=0), fields


def granite_mixer(bias: bool):
    from transformers import GraniteMoeHybridConfig
    from transformers.models.granitemoehybrid.modeling_granitemoehybrid import GraniteMoeHybridMambaLayer

    config = GraniteMoeHybridConfig(
        hidden_size=D_MODEL,
        num_hidden_layers=1,
        layer_types=["mamba"],
        mamba_n_heads=4,
        mamba_expand=1,  # head_dim = 1·16 / 4 = 4
        mamba_d_state=6,
        mamba_n_groups=2,
        mamba_d_conv=3,
        mamba_chunk_size=4,
        mamba_proj_bias=bias,
        rms_norm_eps=1e-5,
    )
    return config, GraniteMoeHybridMambaLayer(config, layer_idx=0), dict(bias=bias)


HF_MIXERS = {
    "nemotron_h": lambda: nemotron_mixer(bias=True, step_min=0.2),
    "granitemoehybrid": lambda: granite_mixer(bias=False),
}


@pytest.mark.parametrize("family", HF_MIXERS)
def test_equals_transformers_mixer_on_the_same_weights(family):
    config, theirs, fields = HF_MIXERS[family]()
    ours = module(dtype=torch.float32, **fields)
    theirs.load_state_dict(ours.state_dict(), strict=True)  # the same names and shapes
    x = torch.randn(2, 10, D_MODEL)
    with torch.no_grad():
        assert (ours(x) - theirs(x)).abs().max().item() <= 1e-5
    assert mamba2.params(mamba2.plan(section(**fields), D_MODEL, 1e-5), D_MODEL) == sum(
        p.numel() for p in theirs.parameters()
    )


def test_equals_transformers_mixer_through_its_cache():
    """transformers' prefill-then-decode path (its DynamicCache) against our full forward."""
    from transformers import DynamicCache

    config, theirs, fields = granite_mixer(bias=True)
    ours = module(dtype=torch.float32, **fields)
    theirs.load_state_dict(ours.state_dict(), strict=True)
    x = torch.randn(2, 8, D_MODEL)
    cache = DynamicCache(config=config)
    with torch.no_grad():
        steps = [theirs(x[:, :5], cache=cache)] + [theirs(x[:, t : t + 1], cache=cache) for t in range(5, 8)]
        assert (torch.cat(steps, dim=1) - ours(x)).abs().max().item() <= 1e-5


@pytest.mark.parametrize("fields", [{}, {"bias": True, "conv_bias": False}, {"n_heads": None, "head_dim": 8}])
def test_params_count_the_module(fields):
    plan = mamba2.plan(section(**fields), D_MODEL, 1e-5)
    m = Mamba2(D_MODEL, **mamba2.module_kwargs(plan), device="meta")
    assert mamba2.params(plan, D_MODEL) == sum(p.numel() for p in m.parameters())
    matrices = m.in_proj.weight.numel() + m.out_proj.weight.numel()
    assert mamba2.matmul_weights(plan, D_MODEL) == matrices


def test_unset_heads_are_twice_the_width_over_head_dim():
    assert mamba2.plan(section(n_heads=None, head_dim=8), D_MODEL, 1e-5).n_heads == 2 * 16 // 8


def test_state_elements_are_the_cache():
    plan = mamba2.plan(section(), D_MODEL, 1e-5)
    cache = Mamba2(D_MODEL, **mamba2.module_kwargs(plan)).new_cache(1, 1000)
    assert mamba2.state_elements(plan, D_MODEL) == {name: t.numel() for name, t in cache.tensors.items()}
    # by hand: (x, B, C) = 16 + 2·2·6 = 40 channels × 2 past inputs; 4 heads × 4 × 6 state entries
    assert mamba2.state_elements(plan, D_MODEL) == {"conv": 80, "ssm": 96}


def test_a_bfloat16_cache_keeps_the_state_in_float32():
    m = module(dtype=torch.bfloat16)
    cache = m.new_cache(2, 8, dtype=torch.bfloat16)
    assert (cache["conv"].dtype, cache["ssm"].dtype) == (torch.bfloat16, torch.float32)
    x = torch.randn(2, 8, D_MODEL, dtype=torch.bfloat16)
    steps = torch.cat([m(x[:, t : t + 1], cache=cache) for t in range(8)], dim=1)
    assert (steps.float() - m(x).float()).abs().max().item() <= 0.05 * m(x).float().abs().max().item()


@pytest.mark.parametrize("seq", [1, 3, 4, 10, 4097])
def test_mixing_flops_by_hand(seq):
    plan = mamba2.plan(section(), D_MODEL, 1e-5)
    conv = 2 * 3 * (16 + 2 * 2 * 6)  # 2·K per channel of x, B, C
    sizes = [4] * (seq // 4) + ([seq % 4] if seq % 4 else [])  # chunks of 4, the last one shorter
    # per chunk of c: C·Bᵀ per group (2 groups, N = 6); per head (4, P = 4): scores·x, state in, state out
    per_chunk = [2 * 2 * c * c * 6 + 4 * (2 * c * c * 4 + 2 * c * 4 * 6 + 2 * c * 4 * 6) for c in sizes]
    got = mamba2.mixing_flops(plan, D_MODEL, seq)
    assert got["chunked"] == conv + Fraction(sum(per_chunk), seq)
    assert got["recurrent"] == conv + 4 * (2 * 4 * 6 + 2 * 4 * 6)  # per head: update and read-out, 2·P·N each


@pytest.mark.parametrize("seq", [1, 7, 12])
@pytest.mark.parametrize("fields", [{}, {"chunk": 5, "head_dim": 1, "state_dim": 1, "n_groups": 1, "conv_kernel": 1}])
def test_mixing_flops_are_what_torch_counts(seq, fields):
    """FlopCounterMode counts the matmuls and the convolution the module runs (not elementwise work), also where
    a size of 1 could turn a product into an elementwise one."""
    plan = mamba2.plan(section(**fields), D_MODEL, 1e-5)
    m = Mamba2(D_MODEL, **mamba2.module_kwargs(plan))
    x = torch.randn(3, seq, D_MODEL)
    projections = 2 * mamba2.matmul_weights(plan, D_MODEL)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        m(x)
    expected = 3 * seq * (projections + mamba2.mixing_flops(plan, D_MODEL, seq)["chunked"])
    assert counter.get_total_flops() == expected
    cache = m.new_cache(3, 2)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        m(x[:, :1], cache=cache)
    # a cached call convolves by shifted multiply-adds (moec.kernels.mixers.state), elementwise work FlopCounterMode
    # does not count: 2 FLOPs per channel and tap fewer than the analyzer's step
    conv = 2 * m.conv1d.weight.shape[0] * m.conv1d.weight.shape[-1]
    assert counter.get_total_flops() == 3 * (projections + mamba2.mixing_flops(plan, D_MODEL, 1)["recurrent"] - conv)


@pytest.mark.parametrize(
    ("fields", "path", "words"),
    [
        ({"n_heads": None, "head_dim": 12}, ("head_dim",), "must divide 2·d_model = 32"),
        ({"n_heads": 6, "n_groups": 4}, ("n_groups",), "must divide n_heads 6"),
        ({"step_min": 0.5, "step_max": 0.5}, ("step_max",), "must exceed step_min"),
    ],
)
def test_problems_name_the_field(fields, path, words):
    found = mamba2.problems(section(**fields), D_MODEL)
    assert len(found) == 1
    assert found[0][0] == path and words in found[0][1]


def test_problems_are_all_reported_and_a_good_section_has_none():
    assert mamba2.problems(section(), D_MODEL) == []
    found = mamba2.problems(section(n_heads=6, n_groups=4, step_min=1.0, step_max=0.5), D_MODEL)
    assert [path for path, _ in found] == [("n_groups",), ("step_max",)]


def test_fresh_parameters_follow_mamba2_initialisation():
    torch.manual_seed(0)
    m = Mamba2(D_MODEL, **mamba2.module_kwargs(mamba2.plan(section(bias=True), D_MODEL, 1e-5)))
    for layer, fan_in in ((m.in_proj, D_MODEL), (m.out_proj, 16), (m.conv1d, 3)):
        assert abs(layer.weight.std().item() * math.sqrt(fan_in) - 1) < 0.2
        assert not layer.bias.any()
    assert torch.allclose(m.A_log.exp(), torch.arange(1.0, 5.0))
    assert torch.equal(m.D, torch.ones(4))
    step = torch.nn.functional.softplus(m.dt_bias)
    assert ((step >= 1e-3 * 0.999) & (step <= 0.1 * 1.001)).all()
