"""Accelerators the planner knows: memory, bandwidths and peak dense bf16 throughput, each with its source
(docs/scaling.md §7).

Figures are the vendors' headline numbers (decimal units: 1 GB = 1e9 B, 1 TB/s = 1e12 B/s). Peak FLOP/s are
the *dense* bf16 tensor-core figures: NVIDIA's tables lead with the 2:4-sparsity figure, which is twice the
dense one. Link figures are one direction: vendors quote NVLink and Infinity Fabric as the sum of both
directions, and a rank's sent bytes use one. The scale-out figure is one 400 Gb/s NIC per GPU, as in the
reference 8-GPU servers named below.
"""

from __future__ import annotations

from dataclasses import dataclass

GB = 10**9
TB = 10**12


@dataclass(frozen=True)
class Accelerator:
    name: str
    hbm_bytes: int
    hbm_bytes_per_s: int
    bf16_flops: int  # dense peak, per second
    link_bytes_per_s: int  # scale-up fabric inside a node, one direction
    nic_bytes_per_s: int  # scale-out network between nodes, one direction
    gpus_per_node: int
    source: str


_NIC_400G = 50 * GB  # one 400 Gb/s ConnectX-7 per GPU: 400e9 / 8 bytes

ACCELERATORS = {
    "h100": Accelerator(
        "NVIDIA H100 SXM5 80GB",
        hbm_bytes=80 * GB,
        hbm_bytes_per_s=3_350 * GB,
        bf16_flops=989 * TB,  # 1,979 TFLOPS with sparsity
        link_bytes_per_s=450 * GB,  # NVLink 4: 900 GB/s both directions
        nic_bytes_per_s=_NIC_400G,
        gpus_per_node=8,
        source="NVIDIA H100 Tensor Core GPU datasheet (SXM column); NVIDIA DGX H100 datasheet (8× 400 Gb/s ConnectX-7)",
    ),
    "h200": Accelerator(
        "NVIDIA H200 SXM 141GB",
        hbm_bytes=141 * GB,
        hbm_bytes_per_s=4_800 * GB,
        bf16_flops=989 * TB,  # 1,979 TFLOPS with sparsity
        link_bytes_per_s=450 * GB,  # NVLink 4: 900 GB/s both directions
        nic_bytes_per_s=_NIC_400G,
        gpus_per_node=8,
        source="NVIDIA H200 Tensor Core GPU datasheet (SXM column); NVIDIA DGX H200 datasheet (8× 400 Gb/s ConnectX-7)",
    ),
    "b200": Accelerator(
        "NVIDIA B200 (HGX) 180GB",
        hbm_bytes=180 * GB,  # DGX/HGX B200: 1,440 GB over 8 GPUs
        hbm_bytes_per_s=8_000 * GB,  # DGX B200: 64 TB/s over 8 GPUs
        bf16_flops=2_250 * TB,  # HGX B200: 4.5 PFLOPS per GPU with sparsity
        link_bytes_per_s=900 * GB,  # NVLink 5: 1.8 TB/s both directions
        nic_bytes_per_s=_NIC_400G,
        gpus_per_node=8,
        source="NVIDIA DGX B200 datasheet and HGX B200 specifications (8-GPU figures divided by 8)",
    ),
    "mi300x": Accelerator(
        "AMD Instinct MI300X 192GB",
        hbm_bytes=192 * GB,
        hbm_bytes_per_s=5_300 * GB,
        bf16_flops=1_307 * TB,  # 1,307.4 TFLOPS dense; 2,614.9 with sparsity
        link_bytes_per_s=448 * GB,  # Infinity Fabric: 7 links × 128 GB/s both directions = 896 GB/s
        nic_bytes_per_s=_NIC_400G,
        gpus_per_node=8,
        source="AMD Instinct MI300X accelerator data sheet; 8-GPU OAM platform with one 400 Gb/s NIC per GPU",
    ),
}
