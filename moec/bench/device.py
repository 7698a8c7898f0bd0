"""The device's own yardsticks, measured in the same run as the MoE benchmark: dense matmul FLOP/s
and device-to-device copy bandwidth (the peaks an MoE kernel's TFLOP/s and GB/s are compared with)."""

from __future__ import annotations

import statistics
import time

import torch


def _median_ms(fn, device: torch.device, repeats: int) -> float:  # type: ignore[no-untyped-def]
    fn()
    torch.cuda.synchronize(device) if device.type == "cuda" else None
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(1e3 * (time.perf_counter() - t0))
    return statistics.median(times)


def dense_matmul_tflops(device: torch.device, dtype: torch.dtype, n: int = 8192, repeats: int = 10) -> float:
    """2·n³ FLOPs of one square ``mm`` over its median time."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    ms = _median_ms(lambda: torch.mm(a, b), device, repeats)
    return 2 * n**3 / (ms * 1e-3) / 1e12


def copy_gbps(device: torch.device, n_bytes: int = 1 << 30, repeats: int = 10) -> float:
    """Bytes read plus bytes written by one device-to-device copy, over its median time."""
    src = torch.empty(n_bytes, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    ms = _median_ms(lambda: dst.copy_(src), device, repeats)
    return 2 * n_bytes / (ms * 1e-3) / 1e9
