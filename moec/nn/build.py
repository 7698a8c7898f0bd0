"""`build_model`: a spec (path, shipped name or resolved plan) → a :class:`MoecModel`.

Weights are only allocated when they fit. The size comes from the analyzer's arithmetic (no tensor is
created to find out): with no device given, the model is built on the CPU when its weights take at most
half the available memory and on ``meta`` otherwise; when a real device is asked for explicitly and the
weights would not fit, :class:`DoesNotFitError` is raised before anything is allocated.

Initialisation is seeded and reproducible: the same seed, device and dtype give identical weights,
and the caller's global RNG state is left as it was.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from moec.analyze import analyze
from moec.nn.model import MoecModel
from moec.spec import ResolvedModel, load_model

AUTO_FRACTION = 0.5  # "comfortably": leave room for activations, gradients and the rest of the process
EXPLICIT_FRACTION = 0.9  # an explicit request is refused only when it surely cannot fit


class DoesNotFitError(ValueError):
    """The weights asked for do not fit in the memory of the requested device."""


def weight_bytes(plan: ResolvedModel, dtype: torch.dtype) -> int:
    """Bytes of every parameter (main model and MTP modules) in ``dtype``."""
    a = analyze(plan)
    params = a.params.total + (a.mtp.params if a.mtp else 0)
    return params * dtype.itemsize


def available_bytes(device: torch.device) -> int | None:
    """Free memory on ``device`` (None where it cannot be known, e.g. MPS)."""
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {device} was asked for, but torch sees no CUDA device")
        return torch.cuda.mem_get_info(device)[0]
    if device.type == "cpu":
        return _cpu_available()
    return None


def _cpu_available() -> int | None:
    free = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                free = int(line.split()[1]) * 1024
    except OSError:
        try:
            free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            return None
    # a container's cgroup (v2) limit is lower than what /proc/meminfo reports for the host
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        used = int(Path("/sys/fs/cgroup/memory.current").read_text())
        if limit != "max":
            room = max(int(limit) - used, 0)
            free = room if free is None else min(free, room)
    except (OSError, ValueError):
        pass
    return free


def build_model(
    spec_or_plan: ResolvedModel | str | os.PathLike[str],
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    backend: str = "auto",
    seed: int | None = None,
) -> MoecModel:
    """Build the model a spec describes.

    device: None = the CPU if the weights fit comfortably, else ``meta``; "meta" = shapes only, instant.
    dtype: parameter dtype (default: torch's default dtype). backend: MoE kernel backend (moec.kernels).
    seed: seeds the initialisation (same seed, device and dtype → identical weights).
    """
    plan = spec_or_plan if isinstance(spec_or_plan, ResolvedModel) else load_model(str(spec_or_plan))
    dtype = dtype or torch.get_default_dtype()
    if device is None:
        free = _cpu_available()
        fits = free is None or weight_bytes(plan, dtype) <= AUTO_FRACTION * free
        device = "cpu" if fits else "meta"
    device = torch.device(device)
    if device.type == "meta":
        return MoecModel(plan, backend=backend, device=device, dtype=dtype)

    need, free = weight_bytes(plan, dtype), available_bytes(device)
    if free is not None and need > EXPLICIT_FRACTION * free:
        raise DoesNotFitError(
            f"{plan.name}: its weights need {need / 2**30:,.1f} GiB in {str(dtype).removeprefix('torch.')}, "
            f"but {device} has {free / 2**30:,.1f} GiB free; build on device='meta', use a smaller dtype, "
            f"or shrink the spec (moec smoke-run fits a scaled-down copy)"
        )
    rng_devices = (
        [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else []
    )
    with torch.random.fork_rng(devices=rng_devices, enabled=seed is not None, device_type="cuda"):
        if seed is not None:
            torch.manual_seed(seed)
        return MoecModel(plan, backend=backend, device=device, dtype=dtype)
