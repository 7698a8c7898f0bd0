"""The roofline against hand-derived figures (docs/roofline.md): Mixtral's routed-expert bytes at batch 1
and 64, a dense FFN's crossover batch, the distinct-expert formula against enumeration."""

from __future__ import annotations

import itertools
from fractions import Fraction

import pytest

from moec.plan.accelerators import ACCELERATORS
from moec.roofline.experts import expected_distinct, expected_distinct_loaded, layer_picks, pick_probabilities
from moec.roofline.model import Workload, crossover_batch, layout_problems, roofline
from moec.spec import load_model

MIXTRAL = load_model("mixtral-8x7b")
H100 = ACCELERATORS["h100"]
# Mixtral-8x7B: 32 layers, d 4096, 8 SwiGLU experts of width 14336 (three matrices each), bf16 = 2 bytes
MIXTRAL_EXPERT_BYTES = 3 * 4096 * 14336 * 2
MIXTRAL_LAYERS = 32


def cost(r, name):
    return next(c for c in r.costs if c.name == name)


def test_mixtral_decode_batch_1_reads_two_of_eight_experts_per_layer():
    r = roofline(MIXTRAL, H100, "h100", Workload("decode", batch=1, seq=4096))
    assert cost(r, "routed_experts").bytes == 2 * MIXTRAL_EXPERT_BYTES * MIXTRAL_LAYERS
    assert r.distinct_experts == 2


def test_mixtral_decode_batch_64_reads_the_expected_distinct_experts():
    r = roofline(MIXTRAL, H100, "h100", Workload("decode", batch=64, seq=4096))
    distinct = 8 * (1 - Fraction(6, 8) ** 64)  # E·(1 − (1 − k/E)^b), exactly
    expected = distinct * MIXTRAL_EXPERT_BYTES * MIXTRAL_LAYERS
    assert cost(r, "routed_experts").bytes == pytest.approx(float(expected), rel=1e-12)
    # 64 tokens × 2 experts × 2 FLOPs per weight, whatever the number of distinct experts
    assert cost(r, "routed_experts").flops == 64 * 2 * 2 * (MIXTRAL_EXPERT_BYTES // 2) * MIXTRAL_LAYERS


@pytest.mark.parametrize(("gpu", "dtype"), [("h100", "bf16"), ("h100", "fp32"), ("mi300x", "bf16"), ("b200", "fp8")])
def test_dense_ffn_turns_compute_bound_at_peak_over_bandwidth_times_bytes_per_weight(gpu, dtype):
    # a token costs 2 FLOPs per weight and the step reads each weight once (nb bytes): compute-bound once
    # b·2/peak ≥ nb/bandwidth, i.e. b ≥ peak / bandwidth × nb / 2
    acc = ACCELERATORS[gpu]
    nb = {"fp32": 4, "bf16": 2, "fp8": 1}[dtype]
    hand = acc.peak_flops[dtype] / acc.hbm_bytes_per_s * nb / 2
    found = crossover_batch(load_model("llama-2-7b"), acc, gpu, Workload(dtype=dtype, kv_dtype=dtype), "dense_ffn")
    assert found is not None and abs(found - hand) <= 1


def test_distinct_experts_formula_equals_enumerating_every_routing():
    # E = 5 experts, k = 2 each, T = 3 tokens: every one of C(5,2)^3 = 1000 routings equally likely
    choices = list(itertools.combinations(range(5), 2))
    routings = list(itertools.product(choices, repeat=3))
    mean = Fraction(sum(len(set().union(*r)) for r in routings), len(routings))
    assert expected_distinct(5, 2, 3) == pytest.approx(float(mean), rel=1e-12)
    assert expected_distinct_loaded([2 / 5] * 5, 3) == pytest.approx(float(mean), rel=1e-12)


def test_a_skewed_load_reads_fewer_distinct_experts():
    # top-1, slots 3:1:0:0 → p = (3/4, 1/4, 0, 0); two tokens miss expert 0 with (1/4)², expert 1 with (3/4)²
    p = pick_probabilities([3, 1, 0, 0], top_k=1)
    assert p == [0.75, 0.25, 0.0, 0.0]
    assert expected_distinct_loaded(p, 2) == pytest.approx((1 - 0.25**2) + (1 - 0.75**2))
    assert expected_distinct_loaded(p, 2) < expected_distinct(4, 1, 2)


def test_a_measured_uniform_load_gives_the_uniform_roofline():
    picks = layer_picks({i: [5] * 8 for i in range(32)}, {i: (8, 2) for i in range(32)}, "load.json")
    w = Workload(batch=16, ep=2)
    uniform, loaded = roofline(MIXTRAL, H100, "h100", w), roofline(MIXTRAL, H100, "h100", w, picks=picks)
    for a, b in zip(uniform.costs, loaded.costs, strict=True):
        assert (a.name, a.flops, a.bytes) == (b.name, pytest.approx(b.flops), pytest.approx(b.bytes))


def test_tensor_parallelism_splits_the_projections_and_gqa_kv_cache():
    one = roofline(MIXTRAL, H100, "h100", Workload(batch=8))
    two = roofline(MIXTRAL, H100, "h100", Workload(batch=8, tp=2))
    for name in ("attention", "attention_scores", "lm_head"):
        assert cost(two, name).bytes == cost(one, name).bytes / 2
        assert cost(two, name).flops == cost(one, name).flops / 2
    assert cost(two, "router").flops == cost(one, "router").flops  # replicated on the TP ranks
    # with ep = 1 the two TP ranks split the tokens between replicated experts: 4 tokens each
    assert two.distinct_experts == pytest.approx(expected_distinct(8, 2, 4))


def test_prefill_counts_causal_scores_and_one_head_row_per_sequence():
    dense = load_model("textbook-dense")  # d 512, 8 heads of 64, V 8192, 8 layers
    r = roofline(dense, H100, "h100", Workload("prefill", batch=2, seq=8))
    # causal: a query attends (S + 1)/2 = 4.5 keys on average; 4·h·hd per key (QKᵀ and AV)
    assert cost(r, "attention_scores").flops == 2 * 8 * 8 * 4 * 512 * 4.5
    assert cost(r, "lm_head").flops == 2 * 2 * 512 * 8192
    assert r.tokens_per_s == 16 / r.step_s


@pytest.mark.parametrize(
    ("tp", "ep", "option", "words"),
    [
        (3, 1, "--tp", "n_heads = 32 does not divide by tp = 3"),
        (4, 6, "--ep", "multiple of the smaller"),
        (1, 3, "--ep", "n_experts = 8 does not divide by ep = 3"),
    ],
)
def test_layouts_the_model_cannot_take_are_named(tp, ep, option, words):
    problems = layout_problems(MIXTRAL, Workload(tp=tp, ep=ep))
    assert any(o == option and words in m for o, m in problems), problems


def test_decode_step_time_is_the_sum_of_component_lower_bounds():
    r = roofline(MIXTRAL, H100, "h100", Workload(batch=4))
    assert r.step_s == pytest.approx(sum(max(c.compute_s, c.memory_s) for c in r.costs))
    assert r.tokens_per_s == pytest.approx(4 / r.step_s)
