"""Per-rank parameter counts: the tensor inventory against moec.nn, and the sharding rules against hand
counts and against torch.chunk (the split FSDP2 and DTensor use)."""

from __future__ import annotations

import pytest

from moec.analyze import analyze
from moec.plan import Layout, rank_params
from moec.plan.shard import chunk_rows, stage_layers
from moec.plan.tensors import model_tensors
from moec.spec.paths import shipped_specs
from tests.plan.tiny import tiny

VARIANTS = {  # every optional tensor of moec.nn, on the tiny spec
    "biases, sinks, per-head qk-norm": (
        "attention.bias=true",
        "attention.out_bias=true",
        "attention.sinks=true",
        "attention.qk_norm=true",
        "moe.bias=true",
        "moe.router.bias=true",
    ),
    "projection qk-norm, layernorm, learned positions, tied": (
        "attention.qk_norm=true",
        "attention.qk_norm_scope=projection",
        "model.norm.kind=layernorm",
        "model.positions.kind=learned",
        "model.tie_embeddings=true",
    ),
    "shared experts with a gate, head bias, post-norm": (
        "moe.n_shared_experts=2",
        "moe.d_ff_shared=3",
        "moe.shared_gate=true",
        "model.head_bias=true",
        "model.norm.placement=post",
    ),
    "LoRA experts over a frozen base": ("moe.expert_kind=lora", "moe.lora.rank=2"),
    "a router MLP": ("moe.router.mlp_hidden=5",),
    "hash routing (no router weights)": (
        "moe.router.kind=hash",
        "moe.router.normalize_topk=false",
        "moe.balance.load_balance_coeff=0",
    ),
}
MLA_VARIANTS = {
    "MLA without a query latent": (),
    "MLA with a query latent, MTP, a dense first layer": (
        "attention.q_lora_rank=3",
        "mtp.n_layers=1",
        "layers.overrides=[{select: [0], ffn: dense}]",
    ),
}


def _inventory_matches_the_built_model(plan) -> None:
    import moec

    model = moec.build_model(plan, device="meta")
    built = {name: tuple(p.shape) for name, p in model.named_parameters()}
    assert {t.name: t.shape for t in model_tensors(plan)} == built


@pytest.mark.parametrize("sets", VARIANTS.values(), ids=VARIANTS.keys())
def test_tensor_inventory_equals_moec_nn_on_every_variant(sets):
    _inventory_matches_the_built_model(tiny(*sets))


@pytest.mark.parametrize("sets", MLA_VARIANTS.values(), ids=MLA_VARIANTS.keys())
def test_tensor_inventory_equals_moec_nn_with_latent_attention(sets):
    _inventory_matches_the_built_model(tiny(*sets, mla=True))


def test_tensor_inventory_equals_moec_nn_on_mixtral():
    from moec.spec import load_model

    _inventory_matches_the_built_model(load_model("mixtral-8x7b"))


def _planned(path) -> bool:  # type: ignore[no-untyped-def]
    """Whether moec plan takes the spec: it refuses, by name, encoder-decoder models, hybrids and the block
    features whose tensors are not in its inventory yet (tests/cli/test_hybrid_cli.py, tests/plan/test_plan_cli.py)."""
    from moec.commands.common import refuse_block_features, refuse_hybrid
    from moec.errors import CommandError
    from moec.spec import load_model
    from moec.spec.encdec import refuse_encoder_decoder

    model = load_model(str(path))
    try:
        refuse_encoder_decoder(model, "moec plan")
        refuse_hybrid(model, "moec plan", "")
        refuse_block_features(model, "moec plan", "")
    except CommandError:
        return False
    return True


@pytest.mark.parametrize("path", [p for p in shipped_specs() if _planned(p)], ids=lambda p: p.stem)
def test_inventory_counts_equal_the_analyzer_per_component(path):
    from moec.spec import load_model

    plan = load_model(str(path)).replace(mtp=())  # the analyzer reports MTP separately
    by_component: dict[str, int] = {}
    for t in model_tensors(plan):
        by_component[t.component] = by_component.get(t.component, 0) + t.numel
    expected = {c.name: c.params for c in analyze(plan).components if c.params}  # a tied head has 0
    assert {k: v for k, v in by_component.items() if v} == expected


@pytest.mark.parametrize("n", [0, 1, 2, 3, 7, 10, 16])
@pytest.mark.parametrize("parts", [1, 2, 3, 4, 8])
def test_chunk_rows_is_torch_chunk_padded_with_empty_parts(n, parts):
    import torch

    sizes = [len(c) for c in torch.chunk(torch.empty(n), parts)] if n else []
    sizes += [0] * (parts - len(sizes))
    assert [chunk_rows(n, parts, i) for i in range(parts)] == sizes


def test_stage_layers_are_contiguous_and_the_first_stages_take_the_remainder():
    assert stage_layers(61, 16)[:2] == [range(0, 4), range(4, 8)]
    assert stage_layers(61, 16)[-1] == range(58, 61)
    assert [len(r) for r in stage_layers(5, 3)] == [2, 2, 1]


# The tiny spec on 4 ranks with ep = 2: dp_shard = 4, efsdp = 2. Dense tensors split dim 0 in 4 like
# torch.chunk: embed/lm_head (10, 4) → 3, 3, 3, 1 rows; k and v (2, 4) → 1, 1, 0, 0 rows; q, o, router
# (4, 4) → 1 row each; norms (4,) → 1 element each. Per layer on rank 0: 1 + 4 + 4 + 4 + 4 + 1 + 4 = 22;
# on rank 3: 22 − 8 (no k, v rows) = 14. Experts: 4/ep = 2 per rank, then 1 per efsdp shard:
# (1, 4, 6) + (1, 3, 4) = 36 per layer.
TINY_RANKS = {
    0: dict(experts=72, other=12 + 2 * 22 + 1 + 12),
    1: dict(experts=72, other=12 + 2 * 22 + 1 + 12),
    2: dict(experts=72, other=12 + 2 * 14 + 1 + 12),
    3: dict(experts=72, other=4 + 2 * 14 + 1 + 4),
}


@pytest.mark.parametrize("rank", TINY_RANKS)
def test_rank_params_of_the_tiny_spec_by_hand(rank):
    p = rank_params(tiny(), Layout(ep=2).resolved(4), rank)
    assert (p.experts, p.other) == (TINY_RANKS[rank]["experts"], TINY_RANKS[rank]["other"])
    assert (p.experts_padded, p.other_padded) == (72, 69)  # FSDP2 allocates rank 0's share everywhere
    assert p.frozen_padded == 0


def test_rank_params_add_up_to_the_model_when_nothing_is_replicated():
    plan = tiny()
    layout = Layout(ep=2).resolved(4)  # each expert on exactly one rank, each dense row on one rank
    assert sum(rank_params(plan, layout, r).total for r in range(4)) == analyze(plan).params.total


# With TP: 2 KV heads, 4 ranks as tp = 2 × dp_shard = 2, ep = 2 (efsdp = 2·2/2 = 2). TP halves the
# split dim first, then FSDP halves dim 0: q, k, v (4, 4) split rows → (2, 4) → (1, 4) = 4; o splits its
# columns → (4, 2) → (2, 2) = 4; norms and the router are whole under TP → (2,) = 2 and (2, 4) = 8;
# embed/lm_head (10, 4) split vocab → 5 rows → 3 or 2 rows after FSDP. Per layer 2 + 4·4 + 2 + 8 = 28.
TP_RANKS = {0: 12 + 2 * 28 + 2 + 12, 1: 12 + 2 * 28 + 2 + 12, 2: 8 + 2 * 28 + 2 + 8, 3: 8 + 2 * 28 + 2 + 8}


@pytest.mark.parametrize("rank", TP_RANKS)
def test_rank_params_with_tensor_parallel_by_hand(rank):
    p = rank_params(tiny("attention.n_kv_heads=2"), Layout(ep=2, tp=2).resolved(4), rank)
    assert (p.experts, p.other, p.other_padded) == (72, TP_RANKS[rank], TP_RANKS[0])


def test_rank_params_count_the_frozen_share():
    p = rank_params(tiny("frozen=[routed_experts, embedding]"), Layout(ep=2).resolved(4), 0)
    assert (p.frozen_experts_padded, p.frozen_other_padded) == (72, 12)


def test_rank_outside_the_world_is_refused():
    with pytest.raises(ValueError, match="rank 4 is outside the 4 ranks"):
        rank_params(tiny(), Layout(ep=2).resolved(4), 4)
