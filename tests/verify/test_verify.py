"""`moec analyze --verify`: on scaled-down copies of every shipped spec the analyzer's forward and training FLOPs
equal torch's FlopCounterMode and its forward FLOPs equal fvcore's multiply-adds, exactly; each tool's gaps
(ops it counts as 0) are filled by formulas checked here against hand-derived counts."""

from __future__ import annotations

import json
import os

import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner

from moec.analyze import analyze
from moec.cli import cli
from moec.spec import load_model
from moec.spec.paths import shipped_specs
from moec.verify import fvcore_count, verify

PLANS = {p: load_model(str(p)) for p in shipped_specs()}  # each shipped spec loaded once, at collection


def _hybrid(path) -> bool:  # type: ignore[no-untyped-def]
    return PLANS[path].hybrid


def _sparse(path) -> bool:  # type: ignore[no-untyped-def]
    return any(lp.attention.has_indexer for lp in PLANS[path].layers)


def _encoder_decoder(path) -> bool:  # type: ignore[no-untyped-def]
    return bool(PLANS[path].encoder)  # refused by analyze --verify (tests of moec.spec.encdec)


ATTENTION_ONLY = [p for p in shipped_specs() if not (_hybrid(p) or _sparse(p) or _encoder_decoder(p))]
HYBRIDS = [p for p in shipped_specs() if _hybrid(p)]
SPARSE = [p for p in shipped_specs() if _sparse(p)]


@pytest.mark.parametrize("path", ATTENTION_ONLY, ids=lambda p: p.stem)
def test_every_count_equals_the_analyzer(path):
    r = verify(load_model(str(path)), seq=8, batch=1)
    assert [(c.tool, c.passes) for c in r.checks] == [
        ("FlopCounterMode", "forward"),
        ("FlopCounterMode", "forward+backward"),
        ("fvcore", "forward"),
    ]
    for c in r.checks:
        assert not c.uncounted_ops, (c.tool, c.uncounted_ops)
        assert c.measured == c.expected, (c.tool, c.passes, c.by_op, r.adjustments)
        assert c.measured > 0
    assert r.ok


@pytest.mark.parametrize("path", HYBRIDS, ids=lambda p: p.stem)
def test_a_hybrid_is_held_to_its_parameters_and_its_flops_are_refused_by_name(path):
    """The counters see a mixer's matmuls, not its scan's elementwise multiply-adds (docs/mixers.md): a hybrid's
    check is the built copy's parameters, each mixer kind kept in it, and the result says why."""
    plan = load_model(str(path))
    r = verify(plan, seq=8, batch=1)
    [check] = r.checks
    assert (check.tool, check.passes) == ("moec.nn build", "parameters")
    assert check.measured == check.expected > 0 and r.ok
    assert any(note.startswith("FLOPs not checked: a hybrid's token mixers") for note in r.adjustments)
    [mixers] = [change for change in r.sizes if change.startswith("layer mixers:")]
    for kind in {lp.mixer_kind for lp in plan.layers}:  # every kind is in the counted copy
        assert kind in mixers.split("→")[1]


@pytest.mark.parametrize("path", SPARSE, ids=lambda p: p.stem)
def test_a_sparse_attention_is_held_to_its_parameters_and_its_flops_are_refused_by_name(path):
    """moec.nn runs DeepSeek Sparse Attention as a mask over every visible key, its indexer without a gradient:
    the counters would see the dense-equivalent scores, not the sparse figure the analyzer states."""
    r = verify(load_model(str(path)), seq=8, batch=1)
    [check] = r.checks
    assert (check.tool, check.passes) == ("moec.nn build", "parameters")
    assert check.measured == check.expected > 0 and r.ok
    assert any(
        note.startswith("FLOPs not checked: moec.nn computes DeepSeek Sparse Attention") for note in r.adjustments
    )


def test_training_is_three_times_forward_without_frozen_weights():
    # the rule the training check holds the analyzer to, seen from the measurement alone
    fwd, train, fv = verify(load_model("textbook-moe"), seq=4, batch=2).checks
    assert train.measured == 3 * fwd.measured
    assert fwd.measured == 2 * fv.measured  # fvcore's "flop" is one multiply-add


def test_frozen_weights_cost_two_times_forward():
    # lora-moe freezes the embedding, attention, norms and head: its backward forms no weight gradient there
    fwd, train, _ = verify(load_model("lora-moe"), seq=4).checks
    assert fwd.measured * 2 < train.measured < fwd.measured * 3


def test_flopcountermode_alone_would_miss_cpu_attention(monkeypatch):
    # CPU SDPA (forward and backward) has no formula in stock FlopCounterMode: ours must be what counts it
    r = verify(load_model("textbook-dense"), seq=8)
    assert any("scaled_dot_product" in op for op in r.checks[0].by_op), r.checks[0].by_op
    assert any("backward" in op for op in r.checks[1].by_op if "scaled_dot_product" in op), r.checks[1].by_op
    monkeypatch.setattr("moec.verify._formulas", dict)
    r = verify(load_model("textbook-dense"), seq=8)
    assert not r.ok
    assert any("scaled_dot_product" in op for op in r.checks[0].uncounted_ops), r.checks[0]


class _Attention(torch.nn.Module):
    def forward(self, q, k, v):
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)


class _Grouped(torch.nn.Module):
    def forward(self, a, b, offs):
        return torch._grouped_mm(a, b, offs=offs)


def test_fvcore_handles_count_multiply_adds():
    # 2 query heads over 1 kv head, 5 queries × 5 keys (all counted, as the kernel computes them), d_qk 8, d_v 4
    q, k, v = torch.randn(1, 2, 5, 8), torch.randn(1, 1, 5, 8), torch.randn(1, 1, 5, 4)
    macs, by_op, uncounted = fvcore_count(_Attention(), (q, k, v))
    assert macs == 2 * 5 * 5 * 8 + 2 * 5 * 5 * 4 and not uncounted, by_op
    # 6 rows in two groups, each row meets one (8, 16) matrix
    a, b, offs = torch.randn(6, 8), torch.randn(2, 8, 16), torch.tensor([2, 6], dtype=torch.int32)
    macs, by_op, uncounted = fvcore_count(_Grouped(), (a, b, offs))
    assert macs == 6 * 8 * 16 and not uncounted, by_op


class _Logits(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, t):
        return self.model(t)[0]


def test_fvcore_convention_equals_fvcore_on_the_full_model():
    # the whole textbook model, not a scaled copy: analyze --convention fvcore per token × 6 tokens = fvcore
    res = CliRunner().invoke(
        cli, ["analyze", "textbook-dense", "--seq", "6", "--convention", "fvcore", "--format", "json"]
    )
    assert res.exit_code == 0, res.output
    [doc] = json.loads(res.stdout)
    model = __import__("moec").build_model("textbook-dense", device="cpu", seed=0).eval()

    with torch.no_grad():
        macs, _, uncounted = fvcore_count(_Logits(model), (torch.zeros(1, 6, dtype=torch.long),))
    assert not uncounted
    assert doc["flops"]["forward"] * 6 == macs
    assert doc["conventions"]["flop_unit"].startswith("1 multiply-add = 1 FLOP")
    moec_json = json.loads(
        CliRunner().invoke(cli, ["analyze", "textbook-dense", "--seq", "6", "--format", "json"]).stdout
    )
    assert moec_json[0]["flops"]["training"] == 2 * doc["flops"]["training"]


def test_cli_adds_the_verify_section_at_the_asked_length():
    res = CliRunner().invoke(cli, ["analyze", "--verify", "mixtral-8x7b", "--seq", "12", "--batch", "2"])
    assert res.exit_code == 0, res.output
    head, section = res.output.split("\nverify mixtral-8x7b: ok, counted on mixtral-8x7b-scaled\n")
    assert "total" in head and "routed" in head  # the normal analysis is still printed
    assert "at batch 2 × seq 12" in section
    assert "d_model: 4096 → 64" in section  # the scaled-down sizes
    for tool in ("FlopCounterMode forward (", "FlopCounterMode forward+backward (", "fvcore forward ("):
        assert f"ok: {tool}" in section, section
    assert "24 tokens" in section
    assert max(len(line) for line in res.output.splitlines()) <= 80


def test_cli_json_is_a_list_with_the_verify_result():
    res = CliRunner().invoke(cli, ["analyze", "--verify", "textbook-moe", "--seq", "4", "--format", "json"])
    assert res.exit_code == 0, res.output
    [doc] = json.loads(res.stdout)
    v = doc["verify"]
    assert v["ok"] and v["seq"] == 4 and v["batch"] == 1
    assert [c["ok"] for c in v["checks"]] == [True, True, True]
    assert v["sizes"][0] == "d_model: 512 → 64"
    assert doc["flops"]["forward"] == analyze(load_model("textbook-moe"), seq=4).flops.forward  # the full model's


def test_cli_mismatch_exits_1_and_names_the_gap(monkeypatch):
    monkeypatch.setattr("moec.verify._formulas", dict)
    res = CliRunner().invoke(cli, ["analyze", "--verify", "textbook-dense", "--seq", "4"])
    assert res.exit_code == 1, res.output
    assert "verify textbook-dense: MISMATCH" in res.output
    assert "ops it counted as nothing: aten._scaled_dot_product_flash_attention_for_cpu" in res.output


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--verify", "--format", "csv"], "--verify adds a section that a CSV table has no room for"),
        (["--threads", "1"], "--threads sets torch's CPU threads, which only --verify uses"),
        # torch segfaulted (exit 139) counting at 4,096 threads; the range stops at the machine's cores
        (["--verify", "--threads", str((os.cpu_count() or 1) + 1)], "is not in the range 1<=x<="),
    ],
)
def test_cli_refuses_what_it_cannot_do(args, words):
    res = CliRunner().invoke(cli, ["analyze", "textbook-moe", *args])
    assert res.exit_code == 2, res.output
    assert words in res.output


def test_fvcore_convention_is_said_above_tables_and_carried_in_csv():
    table = CliRunner().invoke(cli, ["analyze", "textbook-moe", "--convention", "fvcore"]).output
    assert table.startswith("FLOPs: 1 multiply-add = 1 FLOP (fvcore's convention) · ")

    def csv_rows(*extra):
        out = CliRunner().invoke(cli, ["analyze", "textbook-moe", "--format", "csv", *extra]).output
        return dict(line.split(",", 2)[1:] for line in out.splitlines()[1:])

    moec_rows, fvcore_rows = csv_rows(), csv_rows("--convention", "fvcore")
    assert int(moec_rows["flops.forward"]) == 2 * int(fvcore_rows["flops.forward"])
    assert moec_rows["params.total"] == fvcore_rows["params.total"]  # parameters are no FLOPs


def test_an_op_fvcore_cannot_count_is_named(monkeypatch):
    monkeypatch.setattr("moec.verify._fvcore_handles", dict)
    q = torch.randn(1, 2, 5, 8)
    macs, _, uncounted = fvcore_count(_Attention(), (q, q, q))
    assert macs == 0 and uncounted == ["aten::scaled_dot_product_attention"]
