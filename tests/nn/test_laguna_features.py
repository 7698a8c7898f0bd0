"""Laguna's three small features against plain oracles (the causal GQA of tests/nn/_gqa.py): the softplus attention
output gate (attention.output_gate_fn), a layer's own rotary width (layers.*.attention.rotary_dim, keyed with its
RoPE base) and the router's logit softcap (moe.router.logit_softcap); each one's validation, located."""

from __future__ import annotations

from functools import partial

import pytest

torch = pytest.importorskip("torch")

from moec.analyze.report import analyze  # noqa: E402
from moec.errors import SpecError  # noqa: E402
from moec.nn import build_model  # noqa: E402
from moec.spec import load_spec, resolve  # noqa: E402
from tests.nn._decode import decoded  # noqa: E402
from tests.nn._gqa import naive_gqa, perturbed  # noqa: E402

SPEC = """\
name: t
model: {vocab_size: 64, d_model: 16, n_layers: 2, max_seq_len: 16MODEL}
attention: {n_heads: 4, n_kv_heads: 2, head_dim: 8ATTN}
ffn: {d_ff: 24}
MOE
LAYERS
"""


def plan_of(model: str = "", attn: str = "", layers: str = "", moe: str = ""):  # type: ignore[no-untyped-def]
    text = SPEC.replace("MODEL", model).replace("ATTN", attn).replace("LAYERS", layers).replace("MOE", moe)
    return resolve(load_spec("t.yaml", text=text))


def rotate(x, theta: float, rot: int):  # type: ignore[no-untyped-def]
    """x (B, S, h, hd): the first rot dims rotate in pairs (i, i + rot/2) by angle pos·theta^(-2i/rot)."""
    S = x.shape[1]
    inv = [theta ** (-2 * i / rot) for i in range(rot // 2)]
    ang = torch.tensor([[p * f for f in inv] for p in range(S)], dtype=x.dtype)  # (S, rot/2)
    c, s = ang.cos()[None, :, None, :], ang.sin()[None, :, None, :]
    x1, x2, rest = x[..., : rot // 2], x[..., rot // 2 : rot], x[..., rot:]
    return torch.cat((x1 * c - x2 * s, x2 * c + x1 * s, rest), dim=-1)


@pytest.mark.parametrize("gate", ["element", "head"])
def test_the_softplus_output_gate_scales_each_head_or_element_by_log1p_exp_of_its_projection(gate):
    plan = plan_of(model=", positions: {kind: none}", attn=f", output_gate: {gate}, output_gate_fn: softplus")
    att = perturbed(plan).layers[0].attn
    x = torch.randn(2, 5, 16, dtype=torch.float64)
    g = torch.log1p(torch.exp(x @ att.gate_proj.weight.T))  # softplus by its definition, (B, S, h·hd | h)
    gated = naive_gqa(att, x) * g.view(2, 5, 4, -1)
    torch.testing.assert_close(att(x), gated.reshape(2, 5, 32) @ att.o_proj.weight.T, rtol=1e-12, atol=1e-12)
    # the function adds nothing to count: same parameters and FLOPs as the sigmoid gate
    sigmoid = analyze(plan_of(model=", positions: {kind: none}", attn=f", output_gate: {gate}"))
    assert analyze(plan).params.total == sigmoid.params.total
    assert analyze(plan).flops == sigmoid.flops


def test_layers_with_their_own_rotary_width_and_base_rotate_that_many_dims():
    layers = "layers: {overrides: [{select: {layers: [1]}, attention: {rotary_dim: 4, rope_theta: 500000.0}}]}"
    plan = plan_of(layers=layers)
    assert [lp.attention.rotary_dim for lp in plan.layers] == [None, 4]
    model = perturbed(plan)
    x = torch.randn(2, 6, 16, dtype=torch.float64)
    for i, (theta, rot) in enumerate([(plan.positions.theta, 8), (500000.0, 4)]):
        att = model.layers[i].attn
        want = naive_gqa(att, x, rotate=partial(rotate, theta=theta, rot=rot)).reshape(2, 6, 32) @ att.o_proj.weight.T
        cos, sin = model.layer_rotary[(500000.0, 4)](6, x.device, x.dtype) if i else model.rotary(6, x.device, x.dtype)
        torch.testing.assert_close(att(x, (cos, sin)), want, rtol=1e-6, atol=1e-6)  # the tables are fp32
    # a cached decode, token by token, reads each layer's own tables: the full forward's logits
    tokens = torch.randint(0, 64, (2, 6), generator=torch.Generator().manual_seed(2))
    full, _ = model(tokens)
    torch.testing.assert_close(decoded(model, tokens, [1] * 6), full, rtol=1e-9, atol=1e-9)
    # 0 parameters, and the plan carries it (analyze's params equal the plain spec's)
    assert analyze(plan).params.total == analyze(plan_of()).params.total


ON_MOE = "layers: {default: {ffn: moe}}"
MOE = "moe: {n_experts: 4, d_ff: 8, router: {top_k: 2, score: sigmoid, normalize_topk: true CAP}}"


def test_the_router_logit_softcap_caps_logits_with_tanh_before_the_score_and_the_choice():
    plan = plan_of(moe=MOE.replace("CAP", ", logit_softcap: 0.5"), layers=ON_MOE)
    router = perturbed(plan).layers[0].ffn.router
    x = torch.randn(7, 16, dtype=torch.float64)
    logits = x @ router.weight.T
    capped = 0.5 * torch.tanh(logits / 0.5)
    scores = torch.sigmoid(capped)
    idx = scores.topk(2, -1).indices
    w = scores.gather(1, idx)
    r = router(x)
    assert torch.equal(r.topk_idx.sort(-1).values, idx.sort(-1).values)
    torch.testing.assert_close(r.topk_w.sum(-1), torch.ones(7, dtype=torch.float64))
    order = r.topk_idx.argsort(-1)
    want = (w / w.sum(-1, keepdim=True)).gather(1, idx.argsort(-1))
    torch.testing.assert_close(r.topk_w.gather(1, order), want, rtol=1e-12, atol=1e-12)
    plain = analyze(plan_of(moe=MOE.replace("CAP", ""), layers=ON_MOE))
    assert analyze(plan).flops == plain.flops  # 0 FLOPs counted


@pytest.mark.parametrize(
    ("attn", "layers", "moe", "where", "words"),
    [
        (", output_gate_fn: softplus", "", "", "attention.output_gate_fn", "needs attention.output_gate"),
        ("", "layers: {default: {attention: {rotary_dim: 5}}}", "", "layers.default.attention.rotary_dim", "even"),
        ("", "layers: {overrides: [{select: {layers: [0]}, attention: {rotary_dim: 10}}]}", "",
         "layers.overrides[0].attention.rotary_dim", "exceed the head dim (8)"),
        ("", "", MOE.replace("CAP", ", logit_softcap: 0"), "moe.router.logit_softcap", "greater than 0"),
    ],
)  # fmt: skip
def test_each_bad_value_is_one_problem_at_its_field(attn, layers, moe, where, words):
    with pytest.raises(SpecError) as e:
        plan_of(attn=attn, layers=layers, moe=moe)
    problems = e.value.problems
    assert len(problems) == 1, problems
    assert problems[0].path == where and words in problems[0].message
    assert problems[0].line is not None


def test_a_layer_rotary_dim_needs_rotary_positions_at_its_field():
    with pytest.raises(SpecError) as e:
        plan_of(model=", positions: {kind: none}", layers="layers: {default: {attention: {rotary_dim: 4}}}")
    assert [(p.path, "positions.kind: rope" in p.message) for p in e.value.problems] == [
        ("layers.default.attention.rotary_dim", True)
    ]


def test_a_scaled_down_copy_shrinks_a_layers_own_rotary_width_with_its_head():
    """smoke-run's tiny copy: a layer's own rotated width shrinks with head_dim (even, within it) and the copy runs."""
    from moec.smoke.scale import fit

    text = """\
name: t
model: {vocab_size: 64, d_model: 256, n_layers: 2, max_seq_len: 16}
attention: {n_heads: 4, n_kv_heads: 2, head_dim: 64}
ffn: {d_ff: 24}
layers: {overrides: [{select: [1], attention: {rotary_dim: 32}}]}
"""
    full = resolve(load_spec("t.yaml", text=text))
    plan = fit(full, scale="tiny", budget_bytes=None, batch=1, seq=8).plan
    small = plan.layers[1].attention
    assert small.head_dim < 64 and small.rotary_dim == small.head_dim // 2  # half its head, as in the full model
    model = build_model(plan, dtype=torch.float64, seed=0)
    assert model(torch.randint(plan.vocab_size, (1, 8)))[0].isfinite().all()
