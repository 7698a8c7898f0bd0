"""Wall time of `moec analyze SPEC` as a user runs it (a fresh process each time, median of N).

python bench/analyze_startup.py [SPEC] [--runs 11]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("spec", nargs="?", default="specs/deepseek-v3.yaml")
    ap.add_argument("--runs", type=int, default=11)
    args = ap.parse_args()
    cmd = [sys.executable, "-m", "moec.cli", "analyze", args.spec]
    subprocess.run(cmd, check=True, capture_output=True)  # warm the file cache
    times = []
    for _ in range(args.runs):
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True)
        times.append(time.perf_counter() - t0)
    print(
        f"moec analyze {args.spec}: median {statistics.median(times):.3f} s, min {min(times):.3f} s, max {max(times):.3f} s over {args.runs} runs"
    )


if __name__ == "__main__":
    main()
