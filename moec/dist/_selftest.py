"""The worker of moec.dist's multi-process tests: ``python -m moec.dist._selftest CASE OUT_DIR``, one process
per rank (RANK and WORLD_SIZE in the environment; MOEC_DIST_INIT, a ``file://`` rendezvous, or torchrun's
variables). Each rank runs the case's checks and writes what it measured to ``OUT_DIR/rank{r}.json``; the
tests (tests/dist) assert on those numbers, against single-process references each rank computes itself.

The process ends with ``os._exit``: gloo can abort in its destructors at interpreter exit ("terminate called
without an active exception", SIGABRT), after all the work is done (docs/scaling.md, "Running distributed").
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from collections.abc import Callable
from pathlib import Path

import torch
import torch.distributed as dist


def _cases() -> dict[str, Callable[[], dict]]:
    from moec.dist import _cases_moe, _cases_state, _cases_train

    return {**_cases_moe.CASES, **_cases_train.CASES, **_cases_state.CASES}


def main(argv: list[str]) -> int:
    case, out = argv[0], Path(argv[1])
    torch.set_num_threads(1)
    from moec.dist.mesh import init

    init(os.environ.get("MOEC_DIST_INIT"))
    rank = dist.get_rank()
    try:
        result = {"ok": True, **_cases()[case]()}
    except Exception:  # the test prints it: a worker's traceback is the only clue to a failed launch
        result = {"ok": False, "error": traceback.format_exc()}
    (out / f"rank{rank}.json").write_text(json.dumps(result))
    if result["ok"]:  # after a failure the other rank may be stuck in a collective: leave without waiting
        dist.destroy_process_group()
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    code = main(sys.argv[1:])
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
