"""Per-rank memory and traffic against figures derived by hand (docs/scaling.md), and the search's order."""

from __future__ import annotations

from fractions import Fraction

import pytest

from moec.analyze import analyze
from moec.plan import Layout
from moec.plan.report import Workload, plan_layout, search
from moec.spec import load_model
from tests.plan.tiny import tiny

SMALL = Workload(seq=8, micro_batch=1)


def test_tiny_on_four_ranks_with_ep_2_by_hand():
    p = plan_layout(tiny(), Layout(ep=2), 4, "h100", SMALL)
    s = p.busiest
    # rank 0 holds 69 dense + 72 expert numel (tests/plan/test_shard.py): 4 + 4 + 8 bytes each
    assert (s.memory.param_bytes, s.memory.grad_bytes, s.memory.optimizer_bytes) == (4 * 141, 4 * 141, 8 * 141)
    # the two largest FSDP units are the blocks: 72 dense + 144/ep expert numel, bf16 params + fp32 grads
    assert s.memory.fsdp_transient_bytes == 2 * (72 + 72) * (2 + 4)
    assert s.memory.activation_bytes == analyze(tiny(), seq=8).memory.activation_bytes_estimate
    assert s.memory.kv_cache_bytes == 2 * 8 * (2 * 1 * 2 * 2)  # layers · tokens · K and V of 1 head of dim 2, bf16
    # all-to-all: 2·k·d·b·(ep−1)/ep = 2·2·4·2·½ = 16 B per token per layer; 8 tokens, 2 layers, fwd + bwd
    assert p.a2a_bytes_per_token_per_moe_layer == 16
    assert s.traffic.a2a_bytes_per_step == 16 * 8 * 2 * 2
    # ring all-gather: the padded shard to n − 1 peers, dense n = 4, experts n = efsdp = 2, twice, bf16
    assert s.traffic.fsdp_all_gather_bytes_per_step == 2 * (3 * 69 + 1 * 72) * 2
    assert s.traffic.fsdp_reduce_scatter_bytes_per_step == (3 * 69 + 1 * 72) * 4
    assert (s.traffic.tp_bytes_per_step, s.traffic.pp_bytes_per_step, p.pipeline_bubble) == (0, 0, 0)


def test_tensor_parallel_splits_tokens_heads_and_kv_by_hand():
    plan = tiny("attention.n_kv_heads=2")
    s = plan_layout(plan, Layout(ep=2, tp=2), 4, "h100", SMALL).busiest
    # sequence parallel: per block 8·(tp−1)/tp·tokens·d·b = 8·½·8·4·2 = 256 B, 2 blocks
    assert s.traffic.tp_bytes_per_step == 2 * 256
    assert s.traffic.a2a_bytes_per_step == 16 * (8 // 2) * 2 * 2  # each TP rank dispatches half the tokens
    assert s.memory.kv_cache_bytes == 2 * 8 * (2 * 2 * 2 * 2) // 2  # 2 KV heads, one per TP rank


@pytest.mark.parametrize("tied", [False, True])
def test_pipeline_stages_bubble_and_boundary_traffic_by_hand(tied: bool):
    plan = tiny(f"model.tie_embeddings={str(tied).lower()}")
    p = plan_layout(plan, Layout(pp=2), 2, "h100", SMALL)  # micro-batches default to pp = 2
    assert p.micro_batches == 2 and p.pipeline_bubble == pytest.approx(1 / 3)
    first, last = p.stages
    # stage 0: embed 40 + block 216; stage 1: block 216 + norm 4 + head 40 (a tied head is embed.weight)
    assert (first.params["total"], last.params["total"]) == (40 + 216, 216 + 4 + 40)
    assert first.traffic.pp_bytes_per_step == last.traffic.pp_bytes_per_step == 8 * 4 * 2 * 2  # one way, 2 mbs
    # 1F1B: stage 0 holds both micro-batches, stage 1 one; together one copy of the analyzer's estimate
    total = analyze(plan, seq=8).memory.activation_bytes_estimate
    assert first.memory.activation_bytes / 2 + last.memory.activation_bytes == total


def test_mixtral_all_to_all_and_shards_at_ep_8():
    p = plan_layout(load_model("mixtral-8x7b"), Layout(ep=8), 8, "h200", Workload(seq=4096))
    assert p.a2a_bytes_per_token_per_moe_layer == 28_672  # 2·2·4096·2·7/8
    assert p.busiest.traffic.a2a_bytes_per_step == 28_672 * 4096 * 32 * 2
    # 45,097,156,608 routed-expert and 1,605,636,096 other parameters (moec analyze), split 8 ways
    assert (p.busiest.params["experts"], p.busiest.params["other"]) == (5_637_144_576, 200_704_512)


def test_deepseek_v3_all_to_all_at_ep_64():
    p = plan_layout(load_model("deepseek-v3"), Layout(ep=64, pp=16), 2048, "h200", Workload(seq=4096))
    assert p.a2a_bytes_per_token_per_moe_layer == 2 * 8 * 7168 * 2 * Fraction(63, 64) == 225_792
    assert p.efsdp == 2 and p.micro_batches == 16


def test_search_puts_expert_parallel_fsdp_first_for_mixtral_on_one_h200_node():
    """On 8 × H200 the layout without TP or PP traffic, without a bubble, and with each rank holding only
    its own experts (ep = 8, efsdp = 1: no expert all-gather) is the best; every other pure-FSDP layout
    gathers experts and sends more."""
    ranked = search(load_model("mixtral-8x7b"), 8, "h200", Workload(seq=4096))
    best = ranked[0]
    assert best.layout == Layout(dp_shard=8, ep=8, tp=1, pp=1) and best.fits
    same_kind = [p for p in ranked[1:] if p.layout.tp == p.layout.pp == 1]
    assert same_kind and all(
        p.busiest.traffic.total_bytes_per_step > best.busiest.traffic.total_bytes_per_step for p in same_kind
    )


def test_search_ranks_only_layouts_that_fit_above_those_that_do_not():
    ranked = search(load_model("mixtral-8x7b"), 16, "h100", Workload(seq=4096))
    fits = [p.fits for p in ranked]
    assert fits[0] and not fits[-1] and fits == sorted(fits, reverse=True)
    assert all(p.busiest.memory.training_peak_bytes <= 80 * 10**9 for p in ranked if p.fits)


def test_mixtral_training_state_alone_overflows_eight_h100s():
    """16 B per parameter × 46.7 B parameters / 8 ranks = 93.4 GB > 80 GB on average, so on some rank,
    whatever the layout."""
    ranked = search(load_model("mixtral-8x7b"), 8, "h100", Workload(seq=4096))
    assert ranked and not any(p.fits for p in ranked)
    assert all(max(s.memory.states_bytes for s in p.stages) >= 16 * 46_702_792_704 // 8 for p in ranked)
