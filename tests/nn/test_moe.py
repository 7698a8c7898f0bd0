"""The MoE layer: parameter counts equal the analyzer's closed-form counts for every variant and every
shipped spec; outputs and gradients equal the same layer run in float64 through the naive oracle."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import pytest
import torch

from moec.analyze.counts import ffn_parts
from moec.kernels import naive, reference
from moec.nn.ffn import DenseFFN
from moec.nn.moe import MoE, MoEAux
from moec.spec import load_model, load_spec, resolve
from moec.spec.plan import MoEPlan

SPECS = sorted((Path(__file__).resolve().parents[2] / "specs").glob("*.yaml"))
D = 16
BASE = f"""
moec: 1
name: t
model: {{vocab_size: 100, d_model: {D}, n_layers: 1, max_seq_len: 64}}
attention: {{n_heads: 2}}
ffn: {{d_ff: 32}}
layers: {{default: {{ffn: moe}}}}
"""
VARIANTS = {
    "top1_relu": "{n_experts: 4, d_ff: 8, activation: relu, router: {top_k: 1}}",
    "top2": "{n_experts: 8, d_ff: 8, router: {top_k: 2, normalize_topk: true}}",
    "top8_of_128": "{n_experts: 128, d_ff: 4, router: {top_k: 8, normalize_topk: true}}",
    "k_equals_E": "{n_experts: 4, d_ff: 8, router: {top_k: 4}}",
    "dense": "{n_experts: 4, d_ff: 8, router: {dense: true}}",
    "shared": "{n_experts: 8, d_ff: 8, n_shared_experts: 2, router: {top_k: 2}}",
    "shared_gate": "{n_experts: 8, d_ff: 8, n_shared_experts: 1, shared_gate: true, router: {top_k: 2}}",
    "fine_grained": "{n_experts: 4, d_ff: 16, granularity: 4, n_shared_experts: 1, router: {top_k: 1}}",
    "deepseek_like": (
        "{n_experts: 16, d_ff: 8, n_shared_experts: 1, router: {top_k: 4, score: sigmoid, normalize_topk: true,"
        " scale: 2.5, selection_bias: true, n_groups: 4, topk_groups: 2, group_score: top2_sum},"
        " balance: {bias_update_rate: 0.001, load_balance_coeff: 0.001, load_balance_granularity: sequence}}"
    ),
    "biases_gelu": "{n_experts: 4, d_ff: 8, activation: gelu, bias: true, router: {top_k: 2, bias: true, softmax_after_topk: true}}",
    "geglu": "{n_experts: 4, d_ff: 8, activation: geglu, router: {top_k: 2}, balance: {z_loss_coeff: 0.001}}",
    "capacity": "{n_experts: 4, d_ff: 8, activation: relu, router: {top_k: 1}, capacity_factor: 0.5}",
    "capacity_top2": "{n_experts: 4, d_ff: 8, router: {top_k: 2}, capacity_factor: 0.75, drop_policy: position}",
    "lora": "{n_experts: 4, d_ff: 32, expert_kind: lora, lora: {rank: 4, alpha: 8}, router: {top_k: 2}}",
    "swiglu_clamped": (
        "{n_experts: 4, d_ff: 8, activation: swiglu_clamped, activation_alpha: 1.0, activation_limit: 0.3,"
        " bias: true, n_shared_experts: 1, router: {top_k: 2, bias: true, softmax_after_topk: true}}"
    ),
    "lora_clamped": (
        "{n_experts: 4, d_ff: 32, activation: swiglu_clamped, activation_limit: 0.3, expert_kind: lora,"
        " lora: {rank: 4}, router: {top_k: 2}}"
    ),
    # Llama-4: the sigmoid gate scales each chosen expert's input, not its output
    "input_gate": "{n_experts: 4, d_ff: 8, n_shared_experts: 1, router: {top_k: 1, score: sigmoid, apply_to: input}}",
    "input_gate_top2_capacity": (
        "{n_experts: 4, d_ff: 8, router: {top_k: 2, score: sigmoid, apply_to: input}, capacity_factor: 0.5}"
    ),
    "lora_gelu_bias": "{n_experts: 4, d_ff: 32, activation: gelu, bias: true, expert_kind: lora, lora: {rank: 2}, router: {top_k: 1}}",
}


def make_plan(variant: str) -> MoEPlan:
    plan = resolve(load_spec("t.yaml", text=BASE + f"moe: {VARIANTS[variant]}\n")).layers[0].ffn
    assert isinstance(plan, MoEPlan)
    return plan


def analyzer_counts(plan: MoEPlan, d: int) -> tuple[int, int]:
    parts = ffn_parts(plan, d).values()
    return sum(p.params for p in parts), sum(p.params for p in parts if p.frozen)


def module_counts(m: torch.nn.Module) -> tuple[int, int]:
    return sum(p.numel() for p in m.parameters()), sum(p.numel() for p in m.parameters() if not p.requires_grad)


# ---- parameter counts -------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", VARIANTS)
def test_parameter_count_equals_analyzer(variant: str):
    plan = make_plan(variant)
    assert module_counts(MoE(plan, D, device="meta")) == analyzer_counts(plan, D)


@pytest.mark.parametrize("spec", SPECS, ids=lambda p: p.stem)
def test_shipped_spec_moe_layers_on_meta_match_analyzer(spec: Path):
    model = load_model(str(spec))
    plans = {l.ffn for l in (*model.layers, *model.mtp) if isinstance(l.ffn, MoEPlan)}
    for plan in plans:
        moe = MoE(plan, model.d_model, device="meta")
        assert module_counts(moe) == analyzer_counts(plan, model.d_model)


def test_deepseek_v3_moe_layer_size_by_hand():
    """256 SwiGLU experts of width 2048 + 1 shared + router (7168·256); the selection bias is a buffer."""
    model = load_model("deepseek-v3")
    moe = MoE(model.layers[5].ffn, 7168, device="meta")
    d, f = 7168, 2048
    assert module_counts(moe)[0] == 256 * 3 * d * f + 3 * d * f + d * 256
    assert "router.expert_bias" in dict(moe.named_buffers())


def test_shared_experts_with_biases_count_one_down_bias():
    """s shared experts run as one FFN of width s·f_s, so they carry one down-projection bias (as in
    DeepSeek/HF), and the analyzer counts it that way."""
    text = BASE + "moe: {n_experts: 4, d_ff: 8, bias: true, n_shared_experts: 2, router: {top_k: 1}}"
    plan = resolve(load_spec("t.yaml", text=text)).layers[0].ffn
    moe = MoE(plan, D, device="meta")
    assert module_counts(moe) == analyzer_counts(plan, D)
    s, f = 2, 8
    assert sum(p.numel() for p in moe.shared.parameters()) == 3 * D * s * f + 2 * s * f + D


def test_parameter_names_are_the_loader_contract():
    names = set(dict(MoE(make_plan("shared_gate"), D, device="meta").named_parameters()))
    assert names == {
        "router.weight", "experts.w_gate_up", "experts.w_down",
        "shared.w_gate_up", "shared.w_down", "shared_gate.weight",
    }  # fmt: skip
    lora = set(dict(MoE(make_plan("lora"), D, device="meta").named_parameters()))
    assert {n for n in lora if n.startswith("experts.")} == {
        f"experts.lora_{ab}_{m}" for ab in "ab" for m in ("gate", "up", "down")
    }
    assert {"base.w_gate_up", "base.w_down"} <= lora


# ---- values and gradients against the float64 naive oracle ------------------------------------------


def randomize_(moe: MoE) -> MoE:
    """LoRA B starts at zero (the layer equals its base); give every parameter a value so gradients
    of every path are non-trivial."""
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in moe.named_parameters():
            if name.startswith("experts.lora_b") or "b_" in name or name.endswith("bias"):
                p.normal_(std=0.2)
    return moe


def forward_and_grads(moe: MoE, x: torch.Tensor, grad_out: torch.Tensor):
    x = x.clone().requires_grad_()
    y, aux = moe(x)
    loss = (y * grad_out.to(y.dtype)).sum() + aux.loss
    params = {n: p for n, p in moe.named_parameters() if p.requires_grad}
    grads = torch.autograd.grad(loss, [x, *params.values()], allow_unused=True)
    # the naive oracle runs no expert at all when T = 0, so expert weights get no gradient there
    tensors = {"x": x, **params}
    return y, aux, {n: torch.zeros_like(tensors[n]) if g is None else g for n, g in zip(tensors, grads, strict=True)}


def oracle(moe: MoE) -> MoE:
    """The same layer in float64 through the naive per-expert loop. Routing is computed in fp32 from
    identical values, so both choose the same experts."""
    ref = copy.deepcopy(moe).double()
    ref.backend = "naive"
    return ref


def check_against_oracle(variant: str, dtype=torch.float32, tol=None, T=(2, 8), setup=None):
    torch.manual_seed(0)
    moe = randomize_(MoE(make_plan(variant), D, backend="reference", dtype=dtype))
    if setup:
        setup(moe)
    x = torch.randn(*T, D).to(dtype)
    grad_out = torch.randn(*T, D)
    y, aux, grads = forward_and_grads(moe, x, grad_out)
    y64, aux64, grads64 = forward_and_grads(oracle(moe), x.double(), grad_out.double())
    tol = tol or {"rtol": 1e-5, "atol": 1e-5}
    assert y.shape == x.shape and y.dtype == dtype
    torch.testing.assert_close(y.double(), y64, **tol)
    torch.testing.assert_close(aux.tokens_per_expert, aux64.tokens_per_expert)
    for n in grads64:
        torch.testing.assert_close(grads[n].double(), grads64[n], **tol, msg=lambda m, n=n: f"grad of {n}: {m}")
    return moe, x, y, aux, grads


@pytest.mark.parametrize("variant", VARIANTS)
def test_matches_float64_oracle(variant: str):
    check_against_oracle(variant)


@pytest.mark.parametrize("variant", ["top2", "shared_gate", "deepseek_like", "lora", "capacity"])
def test_bf16_matches_float64_oracle_loosely(variant: str):
    check_against_oracle(variant, torch.bfloat16, {"rtol": 5e-2, "atol": 5e-2})


@pytest.mark.parametrize("T", [0, 1])
def test_zero_and_one_token(T: int):
    check_against_oracle("shared", T=(T,))


def all_on_expert_0(moe: MoE) -> None:
    """Route every token with positive features to expert 0 (its logit Σx > 0 = every other logit)."""
    with torch.no_grad():
        moe.router.weight.zero_()
        moe.router.weight[0] = 1.0


def test_all_tokens_on_one_expert_and_empty_experts_get_zero_grad():
    torch.manual_seed(0)
    moe = randomize_(MoE(make_plan("top1_relu"), D))
    all_on_expert_0(moe)
    x = torch.randn(2, 8, D).abs()
    y, aux, grads = forward_and_grads(moe, x, torch.randn(2, 8, D))
    assert aux.tokens_per_expert.tolist() == [16, 0, 0, 0]
    for name in ("experts.w_gate_up", "experts.w_down"):
        assert torch.equal(grads[name][1:], torch.zeros_like(grads[name][1:]))
        assert grads[name][0].abs().sum() > 0
    # by hand: every token through expert 0, weighted by its softmax probability (top-1, unnormalized)
    w1, w2 = (w[0].detach().double() for w in (moe.experts.w_gate_up, moe.experts.w_down))
    gate = (x.double() @ moe.router.weight.detach().double().t()).softmax(-1)[..., :1]
    torch.testing.assert_close(y.double(), (torch.relu(x.double() @ w1) @ w2) * gate, rtol=1e-5, atol=1e-5)


def test_capacity_drops_tokens_to_exactly_zero_output_and_counts_them():
    """Top-1 over 4 experts with capacity ceil(0.5·16·1/4) = 2: with every token on expert 0, two are
    kept (the highest-probability ones) and fourteen pass through with zero output."""
    torch.manual_seed(0)
    moe = randomize_(MoE(make_plan("capacity"), D))
    all_on_expert_0(moe)
    x = torch.randn(16, D).abs()
    y, aux = moe(x)
    capacity = math.ceil(0.5 * 16 * 1 / 4)
    assert int(aux.dropped) == 16 - capacity and aux.tokens_per_expert.tolist() == [capacity, 0, 0, 0]
    kept = x.sum(-1).topk(capacity).indices  # logit of expert 0 = Σx; softmax weight rises with it
    dropped = torch.ones(16, dtype=torch.bool)
    dropped[kept] = False
    assert torch.equal(y[dropped], torch.zeros_like(y[dropped]))
    assert (y[kept].abs().sum(-1) > 0).all()


def test_dropped_count_matches_hand_computation_for_random_routing():
    torch.manual_seed(1)
    moe = MoE(make_plan("capacity"), D)
    x = torch.randn(32, D)
    _, aux = moe(x)
    first = (x @ moe.router.weight.detach().t()).argmax(-1)  # top-1 choice before dropping
    capacity = math.ceil(0.5 * 32 / 4)
    load = torch.bincount(first, minlength=4)
    assert int(aux.dropped) == int((load - capacity).clamp(min=0).sum())
    assert aux.tokens_per_expert.tolist() == load.clamp(max=capacity).tolist()


def test_shared_experts_and_gate_by_hand():
    """y = routed part + silu(x·Wg)·(x·Wu)·Wd · sigmoid(x·g), the shared FFN written out by hand."""
    moe = randomize_(MoE(make_plan("shared_gate"), D))
    x = torch.randn(6, D)
    y, _ = moe(x)
    r = moe.router(x)
    x64 = x.double()
    e = moe.experts
    routed = naive.expert_ffn(
        x64, r.topk_idx, r.topk_w.double(), e.w_gate_up.detach().double(), e.w_down.detach().double(),
        activation="swiglu",
    )  # fmt: skip
    wg, wu = moe.shared.w_gate_up.detach().double().chunk(2, dim=-1)
    shared = (torch.nn.functional.silu(x64 @ wg) * (x64 @ wu)) @ moe.shared.w_down.detach().double()
    gate = torch.sigmoid(x64 @ moe.shared_gate.weight.detach().double().t())  # (T, 1)
    torch.testing.assert_close(y.double(), routed + shared * gate, rtol=1e-5, atol=1e-5)


# ---- LoRA experts -----------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", ["lora", "lora_gelu_bias"])
def test_lora_layer_equals_per_token_merged_weights(variant: str):
    """Per token, LoRA-MoE is a dense FFN whose every matrix is W + (alpha/r)·Σ_j g_j·A_{e_j}·B_{e_j}."""
    moe = randomize_(MoE(make_plan(variant), D))
    x = torch.randn(5, D)
    y, _ = moe(x)
    r = moe.router(x)
    gates = r.topk_w.detach()
    ex, base = moe.experts, moe.base
    gated = "gate" in ex.names
    names = ("gate", "up") if gated else ("up",)
    W = dict(zip(names, base.w_gate_up.detach().double().chunk(len(names), -1), strict=True))
    W["down"] = base.w_down.detach().double()
    for t in range(5):
        merged = {}
        for m, w in W.items():
            a, b = (getattr(ex, f"lora_{ab}_{m}").detach().double() for ab in "ab")
            delta = sum(float(gates[t, j]) * a[e] @ b[e] for j, e in enumerate(r.topk_idx[t].tolist()))
            merged[m] = w + ex.scale * delta
        xt = x[t].double()
        if gated:
            h = torch.nn.functional.silu(xt @ merged["gate"]) * (xt @ merged["up"])
        else:
            # activation gelu is the exact erf GELU (moec.vocab), torch's default
            h = torch.nn.functional.gelu(xt @ merged["up"] + base.b_gate_up.double())
        out = h @ merged["down"] + (0 if base.b_down is None else base.b_down.double())
        torch.testing.assert_close(y[t].double(), out, rtol=1e-5, atol=1e-5)


def test_fresh_lora_layer_equals_its_frozen_base_ffn():
    moe = MoE(make_plan("lora"), D)
    x = torch.randn(10, D)
    y, _ = moe(x)
    torch.testing.assert_close(y, moe.base(x))


def test_lora_trains_only_adapters_and_router():
    moe = randomize_(MoE(make_plan("lora"), D))
    y, aux = moe(torch.randn(2, 4, D))
    (y.square().sum() + aux.loss).backward()
    for name, p in moe.named_parameters():
        if name.startswith("base."):
            assert not p.requires_grad and p.grad is None
        else:
            assert p.requires_grad and p.grad is not None, name
    trainable = sum(p.numel() for p in moe.parameters() if p.requires_grad)
    parts = ffn_parts(moe.plan, D)
    assert trainable == parts["router"].params + parts["routed_experts"].params


def test_lora_shared_width_and_scale():
    moe = MoE(make_plan("lora"), D)
    assert moe.experts.scale == 8 / 4
    assert isinstance(moe.base, DenseFFN) and moe.base.d_ff == 32


# ---- the layer's interface --------------------------------------------------------------------------


def test_batched_and_flat_inputs_give_the_same_tokens():
    moe = MoE(make_plan("top2"), D).eval()
    x = torch.randn(2, 5, D)
    y3, aux = moe(x)
    y2, _ = moe(x.reshape(10, D))
    assert isinstance(aux, MoEAux) and y3.shape == (2, 5, D) and aux.loss.dim() == 0
    torch.testing.assert_close(y3.reshape(10, D), y2)


def test_backend_is_chosen_at_forward_time_and_can_be_changed(monkeypatch):
    calls = []
    monkeypatch.setattr(naive, "expert_ffn", lambda *a, **k: calls.append("naive") or reference.expert_ffn(*a, **k))
    moe = MoE(make_plan("top2"), D)
    moe(torch.randn(3, D))
    assert calls == []
    moe.backend = "naive"
    moe(torch.randn(3, D))
    assert calls == ["naive"]


def test_update_bias_delegates_to_the_router():
    moe = MoE(make_plan("deepseek_like"), D)
    moe(torch.randn(2, 8, D))
    load = moe.router.expert_load.clone()
    moe.update_bias()
    expected = 0.001 * torch.sign(load.mean() - load)
    torch.testing.assert_close(moe.router.expert_bias, expected)


def test_meta_build_skips_initialisation_and_runs_no_kernel():
    moe = MoE(make_plan("deepseek_like"), D, device="meta")
    assert all(p.is_meta for p in moe.parameters())


@pytest.mark.parametrize(
    ("x", "message"),
    [
        (torch.randn(2, 3, 4, D), "must be \\(batch, seq, d_model\\) or \\(tokens, d_model\\)"),
        (torch.randn(4, D + 1), f"d_model {D + 1}, expected {D}"),
        (torch.ones(4, D, dtype=torch.long), "floating-point"),
    ],
)
def test_bad_inputs_raise_value_error(x: torch.Tensor, message: str):
    with pytest.raises(ValueError, match=message):
        MoE(make_plan("top2"), D)(x)


@pytest.mark.parametrize("variant", ["input_gate", "input_gate_top2_capacity"])
def test_input_gating_scales_each_expert_input_by_its_gate(variant: str):
    """y_t = Σ_j Expert_{e_j}(g_j·x_t) [+ shared(x_t)], token by token, against the layer."""
    moe = randomize_(MoE(make_plan(variant), D))
    x = torch.randn(2, 5, D)
    with torch.no_grad():
        y, _ = moe(x)
        xt = x.reshape(-1, D)
        r = moe.router(xt)
        want = torch.zeros_like(xt)
        for t in range(xt.shape[0]):
            for e, g in zip(r.topk_idx[t].tolist(), r.topk_w[t].tolist(), strict=True):
                if e < 0:  # dropped slot
                    continue
                h = (g * xt[t]) @ moe.experts.w_gate_up[e]  # (2f,)
                gate, up = h.chunk(2)
                want[t] += (torch.nn.functional.silu(gate) * up) @ moe.experts.w_down[e]
        if moe.shared is not None:
            want += moe.shared(xt)
    torch.testing.assert_close(y.reshape(-1, D), want, atol=1e-5, rtol=1e-5)
