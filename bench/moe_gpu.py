"""GPU benchmark of the triton MoE backend against its peers, for the table in BENCHMARKS.md.

    python bench/moe_gpu.py [--shapes mixtral-8x7b,qwen3-30b-a3b,deepseek-v3] [--tokens 4096,16384,32768]
                            [--repeats 10] [--out DIR]

Expert shapes of Mixtral-8x7B (d 4096, f 14336, E 8, k 2), Qwen3-30B-A3B (d 2048, f 768, E 128, k 8)
and DeepSeek-V3 (d 7168, f 2048, E 256, k 8; routed experts only), bf16, forward+backward, at 4k,
16k and 32k tokens. Peers, interleaved in one process on the same tensors and routing: moec
``reference`` (grouped_mm on CUDA), moec ``triton``, transformers' MixtralExperts with
``experts_implementation="grouped_mm"`` and Liger-Kernel's LigerFusedMoEFunction (each only if it
imports; a missing package is a note, not a crash). The device's own dense bf16 matmul rate and
copy bandwidth are measured in the same run, so "% of dense" and "% of copy" use this device's peaks.
Writes moe_gpu.json and moe_gpu.md to --out (default $OUT, else the current directory).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

import torch

from moec.bench import BenchOptions, BenchShape, run_bench
from moec.bench.device import copy_gbps, dense_matmul_tflops

SHAPES = {
    "mixtral-8x7b": BenchShape(4096, 14336, 8, 2),
    "qwen3-30b-a3b": BenchShape(2048, 768, 128, 8),
    "deepseek-v3": BenchShape(7168, 2048, 256, 8),
}
BACKENDS = ("reference", "triton", "hf_grouped_mm", "liger")


def weight_layout(shape: BenchShape, dtype_bytes: int) -> str:
    """HF layout (peers share one copy of the weights) when copies for HF/Liger would not fit."""
    weights = shape.n_experts * shape.d_model * (shape.width + shape.d_ff) * dtype_bytes
    free, _ = torch.cuda.mem_get_info()
    return "hf" if 5 * weights > 0.8 * free else "moec"  # weights + 2 copies + one set of grads + slack


def markdown(rows: list[dict[str, Any]], peaks: dict[str, Any]) -> str:
    lines = [
        f"Device: {peaks['gpu']}; torch {peaks['torch']}, triton {peaks['triton']}. Measured in this run: dense bf16 "
        f"mm {peaks['dense_tflops']:.0f} TFLOP/s (8192³), copy {peaks['copy_gbps']:.0f} GB/s (read+write).",
        "",
        "| shape | T | backend | ms | TFLOP/s | % dense | GB/s | % copy | peak GB | vs reference | vs HF grouped_mm | vs Liger | max err | grad err (rel) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if r["status"] != "ok":
            lines.append(f"| {r['shape']} | {r['tokens']} | {r['backend']} | {r['status']}: {r['note']} |" + " |" * 11)
            continue

        def f(v: float | None, spec: str) -> str:
            return "-" if v is None else spec.format(v)

        lines.append(
            f"| {r['shape']} | {r['tokens']} | {r['backend']} | {r['ms']:.2f} | {f(r['tflops'], '{:.0f}')} | "
            f"{f(r['pct_dense'], '{:.0f}%')} | {f(r['gbps'], '{:.0f}')} | {f(r['pct_copy'], '{:.0f}%')} | "
            f"{f(r['peak_mem_mb'] and r['peak_mem_mb'] / 1024, '{:.1f}')} | {f(r['speedup_vs_reference'], '{:.2f}x')} | "
            f"{f(r['vs_hf'], '{:.2f}x')} | {f(r['vs_liger'], '{:.2f}x')} | {f(r['max_abs_err'], '{:.1e}')} | "
            f"{f(r['max_rel_err_grad'], '{:.1e}')} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", default=",".join(SHAPES))
    ap.add_argument("--tokens", default="4096,16384,32768")
    ap.add_argument("--backends", default=",".join(BACKENDS))
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--check-tokens", type=int, default=256)
    ap.add_argument("--forward-only", action="store_true")
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    args = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("bench/moe_gpu.py needs a CUDA GPU; on CPU run bench/moe_cpu.py")
    device = torch.device("cuda")
    import triton

    peaks = {
        "gpu": torch.cuda.get_device_name(device),
        "torch": torch.__version__,
        "triton": triton.__version__,
        "dense_tflops": dense_matmul_tflops(device, torch.bfloat16),
        "copy_gbps": copy_gbps(device),
    }
    print(f"dense bf16 mm: {peaks['dense_tflops']:.0f} TFLOP/s, copy: {peaks['copy_gbps']:.0f} GB/s", flush=True)
    rows: list[dict[str, Any]] = []
    reports = {}
    for name in args.shapes.split(","):
        shape = SHAPES[name]
        opts = BenchOptions(
            tokens=tuple(int(t) for t in args.tokens.split(",")),
            backends=tuple(args.backends.split(",")),
            dtype="bf16",
            backward=not args.forward_only,
            repeats=args.repeats,
            warmup=args.warmup,
            check_tokens=args.check_tokens,
            device="cuda",
            weight_layout=weight_layout(shape, 2),
        )
        try:
            report = run_bench(shape, opts)
        except torch.OutOfMemoryError as e:  # report the shape as failed, keep the others
            rows.append({"shape": name, "tokens": "-", "backend": "all", "status": "error", "note": f"OOM: {e}"[:200]})
            torch.cuda.empty_cache()
            continue
        reports[name] = report
        by_t: dict[int, dict[str, dict[str, Any]]] = {}
        for r in report["results"]:
            by_t.setdefault(r["tokens"], {})[r["backend"]] = r
        for r in report["results"]:
            peers = by_t[r["tokens"]]

            def vs(peer: str, r: dict[str, Any] = r, peers: dict[str, dict[str, Any]] = peers) -> float | None:
                p = peers.get(peer)
                return p["ms"] / r["ms"] if p and p["status"] == "ok" and r["status"] == "ok" else None

            row = {**r, "shape": name, "vs_hf": vs("hf_grouped_mm"), "vs_liger": vs("liger")}
            row["pct_dense"] = 100 * r["tflops"] / peaks["dense_tflops"] if r.get("tflops") else None
            row["pct_copy"] = 100 * r["gbps"] / peaks["copy_gbps"] if r.get("gbps") else None
            rows.append(row)
        print(markdown([x for x in rows if x["shape"] == name], peaks), flush=True)
        torch.cuda.empty_cache()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "moe_gpu.json").write_text(json.dumps({"peaks": peaks, "reports": reports}, indent=2))
    (out / "moe_gpu.md").write_text(markdown(rows, peaks))
    print(markdown(rows, peaks))


if __name__ == "__main__":
    main()
