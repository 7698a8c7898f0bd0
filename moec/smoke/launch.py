"""Processes for a distributed ``moec smoke-run``: ``--nproc N`` re-executes the command under
``python -m torch.distributed.run --standalone --nproc-per-node N -m moec smoke-run ...``, and each worker
leaves through :func:`run_worker`.

Rank 0 prints the report; the other ranks print nothing. Each worker writes its exit code and what it wrote
to stderr into a status file, so the launcher can give one clean error (the first failing rank's, rank 0's
first) instead of torchrun's own failure report, and exit with the workers' code: 2 for bad input, 1 for a
failed smoke-run, 70 for a moec bug.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn, TextIO

import click

from moec.errors import CommandError

STATUS_ENV = "MOEC_SMOKE_STATUS"  # the folder the workers write rank{r}.json into
EXIT_FAILED = 1


def in_worker() -> bool:
    """Whether this process is one of torchrun's workers."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def launch(args: list[str], nproc: int, device: str) -> int:
    """Run ``moec smoke-run ARGS`` on ``nproc`` processes; echo rank 0's output and return the exit code."""
    import torch

    from moec.smoke.distributed import device_type

    kind = device_type(device)
    if kind == "cuda" and nproc > torch.cuda.device_count():
        raise CommandError(f"--nproc {nproc} on cuda: torch sees {torch.cuda.device_count()} CUDA device(s)")
    with tempfile.TemporaryDirectory(prefix="moec-smoke-") as tmp:
        env = os.environ | {STATUS_ENV: tmp}
        if kind == "cpu":
            env.setdefault("OMP_NUM_THREADS", "1")  # one thread per process unless asked: they share the cores
        if sys.stdout.isatty():  # rank 0 writes into a pipe: render its tables for this terminal all the same
            env.setdefault("COLUMNS", str(shutil.get_terminal_size().columns))
            env.setdefault("FORCE_COLOR", "1")
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"]
        cmd += ["-m", "moec", "smoke-run", *args]
        with open(Path(tmp) / "torchrun.log", "w+") as log:
            done = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=log, env=env, text=True, check=False)
            log.seek(0)
            torchrun_log = log.read()
        statuses = _statuses(Path(tmp), nproc)
    click.echo(done.stdout, nl=False)
    return _verdict(done.returncode, statuses, nproc, torchrun_log)


def _statuses(folder: Path, nproc: int) -> dict[int, dict]:
    out = {}
    for rank in range(nproc):
        path = folder / f"rank{rank}.json"
        if path.exists():
            out[rank] = json.loads(path.read_text())
    return out


def _verdict(returncode: int, statuses: dict[int, dict], nproc: int, torchrun_log: str) -> int:
    """The exit code of the whole run, after printing the error lines of the rank that explains it."""
    failed = sorted((r for r, s in statuses.items() if s["code"]), key=lambda r: (r != 0, r))
    if failed:
        rank = failed[0]
        code, lines = statuses[rank]["code"], statuses[rank]["stderr"].splitlines()
        prefix = "" if rank == 0 else f"rank {rank}: "
        for line in lines:
            click.echo(line.replace("error: ", f"error: {prefix}", 1) if prefix else line, err=True)
        return code
    if returncode == 0 and len(statuses) == nproc:
        return 0
    # a worker died without a word (a signal, a crash in native code), or torchrun itself failed
    last = next((line for line in reversed(torchrun_log.splitlines()) if line.strip()), "no output")
    click.echo(f"error: a smoke-run worker failed (torchrun exit code {returncode}): {last.strip()[:300]}", err=True)
    return EXIT_FAILED if returncode == 0 else returncode


class _Tee(io.TextIOBase):
    """Keeps what is written, and passes it on to ``out`` unless None."""

    def __init__(self, out: TextIO | None):
        self.out, self.kept = out, io.StringIO()

    def write(self, text: str) -> int:
        self.kept.write(text)
        if self.out is not None:
            self.out.write(text)
        return len(text)

    def flush(self) -> None:
        if self.out is not None:
            self.out.flush()


def run_worker(body: Callable[[], None]) -> NoReturn:
    """Run one worker's part of the command (``body`` raises SystemExit with its exit code, as click commands
    do), write its status, and leave through ``os._exit``: gloo can abort in its destructors at interpreter exit
    after all the work is done (docs/scaling.md, "Running distributed")."""
    import torch.distributed as dist

    from moec.cli import EXIT_INTERNAL

    rank = int(os.environ["RANK"])
    real_err = sys.stderr
    sys.stderr = err = _Tee(real_err if rank == 0 else None)
    if rank != 0:
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - left open until os._exit
    code = 0
    try:
        body()
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else EXIT_FAILED)
    except Exception as e:  # a moec bug: one line, as `moec` itself reports one (moec/cli.py)
        code = EXIT_INTERNAL
        if os.environ.get("MOEC_TRACEBACK") == "1":
            traceback.print_exc(file=real_err)
        line = f"error: internal error in moec on rank {rank} ({type(e).__name__}: {e}); please report it"
        err.write(line + "\n")
        if rank != 0:
            real_err.write(line + "\n")
    folder = os.environ.get(STATUS_ENV)
    if folder:
        Path(folder, f"rank{rank}.json").write_text(json.dumps({"code": code, "stderr": err.kept.getvalue()}))
    if code in (0, EXIT_FAILED) and dist.is_initialized():  # after an error a peer may wait in a collective
        dist.destroy_process_group()
    sys.stdout.flush()
    real_err.flush()
    os._exit(code)
