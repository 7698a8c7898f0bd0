"""What per-step recording costs a smoke-run: the same run with the recorder and JSONL log, and with the
recorder replaced by a no-op, interleaved, median of N (in one process, so torch's import is paid once);
and, less sensitive to a busy machine, the share of a recorded run's wall time spent inside the recorder.

python bench/smoke_log.py [SPEC] [--runs 5] [--steps 30] [--batch 8] [--seq 64]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch

from moec.smoke import record
from moec.smoke.outputs import write_log
from moec.smoke.run import SmokeConfig, smoke_run
from moec.spec import load_model


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("spec", nargs="?", default="specs/textbook-moe.yaml")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=64)
    args = ap.parse_args()
    plan = load_model(args.spec)
    cfg = SmokeConfig(device="cpu", steps=args.steps, batch=args.batch, seq=args.seq)
    recorded = record.StepRecorder.__call__
    inside: list[float] = []  # seconds spent in the recorder, per recorded run

    def timed(self, *a, **k) -> None:
        t = time.perf_counter()
        recorded(self, *a, **k)
        inside[-1] += time.perf_counter() - t

    times: dict[str, list[float]] = {"recorded + --log": [], "not recorded": []}
    smoke_run(plan, cfg, progress=False)  # warm-up
    for _ in range(args.runs):
        for mode in times:
            record.StepRecorder.__call__ = timed if mode != "not recorded" else (lambda *a, **k: None)
            inside.append(0.0)
            t0 = time.perf_counter()
            result = smoke_run(plan, cfg, progress=False)
            if mode != "not recorded":
                with tempfile.TemporaryDirectory() as d:
                    write_log(result, d, force=False)
            times[mode].append(time.perf_counter() - t0)
    record.StepRecorder.__call__ = recorded
    base = statistics.median(times["not recorded"])
    share = statistics.median(i / t for i, t in zip(inside[::2], times["recorded + --log"], strict=True))
    print(f"{args.spec}: {args.steps} steps × batch {args.batch} × seq {args.seq}, {torch.get_num_threads()} threads")
    for mode, ts in times.items():
        med = statistics.median(ts)
        print(f"  {mode:<17} median {med:.3f} s (min {min(ts):.3f}, max {max(ts):.3f}) = {med / base:.3f}×")
    print(f"  inside the recorder: median {100 * share:.2f}% of a recorded run's wall time")


if __name__ == "__main__":
    main()
