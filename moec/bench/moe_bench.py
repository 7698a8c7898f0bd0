"""Time MoE expert implementations side by side, in one process, on the same tensors and routing.

Method (docs/kernels.md, "How the benchmark measures"):
* Inputs: seeded normal activations and weights (std 1/sqrt(fan-in)); routing is seeded uniform
  top-k (k distinct experts per token, gate weights a softmax over the chosen k).
* Every peer is warmed up (Triton compilation, allocator), then timed ``repeats`` times
  **interleaved round-robin** (peer A, B, C, A, B, C, ...) so drift and noise hit all of them alike;
  the median is reported. On a GPU each timing is bracketed by ``torch.cuda.synchronize``.
* Useful FLOPs follow the analyzer (2 FLOPs per multiply-add, router not included: it is not part
  of the expert kernel): forward 2·T·k·d·(W + f) with W = 2f for gated experts (= T·k·6·d·f for
  SwiGLU); forward+backward = 3× (every weight trainable).
* ``ideal_dense`` runs those same FLOPs as plain dense matmuls of the same shapes in the same run;
  ``ratio_to_ideal`` = a peer's time / ideal's time (1.0 = routing is free).
* Errors: every peer is re-run (untimed) on the first ``check_tokens`` tokens and compared with the
  naive per-expert loop in float64, run one expert at a time (``oracle_errors``): output rows depend
  only on their own token, so a token subset checks them exactly; gradients (x, topk_w, both expert
  weights) are those of that subset.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from moec.bench.memory import bench_memory
from moec.bench.peers import ALL_PEERS, Peer, Unavailable, Weights, build_peer
from moec.kernels import ACTIVATIONS, GATED
from moec.nn.build import require_memory, resolve_device
from moec.vocab import TORCH_DTYPE_NAMES

DTYPES = {name: getattr(torch, torch_name) for name, torch_name in TORCH_DTYPE_NAMES.items()}
DEFAULT_BACKENDS = ("naive", "reference", "triton", "hf_loop", "all_experts", "ideal_dense")


@dataclass(frozen=True)
class BenchShape:
    d_model: int
    d_ff: int  # per routed expert
    n_experts: int
    top_k: int
    activation: str = "swiglu"
    # the clamped activations' parameters as the spec writes them (moec.vocab LIMITED; alpha: swiglu_clamped's);
    # None: the activation's own default, as the backends read it
    activation_alpha: float | None = None
    activation_limit: float | None = None

    def __post_init__(self) -> None:
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {self.activation!r}; choose from {', '.join(ACTIVATIONS)}")
        if not 1 <= self.top_k <= self.n_experts:
            raise ValueError(f"top_k must be in 1..n_experts ({self.n_experts}), got {self.top_k}")

    @property
    def width(self) -> int:
        """Columns of the first projection: 2f for gated experts ([gate | up]), f otherwise."""
        return 2 * self.d_ff if self.activation in GATED else self.d_ff


@dataclass(frozen=True)
class BenchOptions:
    tokens: tuple[int, ...] = (4096,)
    backends: tuple[str, ...] = DEFAULT_BACKENDS
    dtype: str = "fp32"
    backward: bool = False
    repeats: int = 5
    warmup: int = 1
    seed: int = 0
    device: str = "auto"
    check_tokens: int = 1024  # 0: skip the error check
    threads: int | None = None  # CPU: torch.set_num_threads; default all cores
    # "moec": weights stored (E, d, W) / (E, f, d), input-major as moec's models keep them; peers
    # with HF's (E, out, in) layout get copies. "hf": stored (E, W, d) / (E, d, f) and moec's
    # backends read transposed views (no copies at all: DeepSeek-V3's 22 GB of bf16 expert
    # weights fit only once next to their gradients on an 80 GB GPU).
    weight_layout: str = "moec"


def shape_from_spec(source: str, sets: tuple[str, ...] = ()) -> tuple[BenchShape, str]:
    """The expert shape of the first MoE layer of a spec, and a note about what was taken."""
    from moec.spec import MoEPlan, load_model

    model = load_model(source, sets=sets)
    moe = next((layer for layer in model.layers if isinstance(layer.ffn, MoEPlan)), None)
    if moe is None:
        raise ValueError(f"{model.name} has no MoE layer")
    p = moe.ffn
    assert isinstance(p, MoEPlan)
    note = f"{model.name}, layer {moe.index}: routed experts only"
    if p.n_shared_experts:
        note += f" ({p.n_shared_experts} shared expert(s) of width {p.d_ff_shared} not included)"
    if p.expert_kind == "lora":
        note += f" (LoRA experts: the frozen base FFN shape; rank-{p.lora_rank} updates not included)"
    shape = BenchShape(
        model.d_model, p.d_ff, p.n_experts, p.top_k, p.activation, p.activation_alpha, p.activation_limit
    )
    return shape, note


def useful_flops(shape: BenchShape, tokens: int, *, backward: bool) -> int:
    """Analyzer convention: 2·T·k·d·(W + f) forward (k·6·d·f per token for SwiGLU); training 3×."""
    fwd = 2 * tokens * shape.top_k * shape.d_model * (shape.width + shape.d_ff)
    return 3 * fwd if backward else fwd


def min_bytes(shape: BenchShape, tokens: int, experts_hit: int, elem: int, *, backward: bool) -> int:
    """A lower bound on memory traffic: the weights of every expert that has tokens (read once; plus
    read again and gradient written in the backward) and the (T, d) activations in and out
    (forward: x, out; forward+backward adds dO, a second read of x, and dx)."""
    weights = experts_hit * shape.d_model * (shape.width + shape.d_ff) * elem
    acts = tokens * shape.d_model * elem
    return 3 * weights + 5 * acts if backward else weights + 2 * acts


def machine_info(device: torch.device) -> dict[str, Any]:
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "cpu": _cpu_name(),
        "cpu_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "device": str(device),
    }
    try:
        import triton

        info["triton"] = triton.__version__
    except ImportError:
        info["triton"] = None
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def _loadavg() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


@dataclass
class _Inputs:
    x: torch.Tensor  # (T, d)
    topk_idx: torch.Tensor  # (T, k) int64
    topk_w: torch.Tensor  # (T, k)
    rows: torch.Tensor  # (T·k, d) pre-gathered rows for ideal_dense
    grad_out: torch.Tensor  # (T, d)
    grad_rows: torch.Tensor  # (T·k, d)


def _make_weights(
    shape: BenchShape, dtype: torch.dtype, device: torch.device, seed: int, backward: bool, layout: str
) -> Weights:
    g = torch.Generator(device="cpu").manual_seed(seed)
    E, d, f, W = shape.n_experts, shape.d_model, shape.d_ff, shape.width

    def randn(E: int, n_in: int, n_out: int) -> torch.Tensor:  # (E, n_in, n_out), possibly a transposed view
        store = torch.empty(E, n_out, n_in, dtype=dtype, device=device) if layout == "hf" else None
        out = store.transpose(1, 2) if store is not None else torch.empty(E, n_in, n_out, dtype=dtype, device=device)
        for e in range(E):  # generated per expert: no (E, ...) fp32 staging copy
            out[e].copy_(torch.randn(n_in, n_out, generator=g) * n_in**-0.5)
        return out.requires_grad_(backward)  # a leaf (a view of a tensor that needs no grad is one)

    if layout not in ("moec", "hf"):
        raise ValueError(f"weight_layout must be moec or hf, got {layout!r}")
    return Weights(randn(E, d, W), randn(E, f, d), shape.activation, shape.activation_alpha, shape.activation_limit)


def _make_inputs(
    shape: BenchShape, T: int, dtype: torch.dtype, device: torch.device, seed: int, backward: bool
) -> _Inputs:
    g = torch.Generator(device="cpu").manual_seed(seed + 1 + T)
    d, E, k = shape.d_model, shape.n_experts, shape.top_k
    idx = torch.rand(T, E, generator=g).argsort(-1)[:, :k].contiguous()  # uniform, k distinct experts
    w = torch.softmax(torch.randn(T, k, generator=g), -1)
    x = torch.randn(T, d, generator=g)
    rows = x.repeat_interleave(k, dim=0)  # (T·k, d): each token once per slot, already gathered

    def dev(t: torch.Tensor, grad: bool = False) -> torch.Tensor:
        return t.to(device=device, dtype=dtype if t.is_floating_point() else t.dtype).requires_grad_(grad)

    return _Inputs(
        x=dev(x, backward),
        topk_idx=dev(idx),
        topk_w=dev(w, backward),
        rows=dev(rows, backward),
        grad_out=dev(torch.randn(T, d, generator=g)),
        grad_rows=dev(torch.randn(T * k, d, generator=g)),
    )


def _step(peer: Peer, inp: _Inputs, weights: Weights, backward: bool, others: tuple[Peer, ...] = ()) -> torch.Tensor:
    """One forward (and backward) of a peer. Clears every gradient first, its own and ``others``',
    so only one peer's gradients are ever alive (they are as large as the expert weights)."""
    if backward:
        for t in (inp.x, inp.topk_w, inp.rows, weights.w_gate_up, weights.w_down, *peer.leaves.values()):
            t.grad = None
        for other in others:
            for t in other.leaves.values():
                t.grad = None
    if peer.rows_input:
        out = peer.fn(inp.rows, inp.topk_idx, inp.topk_w)
        if backward:
            out.backward(inp.grad_rows)
    else:
        out = peer.fn(inp.x, inp.topk_idx, inp.topk_w)
        if backward:
            out.backward(inp.grad_out)
    return out


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class Result:
    tokens: int
    backend: str
    status: str  # ok | skipped | error
    note: str = ""
    ms: float | None = None  # median
    ms_min: float | None = None
    ms_all: list[float] = field(default_factory=list)
    flops: int = 0
    tflops: float | None = None
    gbps: float | None = None  # min_bytes / time
    speedup_vs_naive: float | None = None
    speedup_vs_reference: float | None = None
    ratio_to_ideal: float | None = None  # time / ideal_dense time
    max_abs_err: float | None = None  # output vs the oracle
    max_abs_err_grad: float | None = None  # over dx, d topk_w, dW_gate_up, dW_down
    max_rel_err_grad: float | None = None  # the same, each divided by max |oracle grad|
    peak_mem_mb: float | None = None  # CUDA: peak allocation over one step, above what was live before


def run_bench(shape: BenchShape, opts: BenchOptions) -> dict[str, Any]:
    """Benchmark every requested backend at every token count; returns a JSON-ready report."""
    for b in opts.backends:
        if b not in ALL_PEERS:
            raise ValueError(f"unknown bench backend {b!r}; choose from {', '.join(ALL_PEERS)}")
    device = resolve_device(opts.device)
    dtype = DTYPES[opts.dtype]
    need = bench_memory(shape, opts, nbytes=dtype.itemsize, host=device.type == "cpu")
    require_memory(need, device, lead="bench needs", hint="; lower --tokens or the expert shape")
    if device.type == "cpu":
        torch.set_num_threads(opts.threads or os.cpu_count() or 1)
    notes = []
    if device.type == "cpu" and dtype != torch.float32:
        notes.append(f"{opts.dtype} matmuls on a CPU without native support are emulated (~100x slower than fp32)")
    weights = _make_weights(shape, dtype, device, opts.seed, opts.backward, opts.weight_layout)
    results: list[Result] = []
    load_before = _loadavg()
    for T in opts.tokens:
        results += _bench_tokens(shape, opts, T, weights, device, dtype)
    machine = machine_info(device)
    # other processes on a shared CPU distort every timing: keep the evidence with the numbers
    machine["loadavg_1min_before_after"] = [load_before, _loadavg()]
    return {
        "machine": machine,
        "config": {
            **asdict(shape),
            **{k: v for k, v in asdict(opts).items() if k != "device"},
            "device": str(device),
            "routing": "uniform top-k, seeded",
        },
        "conventions": {
            "flops": "useful model FLOPs, 2 per multiply-add: forward 2*T*k*d*(W+f), W=2f gated; fwd+bwd = 3x; router excluded",
            "ideal": "ideal_dense: the same FLOPs as dense matmuls (T*k,d)@(d,W) -> act -> (T*k,f)@(f,d), same run",
            "time": "median over interleaved round-robin repeats, after warm-up",
            "errors": "vs the naive per-expert loop in float64 on the first check_tokens tokens",
            "bandwidth": "gbps = lower-bound bytes (weights of experts hit, activations in/out) / time",
        },
        "notes": notes,
        "results": [asdict(r) for r in results],
    }


def _bench_tokens(
    shape: BenchShape, opts: BenchOptions, T: int, weights: Weights, device: torch.device, dtype: torch.dtype
) -> list[Result]:
    inp = _make_inputs(shape, T, dtype, device, opts.seed, opts.backward)
    flops = useful_flops(shape, T, backward=opts.backward)
    hit = int(torch.unique(inp.topk_idx).numel()) if T else 0
    nbytes = min_bytes(shape, T, hit, torch.empty(0, dtype=dtype).element_size(), backward=opts.backward)
    results: dict[str, Result] = {}
    peers: dict[str, Peer] = {}
    for name in opts.backends:
        try:
            peers[name] = build_peer(name, weights, backward=opts.backward)
        except Unavailable as e:
            results[name] = Result(T, name, "skipped", str(e), flops=flops)

    times: dict[str, list[float]] = {name: [] for name in peers}
    every = tuple(peers.values())
    for name, peer in list(peers.items()):  # warm-up; a peer that fails is reported, not fatal
        try:
            for _ in range(opts.warmup):
                _step(peer, inp, weights, opts.backward, every)
            _sync(device)
        except Exception as e:  # noqa: BLE001
            results[name] = Result(T, name, "error", f"{type(e).__name__}: {e}"[:300], flops=flops)
            del peers[name]
    for _ in range(opts.repeats):
        for name, peer in peers.items():
            _sync(device)
            t0 = time.perf_counter()
            _step(peer, inp, weights, opts.backward, every)
            _sync(device)
            times[name].append(1e3 * (time.perf_counter() - t0))

    for name, peer in peers.items():
        ms = statistics.median(times[name])
        r = Result(
            T, name, "ok", ms=ms, ms_min=min(times[name]), ms_all=[round(t, 3) for t in times[name]], flops=flops
        )
        r.tflops = flops / (ms * 1e-3) / 1e12 if ms > 0 else None
        r.gbps = nbytes / (ms * 1e-3) / 1e9 if ms > 0 and name != "ideal_dense" else None
        r.peak_mem_mb = _peak_mem(peer, inp, weights, opts.backward, device, every)
        results[name] = r
    del inp

    _relative(results)
    if opts.check_tokens > 0 and T > 0:
        _check_errors(shape, opts, min(T, opts.check_tokens), weights, peers, results, device, dtype)
    return [results[n] for n in opts.backends if n in results]


def _relative(results: dict[str, Result]) -> None:
    def base(name: str) -> float | None:
        r = results.get(name)
        return r.ms if r is not None and r.status == "ok" else None

    naive, ref, ideal = base("naive"), base("reference"), base("ideal_dense")
    for r in results.values():
        if r.status != "ok" or not r.ms:
            continue
        r.speedup_vs_naive = naive / r.ms if naive else None
        r.speedup_vs_reference = ref / r.ms if ref else None
        r.ratio_to_ideal = r.ms / ideal if ideal else None


def _peak_mem(
    peer: Peer, inp: _Inputs, weights: Weights, backward: bool, device: torch.device, others: tuple[Peer, ...]
) -> float | None:
    if device.type != "cuda":
        return None
    for t in (
        inp.x,
        inp.topk_w,
        inp.rows,
        weights.w_gate_up,
        weights.w_down,
        *(t for o in others for t in o.leaves.values()),
    ):
        t.grad = None
    _sync(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    out = _step(peer, inp, weights, backward)
    del out
    _sync(device)
    return (torch.cuda.max_memory_allocated(device) - before) / 2**20


def _check_errors(
    shape: BenchShape,
    opts: BenchOptions,
    n: int,
    weights: Weights,
    peers: dict[str, Peer],
    results: dict[str, Result],
    device: torch.device,
    dtype: torch.dtype,
) -> None:
    """Re-run each peer on the first n tokens (untimed) and compare with the float64 oracle."""
    inp = _make_inputs(shape, n, dtype, device, opts.seed, opts.backward)
    every = tuple(peers.values())
    for name, peer in peers.items():
        r = results[name]
        try:
            out = _step(peer, inp, weights, opts.backward, every)
        except Exception as e:  # noqa: BLE001
            r.note = f"error check failed: {type(e).__name__}: {e}"[:300]
            continue
        if peer.rows_input:  # ideal_dense is not the same function: nothing to compare
            continue
        got: dict[str, torch.Tensor | None] = {}
        if opts.backward:
            got = {
                "x": inp.x.grad,
                "topk_w": inp.topk_w.grad,
                "w_gate_up": weights.w_gate_up.grad,
                "w_down": weights.w_down.grad,
            }
            for key, leaf in peer.leaves.items():  # peers that own copies of the weights, in their layout
                got[key] = peer.to_moec.get(key, lambda g: g)(leaf.grad) if leaf.grad is not None else None
            missing = [k for k, v in got.items() if v is None]
            if missing:
                r.note = f"no gradient for {', '.join(missing)}"
                continue
        errs = oracle_errors(inp, weights, out.detach(), got, backward=opts.backward)
        r.max_abs_err, r.max_abs_err_grad, r.max_rel_err_grad = errs
        del out, got


def oracle_errors(
    inp: _Inputs, weights: Weights, out: torch.Tensor, got: dict[str, torch.Tensor], *, backward: bool
) -> tuple[float, float | None, float | None]:
    """Max abs error of ``out`` and max abs / relative error over the gradients ``got``, against the
    naive per-expert mask loop (moec.kernels.naive's math) in float64, run **one expert at a time**
    (its weights upcast one by one), so the check fits next to DeepSeek-V3-sized weights on a GPU."""
    f64 = torch.float64
    dev = inp.x.device
    x = inp.x.detach().to(f64)
    tw = inp.topk_w.detach().to(f64)
    go = inp.grad_out.to(f64)
    ref_out = torch.zeros_like(x)
    ref_dx, ref_dw = torch.zeros_like(x), torch.zeros_like(tw)
    w_abs = w_ref = 0.0  # max abs error / max |ref| over the weight gradients
    for e in range(weights.w_gate_up.shape[0]):
        tok, slot = torch.where(inp.topk_idx == e)
        if tok.numel() == 0:  # the oracle's weight gradient is exactly zero
            if backward:
                w_abs = max(w_abs, got["w_gate_up"][e].abs().max().item(), got["w_down"][e].abs().max().item())
            continue
        xe = x[tok].requires_grad_(backward)
        we = tw[tok, slot].requires_grad_(backward)
        w1 = weights.w_gate_up[e].detach().to(dev, f64).requires_grad_(backward)
        w2 = weights.w_down[e].detach().to(dev, f64).requires_grad_(backward)
        contrib = (weights.activate(xe @ w1) @ w2) * we[:, None]  # (n_e, d)
        ref_out.index_add_(0, tok, contrib.detach())
        if backward:
            contrib.backward(go[tok])
            ref_dx.index_add_(0, tok, xe.grad)
            ref_dw[tok, slot] += we.grad
            for ref, key in ((w1.grad, "w_gate_up"), (w2.grad, "w_down")):
                w_abs = max(w_abs, (got[key][e].to(f64) - ref).abs().max().item())
                w_ref = max(w_ref, ref.abs().max().item())
    out_err = (out.to(f64) - ref_out).abs().max().item()
    if not backward:
        return out_err, None, None
    abs_err, rel_err = w_abs, w_abs / max(w_ref, 1e-30)
    for key, ref in (("x", ref_dx), ("topk_w", ref_dw)):
        err = (got[key].to(f64) - ref).abs().max().item()
        abs_err, rel_err = max(abs_err, err), max(rel_err, err / max(ref.abs().max().item(), 1e-30))
    return out_err, abs_err, rel_err
