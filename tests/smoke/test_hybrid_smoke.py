"""`moec smoke-run` on hybrid models (docs/mixers.md): the scaled-down copy keeps every layer's token mixer and
FFN kind (hand-written expected patterns of the shipped hybrids), each kind's scaled plan still meets its
section's checks and keeps its structure, and a tiny hybrid learns and reports each sublayer kind's share of
the forward+backward time."""

from __future__ import annotations

import dataclasses
import json

import pytest
from click.testing import CliRunner

from moec.cli import cli
from moec.mixers import KINDS
from moec.smoke.mixers import SCALERS, scale_mixer
from moec.smoke.scale import compress_layers, fit
from moec.spec import load_model
from moec.vocab import LINEAR_MIXERS
from tests.conftest import SPECS
from tests.hybrid_specs import TINY_HYBRID


def tiny_pattern(name: str) -> list[tuple[str, str]]:
    plan = fit(load_model(str(SPECS / f"{name}.yaml")), scale="tiny", budget_bytes=None, batch=2, seq=16).plan
    return [(lp.mixer_kind, lp.ffn.kind) for lp in plan.layers]


# Each from the spec's own layer list: runs of identical layers shortened to two, the first four kept, and the
# first layer of a kind missing from them (Jamba's attention on layer 4) put in place of the last.
EXPECTED_PATTERNS = {
    # Gated DeltaNet on layers 0-2, attention on 3, MoE everywhere
    "qwen3-next-80b-a3b": [("gated_deltanet", "moe"), ("gated_deltanet", "moe"), ("attention", "moe"), ("gated_deltanet", "moe")],
    # Mamba on 0-3, attention on 4, MoE on the odd layers
    "jamba-v0.1": [("mamba", "dense"), ("mamba", "moe"), ("mamba", "dense"), ("attention", "dense")],
    # KDA on 0-2, MLA on 3; layer 0 dense
    "kimi-linear-48b-a3b": [("kda", "dense"), ("kda", "moe"), ("kda", "moe"), ("attention", "moe")],
    # Lightning on 0-6, attention on 7
    "minimax-text-01": [("lightning", "moe"), ("lightning", "moe"), ("attention", "moe"), ("lightning", "moe")],
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(EXPECTED_PATTERNS))
def test_the_scaled_copy_keeps_each_layers_mixer_and_ffn(name: str):
    assert tiny_pattern(name) == EXPECTED_PATTERNS[name]


# mamba on 0, 2, 4; attention on 1, 3, 5; a short convolution on 6 alone; MoE on layer 5 alone
LATE_KINDS = """\
moec: 1
name: late-kinds
model: {vocab_size: 64, d_model: 32, n_layers: 7, max_seq_len: 64}
attention: {n_heads: 4}
mixers: {mamba: {}, short_conv: {}}
ffn: {d_ff: 64}
moe: {n_experts: 4, d_ff: 16, router: {top_k: 2}, balance: {load_balance_coeff: 0.01}}
layers:
  default: {ffn: dense, mixer: mamba}
  overrides:
    - {select: {layers: [1, 3, 5]}, mixer: attention}
    - {select: {layers: [6]}, mixer: short_conv}
    - {select: {layers: [5]}, ffn: moe}
"""


def test_kinds_past_the_first_layers_take_the_place_of_repeated_ones(write_spec):
    """The first four layers hold mamba and attention only: the short convolution (layer 6) replaces layer 3 (an
    attention layer, one more is kept), then the MoE layer 5 replaces layer 2 (a mamba layer, layer 0 is kept),
    never the only layer of a kind."""
    plan = load_model(str(write_spec(LATE_KINDS)))
    kept = compress_layers(plan.layers, 4)
    assert [lp.index for lp in kept] == [0, 1, 5, 6]
    assert [(lp.mixer_kind, lp.ffn.kind) for lp in kept] == [
        ("mamba", "dense"),
        ("attention", "dense"),
        ("attention", "moe"),
        ("short_conv", "dense"),
    ]


def test_every_mixer_kind_has_a_scaler():
    assert set(SCALERS) == set(LINEAR_MIXERS)


def section_of(plan: object, d_model: int) -> object:
    """The spec section that would plan to ``plan`` at ``d_model`` (the fields the two share; Mamba's inner
    width as its expand), to run the kind's own checks on a scaled plan."""
    kind = KINDS[plan.kind]  # type: ignore[attr-defined]
    values = {f.name: getattr(plan, f.name) for f in dataclasses.fields(plan) if f.name in kind.Section.model_fields}
    values.pop("norm_eps", None)
    if plan.kind == "mamba":  # type: ignore[attr-defined]
        assert plan.inner_dim % d_model == 0  # type: ignore[attr-defined]
        values["expand"] = plan.inner_dim // d_model  # type: ignore[attr-defined]
    return kind.Section(**values)


def shipped_mixer_plans() -> list[tuple[str, object, int]]:
    out, seen = [], set()
    for path in sorted(SPECS.glob("*.yaml")):
        model = load_model(str(path))
        for lp in model.layers:
            if lp.mixer_kind not in ("attention", "none") and (path.stem, lp.mixer_kind) not in seen:
                seen.add((path.stem, lp.mixer_kind))  # one layer per kind (lightning's differ only in depth)
                out.append((path.stem, lp.mixer, model.d_model))
    return out


@pytest.mark.parametrize(("spec", "plan", "old_d"), shipped_mixer_plans(), ids=lambda x: getattr(x, "kind", x))
@pytest.mark.parametrize(("d_model", "seq"), [(32, 8), (64, 16), (256, 512)])
def test_a_scaled_mixer_meets_its_kinds_checks_and_keeps_its_structure(spec, plan, old_d, d_model, seq):
    scaled = scale_mixer(plan, old_d, d_model, seq)
    assert KINDS[plan.kind].problems(section_of(scaled, d_model), d_model) == []
    assert scaled.kind == plan.kind and getattr(scaled, "conv_kernel", 0) == getattr(plan, "conv_kernel", 0)
    if plan.kind == "gated_deltanet":  # value heads per key head
        assert scaled.n_value_heads * plan.n_key_heads == plan.n_value_heads * scaled.n_key_heads
    if plan.kind == "kda":  # full rank (0) stays full rank
        assert (scaled.decay_rank == 0) == (plan.decay_rank == 0) and (scaled.gate_rank == 0) == (plan.gate_rank == 0)
    if plan.kind == "mamba":  # the inner width stays expand × d_model
        assert scaled.inner_dim * old_d == plan.inner_dim * d_model
    if plan.kind == "mamba2":  # grouped B and C stay grouped
        assert (scaled.n_groups > 1) == (plan.n_groups > 1)
    chunk = getattr(plan, "chunk", None)
    if chunk is not None:  # a short run still crosses a chunk boundary
        assert scaled.chunk == min(chunk, seq // 2)


def test_a_tiny_hybrid_learns_and_reports_each_sublayer_kinds_time(write_spec, one_torch_thread):
    spec = write_spec(TINY_HYBRID)
    args = ["smoke-run", str(spec), "--device", "cpu", "--steps", "16", "--batch", "4", "--seq", "16"]
    res = CliRunner().invoke(cli, [*args, "--lr", "0.01", "--format", "json"])
    assert res.exit_code == 0, res.output
    report = json.loads(res.output)
    assert report["ok"] and report["loss_last"] < report["loss_first"]
    shares = report["time_shares"]
    # the spec's layers: gated_deltanet + dense FFN, short_conv + MoE, attention + MoE, mamba alone
    assert list(shares) == ["gated_deltanet", "short_conv", "attention", "mamba", "ffn", "moe"]
    assert all(s > 0 for s in shares.values()) and sum(shares.values()) <= 1
