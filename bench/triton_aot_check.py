"""Compile every MoE kernel for a GPU target without a GPU, and report registers and spills.

    python bench/triton_aot_check.py [--arch 90] [--dtype bf16]

For each entry of the heuristic config table (moec/kernels/triton/configs.py) and each kernel
variant (activations, bias, gather/scale flags), Triton compiles the kernel to PTX for ``sm_<arch>a``
and its bundled ``ptxas -v`` reports registers and spill bytes. This catches compiled-mode errors
the interpreter cannot see (constexpr scoping, int64 loop bounds, dot shapes) and register spills
from over-large tiles. It says nothing about speed: that needs bench/moe_gpu.py on a GPU.
Exit status 1 if a kernel fails to compile or spills.
"""

from __future__ import annotations

import argparse
import inspect
import os
import re
import subprocess
import sys
import tempfile

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from moec.kernels.triton import ffn, grouped
from moec.kernels.triton._common import ACTIVATION_CODES
from moec.kernels.triton.configs import _TABLE, KernelConfig

INT64_PTRS = {
    "order_ptr",
    "tile_expert_ptr",
    "tile_row_ptr",
    "expert_end_ptr",
    "expert_start_ptr",
    "idx_ptr",
    "rev_ptr",
}
FP32_PTRS = {"s_ptr", "tw_ptr", "ds_ptr"}


def ptxas() -> str:
    root = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")
    for name in ("ptxas-blackwell", "ptxas"):  # the newer one reads the PTX version Triton 3.9 emits
        if os.path.exists(os.path.join(root, name)):
            return os.path.join(root, name)
    raise SystemExit("no ptxas bundled with this triton")


def compile_and_count(kernel, consts: dict, cfg: KernelConfig, arch: int, dtype: str) -> tuple[int, int]:  # type: ignore[no-untyped-def]
    params = list(inspect.signature(kernel.fn).parameters)

    def ty(p: str) -> str:
        if p in consts:
            return "constexpr"
        if not p.endswith("_ptr"):
            return "i32"
        return "*i64" if p in INT64_PTRS else "*fp32" if p in FP32_PTRS else f"*{dtype}"

    sig = {p: ty(p) for p in params}
    src = ASTSource(fn=kernel, signature=sig, constexprs={(params.index(k),): v for k, v in consts.items()})
    compiled = triton.compile(
        src, target=GPUTarget("cuda", arch, 32), options={"num_warps": cfg.num_warps, "num_stages": cfg.num_stages}
    )
    with tempfile.TemporaryDirectory() as tmp:
        ptx = os.path.join(tmp, "k.ptx")
        with open(ptx, "w") as fh:
            fh.write(compiled.asm["ptx"])
        out = subprocess.run(
            [ptxas(), "-v", "--gpu-name", f"sm_{arch}a", ptx, "-o", os.path.join(tmp, "k.cubin")],
            capture_output=True,
            text=True,
        )
    regs = re.search(r"Used (\d+) registers", out.stderr)
    spill = re.search(r"(\d+) bytes spill stores", out.stderr)
    if out.returncode or not regs or not spill:
        raise RuntimeError(out.stderr[-2000:])
    return int(regs.group(1)), int(spill.group(1))


def variants(cfg: KernelConfig, ieee: bool) -> list[tuple[str, object, dict]]:
    common = {"UPCAST": False, "IEEE": ieee}
    bm, bk, fn, dn = cfg.block_m, cfg.block_k, cfg.fused_n, cfg.dw_n
    out: list[tuple[str, object, dict]] = []
    # every epilogue: silu, tanh GELU, relu and the exact (erf) GELU (moec.kernels.triton._common)
    epilogues = [(name, *ACTIVATION_CODES[name]) for name in ("swiglu", "geglu_tanh", "relu", "geglu")]
    for name, act, gated in epilogues:
        out.append(
            (
                f"up_act[{name}]",
                ffn._up_act_kernel,
                {"ACT": act, "GATED": gated, "HAS_BIAS": True, "SAVE_H1": True, "BM": bm, "BN": fn, "BK": bk},
            )
        )
        out.append(
            (
                f"down_bwd[{name}]",
                ffn._down_bwd_kernel,
                {"ACT": act, "GATED": gated, "HAS_BIAS": True, "BM": bm, "BN": fn, "BK": bk},
            )
        )
    for gather in (True, False):
        flags = {"GATHER_A": gather, "HAS_BIAS": not gather, "HAS_SCALE": gather}
        out.append(
            (
                f"grouped_matmul[gather={gather}]",
                grouped._grouped_matmul_kernel,
                {**flags, "BM": bm, "BN": cfg.block_n, "BK": bk},
            )
        )
    for ga in (True, False):
        flags = {"GATHER_A": ga, "GATHER_B": not ga, "HAS_SCALE": not ga, "HAS_COLSUM": True}
        out.append(
            (
                f"grouped_xty[gather_a={ga}]",
                grouped._grouped_xty_kernel,
                {**flags, "BA": dn, "BB": dn, "BR": max(bk, 16)},
            )
        )
    return [(n, k, {**c, **common}) for n, k, c in out]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", type=int, default=90)
    ap.add_argument("--dtype", default="bf16", choices=["bf16", "fp16", "fp32"])
    args = ap.parse_args()
    bad = 0
    for _, cfg in _TABLE:
        print(f"{cfg}  fused_n={cfg.fused_n} dw_n={cfg.dw_n}")
        for name, kernel, consts in variants(cfg, ieee=args.dtype == "fp32"):
            try:
                regs, spill = compile_and_count(kernel, consts, cfg, args.arch, args.dtype)
            except Exception as e:  # noqa: BLE001 - report every failure, then exit 1
                print(f"  FAIL {name}: {type(e).__name__}: {str(e)[:400]}")
                bad += 1
                continue
            bad += spill > 0
            print(f"  {'ok  ' if spill == 0 else 'SPILL'} {name}: {regs} registers, {spill} bytes spilled", flush=True)
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
