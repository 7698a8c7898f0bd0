"""Block sizes for the MoE kernels: a small heuristic table, and an opt-in autotune with a disk cache.

One config serves every kernel of a call: the slot tiles are built for its ``block_m``, so the
forward and the backward of one call must agree on it.

* Default: the heuristic table below, keyed by tokens per expert (the M of each expert's GEMM).
  Fine-grained shapes (few rows per expert) want small BM: at T=4096 with DeepSeek-V3's 256
  experts, BM=128 pads the tile space by ~1.47x against ~1.24x at BM=64 (docs/kernels.md,
  "Block sizes and autotune").
* ``MOEC_AUTOTUNE=1`` on a GPU times a few candidates once per shape key and stores the winner in a
  JSON cache (``$MOEC_CACHE_DIR`` or ``~/.cache/moec``), so a second run does not re-tune.
* Never under the interpreter: there a fixed small config keeps the test suite fast.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

# TRITON_INTERPRET is read by ``triton.jit`` when the kernels are decorated (at import of this
# package), so it is read once here too: launchers and kernels agree on the mode.
INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"


@dataclass(frozen=True)
class KernelConfig:
    block_m: int  # routed rows per tile (one expert per tile)
    block_n: int  # output columns per tile of the plain grouped GEMMs, and the dW tile edge
    block_k: int  # reduction step
    num_warps: int = 4
    num_stages: int = 3
    # output columns per tile of the two fused kernels (gated up-projection: two fp32 accumulators;
    # down-projection backward: accumulator plus g, u, act, act' in the epilogue). They need about
    # half the tile of a plain GEMM to stay in registers; 0 = derive it (``fused_n``).
    fused_block_n: int = 0

    @property
    def fused_n(self) -> int:
        """≤ 16 fp32 accumulator elements per thread: BM·BN ≤ 512·num_warps (no spills in ptxas -v, sm_90a)."""
        if self.fused_block_n:
            return self.fused_block_n
        return max(16, min(self.block_n, (512 * self.num_warps) // self.block_m))

    @property
    def dw_n(self) -> int:
        """Edge of the square dW tiles (one fp32 accumulator; 128x128 needs 8 warps to stay in registers)."""
        return self.block_n if INTERPRET else min(self.block_n, 16 * self.num_warps)

    def as_list(self) -> list[int]:
        return [self.block_m, self.block_n, self.block_k, self.num_warps, self.num_stages, self.fused_block_n]

    @classmethod
    def from_list(cls, v: list[int] | tuple[int, ...]) -> KernelConfig:
        return cls(*(int(x) for x in v))


# The interpreter runs every program in Python (~10 ms each), so wide tiles keep tests fast; the
# tests pin narrower blocks where they need several N- and K-tiles.
INTERPRETER_CONFIG = KernelConfig(16, 64, 64, 1, 1, fused_block_n=64)

# (max tokens per expert, config): BM follows the expert's row count (vLLM's tuned H100 tables use
# BM=16 up to ~128 tokens, 64 around 512-1024, 128 beyond); 4 warps / 3 stages is the default vLLM
# PR 24700 found best. Every kernel at every entry (with its derived fused_n and dw_n tiles) compiles
# for sm_90a without register spills (ptxas -v, Triton 3.9); their speed is unmeasured (no GPU yet).
_TABLE: tuple[tuple[float, KernelConfig], ...] = (
    (16, KernelConfig(16, 64, 64, 4, 4)),
    (64, KernelConfig(32, 64, 64, 4, 4)),
    (256, KernelConfig(64, 128, 32, 4, 3)),
    (float("inf"), KernelConfig(128, 64, 32, 8, 3)),
)

# The autotune search space (GPU only).
CANDIDATES: tuple[KernelConfig, ...] = (
    KernelConfig(16, 64, 64, 4, 4),
    KernelConfig(32, 64, 64, 4, 4),
    KernelConfig(32, 128, 64, 4, 3),
    KernelConfig(64, 64, 64, 4, 4),
    KernelConfig(64, 128, 64, 4, 3),
    KernelConfig(64, 128, 32, 4, 4),
    KernelConfig(128, 64, 64, 4, 3),
    KernelConfig(128, 128, 64, 8, 3),
    KernelConfig(128, 128, 32, 8, 4),
)


def heuristic_config(n_rows: int, n_experts: int) -> KernelConfig:
    per_expert = n_rows / max(n_experts, 1)
    for bound, cfg in _TABLE:
        if per_expert <= bound:
            return cfg
    return _TABLE[-1][1]  # unreachable: the last bound is inf


def tokens_bucket(n_rows: int) -> int:
    """Round the routed row count up to a power of two, so nearby batch sizes share one tuned entry."""
    return 1 << max(0, (max(n_rows, 1) - 1).bit_length())


def cache_path() -> Path:
    root = os.environ.get("MOEC_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "moec")
    return Path(root) / "triton_moe_configs.json"


def shape_key(
    device_name: str, dtype: str, d: int, f: int, n_experts: int, top_k: int, activation: str, n_rows: int
) -> str:
    return f"{device_name}|{dtype}|d={d}|f={f}|E={n_experts}|k={top_k}|{activation}|rows<={tokens_bucket(n_rows)}"


def _load_cache(path: Path) -> dict[str, list[int]]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def autotune(
    key: str,
    run: Callable[[KernelConfig], float],
    candidates: tuple[KernelConfig, ...] = CANDIDATES,
    *,
    path: Path | None = None,
) -> KernelConfig:
    """The fastest candidate for ``key``: from the cache, or timed once with ``run(cfg) -> ms`` and stored.

    A candidate that fails (e.g. out of shared memory on a smaller GPU) is skipped.
    """
    path = path or cache_path()
    cache = _load_cache(path)
    if key in cache:
        return KernelConfig.from_list(cache[key])
    best: tuple[float, KernelConfig] | None = None
    for cfg in candidates:
        try:
            ms = run(cfg)
        except Exception:  # noqa: BLE001 - a config the device cannot run is simply not a candidate
            continue
        if best is None or ms < best[0]:
            best = (ms, cfg)
    if best is None:
        raise RuntimeError(f"no MoE kernel config ran for {key}")
    cache = _load_cache(path)  # re-read: another process may have tuned other shapes meanwhile
    cache[key] = best[1].as_list()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(cache, indent=1, sort_keys=True))
    tmp.replace(path)  # atomic: readers never see a half-written file
    return best[1]


def autotune_enabled() -> bool:
    return os.environ.get("MOEC_AUTOTUNE", "0") == "1" and not INTERPRET


__all__ = [
    "CANDIDATES",
    "INTERPRETER_CONFIG",
    "KernelConfig",
    "autotune",
    "autotune_enabled",
    "cache_path",
    "heuristic_config",
    "shape_key",
]
