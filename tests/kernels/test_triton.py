"""The triton MoE backend against the float64 naive oracle, on outputs and every gradient.

How the CPU run works: ``TRITON_INTERPRET`` is read when ``@triton.jit`` decorates a kernel, i.e.
when ``moec.kernels.triton`` is first imported, and other test modules in the same pytest
process may import torch/triton/moec first. So without CUDA this module does not run the kernel
cases in the pytest process at all: ``test_kernel_cases_under_the_interpreter`` re-runs this very
file in a fresh ``python -m pytest`` child with ``TRITON_INTERPRET=1`` in its environment from the
start, and the child collects the cases below (in the parent they show as skipped). With CUDA the
cases run directly on the GPU with compiled kernels. Pure-torch checks (routing tables, the
autotune cache) run in the parent too.

Sizes are tiny (T ≤ 64, d, f ≤ 64, E ≤ 64): the interpreter runs every program in Python.
The widths (d=40, f=36 → 2f=72) are not multiples of the 32-wide interpreter blocks, and f spans two
N-tiles, so masking and the per-N-tile router-gradient partials are both exercised.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from moec.kernels import GATED, naive
from moec.kernels.triton.configs import KernelConfig, autotune
from moec.kernels.triton.tiles import max_tiles, tile_slots

HAS_CUDA = torch.cuda.is_available()
INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
RUN_KERNELS = HAS_CUDA or INTERPRET
DEVICE = "cpu" if INTERPRET or not HAS_CUDA else "cuda"
ROOT = Path(__file__).resolve().parents[2]

kernel_case = pytest.mark.skipif(
    not RUN_KERNELS, reason="runs in the TRITON_INTERPRET=1 child process (test_kernel_cases_under_the_interpreter)"
)

# relative max error (max |got - ref| / max |ref|) allowed per dtype: (output, gradients)
TOL = {torch.float32: (2e-5, 2e-4), torch.float16: (3e-3, 1.5e-2), torch.bfloat16: (2e-2, 5e-2)}


NAME_OF_THIS_TEST = "test_kernel_cases_under_the_interpreter"


@pytest.mark.skipif(RUN_KERNELS, reason="the kernel cases run directly in this process")
def test_kernel_cases_under_the_interpreter() -> None:
    """The child runs every test of this file but this one and the CUDA-only ones (deselected, by marker),
    and every one of them must pass: a skip there (triton imported before TRITON_INTERPRET was set, a
    guard gone stale) fails here instead of hiding in a count."""
    this, t0 = Path(__file__).relative_to(ROOT).as_posix(), time.perf_counter()
    args = ["-p", "no:cacheprovider", "-rs", "-m", "not cuda", "--deselect", f"{this}::{NAME_OF_THIS_TEST}"]
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", this, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900
    )
    tail = (proc.stdout[-8000:] + "\n" + proc.stderr[-3000:]).strip()
    assert proc.returncode == 0, f"interpreter suite failed:\n{tail}"
    summary = proc.stdout.strip().splitlines()[-1]
    counts = {word: int(n) for n, word in re.findall(r"(\d+) (\w+)", summary) if not word.startswith("warning")}
    assert set(counts) == {"passed", "deselected"} and counts["passed"] > 0, f"not every case passed:\n{tail}"
    print(f"interpreter suite: {summary} ({time.perf_counter() - t0:.0f} s)")


# ------------------------------------------------------------------------------------- helpers
def make_case(
    T: int = 32,
    d: int = 40,
    f: int = 36,
    E: int = 8,
    k: int = 2,
    activation: str = "swiglu",
    *,
    bias: bool = False,
    empty: int | None = None,
    drop: int = 0,
    seed: int = 0,
) -> dict:
    """float64 inputs; uniform top-k routing with distinct experts per token; ``empty`` never chosen;
    ``drop`` slots set to -1."""
    g = torch.Generator().manual_seed(seed)
    width = 2 * f if activation in GATED else f
    pool = E - (empty is not None)
    idx = torch.rand(T, pool, generator=g).argsort(-1)[:, :k].contiguous()  # (T, k) distinct experts per token
    if empty is not None:
        idx = idx + (idx >= empty).long()  # shift past the expert that must stay empty
    if drop:
        flat = idx.view(-1)
        flat[torch.randperm(flat.numel(), generator=g)[:drop]] = -1
    t = {
        "x": torch.randn(T, d, generator=g, dtype=torch.float64),
        "topk_w": torch.rand(T, k, generator=g, dtype=torch.float64) + 0.1,
        "w_gate_up": torch.randn(E, d, width, generator=g, dtype=torch.float64) / d**0.5,
        "w_down": torch.randn(E, f, d, generator=g, dtype=torch.float64) / f**0.5,
    }
    if bias:
        t["b_gate_up"] = 0.5 * torch.randn(E, width, generator=g, dtype=torch.float64)
        t["b_down"] = 0.5 * torch.randn(E, d, generator=g, dtype=torch.float64)
    return {
        "tensors": t,
        "topk_idx": idx,
        "activation": activation,
        "grad_out": torch.randn(T, d, generator=g, dtype=torch.float64),
    }


def run(fn, case: dict, dtype: torch.dtype, device: str = DEVICE, **kw) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Output and gradients of every input tensor, computed with ``fn`` in ``dtype``."""
    leaves = {n: v.to(device=device, dtype=dtype).requires_grad_() for n, v in case["tensors"].items()}
    out = fn(
        leaves["x"],
        case["topk_idx"].to(device),
        leaves["topk_w"],
        leaves["w_gate_up"],
        leaves["w_down"],
        activation=case["activation"],
        b_gate_up=leaves.get("b_gate_up"),
        b_down=leaves.get("b_down"),
        **kw,
    )
    if out.requires_grad:
        out.backward(case["grad_out"].to(device=device, dtype=dtype))
    else:  # the oracle's output is a constant when every slot is dropped
        return out, {n: torch.zeros_like(v) for n, v in leaves.items()}
    return out.detach(), {n: v.grad for n, v in leaves.items()}


def oracle(case: dict, dtype: torch.dtype) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The naive loop in float64 on the inputs rounded to ``dtype`` (so only kernel error is measured)."""
    rounded = {**case, "tensors": {n: v.to(dtype).double() for n, v in case["tensors"].items()}}
    return run(naive.expert_ffn, rounded, torch.float64, "cpu")


def rel_err(got: torch.Tensor, ref: torch.Tensor) -> float:
    return ((got.double().cpu() - ref).abs().max() / ref.abs().max().clamp_min(1e-30)).item()


def assert_matches_oracle(case: dict, dtype: torch.dtype = torch.float32, **kw) -> dict[str, torch.Tensor]:
    from moec.kernels import triton as triton_backend

    out, grads = run(triton_backend.expert_ffn, case, dtype, **kw)
    ref_out, ref_grads = oracle(case, dtype)
    tol_out, tol_grad = TOL[dtype]
    assert out.dtype == dtype and out.shape == ref_out.shape
    assert rel_err(out, ref_out) <= tol_out, f"output: {rel_err(out, ref_out):.2e}"
    for name, ref in ref_grads.items():
        assert grads[name] is not None and grads[name].dtype == dtype, name
        assert rel_err(grads[name], ref) <= tol_grad, f"d{name}: {rel_err(grads[name], ref):.2e}"
    return grads


# ------------------------------------------------------------------------ oracle on all gradients
# 32-wide blocks: d=40 takes two K-steps and f=36 two N-tiles (masked tails, per-N-tile router-grad
# partials). The E=64 cases use the default 64-wide interpreter blocks: ~80 tiles is slow enough.
NARROW = KernelConfig(16, 32, 32, 1, 1)


@kernel_case
@pytest.mark.parametrize(
    "k,E,activation,dtype",
    [
        (1, 1, "swiglu", torch.float32),
        (2, 8, "swiglu", torch.float32),
        (8, 8, "swiglu", torch.float32),  # k == E: every token visits every expert
        (2, 64, "swiglu", torch.float32),
        (8, 64, "swiglu", torch.float32),
        (2, 8, "geglu", torch.float32),
        (2, 8, "gelu", torch.float32),
        (1, 8, "relu", torch.float32),
        (1, 8, "relu2", torch.float32),
        (2, 8, "silu", torch.float32),
        (2, 8, "swiglu", torch.float16),
        (8, 64, "swiglu", torch.float16),
        (2, 8, "gelu", torch.float16),
    ],
)
def test_outputs_and_all_gradients_match_the_float64_oracle(
    k: int, E: int, activation: str, dtype: torch.dtype
) -> None:
    config = None if E > 8 or not INTERPRET else NARROW
    assert_matches_oracle(
        make_case(T=32 if E <= 8 else 16 * (1 + (k < 8)), E=E, k=k, activation=activation, seed=k * 100 + E),
        dtype,
        config=config,
    )


@kernel_case
@pytest.mark.parametrize("activation", ["swiglu", "gelu"])
def test_biases_get_gradients_and_enter_the_gate_weight_gradient(activation: str) -> None:
    assert_matches_oracle(make_case(activation=activation, bias=True, seed=7))


@kernel_case
@pytest.mark.parametrize(
    "config",
    [KernelConfig(16, 16, 16, 1, 1), KernelConfig(32, 64, 16, 1, 1), KernelConfig(16, 128, 32, 1, 1)],
    ids=["blocks16", "bm32-bn64", "bn128"],
)
def test_block_sizes_do_not_change_the_result(config: KernelConfig) -> None:
    # BN=16 splits f=36 into 3 N-tiles (router-grad partials summed across tiles); BM=32 > rows/expert;
    # the fused kernels derive narrower N-tiles than the plain GEMMs (KernelConfig.fused_n)
    assert_matches_oracle(make_case(k=2, E=8, bias=True, seed=11), config=config)


# ---------------------------------------------------------------------------- routing edge cases
@kernel_case
def test_an_empty_expert_gets_exactly_zero_weight_gradients() -> None:
    grads = assert_matches_oracle(make_case(E=8, k=2, bias=True, empty=5, seed=3))
    for name in ("w_gate_up", "w_down", "b_gate_up", "b_down"):
        assert torch.count_nonzero(grads[name][5]) == 0, name
        assert torch.count_nonzero(grads[name][4]) > 0, name


@kernel_case
def test_all_tokens_on_one_expert() -> None:
    case = make_case(T=64, E=8, k=1, seed=5)
    case["topk_idx"] = torch.full((64, 1), 6)  # 64 rows on expert 6: four BM=16 tiles, others empty
    grads = assert_matches_oracle(case)
    assert torch.count_nonzero(grads["w_gate_up"][:6]) == 0 and torch.count_nonzero(grads["w_down"][7]) == 0


@kernel_case
def test_dropped_slots_contribute_nothing_and_get_zero_gate_gradient() -> None:
    case = make_case(E=8, k=2, drop=9, seed=9)
    grads = assert_matches_oracle(case)
    dropped = case["topk_idx"] < 0
    assert torch.count_nonzero(grads["topk_w"].cpu()[dropped]) == 0


@kernel_case
def test_every_slot_dropped_gives_zero_output_and_gradients() -> None:
    case = make_case(T=8, E=4, k=2, seed=2)
    case["topk_idx"] = torch.full((8, 2), -1)
    grads = assert_matches_oracle(case)
    assert all(torch.count_nonzero(g) == 0 for g in grads.values())


@kernel_case
def test_one_token() -> None:
    assert_matches_oracle(make_case(T=1, E=8, k=2, bias=True, seed=1))


@kernel_case
def test_zero_tokens_give_an_empty_output_and_zero_weight_gradients() -> None:
    from moec.kernels import triton as triton_backend

    case = make_case(T=0, E=8, k=2, bias=True)
    out, grads = run(triton_backend.expert_ffn, case, torch.float32)
    assert out.shape == (0, 40)
    assert grads["x"].shape == (0, 40) and grads["topk_w"].shape == (0, 2)
    for name in ("w_gate_up", "w_down", "b_gate_up", "b_down"):
        assert grads[name].shape == case["tensors"][name].shape and torch.count_nonzero(grads[name]) == 0, name


@kernel_case
def test_leading_dims_strided_inputs_and_hf_weight_layout() -> None:
    """(B, S, d) input, a non-contiguous x, and weights stored (E, out, in) as HF does, used transposed."""
    from moec.kernels import triton as triton_backend

    case = make_case(T=24, E=8, k=2, seed=4)
    t = {n: v.float() for n, v in case["tensors"].items()}
    ref_out, _ = oracle(case, torch.float32)
    # x with column stride 2 (every other column of a wider buffer), same values
    x_strided = torch.stack([t["x"], torch.zeros_like(t["x"])], dim=-1).reshape(24, 80)[:, ::2]
    assert not x_strided.is_contiguous() and torch.equal(x_strided, t["x"])
    w1_hf = t["w_gate_up"].transpose(1, 2).contiguous().transpose(1, 2)  # (E, d, 2f) view of (E, 2f, d) storage
    w2_hf = t["w_down"].transpose(1, 2).contiguous().transpose(1, 2)
    out = triton_backend.expert_ffn(
        x_strided.to(DEVICE).view(2, 12, 40),
        case["topk_idx"].view(2, 12, 2).to(DEVICE),
        t["topk_w"].view(2, 12, 2).to(DEVICE),
        w1_hf.to(DEVICE),
        w2_hf.to(DEVICE),
        activation="swiglu",
    )
    assert out.shape == (2, 12, 40)
    assert rel_err(out.reshape(24, 40), ref_out) <= TOL[torch.float32][0]


@kernel_case
def test_two_runs_are_bitwise_identical() -> None:
    from moec.kernels import triton as triton_backend

    case = make_case(T=64, E=8, k=2, bias=True, seed=8)
    out1, g1 = run(triton_backend.expert_ffn, case, torch.float32)
    out2, g2 = run(triton_backend.expert_ffn, case, torch.float32)
    assert torch.equal(out1, out2)
    assert all(torch.equal(g1[n], g2[n]) for n in g1)


# ---------------------------------------------------------------- torch.library, FLOPs, compile
@kernel_case
@pytest.mark.parametrize("frozen", [False, True], ids=["trainable", "frozen-experts"])
def test_flop_counter_counts_the_analyzer_flops(frozen: bool) -> None:
    """2 FLOPs per multiply-add: forward T·k·6·d·f for SwiGLU; training 3×, frozen experts 2×."""
    from torch.utils.flop_counter import FlopCounterMode

    from moec.kernels import triton as triton_backend

    T, d, f, E, k = 32, 40, 36, 8, 2
    case = make_case(T=T, d=d, f=f, E=E, k=k)
    t = {
        n: v.float().to(DEVICE).requires_grad_(not (frozen and n.startswith("w_"))) for n, v in case["tensors"].items()
    }
    with FlopCounterMode(display=False) as counter:
        out = triton_backend.expert_ffn(
            t["x"], case["topk_idx"].to(DEVICE), t["topk_w"], t["w_gate_up"], t["w_down"], activation="swiglu"
        )
        forward = counter.get_total_flops()
        out.backward(torch.ones_like(out))
    assert forward == T * k * 6 * d * f
    assert counter.get_total_flops() == (2 if frozen else 3) * forward
    if frozen:
        assert t["w_gate_up"].grad is None and t["x"].grad is not None


@kernel_case
def test_torch_compile_traces_the_op_without_graph_breaks() -> None:
    from moec.kernels import triton as triton_backend

    case = make_case(T=16, E=4, k=2, seed=6)

    def fn(x, topk_idx, topk_w, w1, w2, *, activation, b_gate_up=None, b_down=None):
        return triton_backend.expert_ffn(x, topk_idx, topk_w, w1, w2, activation=activation)

    torch._dynamo.reset()
    compiled = torch.compile(fn, backend="aot_eager", fullgraph=True)
    out_c, grads_c = run(compiled, case, torch.float32)
    out_e, grads_e = run(fn, case, torch.float32)
    assert torch.equal(out_c, out_e)
    assert all(torch.equal(grads_c[n], grads_e[n]) for n in grads_e)


@kernel_case
def test_opcheck_registration() -> None:
    """torch.library's own consistency checks: schema, fake tensor, autograd registration."""
    import moec.kernels.triton  # noqa: F401  (registers the op)
    from moec.kernels.triton.tiles import tile_slots as tiles_of

    case = make_case(T=8, E=4, k=2, seed=12)
    t = {n: v.float().to(DEVICE).requires_grad_() for n, v in case["tensors"].items()}
    idx = case["topk_idx"].to(DEVICE)
    r = tiles_of(idx, 4, 16)
    args = (
        t["x"],
        idx,
        t["topk_w"],
        t["w_gate_up"],
        t["w_down"],
        None,
        None,
        r.order,
        r.rev,
        r.expert_start,
        r.expert_end,
        r.tile_expert,
        r.tile_row,
        "swiglu",
        [16, 32, 32, 1, 1],
        True,
    )
    torch.library.opcheck(
        torch.ops.moec.triton_expert_ffn.default,
        args,
        test_utils=("test_schema", "test_faketensor", "test_autograd_registration"),
    )


# -------------------------------------------------------------------------------------- LoRA
@kernel_case
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_lora_mix_matches_the_oracle_with_dropped_slots_and_an_empty_expert(dtype: torch.dtype) -> None:
    from moec.kernels import triton as triton_backend

    g = torch.Generator().manual_seed(21)
    T, n_in, r, n_out, E, k = 24, 40, 8, 36, 6, 2
    idx = torch.rand(T, E - 1, generator=g).argsort(-1)[:, :k]
    idx = idx + (idx >= 2).long()  # expert 2 stays empty
    idx[3, 1] = -1
    leaves = {
        "x": torch.randn(T, n_in, generator=g, dtype=torch.float64),
        "topk_w": torch.rand(T, k, generator=g, dtype=torch.float64),
        "a": torch.randn(E, n_in, r, generator=g, dtype=torch.float64) / n_in**0.5,
        "b": torch.randn(E, r, n_out, generator=g, dtype=torch.float64) / r**0.5,
    }
    grad_out = torch.randn(T, n_out, generator=g, dtype=torch.float64)

    def go(fn, dt, device):
        lv = {n: v.to(dtype).to(device=device, dtype=dt).requires_grad_() for n, v in leaves.items()}
        out = fn(lv["x"], idx.to(device), lv["topk_w"], lv["a"], lv["b"], 0.75)
        out.backward(grad_out.to(device=device, dtype=dt))
        return out.detach(), {n: v.grad for n, v in lv.items()}

    out, grads = go(triton_backend.lora_mix, dtype, DEVICE)
    ref, ref_grads = go(naive.lora_mix, torch.float64, "cpu")
    tol_out, tol_grad = TOL[dtype]
    assert rel_err(out, ref) <= tol_out
    for n in ref_grads:
        assert rel_err(grads[n], ref_grads[n]) <= tol_grad, n
    assert torch.count_nonzero(grads["a"][2]) == 0 and torch.count_nonzero(grads["b"][2]) == 0
    assert grads["topk_w"][3, 1] == 0


# ------------------------------------------------------------- pure torch: routing and configs
@pytest.mark.parametrize(
    "T,E,k,bm", [(0, 4, 2, 16), (1, 8, 2, 16), (37, 8, 2, 16), (64, 64, 8, 16), (50, 3, 1, 32), (9, 256, 8, 16)]
)
def test_routing_tiles_cover_each_experts_rows_exactly_once(T: int, E: int, k: int, bm: int) -> None:
    g = torch.Generator().manual_seed(T + E)
    idx = torch.rand(T, E, generator=g).argsort(-1)[:, :k] if T else torch.empty(0, k, dtype=torch.long)
    if T > 4:
        idx[0, 0] = -1
        idx[idx == 1] = -1  # expert 1 empty, plus dropped slots
    r = tile_slots(idx, E, bm)
    flat = idx.reshape(-1)
    counts = torch.bincount(flat[flat >= 0], minlength=E)
    assert torch.equal(r.expert_end - r.expert_start, counts)
    assert r.max_tiles == max_tiles(flat.numel(), E, bm)
    assert torch.equal(r.rev[r.order], torch.arange(flat.numel()))
    sorted_experts = flat[r.order]
    n_live = int(counts.sum())
    assert (sorted_experts[:n_live] >= 0).all() and (sorted_experts[n_live:] < 0).all()
    assert torch.equal(sorted_experts[:n_live], torch.sort(flat[flat >= 0], stable=True).values)
    covered = torch.zeros(flat.numel(), dtype=torch.long)
    live_tiles = r.tile_expert < E
    assert int(live_tiles.sum()) == int(((counts + bm - 1) // bm).sum())  # the bound is never short
    for e, row0 in zip(r.tile_expert[live_tiles].tolist(), r.tile_row[live_tiles].tolist(), strict=True):
        end = int(r.expert_end[e])
        assert int(r.expert_start[e]) <= row0 < end
        covered[row0 : min(row0 + bm, end)] += 1
        assert (sorted_experts[row0 : min(row0 + bm, end)] == e).all()
    assert (covered[:n_live] == 1).all() and (covered[n_live:] == 0).all()


def test_autotune_result_is_cached_on_disk_so_a_second_run_does_not_retune(tmp_path: Path) -> None:
    calls: list[KernelConfig] = []
    cands = (KernelConfig(16, 64, 64), KernelConfig(32, 64, 64), KernelConfig(64, 128, 64))

    def timing(cfg: KernelConfig) -> float:
        calls.append(cfg)
        if cfg.block_m == 64:
            raise RuntimeError("out of shared memory")  # a failing candidate is skipped, not fatal
        return {16: 2.0, 32: 1.0}[cfg.block_m]

    path = tmp_path / "cache.json"
    assert autotune("key", timing, cands, path=path) == cands[1]
    assert len(calls) == 3 and path.is_file()
    assert autotune("key", timing, cands, path=path) == cands[1]  # a fresh lookup, e.g. a new process
    assert len(calls) == 3


# ----------------------------------------------------------------------------------- GPU only
@pytest.mark.parametrize("activation", ["swiglu", "gelu"])
@pytest.mark.parametrize("E,k", [(8, 2), (256, 8)])
@pytest.mark.cuda
@pytest.mark.skipif(not HAS_CUDA or INTERPRET, reason="needs a CUDA GPU")
def test_bf16_on_gpu_matches_the_oracle(activation: str, E: int, k: int) -> None:
    assert_matches_oracle(make_case(T=512, d=256, f=160, E=E, k=k, activation=activation, bias=True), torch.bfloat16)


@pytest.mark.cuda
@pytest.mark.skipif(not HAS_CUDA or INTERPRET, reason="needs a CUDA GPU")
def test_no_host_sync_in_forward_and_backward() -> None:
    from moec.kernels import triton as triton_backend

    case = make_case(T=256, d=128, f=96, E=16, k=4, seed=13)
    run(triton_backend.expert_ffn, case, torch.bfloat16)  # compile the kernels outside the checked region
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        run(triton_backend.expert_ffn, case, torch.bfloat16)
    finally:
        torch.cuda.set_sync_debug_mode("default")


@pytest.mark.cuda
@pytest.mark.slow
@pytest.mark.skipif(not HAS_CUDA or INTERPRET, reason="needs a CUDA GPU")
def test_row_offsets_past_2_to_the_31_do_not_overflow() -> None:
    """T·k·d > 2³¹ elements in the sorted (TK, d) buffer: int32 row × stride would wrap."""
    from moec.kernels import triton as triton_backend

    T, d, f, E, k = 140_000, 2048, 64, 8, 8
    if torch.cuda.get_device_properties(0).total_memory < 40 * 2**30:
        pytest.skip("needs ~20 GB of GPU memory")
    g = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(T, d, device="cuda", dtype=torch.bfloat16, generator=g)
    idx = torch.rand(T, E, device="cuda", generator=g).argsort(-1)[:, :k]
    w = torch.rand(T, k, device="cuda", generator=g)
    w1 = torch.randn(E, d, 2 * f, device="cuda", dtype=torch.bfloat16, generator=g) / d**0.5
    w2 = torch.randn(E, f, d, device="cuda", dtype=torch.bfloat16, generator=g) / f**0.5
    with torch.no_grad():
        out = triton_backend.expert_ffn(x, idx, w, w1, w2, activation="swiglu")
        last = slice(T - 64, T)  # the rows whose offsets are past 2³¹
        ref = naive.expert_ffn(x[last].float(), idx[last], w[last], w1.float(), w2.float(), activation="swiglu")
    assert rel_err(out[last].float(), ref.double().cpu()) < 2e-2
