"""The analyzer against published and independently measured figures (docs/conventions.md, "Reference figures").

The Mixtral and DeepSeek-V3 numbers were measured with torch's FlopCounterMode on full-size meta-device
models and with transformers' parameter counts (docs/conventions.md, "Reference figures"); the others
are the vendors' published totals.
"""

from __future__ import annotations

import pytest

from moec.analyze import analyze
from moec.spec import load_model
from tests.conftest import SPECS


def model(name: str):
    return load_model(str(SPECS / f"{name}.yaml"))


def test_mixtral_8x7b_matches_published_and_measured_figures():
    m = model("mixtral-8x7b")
    a1 = analyze(m, seq=1)
    assert a1.params.total == 46_702_792_704
    assert a1.params.active == 12_879_925_248
    assert a1.flops.forward == 25_497_698_304
    assert analyze(m, seq=4096, attention="full").flops.forward == 27_644_657_664
    assert a1.memory.kv_cache_bytes_per_token == 131_072  # bf16


def test_deepseek_v3_without_mtp_matches_published_and_measured_figures():
    m = model("deepseek-v3")
    a1 = analyze(m, seq=1)
    assert a1.params.total == 671_026_404_352
    assert a1.params.active == 37_552_282_624
    assert a1.flops.forward == 73_254_191_104
    assert analyze(m, seq=4096).flops.forward == 93_717_397_504
    assert a1.memory.kv_cache_bytes_per_token == 70_272  # MLA latent, bf16
    # the MTP module is reported on its own and never folded into the headline
    assert a1.mtp is not None and a1.mtp.n_layers == 1 and a1.mtp.params > 0


def test_llama_2_7b_total_is_the_published_count():
    assert analyze(model("llama-2-7b")).params.total == 6_738_415_616


@pytest.mark.parametrize(
    "name, total_b, active_b",
    [
        ("mixtral-8x22b", 141, 39),  # Mistral AI: 141B total, 39B active
        ("qwen3-30b-a3b", 30.5, 3.3),  # Qwen3 report: 30.5B total, 3.3B active
        ("deepseek-moe-16b", 16.4, 2.8),  # DeepSeekMoE paper: 16.4B total, 2.8B active
    ],
)
def test_published_rounded_totals(name: str, total_b: float, active_b: float):
    a = analyze(model(name))
    assert a.params.total / 1e9 == pytest.approx(total_b, abs=0.55 if total_b > 100 else 0.05)
    # vendors truncate as often as they round (Qwen3's 3,353,032,704 is published as "3.3B")
    assert a.params.active / 1e9 == pytest.approx(active_b, abs=0.55 if active_b > 10 else 0.06)


def test_textbook_pair_moe_has_8x_ffn_params_and_same_ffn_flops_plus_router():
    dense, moe = model("textbook-dense"), model("textbook-moe")
    a, b = analyze(dense), analyze(moe)
    comp_a = {c.name: c for c in a.components}
    comp_b = {c.name: c for c in b.components}
    d, L, E = 512, 8, 8
    assert comp_b["routed_experts"].params == 8 * comp_a["dense_ffn"].params
    assert comp_b["routed_experts"].flops == comp_a["dense_ffn"].flops  # top-1 of same-width experts
    assert comp_b["router"].flops == L * 2 * d * E
    assert b.flops.forward - a.flops.forward == L * 2 * d * E
    # hand-derived: GELU FFN 2 matrices of 512x2048 per layer
    assert comp_a["dense_ffn"].params == L * 2 * 512 * 2048
