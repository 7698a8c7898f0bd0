"""The reference backend against the naive oracle run in float64: values and gradients of x, every
weight and bias, and topk_w, over the routing shapes that break MoE kernels."""

from __future__ import annotations

import pytest
import torch

from moec.kernels import ACTIVATIONS, GATED, get_backend, naive, reference
from moec.kernels.slots import inverse_permutation, sort_slots

FP32 = {"rtol": 1e-5, "atol": 1e-5}
BF16 = {"rtol": 1.6e-2, "atol": 1e-2}  # one bf16 rounding of the result; the inputs are exact in bf16


def routing(T: int, E: int, k: int, *, seed: int = 0, how: str = "random") -> torch.Tensor:
    """topk_idx (T, k) int64. random: k distinct experts per token; one: every slot on expert 0;
    skip_last: expert E-1 never chosen; drop: random with every third slot dropped (-1)."""
    g = torch.Generator().manual_seed(seed)
    if how == "one":
        return torch.zeros(T, k, dtype=torch.long)
    n = E - 1 if how == "skip_last" else E
    idx = torch.stack([torch.randperm(n, generator=g)[:k] for _ in range(T)]) if T else torch.zeros(0, k)
    idx = idx.long()
    if how == "drop":
        idx.view(-1)[::3] = -1
    return idx


def tensors(T, d, f, E, k, activation, bias, seed=0):
    """float64 leaves: x, topk_w, w_gate_up, w_down[, b_gate_up, b_down]."""
    g = torch.Generator().manual_seed(seed)
    width = 2 * f if activation in GATED else f
    shapes = [(T, d), (T, k), (E, d, width), (E, f, d)] + ([(E, width), (E, d)] if bias else [])
    scales = [1.0, 1.0, d**-0.5, f**-0.5, 0.1, 0.1]
    return [torch.randn(s, generator=g, dtype=torch.float64) * c for s, c in zip(shapes, scales, strict=False)]


def run_ffn(backend, ts, idx, activation, dtype, grad_out, **act_kw):
    """Output and gradients of every tensor in ts, computed in dtype."""
    leaves = [t.to(dtype).requires_grad_() for t in ts]
    x, w, w1, w2, *b = leaves
    y = backend.expert_ffn(
        x, idx, w, w1, w2, activation=activation, b_gate_up=b[0] if b else None, b_down=b[1] if b else None, **act_kw
    )
    # the naive loop runs no expert at all when T = 0, so its output has no graph
    grads = torch.autograd.grad(y, leaves, grad_out.to(dtype), allow_unused=True) if y.requires_grad else leaves
    grads = [None if y.requires_grad is False else g for g in grads]
    grads = [torch.zeros_like(t) if g is None else g for t, g in zip(leaves, grads, strict=True)]
    return y.double(), [g.double() for g in grads]


def assert_matches_oracle(
    ts, idx, activation, dtype=torch.float32, tol=FP32, grouped=False, monkeypatch=None, **act_kw
):
    # The oracle sees the same inputs, rounded to dtype, so only the kernel's own error is measured.
    ts = [t.to(dtype).double() for t in ts]
    g = torch.Generator().manual_seed(1)
    grad_out = torch.randn(ts[0].shape, generator=g, dtype=torch.float64).to(dtype).double()
    y0, g0 = run_ffn(naive, ts, idx, activation, torch.float64, grad_out, **act_kw)
    if grouped:
        monkeypatch.setattr(reference, "_can_group", lambda *a: True)
    y1, g1 = run_ffn(reference, ts, idx, activation, dtype, grad_out, **act_kw)
    torch.testing.assert_close(y1, y0, **tol)
    for name, a, b in zip(["x", "topk_w", "w_gate_up", "w_down", "b_gate_up", "b_down"], g1, g0, strict=False):
        torch.testing.assert_close(a, b, **tol, msg=lambda m, n=name: f"grad of {n}: {m}")
    return y1, g1


CASES = {
    # name: (T, d, f, E, k, routing)
    "top1": (24, 16, 8, 4, 1, "random"),
    "top2": (24, 16, 8, 8, 2, "random"),
    "top8_of_128": (40, 16, 8, 128, 8, "random"),
    "k_equals_E": (12, 16, 8, 4, 4, "random"),
    "empty_expert": (24, 16, 8, 6, 2, "skip_last"),
    "all_on_one_expert": (24, 16, 8, 4, 2, "one"),
    "dropped_slots": (24, 16, 8, 8, 2, "drop"),
    "T1": (1, 16, 8, 4, 2, "random"),
    "T0": (0, 16, 8, 4, 2, "random"),
}


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("bias", [False, True])
def test_matches_naive_oracle_fp32(case: str, bias: bool):
    T, d, f, E, k, how = CASES[case]
    assert_matches_oracle(tensors(T, d, f, E, k, "swiglu", bias), routing(T, E, k, how=how), "swiglu")


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_every_activation_matches_oracle(activation: str):
    T, d, f, E, k = 20, 16, 8, 6, 2
    assert_matches_oracle(tensors(T, d, f, E, k, activation, True), routing(T, E, k, how="drop"), activation)


@pytest.mark.parametrize("grouped", [False, True])
def test_clamped_swiglu_passes_alpha_and_limit(grouped: bool, monkeypatch):
    """gpt-oss's swiglu_clamped with a limit that bites (|h| ~ 1 > 0.3) and a non-default alpha."""
    T, d, f, E, k = 20, 16, 8, 6, 2
    ts = tensors(T, d, f, E, k, "swiglu_clamped", True)
    idx = routing(T, E, k, how="drop")
    kw = {"alpha": 1.0, "limit": 0.3}
    assert_matches_oracle(ts, idx, "swiglu_clamped", grouped=grouped, monkeypatch=monkeypatch, **kw)
    # and the parameters matter: the defaults (1.702, 7.0) give a different result
    y_default, _ = run_ffn(reference, ts, idx, "swiglu_clamped", torch.float32, torch.zeros(T, d))
    y_biting, _ = run_ffn(reference, ts, idx, "swiglu_clamped", torch.float32, torch.zeros(T, d), **kw)
    assert not torch.allclose(y_default, y_biting)


@pytest.mark.parametrize("case", ["top2", "top8_of_128", "dropped_slots", "empty_expert", "T1"])
def test_matches_naive_oracle_bf16(case: str):
    T, d, f, E, k, how = CASES[case]
    assert_matches_oracle(
        tensors(T, d, f, E, k, "swiglu", True), routing(T, E, k, how=how), "swiglu", torch.bfloat16, BF16
    )


@pytest.mark.parametrize("case", ["top2", "k_equals_E", "empty_expert", "dropped_slots", "all_on_one_expert"])
@pytest.mark.parametrize("activation", ["swiglu", "gelu"])
def test_grouped_mm_path_matches_oracle(case: str, activation: str, monkeypatch):
    """The CUDA path (grouped_mm, dropped slots kept as a masked tail) forced on CPU: the tail rows that
    grouped_mm leaves uninitialised must not leak into the output or any gradient."""
    T, d, f, E, k, how = CASES[case]
    ts = tensors(T, d, f, E, k, activation, True)
    assert_matches_oracle(ts, routing(T, E, k, how=how), activation, grouped=True, monkeypatch=monkeypatch)


def test_expert_with_no_tokens_gets_exactly_zero_weight_grad():
    T, d, f, E, k = 24, 16, 8, 6, 2
    _, grads = assert_matches_oracle(
        tensors(T, d, f, E, k, "swiglu", True), routing(T, E, k, how="skip_last"), "swiglu"
    )
    for g in grads[2:]:
        assert torch.equal(g[E - 1], torch.zeros_like(g[E - 1]))


def test_fully_dropped_tokens_give_exactly_zero_output():
    T, d, f, E, k = 12, 16, 8, 4, 2
    ts = tensors(T, d, f, E, k, "swiglu", True)
    idx = routing(T, E, k)
    idx[::2] = -1  # every even token dropped from both slots
    y, grads = assert_matches_oracle(ts, idx, "swiglu")
    assert torch.equal(y[::2], torch.zeros_like(y[::2]))
    assert torch.equal(grads[0][::2], torch.zeros_like(grads[0][::2]))  # no gradient reaches them either


def test_duplicate_expert_within_a_token_counts_twice():
    T, d, f, E, k = 10, 16, 8, 4, 3
    idx = torch.tensor([[1, 1, 2]] * T)
    assert_matches_oracle(tensors(T, d, f, E, k, "swiglu", False), idx, "swiglu")


def test_int32_ids_and_non_contiguous_x():
    T, d, f, E, k = 16, 16, 8, 4, 2
    ts = tensors(T, d, f, E, k, "gelu", False)
    ts[0] = torch.randn(d, T, dtype=torch.float64).t()  # (T, d) with transposed strides
    assert not ts[0].is_contiguous()
    assert_matches_oracle(ts, routing(T, E, k).int(), "gelu")


def test_all_experts_dense_routing():
    """Dense (soft) routing hands every expert to every token: idx = arange(E) per token."""
    T, d, f, E = 16, 16, 8, 4
    idx = torch.arange(E).expand(T, E)
    assert_matches_oracle(tensors(T, d, f, E, E, "swiglu", False), idx, "swiglu")


def lora_tensors(T, n_in, r, n_out, E, k, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=g, dtype=torch.float64) for s in [(T, n_in), (T, k), (E, n_in, r), (E, r, n_out)]]


@pytest.mark.parametrize("how", ["random", "drop", "skip_last", "one"])
@pytest.mark.parametrize("grouped", [False, True])
def test_lora_mix_matches_oracle(how: str, grouped: bool, monkeypatch):
    T, n_in, r, n_out, E, k = 20, 16, 4, 12, 6, 2
    ts = [t.bfloat16().double() for t in lora_tensors(T, n_in, r, n_out, E, k)]  # exact in bf16 and fp32
    idx = routing(T, E, k, how=how)
    grad_out = torch.randn(T, n_out, dtype=torch.float64).bfloat16().double()

    def run(backend, dtype):
        leaves = [t.to(dtype).requires_grad_() for t in ts]
        y = backend.lora_mix(leaves[0], idx, leaves[1], leaves[2], leaves[3], 2.0)
        return [y, *torch.autograd.grad(y, leaves, grad_out.to(dtype))]

    expected = run(naive, torch.float64)
    if grouped:
        monkeypatch.setattr(reference, "_can_group", lambda *a: True)
    for a, b in zip(run(reference, torch.float32), expected, strict=True):
        torch.testing.assert_close(a.double(), b, **FP32)
    for a, b in zip(run(reference, torch.bfloat16), expected, strict=True):
        torch.testing.assert_close(a.double(), b, **BF16)


def test_cpu_results_are_bitwise_reproducible():
    T, d, f, E, k = 64, 16, 8, 4, 2
    ts, idx = tensors(T, d, f, E, k, "swiglu", True), routing(T, E, k)
    grad_out = torch.randn(T, d, dtype=torch.float64)
    (y1, g1), (y2, g2) = (run_ffn(reference, ts, idx, "swiglu", torch.float32, grad_out) for _ in range(2))
    assert torch.equal(y1, y2) and all(torch.equal(a, b) for a, b in zip(g1, g2, strict=True))


def test_reference_is_the_cpu_backend():
    assert get_backend("auto", device="cpu") is reference


def test_mismatched_shapes_raise_value_error():
    ts = tensors(4, 16, 8, 4, 2, "swiglu", False)
    with pytest.raises(ValueError, match="topk_idx"):
        reference.expert_ffn(ts[0], torch.zeros(4, 3, dtype=torch.long), ts[1], ts[2], ts[3], activation="swiglu")
    with pytest.raises(ValueError, match="weights"):
        reference.expert_ffn(
            ts[0], torch.zeros(4, 2, dtype=torch.long), ts[1], ts[2][:, :8], ts[3], activation="swiglu"
        )


def test_the_slot_sort_is_the_stable_sort_by_expert_with_dropped_slots_last():
    """sort_slots (which the reference and triton backends share) against Python's sorted() over the flat
    slots, keyed (expert, slot) with a dropped slot's key past every expert."""
    E, k = 4, 3
    idx = routing(9, E, k, seed=3, how="drop")
    flat = idx.reshape(-1).tolist()
    expect = sorted(range(len(flat)), key=lambda s: (flat[s] if flat[s] >= 0 else E, s))
    got = sort_slots(idx, E)
    assert got.order.tolist() == expect
    assert got.tok.tolist() == [s // k for s in expect]
    assert got.expert.tolist() == [flat[s] if flat[s] >= 0 else E for s in expect]
    assert got.counts.tolist() == [flat.count(e) for e in range(E)] + [flat.count(-1)]
    assert inverse_permutation(got.order)[got.order].tolist() == list(range(len(flat)))


def test_relu2_is_the_square_of_the_relu_and_its_gradient_twice_the_relu():
    # Nemotron-H's squared ReLU, written out by hand: h² where h > 0, else 0; d/dh = 2h where h > 0
    from moec.kernels.activations import activate

    h = torch.tensor([-2.0, -0.5, 0.0, 0.25, 3.0], dtype=torch.float64, requires_grad=True)
    y = activate(h, "relu2")
    assert y.tolist() == [0.0, 0.0, 0.0, 0.0625, 9.0]
    y.sum().backward()
    assert h.grad.tolist() == [0.0, 0.0, 0.0, 0.5, 6.0]
