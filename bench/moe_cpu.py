"""CPU benchmark of the MoE expert backends on the CI machine's shape, and the issue's acceptance checks.

    python bench/moe_cpu.py [--repeats 5] [--json out.json]

Shape (docs/kernels.md, "CPU measurements"; issue 4): d=512, f=1024, E=8, k=2, SwiGLU, T=4096 tokens, fp32 (bf16 on an
AVX2-only CPU measures emulation), all cores. Forward and forward+backward, each in one process with
every backend interleaved round-robin, as ``moec bench`` does (this script wraps the same library).
Acceptance (issue 4): the reference backend is at least as fast as the naive loop and the
transformers-style loop, >= 3x compute-all-experts, and within 1.25x of the ideal (the same FLOPs as
dense matmuls of the same shapes, timed in the same run). Run-to-run noise on a shared 2-core VM is
about ±15%.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from moec.bench import BenchOptions, BenchShape, render_table, run_bench

SHAPE = BenchShape(d_model=512, d_ff=1024, n_experts=8, top_k=2, activation="swiglu")
TOKENS = 4096
BACKENDS = ("naive", "reference", "triton", "hf_loop", "all_experts", "ideal_dense")


def acceptance(report: dict[str, Any]) -> list[tuple[str, bool, str]]:
    ms = {r["backend"]: r["ms"] for r in report["results"] if r["status"] == "ok"}
    if "reference" not in ms:
        return [("reference backend present", False, "moec.kernels.reference did not run")]
    ref = ms["reference"]
    checks = []
    for peer in ("naive", "hf_loop"):
        if peer in ms:
            checks.append(
                (f"reference <= {peer}", ref <= ms[peer], f"{ref:.1f} vs {ms[peer]:.1f} ms ({ms[peer] / ref:.2f}x)")
            )
    if "all_experts" in ms:
        checks.append(("reference >= 3x all_experts", ms["all_experts"] >= 3 * ref, f"{ms['all_experts'] / ref:.2f}x"))
    if "ideal_dense" in ms:
        checks.append(
            ("reference <= 1.25x ideal", ref <= 1.25 * ms["ideal_dense"], f"{ref / ms['ideal_dense']:.2f}x ideal")
        )
    return checks


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--tokens", type=int, default=TOKENS)
    ap.add_argument("--json", help="also write both reports to this file")
    args = ap.parse_args()
    reports = {}
    for backward in (False, True):
        opts = BenchOptions(
            tokens=(args.tokens,),
            backends=BACKENDS,
            dtype="fp32",
            backward=backward,
            repeats=args.repeats,
            warmup=args.warmup,
            device="cpu",
        )
        report = run_bench(SHAPE, opts)
        report["acceptance"] = [{"check": c, "ok": ok, "measured": m} for c, ok, m in acceptance(report)]
        reports["fwd+bwd" if backward else "fwd"] = report
        print(render_table(report))
        for c in report["acceptance"]:
            print(f"  [{'PASS' if c['ok'] else 'FAIL'}] {c['check']}: {c['measured']}")
        print()
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(reports, fh, indent=2)


if __name__ == "__main__":
    main()
