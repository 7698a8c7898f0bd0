"""Accelerators moec knows: memory, bandwidths and dense peak throughput per dtype, each with its source
(docs/scaling.md §7, docs/roofline.md). `moec plan` and `moec roofline` read this one table; a user adds
their own accelerators in a YAML file (:func:`load_accelerator_file`, the `--gpu-file` option).

Figures are the vendors' headline numbers (decimal units: 1 GB = 1e9 B, 1 TB/s = 1e12 B/s). Peak FLOP/s are
the *dense* tensor-core figures: NVIDIA's tables lead with the 2:4-sparsity figure, which is twice the dense
one, and AMD quotes both. fp32 is the plain (non-tensor-core, no TF32) vector figure, which is what an fp32
matmul gets unless TF32 is switched on. ``None`` marks a dtype the accelerator has no tensor-core path for
(fp8 before Hopper and CDNA 3). Link figures are one direction: vendors quote NVLink and Infinity Fabric as the
sum of both directions, and a rank's sent bytes use one. The scale-out figure is one 400 Gb/s NIC per GPU, as
in the reference 8-GPU servers named below.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from moec.errors import CommandError, Problem, SpecError
from moec.vocab import DTYPES

GB = 10**9
TB = 10**12


@dataclass(frozen=True)
class Accelerator:
    name: str
    hbm_bytes: int
    hbm_bytes_per_s: int
    peak_flops: dict[str, int | None]  # dense peak per second, per dtype of DTYPES; None: no such path
    link_bytes_per_s: int  # scale-up fabric inside a node, one direction
    nic_bytes_per_s: int  # scale-out network between nodes, one direction
    gpus_per_node: int
    source: str

    @property
    def bf16_flops(self) -> int:
        """The dense bf16 peak, which `moec plan` times training steps with."""
        peak = self.peak_flops["bf16"]
        assert peak is not None  # every accelerator in the table and every user one has a bf16 figure
        return peak


_NIC_400G = 50 * GB  # one 400 Gb/s ConnectX-7 per GPU: 400e9 / 8 bytes
_HOPPER = {"fp32": 67 * TB, "bf16": 989 * TB, "fp16": 989 * TB, "fp8": 1_979 * TB}  # H100 and H200 SXM alike
_CDNA3 = {"fp32": 163_400 * GB, "bf16": 1_307_400 * GB, "fp16": 1_307_400 * GB, "fp8": 2_614_900 * GB}

ACCELERATORS = {
    "a100": Accelerator(
        "NVIDIA A100 SXM4 80GB",
        hbm_bytes=80 * GB,
        hbm_bytes_per_s=2_039 * GB,
        peak_flops={"fp32": 19_500 * GB, "bf16": 312 * TB, "fp16": 312 * TB, "fp8": None},  # 624 with sparsity
        link_bytes_per_s=300 * GB,  # NVLink 3: 600 GB/s both directions
        nic_bytes_per_s=25 * GB,  # DGX A100: one 200 Gb/s HDR InfiniBand per GPU
        gpus_per_node=8,
        source="NVIDIA A100 Tensor Core GPU datasheet (80GB SXM column); NVIDIA DGX A100 datasheet",
    ),
    "h100": Accelerator(
        "NVIDIA H100 SXM5 80GB",
        hbm_bytes=80 * GB,
        hbm_bytes_per_s=3_350 * GB,
        peak_flops=_HOPPER,  # bf16 1,979 and fp8 3,958 TFLOPS with sparsity
        link_bytes_per_s=450 * GB,  # NVLink 4: 900 GB/s both directions
        nic_bytes_per_s=_NIC_400G,
        gpus_per_node=8,
        source="NVIDIA H100 Tensor Core GPU datasheet (SXM column); NVIDIA DGX H100 datasheet (8× 400 Gb/s ConnectX-7)",
    ),
    "h200": Accelerator(
        "NVIDIA H200 SXM 141GB",
        hbm_bytes=141 * GB,
        hbm_bytes_per_s=4_800 * GB,
        peak_flops=_HOPPER,  # the H100's compute with more and faster memory
        link_bytes_per_s=450 * GB,  # NVLink 4: 900 GB/s both directions
        nic_bytes_per_s=_NIC_400G,
        gpus_per_node=8,
        source="NVIDIA H200 Tensor Core GPU datasheet (SXM column); NVIDIA DGX H200 datasheet (8× 400 Gb/s ConnectX-7)",
    ),
    "b200": Accelerator(
        "NVIDIA B200 (HGX) 180GB",
        hbm_bytes=180 * GB,  # DGX/HGX B200: 1,440 GB over 8 GPUs
        hbm_bytes_per_s=8_000 * GB,  # DGX B200: 64 TB/s over 8 GPUs
        # HGX B200 per GPU: 4.5 PFLOPS bf16 and 9 PFLOPS fp8 with sparsity; fp32 600 TFLOPS over 8 GPUs
        peak_flops={"fp32": 75 * TB, "bf16": 2_250 * TB, "fp16": 2_250 * TB, "fp8": 4_500 * TB},
        link_bytes_per_s=900 * GB,  # NVLink 5: 1.8 TB/s both directions
        nic_bytes_per_s=_NIC_400G,
        gpus_per_node=8,
        source="NVIDIA DGX B200 datasheet and HGX B200 specifications (8-GPU figures divided by 8)",
    ),
    "l40s": Accelerator(
        "NVIDIA L40S 48GB (PCIe)",
        hbm_bytes=48 * GB,  # GDDR6, not HBM: the field is the device memory
        hbm_bytes_per_s=864 * GB,
        peak_flops={"fp32": 91_600 * GB, "bf16": 362_050 * GB, "fp16": 362_050 * GB, "fp8": 733 * TB},
        link_bytes_per_s=32 * GB,  # no NVLink: PCIe 4.0 ×16, 64 GB/s both directions
        nic_bytes_per_s=_NIC_400G,
        gpus_per_node=8,
        source="NVIDIA L40S GPU datasheet (dense figures; the sparsity ones are twice)",
    ),
    "mi300x": Accelerator(
        "AMD Instinct MI300X 192GB",
        hbm_bytes=192 * GB,
        hbm_bytes_per_s=5_300 * GB,
        peak_flops=_CDNA3,  # bf16 1,307.4 TFLOPS dense; 2,614.9 with sparsity
        link_bytes_per_s=448 * GB,  # Infinity Fabric: 7 links × 128 GB/s both directions = 896 GB/s
        nic_bytes_per_s=_NIC_400G,
        gpus_per_node=8,
        source="AMD Instinct MI300X accelerator data sheet; 8-GPU OAM platform with one 400 Gb/s NIC per GPU",
    ),
    "mi325x": Accelerator(
        "AMD Instinct MI325X 256GB",
        hbm_bytes=256 * GB,
        hbm_bytes_per_s=6_000 * GB,
        peak_flops=_CDNA3,  # the MI300X's compute with HBM3E
        link_bytes_per_s=448 * GB,  # Infinity Fabric as on the MI300X
        nic_bytes_per_s=_NIC_400G,
        gpus_per_node=8,
        source="AMD Instinct MI325X accelerator data sheet; 8-GPU OAM platform with one 400 Gb/s NIC per GPU",
    ),
}

# --- A user's own accelerators, from YAML ------------------------------------------------------------
# accelerators:
#   my-gpu:
#     name: Acme X1 96GB
#     hbm_bytes: 96e9
#     hbm_bytes_per_s: 4.0e12
#     peak_flops: {bf16: 1.0e15, fp16: 1.0e15, fp8: 2.0e15, fp32: 6.0e13}   # bf16 required; fp8 may be null
#     source: Acme X1 datasheet, 2026
#     link_bytes_per_s: 4.5e11      # optional (moec plan's traffic): default 0, no scale-up fabric
#     nic_bytes_per_s: 5.0e10       # optional, default 0
#     gpus_per_node: 8              # optional, default 8
_REQUIRED = ("name", "hbm_bytes", "hbm_bytes_per_s", "peak_flops", "source")
_OPTIONAL = {"link_bytes_per_s": 0, "nic_bytes_per_s": 0, "gpus_per_node": 8}
_POSITIVE = ("hbm_bytes", "hbm_bytes_per_s", "gpus_per_node")  # a node without a fabric has 0 link bytes/s
_MAX_FIGURE = 1e21  # a zettaFLOP/s or a zettabyte: beyond any device, so surely a typo


def load_accelerator_file(file: str) -> dict[str, Accelerator]:
    """The accelerators a user's YAML file defines, keyed by the name to pass as ``--gpu``; a SpecError with
    one located problem per bad field. A key may not reuse a name from :data:`ACCELERATORS`."""
    from moec.spec.load import read_text_file
    from moec.spec.yamlio import dotted, parse_yaml

    loc = parse_yaml(read_text_file(file, kind="YAML accelerator"), file)
    problems: list[Problem] = []

    def problem(path: tuple[str | int, ...], message: str, *, key: bool = False) -> None:
        m = loc.mark_for(path, key=key)
        problems.append(Problem(m.file, m.line, m.column, dotted(path), message))

    root = loc.value
    if not isinstance(root, dict) or set(root) != {"accelerators"} or not isinstance(root["accelerators"], dict):
        problem((), "expected one mapping, accelerators: {NAME: {name, hbm_bytes, ...}}")
        raise SpecError(problems)
    found = {}
    for key, entry in root["accelerators"].items():
        path = ("accelerators", key)
        if key in ACCELERATORS:
            problem(path, f"{key} is a built-in accelerator; give yours another name", key=True)
        elif not isinstance(entry, dict):
            problem(path, f"expected a mapping of {', '.join(_REQUIRED)}")
        else:
            accelerator = _accelerator(entry, path, problem)
            if accelerator is not None:
                found[key] = accelerator
    if not root["accelerators"]:
        problem(("accelerators",), "defines no accelerator")
    if problems:
        raise SpecError(problems)
    return found


def _accelerator(entry: dict[str, Any], path: tuple[str, ...], problem: Any) -> Accelerator | None:
    unknown = [field for field in entry if field not in (*_REQUIRED, *_OPTIONAL)]
    for field in unknown:
        problem((*path, field), f"unknown field; expected {', '.join((*_REQUIRED, *_OPTIONAL))}", key=True)
    missing = [f for f in _REQUIRED if f not in entry]
    for field in missing:
        problem(path, f"required field {field} is missing")
    values = {f: entry.get(f, default) for f, default in _OPTIONAL.items()}
    ok = not unknown and not missing
    for field in ("hbm_bytes", "hbm_bytes_per_s", *_OPTIONAL):
        if field in entry:
            ok &= _figure(entry[field], (*path, field), problem, positive=field in _POSITIVE)
    for field in ("name", "source"):
        if field in entry and (not isinstance(entry[field], str) or not entry[field].strip()):
            problem((*path, field), "expected a non-empty string")
            ok = False
    peaks = _peaks(entry.get("peak_flops"), (*path, "peak_flops"), problem) if "peak_flops" in entry else None
    if not ok or peaks is None:
        return None
    return Accelerator(
        entry["name"],
        hbm_bytes=int(entry["hbm_bytes"]),
        hbm_bytes_per_s=int(entry["hbm_bytes_per_s"]),
        peak_flops=peaks,
        link_bytes_per_s=int(values["link_bytes_per_s"]),
        nic_bytes_per_s=int(values["nic_bytes_per_s"]),
        gpus_per_node=int(values["gpus_per_node"]),
        source=entry["source"],
    )


def _figure(value: Any, path: tuple[str | int, ...], problem: Any, *, positive: bool = True) -> bool:
    """A finite number, > 0 (or ≥ 0 for the optional fabric figures), below :data:`_MAX_FIGURE`, and whole."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        problem(path, f"{value!r}: expected a finite number")
        return False
    if value < 0 or (positive and value == 0) or value > _MAX_FIGURE:
        problem(path, f"{value!r}: expected a number {'>' if positive else '≥'} 0 and at most {_MAX_FIGURE:g}")
        return False
    if value != int(value):
        problem(path, f"{value!r}: expected a whole number")
        return False
    return True


def _peaks(value: Any, path: tuple[str, ...], problem: Any) -> dict[str, int | None] | None:
    if not isinstance(value, dict):
        problem(path, f"expected a mapping of dtype to dense peak FLOP/s ({', '.join(DTYPES)})")
        return None
    ok = True
    for dtype, peak in value.items():
        if dtype not in DTYPES:
            problem((*path, dtype), f"unknown dtype; expected {', '.join(DTYPES)}", key=True)
            ok = False
        elif peak is not None:
            ok &= _figure(peak, (*path, dtype), problem)
    if value.get("bf16") is None:
        problem(path, "bf16 is required (moec plan times steps in bf16)")
        ok = False
    if not ok:
        return None
    return {d: (None if value.get(d) is None else int(value[d])) for d in DTYPES}


def accelerator_table(gpu_file: str | Path | None = None) -> dict[str, Accelerator]:
    """The built-in accelerators, plus those of a user's file."""
    return {**ACCELERATORS, **(load_accelerator_file(str(gpu_file)) if gpu_file else {})}


def pick_accelerator(gpu: str, gpu_file: str | Path | None = None) -> Accelerator:
    """``--gpu NAME`` (with ``--gpu-file``): the accelerator of that name, or a CommandError listing the names."""
    table = accelerator_table(gpu_file)
    if gpu not in table:
        raise CommandError(
            f"--gpu {gpu}: unknown accelerator; choose from {', '.join(table)} or add it with --gpu-file"
        )
    return table[gpu]
