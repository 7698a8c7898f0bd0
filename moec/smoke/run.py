"""`moec smoke-run`: train a (fitted) copy of a spec's model for a few steps and judge it.

Judged: the loss falls on data with learnable structure; no NaN/inf; the routers stay balanced
(reported, not fatal); the chosen kernel backend agrees with the reference on one batch; and how
fast it runs (tokens/s, TFLOP/s from the analyzer's FLOPs, MFU against a stated peak).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from moec.analyze import analyze
from moec.errors import CommandError
from moec.nn.build import available_bytes, resolve_device
from moec.smoke.data import MarkovData
from moec.smoke.metrics import dynamics, last_window, max_mean
from moec.smoke.progress import progress_display
from moec.smoke.record import StepRecorder
from moec.smoke.report import LayerLoad, Numerics, SmokeResult
from moec.smoke.scale import Fitted, fit
from moec.smoke.sublayer_time import sublayer_time_shares, timed_passes
from moec.spec.plan import ResolvedModel
from moec.vocab import MODEL_DTYPES, TORCH_DTYPE_NAMES

DTYPES = {name: getattr(torch, TORCH_DTYPE_NAMES[name]) for name in MODEL_DTYPES}
# Dense peak TFLOP/s from the vendors' spec sheets (no sparsity), by device-name substring.
PEAKS = {
    "H100": {"bf16": 989.4, "fp32": 494.7},
    "H200": {"bf16": 989.4, "fp32": 494.7},
    "A100": {"bf16": 312.0, "fp32": 156.0},
}
IMBALANCE_THRESHOLD = 3.0
DISTINCT_BATCHES = 64  # token batches generated up front and cycled through (int64, on the CPU)
NUMERICS_TOL = {"fp32": 1e-4, "bf16": 5e-2}
BETAS = (0.9, 0.95)  # AdamW


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
    threads: int | None = None  # torch CPU threads (torch.set_num_threads); None: torch's default


def smoke_run(
    plan: ResolvedModel,
    cfg: SmokeConfig,
    *,
    spec_name: str = "",
    progress: bool = True,
    tamper: Callable[[torch.nn.Module], None] | None = None,
) -> SmokeResult:
    """Run the smoke test. ``tamper`` lets tests modify the built model (e.g. force a router collapse).
    ``progress``: show progress (a rich bar on a terminal, plain lines on stderr otherwise)."""
    from moec.nn import build_model
    from moec.nn.loss import lm_loss

    run = choices(cfg)
    n_batches = min(cfg.steps, DISTINCT_BATCHES)
    # refused here, before any tensor exists, when even the fitted copy would not fit
    fitted = fit(
        plan,
        scale=run.scale,
        budget_bytes=available_bytes(run.device),
        batch=cfg.batch,
        seq=cfg.seq,
        dtype=run.dtype_name,
        data_bytes=n_batches * cfg.batch * cfg.seq * torch.long.itemsize,
        where=str(run.device),
    )
    small = fitted.plan

    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    model = build_model(small, device=run.device, dtype=run.dtype, backend=run.backend, seed=cfg.seed)
    model.train()
    if tamper is not None:
        tamper(model)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, betas=BETAS, weight_decay=0.0)

    def step(tokens: torch.Tensor) -> tuple[float, float, list]:
        logits, aux = model(tokens)
        loss, parts = lm_loss(logits, tokens, aux)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        model.update_bias()
        return float(parts.ce), float(parts.aux), moe_aux(aux)

    data = MarkovData.make(small.vocab_size, seed=cfg.seed)
    batches = [data.batch(cfg.batch, cfg.seq) for _ in range(n_batches)]
    if run.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(run.device)
    moe = moe_layers(model)
    recorder = StepRecorder(moe)
    log = train(step, batches, cfg.steps, run.device, moe_experts(model), progress=progress, recorder=recorder)
    shares = {}
    if not log.failures:  # a few more forward+backward passes, timed by sublayer kind (no optimizer step)

        def forward_backward(tokens: torch.Tensor) -> None:
            logits, aux = model(tokens)
            lm_loss(logits, tokens, aux)[0].backward()

        shares = sublayer_time_shares(model, forward_backward, batches[: timed_passes(cfg.steps)], run.device)
    numerics = None
    if moe:
        numerics = check_numerics(moe[0], run.backend, run.dtype, run.device, small.d_model, cfg, moe_index(small)[0])
    peak_memory = torch.cuda.max_memory_allocated(run.device) if run.device.type == "cuda" else None
    return summarize(
        plan, fitted, cfg, run, log, data, numerics=numerics, peak_memory=peak_memory, spec_name=spec_name,
        time_shares=shares,
    )  # fmt: skip


@dataclass(frozen=True)
class RunChoices:
    """What ``auto`` stands for in one run: device, dtype, kernel backend and scale."""

    device: torch.device
    dtype_name: str
    backend: str
    scale: str

    @property
    def dtype(self) -> torch.dtype:
        return DTYPES[self.dtype_name]


@dataclass
class TrainLog:
    """What a training loop saw: per-step losses, and per MoE layer the kept slots per expert and the dropped
    slots, summed over the steps (this process's tokens)."""

    losses: list[float]
    auxes: list[float]
    load: list[torch.Tensor]  # per MoE layer: (E,) int64
    dropped: list[torch.Tensor]  # per MoE layer: () int64
    timed_tokens: int
    timed_s: float
    failures: list[str]
    steps: list = dataclasses.field(default_factory=list)  # StepRecord per step, when a recorder ran

    @property
    def tokens_per_s(self) -> float:
        return self.timed_tokens / self.timed_s if self.timed_s else 0.0


def moe_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    from moec.nn.moe import MoE

    return [m for m in model.modules() if isinstance(m, MoE)]


def moe_experts(model: torch.nn.Module) -> list[int]:
    """The routed-expert count of each MoE layer, in module order (the order of ModelAux.layers)."""
    return [m.plan.n_experts for m in moe_layers(model)]


def moe_index(plan: ResolvedModel) -> list[int]:
    """The LayerPlan index of each MoE layer: ModelAux.layers is indexed by it (main layers, then MTP blocks)."""
    return [lp.index for lp in (*plan.layers, *plan.mtp) if lp.ffn.kind == "moe"]


def train(
    step: Callable[[torch.Tensor], tuple[float, float, list]],
    batches: list[torch.Tensor],
    steps: int,
    device: torch.device,
    experts: list[int],
    *,
    progress: bool,
    recorder: StepRecorder | None = None,
) -> TrainLog:
    """Run ``step`` (forward, backward, optimizer; returns the cross-entropy, the aux loss and each MoE layer's
    MoEAux) over ``batches`` cycled for ``steps`` steps; stops at the first non-finite loss. ``recorder``
    keeps each step's routing figures (after the step, so a selection bias has taken its update)."""
    log = TrainLog([], [], [torch.zeros(e, dtype=torch.long, device=device) for e in experts], [], 0, 0.0, [])
    log.dropped = [torch.zeros((), dtype=torch.long, device=device) for _ in experts]
    bar = progress_display(steps) if progress else None
    with bar if bar is not None else contextlib.nullcontext():
        for i in range(steps):
            tokens = batches[i % len(batches)].to(device, non_blocking=True)
            _sync(device)
            t0 = time.perf_counter()
            ce, ax, layers = step(tokens)
            _sync(device)
            if i >= min(2, steps - 1):  # the first steps compile kernels and warm caches
                log.timed_tokens += tokens.numel()
                log.timed_s += time.perf_counter() - t0
            for j, la in enumerate(layers):
                log.load[j] += la.tokens_per_expert.to(device)
                log.dropped[j] += la.dropped.to(device)
            log.losses.append(ce)
            log.auxes.append(ax)
            if recorder is not None:
                recorder(i, ce, ax, layers)
            if not math.isfinite(ce) or not math.isfinite(ax):
                log.failures.append(f"loss became {ce} at step {i}")
                break
            if bar is not None:
                bar.update(i + 1, ce, ax, log.tokens_per_s)
    if recorder is not None:
        log.steps = recorder.steps
    return log


def layer_loads(log: TrainLog, index: list[int]) -> list[LayerLoad]:
    out = []
    for j, (c, d) in enumerate(zip(log.load, log.dropped, strict=True)):
        counts = c.tolist()
        out.append(
            LayerLoad(
                layer=index[j] if j < len(index) else j,
                tokens_per_expert=counts,
                max_mean_ratio=max_mean(counts),
                starved=[e for e, n in enumerate(counts) if n == 0],
                dropped=int(d),
            )
        )
    return out


def summarize(
    plan: ResolvedModel,
    fitted: Fitted,
    cfg: SmokeConfig,
    run: RunChoices,
    log: TrainLog,
    data: MarkovData,
    *,
    numerics: Numerics | None,
    peak_memory: int | None,
    spec_name: str = "",
    devices: int = 1,
    time_shares: dict[str, float] | None = None,
) -> SmokeResult:
    """The verdict and the figures of a finished run: did the loss fall, balance, FLOP/s and MFU (over
    ``devices`` devices of one kind)."""
    small, losses, failures = fitted.plan, log.losses, list(log.failures)
    k = last_window(len(losses))
    first, last = sum(losses[:k]) / k, sum(losses[-k:]) / k
    fell = math.isfinite(last) and last < first - 0.05 * max(first - data.floor, 0.1)
    if not fell and not failures:
        failures.append(f"loss did not fall: {first:.3f} → {last:.3f}")
    if numerics is not None and not numerics.ok:
        worst = max(numerics.max_abs_diff_output, numerics.max_abs_diff_grad)
        failures.append(f"numerics: {numerics.backend} differs from {numerics.against} by {worst:.2e}")
    layers = layer_loads(log, moe_index(small))
    a = analyze(small, seq=cfg.seq, batch=cfg.batch)
    achieved = log.tokens_per_s * a.flops.training / 1e12
    peak, source = _peak(run.device, run.dtype_name)
    return SmokeResult(
        spec=spec_name or plan.name,
        model=small.name,
        device=run.device.type,
        device_name=torch.cuda.get_device_name(run.device) if run.device.type == "cuda" else "cpu",
        backend=run.backend,
        dtype=run.dtype_name,
        scale=run.scale,
        changes=fitted.changes,
        params_total=a.params.total,
        params_active=a.params.active,
        params_trainable=a.params.trainable,
        params_frozen=a.params.frozen,
        threads=torch.get_num_threads() if run.device.type == "cpu" else None,
        loss_window=k,
        aux_coefficients=aux_coefficients(small),
        dynamics=dynamics(log.steps, [l.layer for l in layers]) if log.steps else None,
        step_records=log.steps,
        steps=len(losses),
        batch=cfg.batch,
        seq=cfg.seq,
        losses=losses,
        loss_first=first,
        loss_last=last,
        loss_fell=fell,
        loss_floor=data.floor,
        loss_noise=data.noise_loss,
        aux_first=log.auxes[0] if log.auxes else 0.0,
        aux_last=log.auxes[-1] if log.auxes else 0.0,
        layers=layers,
        imbalanced=any(l.max_mean_ratio > IMBALANCE_THRESHOLD or l.starved for l in layers),
        imbalance_threshold=IMBALANCE_THRESHOLD,
        dropped_tokens=sum(l.dropped for l in layers),
        tokens_per_s=log.tokens_per_s,
        achieved_tflops=achieved,
        peak_tflops=peak,
        peak_source=source,
        mfu=achieved / (peak * devices) if peak else 0.0,
        peak_memory_bytes=peak_memory,
        memory_estimate_bytes=fitted.memory.total,
        numerics=numerics,
        flops_per_token=float(a.flops.training),
        ok=not failures,
        failures=failures,
        time_shares=time_shares or {},
    )


def aux_coefficients(plan: ResolvedModel) -> dict[str, float]:
    """The largest load-balance and z-loss coefficients (and selection-bias update rate) over the MoE layers:
    0 means that part of the aux loss is off in every layer."""
    moe = [lp.ffn for lp in (*plan.layers, *plan.mtp) if lp.ffn.kind == "moe"]
    return {
        "load_balance_coeff": max((m.load_balance_coeff for m in moe), default=0.0),
        "z_loss_coeff": max((m.z_loss_coeff for m in moe), default=0.0),
        "bias_update_rate": max((m.bias_update_rate or 0.0 for m in moe), default=0.0),
    }


def choices(cfg: SmokeConfig, device: torch.device | None = None) -> RunChoices:
    """What ``auto`` stands for here (on ``device`` when given, else ``cfg.device``); refusals for what
    cannot run."""
    device = device if device is not None else resolve_device(cfg.device)
    dtype_name = cfg.dtype if cfg.dtype != "auto" else ("bf16" if device.type == "cuda" else "fp32")
    if dtype_name == "bf16" and device.type == "cpu":
        raise CommandError("bf16 on the CPU runs ~100x slower than fp32 here; use --dtype fp32 on CPU")
    backend = cfg.backend
    if backend == "auto":
        backend = "triton" if device.type == "cuda" and _triton_ok() else "reference"
    if backend == "triton" and device.type != "cuda":
        raise CommandError("the triton backend needs a CUDA device (use --backend reference on CPU)")
    scale = "tiny" if cfg.scale == "auto" and device.type == "cpu" else cfg.scale
    return RunChoices(device, dtype_name, backend, scale)


def check_numerics(
    moe: torch.nn.Module, backend: str, dtype: torch.dtype, device: torch.device, d: int, cfg: SmokeConfig, layer: int
) -> Numerics:
    """Outputs and input/weight gradients of one MoE layer: the chosen backend against the reference
    (or, when the reference itself is chosen, against the naive oracle)."""
    against = "reference" if backend != "reference" else "naive"
    g = torch.Generator(device="cpu").manual_seed(cfg.seed + 1)
    x0 = torch.randn(cfg.batch, cfg.seq, d, generator=g).to(device=device, dtype=dtype)
    ids = torch.randint(0, 1 << 15, (cfg.batch, cfg.seq), generator=g).to(device)  # what a hash router routes by
    results = []
    saved = moe.backend
    was_training = moe.training
    moe.eval()  # no jitter, no bias accumulation
    try:
        for b in (backend, against):
            moe.backend = b
            moe.zero_grad(set_to_none=True)
            x = x0.clone().requires_grad_(True)
            y, aux = moe(x, token_ids=ids)
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


def moe_aux(aux: object) -> list:
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
