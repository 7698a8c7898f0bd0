"""`moec smoke-run`: train a (fitted) copy of a spec's model for a few steps and judge it.

Judged: the loss falls on data with learnable structure; no NaN/inf; the routers stay balanced
(reported, not fatal); the chosen kernel backend agrees with the reference on one batch; and how
fast it runs (tokens/s, TFLOP/s from the analyzer's FLOPs, MFU against a stated peak).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from moec.analyze import analyze
from moec.errors import CommandError
from moec.nn.build import available_bytes, resolve_device
from moec.smoke.data import MarkovData
from moec.smoke.report import LayerLoad, Numerics, SmokeResult
from moec.smoke.scale import fit
from moec.spec.plan import ResolvedModel

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
# Dense peak TFLOP/s from the vendors' spec sheets (no sparsity), by device-name substring.
PEAKS = {
    "H100": {"bf16": 989.4, "fp32": 494.7},
    "H200": {"bf16": 989.4, "fp32": 494.7},
    "A100": {"bf16": 312.0, "fp32": 156.0},
}
IMBALANCE_THRESHOLD = 3.0
DISTINCT_BATCHES = 64  # token batches generated up front and cycled through (int64, on the CPU)
NUMERICS_TOL = {"fp32": 1e-4, "bf16": 5e-2}


@dataclass
class SmokeConfig:
    device: str = "auto"
    backend: str = "auto"
    steps: int = 30
    batch: int = 8
    seq: int = 64
    dtype: str = "auto"
    scale: str = "auto"
    seed: int = 0
    lr: float = 3e-3


def smoke_run(
    plan: ResolvedModel,
    cfg: SmokeConfig,
    *,
    spec_name: str = "",
    progress: bool = True,
    tamper: Callable[[torch.nn.Module], None] | None = None,
) -> SmokeResult:
    """Run the smoke test. ``tamper`` lets tests modify the built model (e.g. force a router collapse)."""
    from moec.nn import build_model
    from moec.nn.loss import lm_loss
    from moec.nn.moe import MoE

    device, dtype_name, backend, scale = _choices(cfg)
    dtype = DTYPES[dtype_name]
    n_batches = min(cfg.steps, DISTINCT_BATCHES)
    # refused here, before any tensor exists, when even the fitted copy would not fit
    fitted = fit(
        plan,
        scale=scale,
        budget_bytes=available_bytes(device),
        batch=cfg.batch,
        seq=cfg.seq,
        dtype=dtype_name,
        data_bytes=n_batches * cfg.batch * cfg.seq * torch.long.itemsize,
        where=str(device),
    )
    small = fitted.plan

    torch.manual_seed(cfg.seed)
    model = build_model(small, device=device, dtype=dtype, backend=backend, seed=cfg.seed)
    model.train()
    if tamper is not None:
        tamper(model)
    moe_layers = [(i, m) for i, m in enumerate(model.modules()) if isinstance(m, MoE)]
    # ModelAux.layers is indexed by LayerPlan.index: main layers, then MTP blocks (n_layers + j)
    moe_index = [lp.index for lp in (*small.layers, *small.mtp) if lp.ffn.kind == "moe"]
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, betas=(0.9, 0.95), weight_decay=0.0)

    data = MarkovData.make(small.vocab_size, seed=cfg.seed)
    batches = [data.batch(cfg.batch, cfg.seq) for _ in range(n_batches)]

    E = [m.router.weight.shape[0] for _, m in moe_layers]
    load = [torch.zeros(e, dtype=torch.long, device=device) for e in E]
    dropped = [torch.zeros((), dtype=torch.long, device=device) for _ in E]
    losses: list[float] = []
    auxes: list[float] = []
    failures: list[str] = []
    timed_tokens, timed_s = 0, 0.0
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    bar = _progress(progress)
    task = bar.add_task("training", total=cfg.steps) if bar else None
    if bar:
        bar.start()
    try:
        for step in range(cfg.steps):
            tokens = batches[step % len(batches)].to(device, non_blocking=True)
            _sync(device)
            t0 = time.perf_counter()
            logits, aux = model(tokens)
            loss, parts = lm_loss(logits, tokens, aux)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            model.update_bias()
            _sync(device)
            dt = time.perf_counter() - t0
            if step >= min(2, cfg.steps - 1):  # the first steps compile kernels and warm caches
                timed_tokens += tokens.numel()
                timed_s += dt
            for j, la in enumerate(_moe_aux(aux)):
                load[j] += la.tokens_per_expert.to(load[j].device)
                dropped[j] += la.dropped.to(dropped[j].device)
            ce, ax = float(parts.ce), float(parts.aux)
            losses.append(ce)
            auxes.append(ax)
            if not math.isfinite(ce) or not math.isfinite(ax):
                failures.append(f"loss became {ce} at step {step}")
                break
            if bar:
                bar.update(
                    task,
                    advance=1,
                    description=f"loss {ce:.3f} aux {ax:.3g} {timed_tokens / max(timed_s, 1e-9):,.0f} tok/s",
                )
    finally:
        if bar:
            bar.stop()

    k = max(1, min(5, len(losses) // 4))
    first, last = sum(losses[:k]) / k, sum(losses[-k:]) / k
    fell = math.isfinite(last) and last < first - 0.05 * max(first - data.floor, 0.1)
    if not fell and not failures:
        failures.append(f"loss did not fall: {first:.3f} → {last:.3f}")

    layers = []
    for j, (c, d) in enumerate(zip(load, dropped, strict=False)):
        counts = c.tolist()
        mean = sum(counts) / len(counts) if counts else 0.0
        layers.append(
            LayerLoad(
                layer=moe_index[j] if j < len(moe_index) else j,
                tokens_per_expert=counts,
                max_mean_ratio=(max(counts) / mean) if mean else 0.0,
                starved=[e for e, n in enumerate(counts) if n == 0],
                dropped=int(d),
            )
        )
    imbalanced = any(l.max_mean_ratio > IMBALANCE_THRESHOLD or l.starved for l in layers)

    a = analyze(small, seq=cfg.seq, batch=cfg.batch)
    tps = timed_tokens / timed_s if timed_s else 0.0
    achieved = tps * a.flops.training / 1e12
    peak, source = _peak(device, dtype_name)
    numerics = None
    if moe_layers:
        numerics = check_numerics(
            moe_layers[0][1], backend, dtype, device, small.d_model, cfg, moe_index[0] if moe_index else 0
        )
        if not numerics.ok:
            failures.append(
                f"numerics: {numerics.backend} differs from {numerics.against} by {max(numerics.max_abs_diff_output, numerics.max_abs_diff_grad):.2e}"
            )

    return SmokeResult(
        spec=spec_name or plan.name,
        model=small.name,
        device=device.type,
        device_name=torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        backend=backend,
        dtype=dtype_name,
        scale=scale,
        changes=fitted.changes,
        params_total=a.params.total,
        params_active=a.params.active,
        steps=len(losses),
        batch=cfg.batch,
        seq=cfg.seq,
        losses=losses,
        loss_first=first,
        loss_last=last,
        loss_fell=fell,
        loss_floor=data.floor,
        loss_noise=data.noise_loss,
        aux_first=auxes[0] if auxes else 0.0,
        aux_last=auxes[-1] if auxes else 0.0,
        layers=layers,
        imbalanced=imbalanced,
        imbalance_threshold=IMBALANCE_THRESHOLD,
        dropped_tokens=sum(l.dropped for l in layers),
        tokens_per_s=tps,
        achieved_tflops=achieved,
        peak_tflops=peak,
        peak_source=source,
        mfu=achieved / peak if peak else 0.0,
        peak_memory_bytes=torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None,
        memory_estimate_bytes=fitted.memory.total,
        numerics=numerics,
        flops_per_token=float(a.flops.training),
        ok=not failures,
        failures=failures,
    )


def _choices(cfg: SmokeConfig) -> tuple[torch.device, str, str, str]:
    """The device, dtype, backend and scale ``auto`` stands for here; refusals for what cannot run."""
    device = resolve_device(cfg.device)
    dtype_name = cfg.dtype if cfg.dtype != "auto" else ("bf16" if device.type == "cuda" else "fp32")
    if dtype_name == "bf16" and device.type == "cpu":
        raise CommandError("bf16 on the CPU runs ~100x slower than fp32 here; use --dtype fp32 on CPU")
    backend = cfg.backend
    if backend == "auto":
        backend = "triton" if device.type == "cuda" and _triton_ok() else "reference"
    if backend == "triton" and device.type != "cuda":
        raise CommandError("the triton backend needs a CUDA device (use --backend reference on CPU)")
    scale = "tiny" if cfg.scale == "auto" and device.type == "cpu" else cfg.scale
    return device, dtype_name, backend, scale


def check_numerics(
    moe: torch.nn.Module, backend: str, dtype: torch.dtype, device: torch.device, d: int, cfg: SmokeConfig, layer: int
) -> Numerics:
    """Outputs and input/weight gradients of one MoE layer: the chosen backend against the reference
    (or, when the reference itself is chosen, against the naive oracle)."""
    against = "reference" if backend != "reference" else "naive"
    g = torch.Generator(device="cpu").manual_seed(cfg.seed + 1)
    x0 = torch.randn(cfg.batch, cfg.seq, d, generator=g).to(device=device, dtype=dtype)
    results = []
    saved = moe.backend
    was_training = moe.training
    moe.eval()  # no jitter, no bias accumulation
    try:
        for b in (backend, against):
            moe.backend = b
            moe.zero_grad(set_to_none=True)
            x = x0.clone().requires_grad_(True)
            y, aux = moe(x)
            (y.float().square().mean() + aux.loss).backward()
            grads = [x.grad] + [p.grad for p in moe.parameters() if p.grad is not None]
            results.append((y.detach().float(), [t.detach().float() for t in grads]))
    finally:
        moe.backend = saved
        moe.train(was_training)
        moe.zero_grad(set_to_none=True)
    (ya, ga), (yb, gb) = results
    scale_y = max(float(yb.abs().max()), 1e-6)
    out = float((ya - yb).abs().max()) / scale_y
    grad = max(
        (float((a - b).abs().max()) / max(float(b.abs().max()), 1e-12) for a, b in zip(ga, gb, strict=False)),
        default=0.0,
    )
    tol = NUMERICS_TOL["bf16" if dtype == torch.bfloat16 else "fp32"]
    return Numerics(backend, against, layer, out, grad, tol, out <= tol and grad <= tol)


def _moe_aux(aux: object) -> list:
    layers = getattr(aux, "layers", None) or getattr(aux, "moe", None) or []
    return [la for la in layers if la is not None]


def _triton_ok() -> bool:
    try:
        from moec.kernels import get_backend

        get_backend("triton")
        return True
    except Exception:
        return False


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak(device: torch.device, dtype: str) -> tuple[float, str]:
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, peaks in PEAKS.items():
            if key in name:
                return peaks[dtype], f"{key} spec-sheet dense {dtype}"
        return 0.0, f"unknown peak for {name}"
    # CPU: measure the fp32 matmul rate in this run and use it as the peak
    n = 512
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    t0 = time.perf_counter()
    reps = 20
    for _ in range(reps):
        a @ b
    dt = time.perf_counter() - t0
    return 2 * n**3 * reps / dt / 1e12, "fp32 512³ matmul measured in this run"


def _progress(enabled: bool):
    if not enabled:
        return None
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), transient=True
    )
