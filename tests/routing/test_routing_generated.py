"""The generated model.py with sqrt-softplus router scores gives the library model's logits, aux loss and
gradients for the same weights (docs/architecture.md, invariant 4: generated = library)."""

from __future__ import annotations

import torch

from moec.codegen import render_model_source
from tests.codegen.test_codegen import library_and_generated, run_both
from tests.tiny_specs import TINY_MOE

SQRT_SOFTPLUS = TINY_MOE.replace(
    "router: {top_k: 2, normalize_topk: true}",
    "router: {top_k: 2, normalize_topk: true, score: sqrt_softplus}, balance: {load_balance_coeff: 0.01}",
)


def test_generated_sqrt_softplus_router_equals_the_library(tmp_path):
    assert "sqrt_softplus" in SQRT_SOFTPLUS
    plan, lib, gen, _ = library_and_generated(SQRT_SOFTPLUS, tmp_path)
    assert "F.softplus(logits).sqrt()" in render_model_source(plan)
    tokens = torch.randint(0, plan.vocab_size, (2, 12), generator=torch.Generator().manual_seed(1))
    logits, aux, out = run_both(lib, gen, tokens, train=True)
    gen_loss = getattr(out[1], "loss", out[1])  # the generated model's aux: its ModelAux or the loss alone
    assert torch.equal(out[0], logits) and torch.equal(gen_loss, aux.loss)
    assert float(aux.loss.detach()) > 0  # the balance loss, over normalised sqrt-softplus scores, is in it
    (logits.square().mean() + aux.loss).backward()
    (out[0].square().mean() + gen_loss).backward()
    lib_grads = dict(lib.named_parameters())
    for name, p in gen.named_parameters():
        torch.testing.assert_close(p.grad, lib_grads[name].grad, rtol=0, atol=0)
