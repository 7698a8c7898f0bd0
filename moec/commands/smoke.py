"""`moec smoke-run`, on one process or several (``--nproc``, or under torchrun)."""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path

import click

from moec.commands.common import (
    FiniteFloatRange,
    load_plan,
    print_notes,
    refuse_block_features,
    refuse_hybrid,
    report_errors,
    set_option,
)
from moec.errors import CommandError
from moec.smoke.outputs import PLOT_FILES, STEPS_FILE
from moec.vocab import MODEL_DTYPES


@click.command(name="smoke-run")
@click.argument("spec")
@click.option("--device", default="auto", show_default=True, help="auto (cuda if available), cpu, cuda or cuda:N.")
@click.option(
    "--backend", type=click.Choice(["auto", "triton", "reference", "naive"]), default="auto", show_default=True
)
@click.option("--steps", type=click.IntRange(2, 100_000), default=30, show_default=True)
@click.option("--batch", type=click.IntRange(1, 1 << 16), default=8, show_default=True)
@click.option("--seq", type=click.IntRange(2, 1 << 20), default=64, show_default=True)
@click.option(
    "--dtype",
    type=click.Choice(["auto", *MODEL_DTYPES]),
    default="auto",
    show_default=True,
    help="auto: bf16 on GPU, fp32 on CPU.",
)
@click.option(
    "--scale",
    type=click.Choice(["auto", "full", "tiny"]),
    default="auto",
    show_default=True,
    help="auto: shrink width and depth to fit the device (tiny on CPU).",
)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--lr", type=FiniteFloatRange(0, 1, min_open=True), default=3e-3, show_default=True)
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
@click.option(
    "--nproc",
    type=click.IntRange(1, 1024),
    default=None,
    help="Run on N processes: re-executes under torch.distributed.run (gloo on CPU, NCCL on GPU).",
)
@click.option("--ep", type=click.IntRange(1, 1 << 16), default=1, show_default=True, help="Expert-parallel degree.")
@click.option("--tp", type=click.IntRange(1, 1 << 16), default=1, show_default=True, help="Tensor-parallel degree.")
@click.option(
    "--fsdp/--no-fsdp",
    default=True,
    show_default=True,
    help="Shard over the data-parallel ranks with FSDP2 (else replicate and all-reduce the gradients).",
)
@click.option(
    "--threads",
    type=click.IntRange(1, os.cpu_count() or 1),  # torch segfaults in training at 4096; more than the cores never helps
    default=None,
    help="CPU threads for torch (default: torch's choice).",
)
@click.option(
    "--log",
    "log_dir",
    metavar="DIR",
    default=None,
    help=f"Write every step's loss and per-layer routing figures to DIR/{STEPS_FILE} (TensorBoard files too, "
    "when tensorboard is installed).",
)
@click.option(
    "--plot",
    "plot_dir",
    metavar="DIR",
    default=None,
    help="Draw " + ", ".join(PLOT_FILES) + " into DIR (needs matplotlib: pip install 'moec[plot]').",
)
@click.option("--force", is_flag=True, help="Replace existing --log/--plot files.")
@click.option(
    "--compare",
    "compares",
    metavar="SETTING",
    multiple=True,
    help="Train once per SETTING on the same data and seed and print one table (loss, max/mean load, starved "
    "experts, dropped fraction, tokens/s); with --plot, compare-load.png. SETTING: a preset (top1, "
    "top1-balanced, expert-choice, gshard) or KEY=VALUE[,KEY=VALUE...] as --set reads them (docs/routing.md).",
)
@set_option
@report_errors
def smoke_run(
    spec: str,
    device: str,
    backend: str,
    steps: int,
    batch: int,
    seq: int,
    dtype: str,
    scale: str,
    seed: int,
    lr: float,
    fmt: str,
    nproc: int | None,
    ep: int,
    tp: int,
    fsdp: bool,
    threads: int | None,
    log_dir: str | None,
    plot_dir: str | None,
    force: bool,
    compares: tuple[str, ...],
    sets: tuple[str, ...],
) -> None:
    """Train a spec's model for a few steps: does it learn, balance and run fast? Exit 1 on failure.

    With --nproc N (or under `torchrun --standalone --nproc-per-node N -m moec smoke-run ...`) the model is
    built on meta and sharded over the processes (FSDP2, --ep experts, --tp attention and dense FFNs), and the
    report adds the layout, per-rank figures and a check of the step-0 loss against one process.

    --log and --plot record every step: the loss, the aux loss and, per MoE layer, the expert load, its
    entropy and max/mean, the dropped fraction, router z and the selection-bias drift (docs/smoke-run.md)."""
    from moec.smoke.launch import in_worker, launch, run_worker
    from moec.smoke.run import SmokeConfig

    cfg = SmokeConfig(
        device=device,
        backend=backend,
        steps=steps,
        batch=batch,
        seq=seq,
        dtype=dtype,
        scale=scale,
        seed=seed,
        lr=lr,
        threads=threads,
    )
    outputs = Outputs(log_dir, plot_dir, force)
    if outputs.asked and (in_worker() or nproc is not None):
        raise CommandError("--log and --plot record one process's steps: leave them out with --nproc or torchrun")
    parallel = {"ep": ep, "tp": tp, "fsdp": fsdp}
    if compares:
        if in_worker() or nproc is not None or ep > 1 or tp > 1 or not fsdp or log_dir is not None:
            raise CommandError(
                "--compare runs on one process and prints its own table: leave out --nproc, --ep, "
                "--tp, --no-fsdp and --log"
            )
        _compare(spec, sets, compares, cfg, fmt, outputs)
        return
    if in_worker() or nproc is not None:
        feature = "the distributed smoke-run (FSDP2, expert and tensor parallelism, the per-rank memory plan)"
        model = load_plan(spec, sets)
        refuse_hybrid(model, "moec smoke-run --nproc / torchrun", feature)
        refuse_block_features(model, "moec smoke-run --nproc / torchrun", feature)
    if in_worker():
        run_worker(lambda: _worker(spec, sets, cfg, parallel, fmt, nproc))
    if nproc is not None:
        args = [spec, "--device", device, "--backend", backend, "--steps", str(steps), "--batch", str(batch)]
        args += ["--seq", str(seq), "--dtype", dtype, "--scale", scale, "--seed", str(seed), "--lr", repr(lr)]
        args += ["--format", fmt, "--ep", str(ep), "--tp", str(tp), "--fsdp" if fsdp else "--no-fsdp"]
        args += [] if threads is None else ["--threads", str(threads)]
        args += [a for s in sets for a in ("--set", s)]
        raise SystemExit(launch(args, nproc, device))
    if ep > 1 or tp > 1 or not fsdp:
        raise CommandError("--ep, --tp and --no-fsdp need several processes: add --nproc N, or run under torchrun")
    _single(spec, sets, cfg, fmt, outputs)


@dataclass(frozen=True)
class Outputs:
    """Where --log and --plot go (None: not asked), and whether existing files may be replaced."""

    log_dir: str | None
    plot_dir: str | None
    force: bool

    def __post_init__(self) -> None:
        for option, folder in (("--log", self.log_dir), ("--plot", self.plot_dir)):
            if folder is not None and not folder.strip():  # Path("") is the current folder: never a silent choice
                raise CommandError(f"{option}: an empty folder name; name the folder (. for the current one)")

    @property
    def asked(self) -> bool:
        return self.log_dir is not None or self.plot_dir is not None

    def prepare(self) -> None:
        """Refuse a bad folder or an existing file, and a missing matplotlib, before any training."""
        from moec.smoke import outputs as out

        if self.plot_dir is not None:
            out.require_matplotlib()
            out.prepare(self.plot_dir, out.plot_targets(self.plot_dir), force=self.force)
        if self.log_dir is not None:
            out.prepare(self.log_dir, out.log_targets(self.log_dir), force=self.force)
            if out.tensorboard_installed():  # its SummaryWriter writes the files itself: check the folder here
                out.prepare(str(Path(self.log_dir) / out.TENSORBOARD_DIR), [], force=self.force)

    def write(self, result) -> None:
        from moec.smoke import outputs as out

        notes = []
        if self.log_dir is not None:
            notes += out.write_log(result, self.log_dir, force=self.force)
        if self.plot_dir is not None:
            notes += out.write_plots(result, self.plot_dir, force=self.force)
        print_notes(notes)


def _single(spec: str, sets: tuple[str, ...], cfg, fmt: str, outputs: Outputs) -> None:
    from moec.smoke.run import smoke_run as run

    plan = load_plan(spec, sets)
    outputs.prepare()
    try:
        result = run(plan, cfg, spec_name=spec, progress=fmt == "table")
    except ValueError as e:
        raise CommandError(str(e)) from None
    outputs.write(result)  # before the verdict's exit code: a failed run's steps are the interesting ones
    _show(result, fmt)


def _compare_plan(spec: str, sets: tuple[str, ...], setting):  # (Setting) -> ResolvedModel
    """The plan of one --compare setting; its problems say which setting they come from, since several
    settings may set the same field."""
    from moec.errors import Problem, SpecError

    try:
        return load_plan(spec, (*sets, *setting.sets))
    except SpecError as e:
        label = f"(--compare {setting.name}) "
        raise SpecError([Problem(p.file, p.line, p.column, p.path, label + p.message) for p in e.problems]) from None


def _compare(spec: str, sets: tuple[str, ...], compares: tuple[str, ...], cfg, fmt: str, outputs: Outputs) -> None:
    """Every setting's spec is loaded and checked first: a bad one stops the command before any training."""
    from moec.smoke import compare as cmp
    from moec.smoke import outputs as out
    from moec.smoke.run import smoke_run as run

    settings = [cmp.parse_setting(c) for c in compares]
    names = [s.name for s in settings]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise CommandError(f"--compare {twice[0]!r} is given twice: the table has one row for each")
    plans = [(s, _compare_plan(spec, sets, s)) for s in settings]
    for setting, plan in plans:  # its table would read max/mean 0.00 and 0/0 starved: no routing to compare
        if not plan.moe_layers:
            raise CommandError(f"--compare {setting.name}: {plan.name} has no MoE layer, so no routing to compare")
    if outputs.plot_dir is not None:
        out.require_matplotlib()
        out.prepare(outputs.plot_dir, [Path(outputs.plot_dir) / cmp.COMPARE_PLOT], force=outputs.force)
    try:
        results = cmp.compare(plans, lambda plan: run(plan, cfg, spec_name=spec, progress=False))
    except ValueError as e:
        raise CommandError(str(e)) from None
    rows = [cmp.row_of(s.name, r) for s, r in results]
    if outputs.plot_dir is not None:
        print_notes(cmp.write_compare_plot(results, outputs.plot_dir, force=outputs.force))
    if fmt == "json":
        click.echo(
            json.dumps(
                [{**dataclasses.asdict(r), "sets": list(s.sets)} for r, (s, _) in zip(rows, results, strict=True)],
                indent=2,
            )
        )
    else:
        click.echo(cmp.compare_table(rows))
    for s, r in results:
        for failure in r.failures:
            click.echo(f"note: {s.name}: {failure}", err=True)


@report_errors
def _worker(spec: str, sets: tuple[str, ...], cfg, parallel: dict, fmt: str, nproc: int | None) -> None:
    """One torchrun worker: rank 0 prints; every rank exits with the run's code (moec.smoke.launch)."""
    import torch.distributed as dist

    from moec.smoke.distributed import Parallel, smoke_run_distributed

    if nproc is not None:
        raise CommandError("--nproc starts the processes itself: leave it out under torchrun")
    plan = load_plan(spec, sets)
    try:
        result = smoke_run_distributed(plan, cfg, Parallel(**parallel), spec_name=spec)
    except ValueError as e:
        raise CommandError(str(e)) from None
    if dist.get_rank() == 0:
        _show(result, fmt)
    if not result.ok:  # every rank agrees on the step-0 check; rank 0 alone runs the kernel check
        raise SystemExit(1)


def _show(result, fmt: str) -> None:
    from moec.smoke.report import print_report

    if fmt == "json":
        click.echo(json.dumps(result.to_dict(), indent=2))
    else:
        print_report(result)
    if not result.ok:
        raise SystemExit(1)
