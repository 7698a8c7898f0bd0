"""moe.segmentation writes DeepSeekMoE's rule (arXiv 2401.06066, section 3): N experts of width F split into m
each, mN of width F/m with top mK, K_s of them shared: mN − K_s routed, top-k mK − K_s."""

from __future__ import annotations

import pytest
import yaml

from moec.analyze import analyze
from moec.errors import SpecError
from moec.spec import load_spec, resolve
from tests.conftest import SPECS

SHIPPED = SPECS / "deepseek-moe-16b.yaml"


def paper_way(segmentation: str) -> str:
    """The shipped DeepSeekMoE-16B spec with its moe section written as the paper describes it: standard
    experts of width 4 × 1408 = 5632, split in 4 (the router and balance fields as shipped)."""
    data = yaml.safe_load(SHIPPED.read_text())
    moe = data["moe"]
    router = {k: v for k, v in moe["router"].items() if k != "top_k"}
    data["moe"] = {"d_ff": 4 * moe["d_ff"], "segmentation": yaml.safe_load(segmentation), "router": router,
                   "balance": moe["balance"]}  # fmt: skip
    return yaml.safe_dump(data, sort_keys=False)


def test_the_paper_way_equals_the_shipped_plain_spec_exactly() -> None:
    # 2 shared + 64 routed quarter-width segments: 66 = m·N with m = 4, so N = 16.5; 8 = m·K active
    written = load_spec(str(SHIPPED), text=paper_way("{experts: 16.5, top_k: 2, granularity: 4, shared: 2}"))
    shipped = load_spec(str(SHIPPED))
    assert written.spec_hash == shipped.spec_hash
    assert resolve(written) == resolve(shipped)
    moe = resolve(written).layers[1].ffn
    assert (moe.n_experts, moe.top_k, moe.d_ff, moe.n_shared_experts, moe.d_ff_shared) == (64, 6, 1408, 2, 1408)


def test_the_paper_way_gives_the_published_16_4b_total_and_2_8b_active() -> None:
    a = analyze(resolve(load_spec("x.yaml", text=paper_way("{experts: 16.5, top_k: 2, granularity: 4, shared: 2}"))))
    assert round(a.params.total / 1e9, 1) == 16.4  # DeepSeekMoE paper, section 5: 16.4B total
    assert round(a.params.active / 1e9, 1) == 2.8  # and 2.8B activated


def test_sixteen_standard_experts_would_be_62_routed_and_miss_the_published_total() -> None:
    """The reading the issue tried (N = 16): the rule now gives top-6 of 62 routed, 2.8B active, but 15.9B total;
    the release has 66 segments."""
    plan = resolve(load_spec("x.yaml", text=paper_way("{experts: 16, top_k: 2, granularity: 4, shared: 2}")))
    moe = plan.layers[1].ffn
    assert (moe.n_experts, moe.top_k, moe.n_shared_experts) == (62, 6, 2)
    a = analyze(plan)
    assert round(a.params.active / 1e9, 1) == 2.8 and round(a.params.total / 1e9, 1) == 15.9


def test_the_papers_2b_model() -> None:
    """DeepSeekMoE 2B (section 4.1): 16 standard experts in 4 segments each, 1 shared, top-7 of 63 routed; one
    segment's width is a quarter of the standard expert's."""
    text = """\
moec: 1
name: deepseekmoe-2b-like
model: {vocab_size: 100, d_model: 64, n_layers: 2, max_seq_len: 64}
attention: {n_heads: 4}
moe:
  d_ff: 256
  segmentation: {experts: 16, top_k: 2, granularity: 4, shared: 1}
  router: {score: softmax}
  balance: {load_balance_coeff: 0.01}
layers: {default: {ffn: moe}}
"""
    moe = resolve(load_spec("x.yaml", text=text)).layers[0].ffn
    assert (moe.n_experts, moe.top_k, moe.d_ff, moe.n_shared_experts, moe.d_ff_shared) == (63, 7, 64, 1, 64)


@pytest.mark.parametrize(
    "segmentation,extra,where,message",
    [
        ("{experts: 16.3, top_k: 2, granularity: 4}", "", "moe.segmentation.experts", "must be whole"),
        ("{experts: 16, top_k: 2.1, granularity: 4}", "", "moe.segmentation.top_k", "must be whole"),
        ("{experts: 4, top_k: 8, granularity: 4}", "", "moe.segmentation.top_k", "exceeds experts"),
        ("{experts: 16, top_k: 2, granularity: 4, shared: 8}", "", "moe.segmentation.shared", "no routed expert"),
        ("{experts: 16, top_k: 2, granularity: 3}", "", "moe.d_ff", "not divisible"),
        ("{experts: 16, top_k: 2, granularity: 4}", "n_experts: 64, ", "moe.segmentation", "remove n_experts"),
        ("{experts: x, top_k: 2, granularity: 4}", "", "moe.segmentation.experts", "valid number"),
    ],
)
def test_a_segmentation_that_cannot_resolve_is_one_located_error(segmentation, extra, where, message) -> None:
    text = f"""\
moec: 1
name: t
model: {{vocab_size: 100, d_model: 64, n_layers: 2, max_seq_len: 64}}
attention: {{n_heads: 4}}
moe: {{{extra}d_ff: 256, segmentation: {segmentation}, router: {{score: softmax}}}}
layers: {{default: {{ffn: moe}}}}
"""
    with pytest.raises(SpecError) as e:
        load_spec("x.yaml", text=text)
    (problem,) = e.value.problems
    assert (problem.line, problem.path) == (5, where) and message in problem.message
