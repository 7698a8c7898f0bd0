"""The code generator renders the routing algorithms of docs/routing.md, and the generated model.py equals moec.nn
on the same weights: logits, every MoEAux field and every gradient, bit for bit, in training and in eval
(docs/architecture.md, invariant 4); `moec build` writes them."""

from __future__ import annotations

import pytest
import torch
from click.testing import CliRunner

from moec.cli import cli
from moec.codegen import render_model_source
from tests.codegen.test_codegen import assert_ruff_clean, assert_same_aux, library_and_generated, plan_of, run_both
from tests.nn.test_cache import decoded
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
    "hash": (routed("kind: hash, top_k: 2"), "idx = hash_experts(token_ids.to(x.device), E, self.top_k)"),
    "hash-top1-capacity-scaled": (
        routed("kind: hash, top_k: 1, scale: 1.5", "capacity_factor: 1.0"),
        "hash_experts(token_ids",
    ),
    "expert-choice": (routed("kind: expert_choice, top_k: 1", "balance: {z_loss_coeff: 0.001}"), "expert_choice(probs"),
    "expert-choice-sigmoid-mlp-sequence": (
        routed(
            "kind: expert_choice, top_k: 2, score: sigmoid, mlp_hidden: 6, scale: 2.0",
            "balance: {z_loss_coeff: 0.001, load_balance_granularity: sequence}",
        ),
        "dropped = (idx < 0).all(-1).sum()",
    ),
    "gshard": (routed("kind: gshard, top_k: 2", BALANCED), "gshard_top2(probs, u if self.training"),
    "gshard-capacity-groups-jitter-mlp-sequence": (
        routed(
            "kind: gshard, top_k: 2, jitter: 0.1, mlp_hidden: 6",
            "capacity_factor: 1.0, drop_policy: position, capacity_group_size: 4, "
            "balance: {load_balance_coeff: 0.01, load_balance_granularity: sequence}",
        ),
        "def group_capacity_mask(self, idx: torch.Tensor) -> torch.Tensor:",
    ),
    "topk-capacity-groups-by-probs": (
        routed("top_k: 2, normalize_topk: true", f"capacity_factor: 0.5, capacity_group_size: 8, {BALANCED}"),
        "self.group_capacity_mask(idx[i : i + G], w[i : i + G])",
    ),
}
# the ids reach every hash-routed layer: the dense layers between them, the MTP blocks and the cached decode
HASH_MTP = routed("kind: hash, top_k: 2", "n_shared_experts: 1").replace(
    "layers: {default: {ffn: moe}}",
    "ffn: {d_ff: 24}\nlayers: {default: {ffn: moe}, overrides: [{select: [0], ffn: dense}]}\nmtp: {n_layers: 2, ffn: moe}",
)


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
    if "hash" not in case:  # a hash router has no losses (and no weights) to train
        assert all(float(a.loss.detach()) > 0 for a in aux.layers)  # the router losses are in the gradients below
    (logits.square().mean() + aux.loss).backward()
    (out[0].square().mean() + out[1].loss).backward()
    assert_same_gradients(gen, lib)


def hash_loads(ids: list[int], n_experts: int, top_k: int) -> list[int]:
    """Slots per expert of docs/routing.md's hash, by hand in Python integers: expert 1 ⌊((id·2654435761) mod 2^32)·E
    / 2^32⌋, then the next k − 1 cyclically."""
    loads = [0] * n_experts
    for i in ids:
        first = (i * 2654435761 % 2**32) * n_experts // 2**32
        for j in range(top_k):
            loads[(first + j) % n_experts] += 1
    return loads


def test_the_generated_model_passes_the_token_ids_to_every_hash_layer_mtp_and_decode_included(tmp_path):
    plan, lib, gen, _ = library_and_generated(HASH_MTP, tmp_path)
    assert [lp.ffn.kind for lp in plan.layers] == ["dense", "moe"] and len(plan.mtp) == 2
    tokens = torch.randint(0, plan.vocab_size, (2, 8), generator=torch.Generator().manual_seed(3))
    logits, aux, out = run_both(lib, gen, tokens, train=True)
    assert torch.equal(out[0], logits)
    assert_same_aux(out[1], aux)
    # layer 1 routes the tokens; MTP depth k the tokens k ahead (0 past the end), as moec.nn's MTPModule does
    ahead = [torch.cat((tokens[:, k:], torch.zeros(2, k, dtype=tokens.dtype)), 1) for k in (1, 2)]
    for layer, ids in zip(out[1].layers[1:], (tokens, *ahead), strict=True):
        assert layer.tokens_per_expert.tolist() == hash_loads(ids.reshape(-1).tolist(), 4, 2)
    (logits.square().mean() + sum(m.square().mean() for m in aux.mtp_logits)).backward()
    (out[0].square().mean() + sum(m.square().mean() for m in out[1].mtp_logits)).backward()
    assert_same_gradients(gen, lib)
    # the cached decode: a prefill, then token by token, equals the library's decode and the full forward
    lib.eval(), gen.eval()
    steps = [3, 1, 1, 2, 1]
    ours = decoded(gen, tokens, steps)
    assert torch.equal(ours, decoded(lib, tokens, steps))
    with torch.no_grad():
        torch.testing.assert_close(ours, gen(tokens)[0], atol=1e-5, rtol=0)


def test_expert_choice_fills_every_expert_and_its_cached_decode_is_refused_in_the_library_words(tmp_path):
    text = HASH_MTP.replace("kind: hash, top_k: 2", "kind: expert_choice, top_k: 1")
    plan, lib, gen, _ = library_and_generated(text, tmp_path)
    tokens = torch.randint(0, plan.vocab_size, (2, 7), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        logits, aux, out = run_both(lib, gen, tokens, train=False)
    assert torch.equal(out[0], logits)
    assert_same_aux(out[1], aux)
    for layer in out[1].layers[1:]:  # layer 1 and both MTP blocks: 14 tokens, each expert takes ceil(1·14/4) = 4
        assert layer.tokens_per_expert.tolist() == [4, 4, 4, 4]
    refusals = []
    for model in (gen, lib):
        with pytest.raises(ValueError) as caught:
            model.new_cache(2, 8)
        refusals.append(str(caught.value))
    assert refusals[0] == refusals[1]
    assert refusals[0].startswith("moe.router.kind expert_choice (layers 1, 2, 3): each expert picks its tokens")


def test_gshard_draws_as_the_library_draws_from_a_router_generator_and_drops_by_group(tmp_path):
    """With each router's generator seeded alike, the generated model sends the same second choices as moec.nn (the
    draws are torch.rand's on the same generator state), drops the same slots per local group of 4 tokens, and leaves
    every generator in the same state."""
    text, _ = RENDERED["gshard-capacity-groups-jitter-mlp-sequence"]
    plan, lib, gen, _ = library_and_generated(text, tmp_path)
    routers = [(a.ffn.router, b.ffn.router) for a, b in zip(lib.layers, gen.layers, strict=True)]
    for i, (ours, theirs) in enumerate(routers):
        ours.generator = torch.Generator().manual_seed(10 + i)
        theirs.generator = torch.Generator().manual_seed(10 + i)
    tokens = torch.randint(0, plan.vocab_size, (2, 8), generator=torch.Generator().manual_seed(5))
    logits, aux, out = run_both(lib, gen, tokens, train=True)
    assert torch.equal(out[0], logits)
    assert_same_aux(out[1], aux)
    # 16 tokens in 4 groups of 4, capacity ceil(1.0·4·2/4) = 2 per expert per group: at most 8 slots per expert
    assert any(int(a.dropped) > 0 for a in aux.layers) and all(int(a.tokens_per_expert.max()) <= 8 for a in aux.layers)
    (logits.square().mean() + aux.loss).backward()
    (out[0].square().mean() + out[1].loss).backward()
    assert_same_gradients(gen, lib)
    with torch.no_grad():  # eval sends every second choice, but draws as the library does: still in step
        lib.eval(), gen.eval()
        assert torch.equal(gen(tokens)[0], lib(tokens)[0])
    for ours, theirs in routers:
        assert torch.equal(ours.generator.get_state(), theirs.generator.get_state())
    with pytest.raises(ValueError, match="capacity_group_size 4 does not divide the 6 routed tokens"):
        gen(tokens[:, :3])


def test_every_rendered_router_is_ruff_clean(tmp_path):
    for case, (text, _) in {**RENDERED, "hash-mtp": (HASH_MTP, "")}.items():
        (tmp_path / case).mkdir()
        (tmp_path / case / "model.py").write_text(render_model_source(plan_of(text)))
    assert_ruff_clean(tmp_path)


@pytest.mark.parametrize(
    ("sets", "renders"),
    [
        (("moe.router.kind=gshard", "moe.router.normalize_topk=false"), "gshard_top2("),
        (("moe.router.kind=expert_choice", "moe.router.normalize_topk=false"), "expert_choice(probs"),
        (("moe.router.kind=hash", "moe.router.normalize_topk=false"), "hash_experts("),
        (("moe.router.mlp_hidden=4",), "self.hidden = Linear(d_model, mlp_hidden, bias=False)"),
        (("moe.capacity_factor=1.0", "moe.capacity_group_size=4"), "def group_capacity_mask("),
    ],
)
def test_build_writes_a_model_for_every_routing_algorithm(tmp_path, sets: tuple[str, ...], renders: str):
    """What `moec build` refused by name before (docs/routing.md) it now writes."""
    spec = tmp_path / "tiny.yaml"
    spec.write_text(TINY_MOE)
    out = tmp_path / "out"
    args = ["build", str(spec), "-o", str(out)]
    for s in sets:
        args += ["--set", s]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert renders in (out / "model.py").read_text()
