"""Lightning attention (moec.mixers.lightning, moec.kernels.mixers.lightning) against its oracles: the
token-by-token recurrence (float64, gradients included), a cached decode against the whole sequence at once,
transformers' own MiniMaxLightningAttention on the same weights (with and without its cache), torch's FLOP
counter, and counts derived by hand."""

from __future__ import annotations

import dataclasses
from fractions import Fraction

import pytest
import torch
from pydantic import ValidationError

from moec.kernels.mixers.lightning import LightningAttention
from moec.mixers import lightning
from tests.mixers._compare import relative

pytestmark = pytest.mark.usefixtures("one_torch_thread")

D = 12


def make_plan(heads: int = 3, head_dim: int = 4, chunk: int = 4, layer: int = 0, n_layers: int = 1, **section):
    return lightning.plan(
        lightning.Section(n_heads=heads, head_dim=head_dim, chunk=chunk, **section),
        D,
        1e-5,
        layer=layer,
        n_layers=n_layers,
    )


def make(plan: lightning.Plan, dtype=torch.float64, seed: int = 0) -> LightningAttention:
    """The module with every weight random (the norm's around 1, not at its init)."""
    torch.manual_seed(seed)
    module = LightningAttention(D, **lightning.module_kwargs(plan), dtype=dtype)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn_like(p) * 0.5 + (1.0 if p.dim() == 1 else 0.0))
    return module


@pytest.mark.parametrize(
    ("chunk", "seq", "depth_scaled"),
    [(4, 11, True), (4, 8, True), (3, 2, False), (1, 5, True), (16, 9, False)],
    ids=["ragged-last-block", "whole-blocks", "shorter-than-a-block", "chunk-1", "one-block"],
)
def test_chunked_form_equals_the_recurrence_with_gradients(chunk, seq, depth_scaled):
    # a large decay (layer 0 of 1 with depth scaling gives 1.00001; 30 without) so the decays are far from 1
    plan = make_plan(chunk=chunk, depth_scaled_decay=depth_scaled)
    module = make(dataclasses.replace(plan, decay_scale=plan.decay_scale * 30))
    x = torch.randn(2, seq, D, dtype=torch.float64, requires_grad=True)
    upstream = torch.randn(2, seq, D, dtype=torch.float64)

    def outputs_and_grads(run):
        y = run(x)
        grads = torch.autograd.grad((y * upstream).sum(), [x, *module.parameters()])
        return y, grads

    y_chunked, g_chunked = outputs_and_grads(module)
    y_rec, g_rec = outputs_and_grads(lambda t: module.recurrent(t)[0])
    assert relative(y_chunked, y_rec) <= 1e-10
    names = ["x", *(n for n, _ in module.named_parameters())]
    assert len(g_chunked) == len(names) == 1 + 4  # x, qkv_proj, out_proj, output_gate, norm
    for name, a, b in zip(names, g_chunked, g_rec, strict=True):
        assert relative(a, b) <= 1e-10, name


@pytest.mark.parametrize("chunk", [3, 4])
def test_cached_prefill_then_steps_equal_the_whole_sequence(chunk):
    module = make(make_plan(chunk=chunk, layer=1, n_layers=3))
    x = torch.randn(2, 10, D, dtype=torch.float64)
    whole = module(x)
    cache = module.new_cache(2, 16, dtype=torch.float64)
    pieces = [module(x[:, a:b], cache=cache) for a, b in ((0, 5), (5, 6), (6, 9), (9, 10))]
    assert relative(torch.cat(pieces, dim=1), whole) <= 1e-12
    # the memory left behind is the recurrence's after the last token
    _, state = module.recurrent(x)
    assert relative(cache["ssm"], state["ssm"]) <= 1e-12
    cache.reset()
    torch.testing.assert_close(module(x[:, :3], cache=cache), whole[:, :3], rtol=0, atol=1e-12)


def transformers_lightning(heads: int, head_dim: int, chunk: int, layer: int, n_layers: int):
    from transformers import MiniMaxConfig
    from transformers.models.minimax.modeling_minimax import MiniMaxLightningAttention

    config = MiniMaxConfig(
        hidden_size=D,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        head_dim=head_dim,
        num_hidden_layers=n_layers,
        block_size=chunk,
        layer_types=["linear_attention"] * n_layers,
    )
    return MiniMaxLightningAttention(config, layer)


@pytest.mark.parametrize(("layer", "n_layers", "seq"), [(0, 1, 9), (2, 4, 7), (3, 4, 4)])
def test_equals_transformers_lightning_attention_with_and_without_cache(layer, n_layers, seq):
    from transformers.models.minimax.modeling_minimax import MiniMaxCache

    plan = make_plan(heads=3, head_dim=4, chunk=4, layer=layer, n_layers=n_layers)
    theirs = transformers_lightning(3, 4, 4, layer, n_layers)
    # MiniMax's output norm keeps its own default eps (1e-6), not the model's
    ours = make(dataclasses.replace(plan, norm_eps=1e-6), dtype=torch.float32)
    theirs.load_state_dict(ours.state_dict(), strict=False)  # the same names and shapes; theirs adds decay buffers
    assert {n for n, _ in theirs.named_parameters()} == set(ours.state_dict())
    torch.testing.assert_close(ours.slopes("cpu", torch.float32), theirs.slope_rate.flatten(), rtol=1e-6, atol=0)
    x = torch.randn(2, seq, D)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x, None, None)[0], rtol=0, atol=1e-5)

        hf_cache, cache = MiniMaxCache(), ours.new_cache(2, seq)
        steps = [(0, seq - 2), (seq - 2, seq - 1), (seq - 1, seq)]  # transformers' prefill, then its recurrent steps
        for a, b in steps:
            torch.testing.assert_close(
                ours(x[:, a:b], cache=cache), theirs(x[:, a:b], None, None, cache=hf_cache)[0], rtol=0, atol=1e-5
            )
        torch.testing.assert_close(cache["ssm"], hf_cache.get_linear_cache(layer), rtol=0, atol=1e-5)


@pytest.mark.parametrize(("heads", "head_dim"), [(3, 4), (2, 6), (4, 2)])
def test_params_equal_the_module_and_transformers(heads, head_dim):
    plan = make_plan(heads=heads, head_dim=head_dim)
    inner = heads * head_dim
    by_hand = D * 3 * inner + D * inner + inner * D + inner  # qkv, output gate, out_proj, the joint norm
    ours = sum(p.numel() for p in make(plan).parameters())
    theirs = sum(p.numel() for p in transformers_lightning(heads, head_dim, 4, 0, 1).parameters())
    assert lightning.params(plan, D) == ours == theirs == by_hand
    assert lightning.matmul_weights(plan, D) == 5 * D * inner


@pytest.mark.parametrize(("heads", "head_dim"), [(3, 4), (1, 7)])
def test_state_elements_are_the_caches_numel(heads, head_dim):
    plan = make_plan(heads=heads, head_dim=head_dim)
    cache = make(plan).new_cache(1, 4096)
    assert lightning.state_elements(plan, D) == {n: t.numel() for n, t in cache.tensors.items()}
    assert lightning.state_elements(plan, D) == {"ssm": heads * head_dim * head_dim}


def test_flops_by_hand():
    # 2 heads of width 8, blocks of 4, 10 tokens: blocks of 4, 4 and 2. Per head, a block of c tokens costs
    # q·kᵀ and (scores)·v, 2·c²·8 each, plus q·S and kᵀ·v, 2·c·8² each:
    #   blocks of 4: 2·(2·16·8) + 2·(2·4·64) = 512 + 1024 = 1536, twice; the block of 2: 128 + 512 = 640
    # so 2 heads · (1536 + 1536 + 640) = 7424 over 10 tokens. A decode step: kᵀv and q·S, 2·64 + 2·64 per head.
    plan = make_plan(heads=2, head_dim=8, chunk=4)
    assert lightning.mixing_flops(plan, D, 10) == {"chunked": Fraction(7424, 10), "recurrent": 512}
    # one token is one block of one: q·k and score·v (2·8 each) plus 256 per head
    assert lightning.mixing_flops(plan, D, 1) == {"chunked": 2 * (32 + 256), "recurrent": 512}


@pytest.mark.parametrize(("chunk", "seq"), [(4, 10), (4, 1), (3, 9), (8, 5)])
def test_flops_by_torchs_counter(chunk, seq):
    from torch.utils.flop_counter import FlopCounterMode

    plan = make_plan(heads=2, head_dim=8, chunk=chunk)
    module = make(plan)
    flops = lightning.mixing_flops(plan, D, seq)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        module(torch.randn(2, seq, D, dtype=torch.float64))
    tokens = 2 * seq
    assert counter.get_total_flops() == tokens * (2 * lightning.matmul_weights(plan, D) + flops["chunked"])

    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        module.recurrent(torch.randn(2, 1, D, dtype=torch.float64))
    assert counter.get_total_flops() == 2 * (2 * lightning.matmul_weights(plan, D) + flops["recurrent"])


def test_depth_scaled_decay_follows_minimax():
    section = lightning.Section(n_heads=4)
    # 1 − l/(L − 1 + 1e-5) + 1e-5, written out for layer 3 of 8
    assert lightning.plan(section, 16, 1e-5, layer=3, n_layers=8).decay_scale == 1 - 3 / (7 + 1e-5) + 1e-5
    assert (
        lightning.plan(
            section.model_copy(update={"depth_scaled_decay": False}), 16, 1e-5, layer=3, n_layers=8
        ).decay_scale
        == 1.0
    )


def test_plan_round_trips_and_builds_the_module():
    plan = lightning.plan(lightning.Section(n_heads=4, chunk=8), 16, 1e-6)
    assert dataclasses.asdict(plan) == {
        "n_heads": 4,
        "head_dim": 4,  # d_model / n_heads
        "chunk": 8,
        "activation": "silu",
        "norm_eps": 1e-6,  # the model's, where the section leaves it unset
        "decay_scale": 1 + 1e-5,
        "kind": "lightning",
    }
    assert lightning.Plan(**dataclasses.asdict(plan)) == plan
    module = getattr(__import__("moec.kernels.mixers.lightning", fromlist=[lightning.MODULE]), lightning.MODULE)
    built = module(16, **lightning.module_kwargs(plan))
    assert (built.n_heads, built.head_dim, built.norm.eps) == (4, 4, 1e-6)
    on_meta = module(16, **lightning.module_kwargs(plan), device="meta")  # builds with no init work and no buffers
    assert all(p.is_meta for p in on_meta.parameters()) and list(on_meta.buffers()) == []


@pytest.mark.parametrize(
    ("fields", "bad"),
    [
        ({"n_heads": 0}, "n_heads"),
        ({"n_heads": 2, "chunk": 0}, "chunk"),
        ({"n_heads": 2, "head_dim": -1}, "head_dim"),
        ({"n_heads": 2, "activation": "tanh"}, "activation"),
        ({"n_heads": 2, "norm_eps": 0.0}, "norm_eps"),
        ({"n_heads": 2, "block_size": 4}, "block_size"),
        ({}, "n_heads"),
    ],
)
def test_bad_sections_are_refused_naming_the_field(fields, bad):
    with pytest.raises(ValidationError) as err:
        lightning.Section(**fields)
    assert [e["loc"] for e in err.value.errors()] == [(bad,)]


def test_heads_that_do_not_divide_the_width_need_a_head_dim():
    assert lightning.problems(lightning.Section(n_heads=5), 12) == [
        (("n_heads",), "d_model 12 is not a multiple of n_heads 5; set head_dim")
    ]
    assert lightning.problems(lightning.Section(n_heads=5, head_dim=3), 12) == []
    assert lightning.problems(lightning.Section(n_heads=4), 12) == []


def test_bf16_follows_float32_with_decays_computed_in_float32():
    module = make(make_plan(chunk=4, layer=1, n_layers=3), dtype=torch.float32)
    x = torch.randn(2, 11, D)
    with torch.no_grad():
        want = module(x)
        got = module.to(torch.bfloat16)(x.bfloat16())
    assert module.slopes("cpu", torch.bfloat16).dtype == torch.float32
    assert got.dtype == torch.bfloat16 and relative(got.float(), want) <= 3e-2
