"""`moec smoke-run` on several processes (under torchrun): the model is built on ``meta``, parallelized by
moec.dist (FSDP2, expert parallel, tensor parallel) and loaded from rank 0 by broadcast; every data-parallel
rank trains on its share of the same batches a single process would see (docs/scaling.md, "Running
distributed").

Checked and reported on top of the single-process smoke-run: the step-0 loss against the unsharded model on
rank 0 fed the same tokens; the expert loads summed over the data-parallel ranks; per rank, tokens/s, the
local parameter numel beside moec.plan.rank_params, the peak memory beside the planner's, and the all-to-all
bytes the dispatchers counted beside the same bytes derived from the routing and the planner's uniform figure.
"""

from __future__ import annotations

import copy
import ctypes
import gc
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.distributed as dist

from moec.errors import CommandError
from moec.nn.build import available_bytes, resolve_device
from moec.plan.layout import Layout, LayoutError
from moec.plan.shard import rank_params
from moec.smoke.data import MarkovData
from moec.smoke.dist_plan import (
    a2a_sent_on_routing,
    planned_a2a_bytes_per_step,
    rank_memory,
    rank_run_memory,
    row_bytes,
)
from moec.smoke.dist_report import DistributedReport, RankReport, Step0Check
from moec.smoke.report import Numerics, SmokeResult
from moec.smoke.run import (
    BETAS,
    DISTINCT_BATCHES,
    NUMERICS_TOL,
    RunChoices,
    SmokeConfig,
    TrainLog,
    check_numerics,
    choices,
    moe_aux,
    moe_experts,
    moe_index,
    moe_layers,
    summarize,
    train,
)
from moec.smoke.scale import Fitted, fit
from moec.spec.plan import ResolvedModel

if TYPE_CHECKING:
    from moec.dist.mesh import Meshes

UNKNOWN_BUDGET = 1 << 62  # a rank that cannot know its free memory (all-reduced with MIN)


@dataclass(frozen=True)
class Parallel:
    """The layout options of ``moec smoke-run``: dp_shard is every rank left over after tp."""

    ep: int = 1
    tp: int = 1
    fsdp: bool = True


@dataclass
class _Setup:
    run: RunChoices
    layout: Layout  # resolved
    fitted: Fitted
    local_batch: int
    seq: int
    dp_index: int


def smoke_run_distributed(plan: ResolvedModel, cfg: SmokeConfig, par: Parallel, *, spec_name: str = "") -> SmokeResult:
    """One rank's part of a distributed smoke-run; every rank returns the whole result (rank 0 prints it).
    Refusals come before any allocation and are the same on every rank."""
    import moec.dist as md

    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    device = md.init(device_type=device_type(cfg.device))
    s = _setup(plan, cfg, par, device)
    small = s.fitted.plan
    try:
        meshes = md.build_mesh(Layout(ep=par.ep, tp=par.tp), small, device_type=device.type)
    except LayoutError as e:
        raise LayoutError(f"the scaled-down copy {small.name}: {e}") from None
    data = MarkovData.make(small.vocab_size, seed=cfg.seed)
    batches = [data.batch(cfg.batch, cfg.seq) for _ in range(min(cfg.steps, DISTINCT_BATCHES))]
    mine = slice(s.dp_index * s.local_batch, (s.dp_index + 1) * s.local_batch)
    reference = _reference(small, cfg, s, batches[0]) if dist.get_rank() == 0 else None
    single_step0 = torch.tensor([reference.step0 if reference else 0.0], dtype=torch.float64, device=device)
    dist.broadcast(single_step0, src=0)  # every rank reaches the same verdict

    model = _parallel_model(small, s.run, meshes, par)
    memory = _PeakMemory(device)
    md.load_full_state_dict(model, reference.state if reference else None, device)
    model.train()
    log, step0 = _train(model, [b[mine] for b in batches], cfg, s, meshes, par)
    peak = memory.peak()

    local_loads = [c.tolist() for c in log.load]
    for t in (*log.load, *log.dropped):  # the histograms of the whole batch
        dist.all_reduce(t, group=meshes.batch_group)
    ranks = _gather(model, s, log, peak, local_loads, par)
    step0_check = _step0_check(step0, single_step0.item(), s.run.dtype_name)
    total = _total_log(log, ranks, s.layout.tp)
    result = summarize(
        plan,
        s.fitted,
        cfg,
        s.run,
        total,
        data,
        numerics=reference.numerics if reference else None,
        peak_memory=peak if device.type == "cuda" else None,
        spec_name=spec_name,
        devices=dist.get_world_size(),
    )
    result.distributed = _report(s, par, ranks, step0_check, total, small, memory.measure)
    if not step0_check.ok:
        result.failures.append(
            f"step-0 loss {step0_check.loss:.6f} differs from one process ({step0_check.single_process:.6f}) by "
            f"{step0_check.rel_diff:.1e} relative"
        )
        result.ok = False
    return result


def device_type(name: str) -> str:
    """cpu or cuda for ``--device`` with several processes, each of which uses cuda:LOCAL_RANK."""
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    device = resolve_device(name)
    if device.index is not None:
        raise CommandError(f"--device {name}: with several processes each uses cuda:LOCAL_RANK; pass --device cuda")
    return device.type


def _setup(plan: ResolvedModel, cfg: SmokeConfig, par: Parallel, device: torch.device) -> _Setup:
    """Choices, layout, batch split and the fitted copy: the same on every rank, before anything is allocated."""
    run = choices(cfg, device)
    world = dist.get_world_size()
    from moec.dist.mesh import unsupported

    problems = Layout(ep=par.ep, tp=par.tp).problems(plan, world)
    layout = Layout(ep=par.ep, tp=par.tp).resolved(world) if not problems else None
    problems += unsupported(layout) if layout else []
    if problems:
        raise LayoutError("; ".join(problems))
    if cfg.batch % layout.dp_shard:
        raise CommandError(
            f"--batch {cfg.batch} does not split evenly over the {layout.dp_shard} data-parallel ranks "
            f"({world} processes / tp {layout.tp})"
        )
    local_batch = cfg.batch // layout.dp_shard
    data_bytes = min(cfg.steps, DISTINCT_BATCHES) * cfg.batch * cfg.seq * torch.long.itemsize

    def need(p: ResolvedModel):
        return rank_run_memory(p, layout, batch=local_batch, seq=cfg.seq, dtype=run.dtype_name, data_bytes=data_bytes)

    fitted = fit(
        plan,
        scale=run.scale,
        budget_bytes=_agreed_budget(device),
        batch=local_batch,
        seq=cfg.seq,
        dtype=run.dtype_name,
        data_bytes=data_bytes,
        where=f"each of the {world} ranks ({device.type})",
        memory_of=need,
    )
    return _Setup(run, layout, fitted, local_batch, cfg.seq, dist.get_rank() // layout.tp)


def _agreed_budget(device: torch.device) -> int | None:
    """The free memory of the poorest rank, so that every rank fits the same copy. Processes on one host share
    its memory: on the CPU each gets its share."""
    free = available_bytes(device)
    if free is not None and device.type == "cpu":
        free //= int(os.environ.get("LOCAL_WORLD_SIZE", dist.get_world_size()))
    t = torch.tensor([UNKNOWN_BUDGET if free is None else free], dtype=torch.long, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    agreed = int(t.item())
    return None if agreed == UNKNOWN_BUDGET else agreed


@dataclass
class _Reference:
    state: dict[str, torch.Tensor]  # the initial weights, broadcast from here
    step0: float
    numerics: Numerics | None


def _reference(small: ResolvedModel, cfg: SmokeConfig, s: _Setup, first: torch.Tensor) -> _Reference:
    """Rank 0: the unsharded model with the seed's weights (fp32, on the host): its step-0 loss on the first
    batch split as the data-parallel ranks split it, the kernel check of one MoE layer on the run's device, and
    the state dict every rank loads."""
    from moec.nn import build_model
    from moec.nn.loss import lm_loss

    model = build_model(small, device="cpu", dtype=torch.float32, backend="reference", seed=cfg.seed)
    model.train()  # the parallel step 0 runs in training mode (capacity, jitter)
    total = 0.0
    with torch.no_grad():
        for r in range(s.layout.dp_shard):
            tokens = first[r * s.local_batch : (r + 1) * s.local_batch]
            torch.manual_seed(cfg.seed)  # as every rank before its step 0: the same jitter draws
            logits, aux = model(tokens)
            loss, _ = lm_loss(logits, tokens, aux)
            total += float(loss) / s.layout.dp_shard  # every rank predicts as many tokens
    numerics = None
    moe = moe_layers(model)
    if moe:
        layer = copy.deepcopy(moe[0]).to(s.run.device, s.run.dtype)
        numerics = check_numerics(
            layer, s.run.backend, s.run.dtype, s.run.device, small.d_model, cfg, moe_index(small)[0]
        )
    return _Reference(model.state_dict(), total, numerics)


def _parallel_model(small: ResolvedModel, run: RunChoices, meshes: Meshes, par: Parallel) -> torch.nn.Module:
    """On meta, parallelized. In bf16 with FSDP, the shards stay fp32 and FSDP2 computes in bf16 (the planner's
    mixed precision: 16 B of state per parameter)."""
    from torch.distributed.fsdp import MixedPrecisionPolicy

    import moec.dist as md
    from moec.nn import build_model

    mixed = par.fsdp and run.dtype == torch.bfloat16
    policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if mixed else None
    dtype = torch.float32 if mixed else run.dtype
    model = build_model(small, device="meta", dtype=dtype, backend=run.backend)
    return md.parallelize(model, meshes, fsdp=par.fsdp, mp_policy=policy)


def _train(
    model: torch.nn.Module, batches: list[torch.Tensor], cfg: SmokeConfig, s: _Setup, meshes: Meshes, par: Parallel
) -> tuple[TrainLog, float]:
    """The training loop on this rank's shares; the logged losses are those of the whole batch. Returns the log
    and the step-0 loss as backpropagated (cross-entropy and aux, summed over the ranks)."""
    import moec.dist as md

    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, betas=BETAS, weight_decay=0.0)
    dp = s.layout.dp_shard
    totals: list[float] = []

    def step(tokens: torch.Tensor) -> tuple[float, float, list]:
        logits, aux = model(tokens)
        loss, parts = md.lm_loss(logits, tokens, aux, meshes.batch_group)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if not par.fsdp:
            md.sync_gradients(model, meshes)
        md.clip_grad_norm_(params, 1.0)
        opt.step()
        md.update_bias(model, meshes.batch_group)
        # the whole batch's figures: each rank's mean over its equal share of the tokens
        logged = torch.stack([parts.ce.float() / dp, parts.aux.float() / dp, loss.detach().float()])
        dist.all_reduce(logged, group=meshes.batch_group)
        ce, ax, total = logged.tolist()
        totals.append(total)
        return ce, ax, moe_aux(aux)

    torch.manual_seed(cfg.seed)  # the reference on rank 0 draws the same jitter
    log = train(step, batches, cfg.steps, s.run.device, moe_experts(model), progress=False)
    return log, totals[0] if totals else float("nan")


def _step0_check(step0: float, single: float, dtype_name: str) -> Step0Check:
    tol = NUMERICS_TOL[dtype_name]
    rel = abs(step0 - single) / max(abs(single), 1e-12)
    return Step0Check(step0, single, rel, tol, rel <= tol)


def _local_numel(model: torch.nn.Module) -> tuple[int, int]:
    """(routed experts, everything else): the numel of this rank's shards."""
    from moec.dist.mesh import local
    from moec.dist.parts import routed_experts

    experts = {id(p) for _, m in routed_experts(model) for p in m.parameters()}
    counts = [0, 0]
    for p in model.parameters():
        counts[id(p) not in experts] += local(p).numel()
    return counts[0], counts[1]


def _gather(
    model: torch.nn.Module, s: _Setup, log: TrainLog, peak: int | None, loads: list[list[int]], par: Parallel
) -> list[RankReport]:
    """Every rank's figures, on every rank."""
    import moec.dist as md

    experts, other = _local_numel(model)
    traffic = md.a2a_traffic(model)
    mine = (log.timed_tokens, log.timed_s, experts, other, peak, traffic, loads)
    everyone: list[tuple] = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, mine)
    small = s.fitted.plan
    all_loads = [r[6] for r in everyone]
    b = row_bytes(small, s.run.dtype_name)
    tokens = s.local_batch * s.seq
    predicted = rank_memory(small, s.layout, 0, tokens=tokens, dtype=s.run.dtype_name).training_peak_bytes
    out = []
    for rank, (timed_tokens, timed_s, n_experts, n_other, rank_peak, t, _) in enumerate(everyone):
        planned = rank_params(small, s.layout, rank) if par.fsdp else None
        out.append(
            RankReport(
                rank=rank,
                tokens_per_s=timed_tokens / timed_s if timed_s else 0.0,
                timed_tokens=timed_tokens,
                timed_s=timed_s,
                params_experts=n_experts,
                params_other=n_other,
                planned_params_experts=planned.experts if planned else None,
                planned_params_other=planned.other if planned else None,
                peak_memory_bytes=rank_peak,
                predicted_peak_bytes=predicted,
                a2a_sent_bytes=t.sent,
                a2a_sent_bytes_on_routing=a2a_sent_on_routing(all_loads, rank, s.layout.ep, b),
                a2a_count_bytes=t.counts,
            )
        )
    return out


def _total_log(log: TrainLog, ranks: list[RankReport], tp: int) -> TrainLog:
    """The run's log with the tokens of every data-parallel rank over the slowest rank's time."""
    tokens = sum(r.timed_tokens for r in ranks if r.rank % tp == 0)  # TP ranks share their tokens
    seconds = max((r.timed_s for r in ranks), default=0.0)
    return TrainLog(log.losses, log.auxes, log.load, log.dropped, tokens, seconds, log.failures)


def _report(
    s: _Setup,
    par: Parallel,
    ranks: list[RankReport],
    step0: Step0Check,
    total: TrainLog,
    small: ResolvedModel,
    measure: str,
) -> DistributedReport:
    layout = s.layout
    return DistributedReport(
        world_size=layout.world,
        backend=dist.get_backend(),
        dp_shard=layout.dp_shard,
        ep=layout.ep,
        tp=layout.tp,
        efsdp=layout.efsdp,
        fsdp=par.fsdp,
        tokens_per_s_total=total.tokens_per_s,
        step0=step0,
        planned_a2a_bytes_per_step=planned_a2a_bytes_per_step(
            small, layout, tokens=s.local_batch * s.seq, dtype=s.run.dtype_name
        ),
        memory_measure=measure,
        ranks=ranks,
    )


class _PeakMemory:
    """The peak a rank allocates from the load on. CUDA: the caching allocator's max_memory_allocated; CPU: the
    growth of the process's peak resident set (Linux: VmHWM reset through /proc/self/clear_refs)."""

    def __init__(self, device: torch.device):
        self.device, self.base = device, None
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
            self.measure = "CUDA max_memory_allocated"
            return
        self.measure = "peak RSS growth from the load on"
        gc.collect()
        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)  # freed heap back to the system, so the growth shows
            Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
            self.base = _status_bytes("VmRSS:")
        except (OSError, KeyError):
            self.measure = "not measurable here"

    def peak(self) -> int | None:
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device)
        if self.base is None:
            return None
        return _status_bytes("VmHWM:") - self.base


def _status_bytes(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key):
            return int(line.split()[1]) * 1024
    raise KeyError(key)
