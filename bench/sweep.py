"""Configurations per second of `moec sweep` (issue 17's target: at least 2,000 on the 2-core CI machine).

python bench/sweep.py [--repeats 5]

Each case is one in-process sweep (spec loading with --set, the analyzer, the decode roofline, the Pareto
marks), timed whole; the best of the repeats is reported, since other processes only ever slow a run down.
The load average is printed beside the figures because this machine is shared; configurations per
CPU-second (the process's own CPU time) is the figure a quiet core would give, less cache contention.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from math import prod

from moec.plan.accelerators import ACCELERATORS
from moec.sweep.grid import parse_axes, parse_budget, parse_objective
from moec.sweep.run import Settings, sweep

CASES = [
    # (label, spec, base --set, grid, budget)
    (
        "textbook-moe (8 layers)",
        "textbook-moe",
        (),
        ["moe.n_experts=4,8,16,32", "moe.router.top_k=1,2,4", "moe.granularity=1,2,4", "moe.n_shared_experts=0,1"],
        None,
    ),
    (
        "mixtral-8x7b (32 layers)",
        "mixtral-8x7b",
        (),
        ["moe.n_experts=8,16,32,64", "moe.router.top_k=1,2,4,8", "moe.granularity=1,2,4", "moe.n_shared_experts=0,1"],
        None,
    ),
    (
        "mixtral-8x7b, --budget ffn_flops=base",
        "mixtral-8x7b",
        (),
        ["moe.n_experts=8,16,32,64", "moe.router.top_k=1,2,4,8", "moe.granularity=1,2,4", "moe.n_shared_experts=0,1"],
        "ffn_flops=base",
    ),
    (
        "deepseek-v3 (61 layers)",
        "deepseek-v3",
        (),
        ["moe.n_experts=64,128,256", "moe.router.top_k=4,8", "moe.n_shared_experts=0,1,2"],
        None,
    ),
]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    settings = Settings("h100", ACCELERATORS["h100"], batch=8, seq=4096)
    objectives = [parse_objective("active_params:min"), parse_objective("decode_tokens_per_s:max")]
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}")
    for label, spec, sets, grid, budget in CASES:
        axes = parse_axes(grid)
        n = prod(len(a.values) for a in axes)
        best = best_cpu = float("inf")
        for _ in range(args.repeats):
            t0, c0 = time.perf_counter(), time.process_time()
            sweep(spec, sets, axes, settings, objectives=objectives, budget=parse_budget(budget) if budget else None)
            best, best_cpu = min(best, time.perf_counter() - t0), min(best_cpu, time.process_time() - c0)
        load = os.getloadavg()[0]
        print(
            f"{label}: {n} combinations, {n / best:,.0f} configurations/s wall, "
            f"{n / best_cpu:,.0f} per CPU-second (load {load:.1f})"
        )


if __name__ == "__main__":
    main()
