"""Launch moec.dist's selftest worker on 2 (or 4) CPU processes (gloo, a file:// rendezvous, one thread each)
and hand the tests what each rank measured. One launch per case, shared by every test that reads it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

TIMEOUT_S = 60
ROOT = Path(__file__).resolve().parents[2]


def _launch(case: str, out: Path, world: int) -> list[dict]:
    env = {k: v for k, v in os.environ.items() if k not in ("MASTER_ADDR", "MASTER_PORT", "LOCAL_RANK")}
    env |= {"WORLD_SIZE": str(world), "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    env |= {"MOEC_DIST_INIT": f"file://{out / 'rendezvous'}", "PYTHONPATH": str(ROOT)}
    procs = []
    for rank in range(world):
        log = open(out / f"log{rank}", "w")  # noqa: SIM115 - closed below, after the process ends
        cmd = [sys.executable, "-m", "moec.dist._selftest", case, str(out)]
        procs.append((subprocess.Popen(cmd, env=env | {"RANK": str(rank)}, stdout=log, stderr=log, cwd=ROOT), log))
    deadline = time.monotonic() + TIMEOUT_S
    for proc, log in procs:
        try:
            proc.wait(timeout=max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            for p, _ in procs:
                p.kill()
                p.wait()
        log.close()
    results = []
    for rank in range(world):
        path = out / f"rank{rank}.json"
        if not path.exists():
            logs = "\n".join((out / f"log{r}").read_text()[-3000:] for r in range(world))
            pytest.fail(f"case {case!r}: rank {rank} wrote no result within {TIMEOUT_S} s\n{logs}")
        result = json.loads(path.read_text())
        if not result["ok"]:
            pytest.fail(f"case {case!r} failed on rank {rank}:\n{result['error']}")
        results.append(result)
    return results


@pytest.fixture(scope="session")
def dist_case(tmp_path_factory):
    """dist_case(name, world) → [each rank's result], launching each case once per session."""
    cache: dict[str, list[dict]] = {}

    def run(case: str, world: int = 2) -> list[dict]:
        if case not in cache:
            cache[case] = _launch(case, tmp_path_factory.mktemp(f"dist-{case}"), world)
        return cache[case]

    return run
