"""The gated short convolution (moec.mixers.short_conv, moec.kernels.mixers.short_conv) against its oracles: the
token-by-token recurrence (float64, gradients included), a cached decode against the whole sequence at once,
transformers' own Lfm2MoeShortConv on the same weights, torch's FLOP counter, and counts derived by hand."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from pydantic import ValidationError

from moec.kernels.mixers.short_conv import ShortConv
from moec.mixers import short_conv
from tests.mixers._compare import relative

pytestmark = pytest.mark.usefixtures("one_torch_thread")

D = 8


def make(kernel: int, bias: bool, dtype=torch.float64, seed: int = 0) -> ShortConv:
    """The module with every weight random and every bias nonzero (zero-initialised biases would test nothing)."""
    plan = short_conv.plan(short_conv.Section(kernel=kernel, bias=bias), D, 1e-5)
    torch.manual_seed(seed)
    module = ShortConv(D, **short_conv.module_kwargs(plan), dtype=dtype)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn_like(p) * 0.5)
    return module


@pytest.mark.parametrize(
    ("kernel", "bias", "seq"),
    [(3, False, 7), (4, True, 9), (5, True, 2), (1, False, 3), (3, True, 1)],
    ids=["k3", "k4-bias", "shorter-than-kernel", "k1", "one-token"],
)
def test_parallel_form_equals_the_recurrence_with_gradients(kernel, bias, seq):
    module = make(kernel, bias)
    x = torch.randn(2, seq, D, dtype=torch.float64, requires_grad=True)
    upstream = torch.randn(2, seq, D, dtype=torch.float64)

    def outputs_and_grads(run):
        y = run(x)
        grads = torch.autograd.grad((y * upstream).sum(), [x, *module.parameters()])
        return y, grads

    y_par, g_par = outputs_and_grads(module)
    y_rec, g_rec = outputs_and_grads(lambda t: module.recurrent(t)[0])
    assert relative(y_par, y_rec) <= 1e-10
    names = ["x", *(n for n, _ in module.named_parameters())]
    assert len(g_par) == len(names) == 1 + (6 if bias else 3)  # x and every parameter
    for name, a, b in zip(names, g_par, g_rec, strict=True):
        assert relative(a, b) <= 1e-10, name


@pytest.mark.parametrize("kernel", [3, 4])
def test_cached_prefill_then_steps_equal_the_whole_sequence(kernel):
    module = make(kernel, bias=True)
    x = torch.randn(2, 9, D, dtype=torch.float64)
    whole = module(x)
    cache = module.new_cache(2, 16, dtype=torch.float64)
    pieces = [module(x[:, a:b], cache=cache) for a, b in ((0, 4), (4, 5), (5, 7), (7, 8), (8, 9))]
    assert relative(torch.cat(pieces, dim=1), whole) <= 1e-12
    # the state left behind is the last kernel − 1 convolution inputs b ⊙ v, which the recurrence keeps too
    _, state = module.recurrent(x)
    torch.testing.assert_close(cache["conv"], state["conv"], rtol=0, atol=1e-12)
    b, _, v = module.in_proj(x[:, -(kernel - 1) :]).chunk(3, dim=-1)
    torch.testing.assert_close(cache["conv"], (b * v).transpose(1, 2), rtol=0, atol=1e-12)
    cache.reset()
    torch.testing.assert_close(module(x[:, :3], cache=cache), whole[:, :3], rtol=0, atol=1e-12)


def transformers_short_conv(kernel: int, bias: bool):
    from transformers import Lfm2MoeConfig
    from transformers.models.lfm2_moe.modeling_lfm2_moe import Lfm2MoeShortConv

    config = Lfm2MoeConfig(
        hidden_size=D,
        num_hidden_layers=1,
        layer_types=["conv"],
        conv_L_cache=kernel,
        conv_bias=bias,
        num_attention_heads=2,
        num_key_value_heads=1,
    )
    return config, Lfm2MoeShortConv(config, 0).double()


@pytest.mark.parametrize(("kernel", "bias"), [(3, False), (4, True)])
def test_equals_transformers_short_conv_with_and_without_cache(kernel, bias):
    from transformers.cache_utils import DynamicCache

    ours = make(kernel, bias)
    config, theirs = transformers_short_conv(kernel, bias)
    theirs.load_state_dict(ours.state_dict(), strict=True)  # the same names and shapes
    x = torch.randn(2, 7, D, dtype=torch.float64)
    torch.testing.assert_close(ours(x), theirs(x), rtol=0, atol=1e-12)

    hf_cache, cache = DynamicCache(config=config), ours.new_cache(2, 7, dtype=torch.float64)
    for a, b in ((0, 4), (4, 5), (5, 6), (6, 7)):
        torch.testing.assert_close(ours(x[:, a:b], cache=cache), theirs(x[:, a:b], cache=hf_cache), rtol=0, atol=1e-12)
    # transformers keeps kernel inputs per channel; the oldest of them is never read again
    torch.testing.assert_close(cache["conv"], hf_cache.layers[0].conv_states[0][:, :, 1:], rtol=0, atol=1e-12)


@pytest.mark.parametrize(("kernel", "bias"), [(3, False), (3, True), (7, True)])
def test_params_equal_the_module_and_transformers(kernel, bias):
    plan = short_conv.plan(short_conv.Section(kernel=kernel, bias=bias), D, 1e-5)
    by_hand = 3 * D * D + D * D + D * kernel + ((3 * D + D + D) if bias else 0)
    ours = sum(p.numel() for p in make(kernel, bias).parameters())
    theirs = sum(p.numel() for p in transformers_short_conv(kernel, bias)[1].parameters())
    assert short_conv.params(plan, D) == ours == theirs == by_hand


@pytest.mark.parametrize("kernel", [1, 3, 6])
def test_state_elements_are_the_caches_numel(kernel):
    plan = short_conv.plan(short_conv.Section(kernel=kernel), D, 1e-5)
    cache = make(kernel, False).new_cache(1, 4096)
    assert short_conv.state_elements(plan, D) == {n: t.numel() for n, t in cache.tensors.items()}
    assert short_conv.state_elements(plan, D) == {"conv": D * (kernel - 1)}


@pytest.mark.parametrize(("kernel", "seq"), [(3, 1), (3, 5), (4, 12)])
def test_flops_by_hand_and_by_torchs_counter(kernel, seq):
    from torch.utils.flop_counter import FlopCounterMode

    plan = short_conv.plan(short_conv.Section(kernel=kernel, bias=True), D, 1e-5)
    # each channel's output is kernel multiply-adds of its window, 2 FLOPs each; the products b·v and c·conv are
    # elementwise, so 0 by docs/conventions.md
    by_hand = 2 * kernel * D
    flops = short_conv.mixing_flops(plan, D, seq)
    assert flops == {"chunked": by_hand, "recurrent": by_hand}
    assert short_conv.matmul_weights(plan, D) == 3 * D * D + D * D

    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        make(kernel, True)(torch.randn(2, seq, D, dtype=torch.float64))
    tokens = 2 * seq
    assert counter.get_total_flops() == tokens * (2 * short_conv.matmul_weights(plan, D) + flops["chunked"])


def test_plan_round_trips_and_builds_the_module():
    plan = short_conv.plan(short_conv.Section(kernel=5, bias=True), D, 1e-6)
    assert dataclasses.asdict(plan) == {"kernel": 5, "bias": True, "kind": "short_conv"}
    assert short_conv.Plan(**dataclasses.asdict(plan)) == plan
    module = getattr(__import__("moec.kernels.mixers.short_conv", fromlist=[short_conv.MODULE]), short_conv.MODULE)
    built = module(D, **short_conv.module_kwargs(plan))
    assert (built.kernel, built.conv.bias is not None) == (5, True)
    assert short_conv.Section() == short_conv.Section(kernel=3, bias=False)  # LFM2's defaults


@pytest.mark.parametrize(
    ("fields", "bad"),
    [({"kernel": 0}, "kernel"), ({"kernel": 65}, "kernel"), ({"bias": 1}, "bias"), ({"width": 4}, "width")],
)
def test_bad_sections_are_refused_naming_the_field(fields, bad):
    with pytest.raises(ValidationError) as err:
        short_conv.Section(**fields)
    assert [e["loc"] for e in err.value.errors()] == [(bad,)]


def test_no_cross_field_problems_exist():
    # every width is d, so only the field bounds above can be wrong
    assert short_conv.problems(short_conv.Section(kernel=64, bias=True), 1) == []
