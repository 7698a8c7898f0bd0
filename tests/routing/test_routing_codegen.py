"""The code generator renders the routing algorithms of docs/routing.md, and the generated model.py equals moec.nn
on the same weights: logits, every MoEAux field and every gradient, bit for bit, in training and in eval (docs/
architecture.md, invariant 4). What it does not render yet it refuses by name, through `moec build`: exit 2, one
error line, no output folder."""

from __future__ import annotations

import pytest
import torch
from click.testing import CliRunner

from moec.cli import cli
from moec.codegen import render_model_source
from tests.codegen.test_codegen import assert_ruff_clean, assert_same_aux, library_and_generated, plan_of, run_both
from tests.tiny_specs import TINY_MOE

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TOP2 = "router: {top_k: 2, normalize_topk: true}"
BALANCED = "balance: {load_balance_coeff: 0.01, z_loss_coeff: 0.001}"


def routed(router: str, extra: str = "") -> str:
    """TINY_MOE with its router replaced, and ``extra`` fields of the moe section."""
    assert TOP2 in TINY_MOE
    return TINY_MOE.replace(TOP2, f"router: {{{router}}}{', ' + extra if extra else ''}")


# each case: the spec, and a line of source that only that router renders
RENDERED = {
    "router-mlp": (
        routed("top_k: 2, normalize_topk: true, mlp_hidden: 8", BALANCED),
        "F.gelu(F.linear(xf, self.hidden",
    ),
    "router-mlp-bias-sigmoid-sequence": (
        routed(
            "top_k: 2, score: sigmoid, bias: true, mlp_hidden: 6",
            "balance: {load_balance_coeff: 0.01, load_balance_granularity: sequence}",
        ),
        "self.hidden = Linear(d_model, mlp_hidden, bias=False)",
    ),
}


def assert_same_gradients(gen, lib) -> None:
    lib_params = dict(lib.named_parameters())
    assert {n for n, _ in gen.named_parameters()} == set(lib_params)
    for name, p in gen.named_parameters():
        q = lib_params[name]
        assert (p.grad is None) == (q.grad is None), name
        if p.grad is not None:
            assert torch.equal(p.grad, q.grad), (name, (p.grad - q.grad).abs().max())


@pytest.mark.parametrize("case", list(RENDERED))
def test_the_generated_router_equals_the_library_in_eval_and_in_training(case, tmp_path):
    text, marker = RENDERED[case]
    plan, lib, gen, _ = library_and_generated(text, tmp_path)
    assert marker in render_model_source(plan)
    tokens = torch.randint(0, plan.vocab_size, (2, 8), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        logits, aux, out = run_both(lib, gen, tokens, train=False)
    assert torch.equal(out[0], logits)
    assert_same_aux(out[1], aux)
    logits, aux, out = run_both(lib, gen, tokens, train=True)
    assert torch.equal(out[0], logits)
    assert_same_aux(out[1], aux)
    assert all(float(a.loss.detach()) > 0 for a in aux.layers)  # the router losses are in the gradients compared below
    (logits.square().mean() + aux.loss).backward()
    (out[0].square().mean() + out[1].loss).backward()
    assert_same_gradients(gen, lib)


def test_every_rendered_router_is_ruff_clean(tmp_path):
    for case, (text, _) in RENDERED.items():
        (tmp_path / case).mkdir()
        (tmp_path / case / "model.py").write_text(render_model_source(plan_of(text)))
    assert_ruff_clean(tmp_path)


@pytest.mark.parametrize(
    ("sets", "named"),
    [
        (("moe.router.kind=gshard", "moe.router.normalize_topk=false"), "moe.router.kind 'gshard'"),
        (("moe.router.kind=expert_choice", "moe.router.normalize_topk=false"), "moe.router.kind 'expert_choice'"),
        (("moe.router.kind=hash", "moe.router.normalize_topk=false"), "moe.router.kind 'hash'"),
        (("moe.capacity_factor=1.0", "moe.capacity_group_size=4"), "moe.capacity_group_size"),
    ],
)
def test_build_refuses_routing_it_cannot_render(tmp_path, sets: tuple[str, ...], named: str):
    spec = tmp_path / "tiny.yaml"
    spec.write_text(TINY_MOE)
    out = tmp_path / "out"
    args = ["build", str(spec), "-o", str(out)]
    for s in sets:
        args += ["--set", s]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2, result.output
    assert named in result.output and "Traceback" not in result.output
    assert not out.exists()
