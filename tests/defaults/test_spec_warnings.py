"""validate and analyze warn, on stderr with file:line:col and field, and still exit 0, about valid settings that
are probably not meant: no load balancing, an unused moe or ffn section, a capacity that must drop tokens."""

from __future__ import annotations

import json
import math

import pytest
from click.testing import CliRunner

from moec.cli import cli
from moec.spec.traps import forced_drop_tokens
from tests.conftest import SPECS

HEAD = """\
moec: 1
name: t
model: {vocab_size: 100, d_model: 64, n_layers: 2, max_seq_len: 64}
attention: {n_heads: 4}
"""


def run(*args: str):
    return CliRunner().invoke(cli, list(args))


def warnings_of(result) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith("warning: ")]


@pytest.mark.parametrize("command", ["validate", "analyze"])
def test_no_balancing_warns_at_the_moe_section_and_exits_0(write_spec, command: str) -> None:
    path = write_spec(HEAD + "moe: {n_experts: 4, d_ff: 32, router: {top_k: 2}}\nlayers: {default: {ffn: moe}}\n")
    r = run(command, str(path))
    assert r.exit_code == 0, r.output
    assert warnings_of(r) == [
        f"warning: {path}:5:1 moe: no load balancing: load_balance_coeff is 0 by default and there is no "
        "bias_update_rate, so routing can collapse onto a few experts; set moe.balance.load_balance_coeff (0.01 "
        "is common), or write it as 0 to say none is meant"
    ]
    assert "warning" not in r.stdout


@pytest.mark.parametrize(
    "balance",
    [
        "balance: {load_balance_coeff: 0.01}",
        "balance: {load_balance_coeff: 0}",  # said explicitly: meant
        "router: {top_k: 2, selection_bias: true}, balance: {bias_update_rate: 0.001}",  # aux-loss-free
    ],
)
def test_any_written_balancing_is_quiet(write_spec, balance: str) -> None:
    router = "" if "router" in balance else "router: {top_k: 2}, "
    path = write_spec(HEAD + f"moe: {{n_experts: 4, d_ff: 32, {router}{balance}}}\nlayers: {{default: {{ffn: moe}}}}\n")
    r = run("validate", str(path))
    assert (r.exit_code, warnings_of(r)) == (0, [])


@pytest.mark.parametrize(
    "router",
    ["{dense: true}", "{top_k: 2, kind: hash}", "{top_k: 2, kind: expert_choice}"],
)
def test_routing_that_cannot_collapse_needs_no_balancing(write_spec, router: str) -> None:
    path = write_spec(HEAD + f"moe: {{n_experts: 4, d_ff: 32, router: {router}}}\nlayers: {{default: {{ffn: moe}}}}\n")
    r = run("validate", str(path))
    assert (r.exit_code, warnings_of(r)) == (0, [])


def test_an_unused_moe_section_warns(write_spec) -> None:
    moe = "moe: {n_experts: 4, d_ff: 32, router: {top_k: 2}, balance: {load_balance_coeff: 0.01}}\n"
    path = write_spec(HEAD + "ffn: {d_ff: 128}\n" + moe)
    r = run("validate", str(path))
    assert r.exit_code == 0
    assert warnings_of(r) == [
        f"warning: {path}:6:1 moe: no layer uses this moe section (layers.default.ffn and the overrides are all dense)"
    ]


def test_an_unused_ffn_section_warns_that_it_still_sets_the_experts_activation(write_spec) -> None:
    moe = "moe: {n_experts: 4, d_ff: 32, router: {top_k: 2}, balance: {load_balance_coeff: 0.01}}\n"
    path = write_spec(HEAD + "ffn: {d_ff: 128, activation: gelu}\n" + moe + "layers: {default: {ffn: moe}}\n")
    r = run("validate", str(path))
    assert warnings_of(r) == [
        f"warning: {path}:5:1 ffn: no layer uses this ffn section (every layer is an MoE layer); it still gives "
        "the experts its activation, since moe.activation is unset"
    ]


def test_a_base_specs_unused_ffn_section_is_not_this_specs_business() -> None:
    r = run("validate", str(SPECS / "textbook-moe.yaml"))  # extends textbook-dense, keeps its ffn section
    assert (r.exit_code, warnings_of(r)) == (0, [])


def test_no_shipped_spec_warns() -> None:
    r = run("validate", *sorted(str(p) for p in SPECS.glob("*.yaml")))
    assert (r.exit_code, r.stderr) == (0, "")


def test_no_warnings_switch_and_clean_json(write_spec) -> None:
    path = write_spec(HEAD + "moe: {n_experts: 4, d_ff: 32, router: {top_k: 2}}\nlayers: {default: {ffn: moe}}\n")
    for quiet in ("--no-warnings", "-q"):
        r = run("validate", quiet, str(path))
        assert (r.exit_code, r.stderr) == (0, "")
    r = run("analyze", "--format", "json", str(path))
    assert len(warnings_of(r)) == 1
    assert json.loads(r.stdout)[0]["name"] == "t"  # warnings stay out of the JSON on stdout


# --- capacity that must drop -------------------------------------------------------------------


def balanced_drops(tokens: int, n_experts: int, top_k: int, capacity_factor: float) -> int:
    """Slots dropped when T tokens route as evenly as k distinct experts each allow (token t takes experts
    t·k, …, t·k + k − 1 mod E: loads differ by at most 1, the fewest drops any routing can have), with
    moec's capacity ceil(cf·T·k/E) per expert (moec/nn/router.py)."""
    load = [0] * n_experts
    for t in range(tokens):
        for j in range(top_k):
            load[(t * top_k + j) % n_experts] += 1
    capacity = math.ceil(capacity_factor * tokens * top_k / n_experts)
    return sum(max(0, n - capacity) for n in load)


@pytest.mark.parametrize(
    "capacity_factor,n_experts,top_k",
    [(0.5, 4, 2), (0.9, 8, 2), (0.75, 64, 1), (0.99, 16, 4), (0.25, 3, 1), (1.0, 8, 2), (1.25, 64, 6)],
)
def test_forced_drop_condition_matches_the_most_balanced_routing(capacity_factor, n_experts, top_k) -> None:
    drops = [balanced_drops(t, n_experts, top_k, capacity_factor) for t in range(1, 400)]
    first = next((t for t, d in enumerate(drops, start=1) if d), None)
    assert forced_drop_tokens(capacity_factor, n_experts, top_k) == first
    if first is not None:  # and from E / (k·(1 − cf)) tokens on, every batch drops
        bound = math.ceil(n_experts / (top_k * (1 - capacity_factor)))
        assert all(drops[t - 1] for t in range(bound, 400))


def test_capacity_below_one_warns_at_the_field(write_spec) -> None:
    moe = "moe: {n_experts: 4, d_ff: 32, router: {top_k: 2}, balance: {load_balance_coeff: 0.01}, capacity_factor: 0.5}"
    path = write_spec(HEAD + moe + "\nlayers: {default: {ffn: moe}}\n")
    r = run("analyze", str(path))
    assert r.exit_code == 0
    (line,) = warnings_of(r)
    assert line.startswith(f"warning: {path}:5:{moe.index('capacity_factor') + 1} moe.capacity_factor: ")
    assert "at T = 3 and at every T ≥ 4" in line  # 4 experts, top-2, cf 0.5: T = 3 is 6 assignments, 4 slots


def test_a_capacity_group_that_must_drop_says_how_many(write_spec) -> None:
    moe = (
        "moe: {n_experts: 8, d_ff: 32, router: {top_k: 2}, balance: {load_balance_coeff: 0.01}, "
        "capacity_factor: 0.75, capacity_group_size: 64}"
    )
    path = write_spec(HEAD + moe + "\nlayers: {default: {ffn: moe}}\n")
    (line,) = warnings_of(run("validate", str(path)))
    # 64 tokens × 2 = 128 assignments; ceil(0.75·64·2/8) = 12 slots × 8 experts = 96: 32 drop
    assert balanced_drops(64, 8, 2, 0.75) == 32
    assert "at least 32 (25%) drop" in line


def test_capacity_one_or_more_is_quiet(write_spec) -> None:
    moe = "moe: {n_experts: 4, d_ff: 32, router: {top_k: 2}, balance: {load_balance_coeff: 0.01}, capacity_factor: 1.0}"
    path = write_spec(HEAD + moe + "\nlayers: {default: {ffn: moe}}\n")
    assert warnings_of(run("validate", str(path))) == []


# --- a top-1 weight that is always 1 -----------------------------------------------------------


@pytest.mark.parametrize("field", ["normalize_topk", "softmax_after_topk"])
def test_top1_with_a_renormalised_weight_warns_that_the_router_gets_no_gradient(write_spec, field: str) -> None:
    moe = f"moe: {{n_experts: 4, d_ff: 32, router: {{top_k: 1, {field}: true}}, balance: {{load_balance_coeff: 0.01}}}}"
    path = write_spec(HEAD + moe + "\nlayers: {default: {ffn: moe}}\n")
    (line,) = warnings_of(run("validate", str(path)))
    assert line.startswith(f"warning: {path}:5:{moe.index(field) + 1} moe.router.{field}: top-1 routing")


@pytest.mark.parametrize("normalize,constant", [("true", True), ("false", False)])
def test_the_top1_weight_really_is_constant_and_gives_the_router_no_gradient(normalize: str, constant: bool) -> None:
    """What the warning claims, seen in moec's router (and not without normalize_topk, where Switch's softmax
    probability carries the gradient)."""
    torch = pytest.importorskip("torch")
    from moec.nn.router import Router
    from moec.spec import load_spec, resolve

    router = f"{{top_k: 1, normalize_topk: {normalize}}}"
    moe = f"moe: {{n_experts: 4, d_ff: 32, router: {router}, balance: {{load_balance_coeff: 0}}}}"
    plan = resolve(load_spec("x.yaml", text=HEAD + moe + "\nlayers: {default: {ffn: moe}}\n")).layers[0].ffn
    torch.manual_seed(0)
    router = Router(plan, 64)
    torch.nn.init.normal_(router.weight)
    w = router(torch.randn(16, 64)).topk_w  # (16, 1)
    (grad,) = torch.autograd.grad((w * torch.randn(16, 1)).sum(), [router.weight])
    assert torch.allclose(w, torch.ones(16, 1)) == constant
    assert bool(grad.abs().max() < 1e-6) == constant  # p/p: 0 but for rounding (about 1e-8)
