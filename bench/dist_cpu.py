"""Distributed smoke-runs on the CPU, 1 process against 2: correctness, not speed.

    python bench/dist_cpu.py [--specs textbook-moe deepseek-v3] [--steps 20] [--json out.json]

Each spec runs once on one process (``moec smoke-run``) and on two processes (``--nproc 2``, gloo) under
four layouts: FSDP, EP without FSDP, EP × FSDP, and TP (× an FSDP of one rank). Every run uses the same seed,
so the same weights and the same batches; each data-parallel rank trains on its half of every batch. Per
run, the table gives the step-0 loss (cross-entropy), the step-0 check the run makes itself (the loss it
backpropagates against the unsharded model on rank 0, fed the same halves), the largest difference of the
per-step loss from the one-process run, rank 0's all-to-all bytes per step (counted by the dispatchers; from
the routing; the planner's uniform-routing figure), rank 0's parameters beside moec.plan.rank_params, and the
wall time of the whole command (start-up included; two processes share the machine's cores).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
LAYOUTS = {
    "1 process": [],
    "FSDP": ["--nproc", "2"],
    "EP": ["--nproc", "2", "--ep", "2", "--no-fsdp"],
    "EP × FSDP": ["--nproc", "2", "--ep", "2"],
    "TP": ["--nproc", "2", "--tp", "2"],
}


def smoke_run(spec: str, layout: list[str], steps: int, batch: int, seq: int) -> tuple[dict, float]:
    cmd = [sys.executable, "-m", "moec", "smoke-run", spec, "--device", "cpu", "--format", "json"]
    cmd += ["--steps", str(steps), "--batch", str(batch), "--seq", str(seq), *layout]
    env = os.environ | {"OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}  # the same threads per process
    t0 = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env, check=False)
    wall = time.perf_counter() - t0
    if done.returncode not in (0, 1):  # 1: the run finished and its report says what failed
        raise SystemExit(f"{' '.join(cmd)} exited {done.returncode}:\n{done.stderr}")
    return json.loads(done.stdout), wall


def row(spec: str, name: str, run: dict, single: dict, wall: float) -> dict:
    d = run.get("distributed")
    diffs = [abs(a - b) for a, b in zip(run["losses"], single["losses"], strict=True)]
    out = {
        "spec": spec,
        "layout": name,
        "ok": run["ok"],
        "step0_loss": run["losses"][0],
        "max_loss_diff": max(diffs),
        "wall_s": wall,
        "params_total": run["params_total"],
    }
    if d is not None:
        r0 = d["ranks"][0]
        out |= {
            "step0_rel_diff": d["step0"]["rel_diff"],
            "a2a_counted": 2 * r0["a2a_sent_bytes"] / run["steps"],
            "a2a_routing": 2 * r0["a2a_sent_bytes_on_routing"] / run["steps"],
            "a2a_planner": d["planned_a2a_bytes_per_step"],
            "rank0_params": r0["params_experts"] + r0["params_other"],
            "rank0_planned": None
            if r0["planned_params_experts"] is None
            else r0["planned_params_experts"] + r0["planned_params_other"],
        }
    return out


def markdown(rows: list[dict]) -> str:
    lines = [
        "| spec | layout | step-0 loss | step-0 vs unsharded (rel.) | max \\|Δ loss\\| vs 1 process | "
        "a2a B/step rank 0: counted / routing / planner | rank-0 params / planned | wall s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "a2a_counted" in r:
            a2a = f"{r['a2a_counted']:,.0f} / {r['a2a_routing']:,.0f} / {r['a2a_planner']:,}"
            planned = "-" if r["rank0_planned"] is None else f"{r['rank0_planned']:,}"
            params = f"{r['rank0_params']:,} / {planned}"
            check = f"{r['step0_rel_diff']:.1e}"
        else:
            a2a, params, check = "-", f"{r['params_total']:,} (all)", "-"
        lines.append(
            f"| {r['spec']} | {r['layout']} | {r['step0_loss']:.6f} | {check} | {r['max_loss_diff']:.2e} | {a2a} "
            f"| {params} | {r['wall_s']:.1f} |"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--specs", nargs="+", default=["textbook-moe", "deepseek-v3"])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=64)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    rows = []
    for spec in args.specs:
        single, wall = smoke_run(spec, [], args.steps, args.batch, args.seq)
        for name, layout in LAYOUTS.items():
            run, wall = (single, wall) if not layout else smoke_run(spec, layout, args.steps, args.batch, args.seq)
            rows.append(row(spec, name, run, single, wall))
            print(f"{spec} {name}: ok={run['ok']} {wall:.1f} s", file=sys.stderr)
    machine = f"{os.cpu_count()} cores, {platform.machine()}, torch {torch.__version__}, gloo"
    print(f"{machine}; {args.steps} steps × batch {args.batch} × seq {args.seq}, fp32, scale tiny\n")
    print(markdown(rows))
    if args.json:
        args.json.write_text(json.dumps({"machine": machine, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
