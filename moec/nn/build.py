"""`build_model`: a spec (path, shipped name, loaded spec, resolved plan or dict) → a :class:`MoecModel`.

Weights are only allocated when they fit. The size comes from the analyzer's arithmetic (no tensor is
created to find out): with no device given, the model is built on the CPU when its weights take at most
half the available memory and on ``meta`` otherwise; when a real device is asked for explicitly and the
weights would not fit, :class:`DoesNotFitError` is raised before anything is allocated.

Initialisation is seeded and reproducible: the same seed, device and dtype give identical weights,
and the caller's global RNG state is left as it was.

Every command that runs a model asks this module, before it allocates, how much memory is free
(:func:`available_bytes`: ``MemAvailable`` of /proc/meminfo and the cgroup's room on the CPU,
``torch.cuda.mem_get_info`` on a GPU) and refuses through :func:`require_memory` with its estimate,
the parts of it and the limit. ``MOEC_MEMORY_LIMIT=<bytes>`` in the environment caps the free memory
every check sees (it never raises it), so the refusals can be tried on any machine.
:func:`resolve_device` turns a ``--device`` string into a device that exists, or a clear error.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from moec.analyze import analyze
from moec.analyze.memory import DoesNotFitError, RunMemory, refuse_unless_fits
from moec.errors import CommandError
from moec.nn.encdec import EncoderDecoderModel
from moec.nn.model import MoecModel
from moec.spec import LoadedSpec, ResolvedModel, Spec, load_model, load_spec, resolve

AUTO_FRACTION = 0.5  # "comfortably": leave room for activations, gradients and the rest of the process
# moec.hf.weights' own weights check still reads this; build_model refuses through require_memory
MEMORY_LIMIT_ENV = "MOEC_MEMORY_LIMIT"

__all__ = [
    "DoesNotFitError",
    "SpecLike",
    "as_plan",
    "available_bytes",
    "build_model",
    "require_memory",
    "resolve_device",
    "weight_bytes",
    "weights_memory",
]


SpecLike = ResolvedModel | LoadedSpec | Spec | Mapping[str, Any] | str | os.PathLike[str]
DICT_SOURCE = "<dict>"  # the file name errors in a spec given as a dict are located in


def as_plan(spec: SpecLike) -> ResolvedModel:
    """The resolved model of a spec given in any form a user holds one: a path, a shipped spec name, a loaded
    spec (:func:`moec.load_spec`), a validated :class:`moec.spec.Spec`, a resolved plan, or a dict shaped like
    the YAML (its problems are located in the dict's JSON form, named ``<dict>``)."""
    if isinstance(spec, ResolvedModel):
        return spec
    if isinstance(spec, (LoadedSpec, Spec)):
        return resolve(spec)
    if isinstance(spec, Mapping):
        # JSON is YAML 1.2, so the dict goes through the same loader, checks and defaults as a file
        return resolve(load_spec(DICT_SOURCE, text=json.dumps(spec, indent=2, default=str)))
    if isinstance(spec, (str, os.PathLike)):
        return load_model(os.fspath(spec))
    raise TypeError(
        f"a spec is a path, a shipped spec name, a loaded spec, a resolved plan or a dict; got {type(spec).__name__}"
    )


def weight_bytes(plan: ResolvedModel, dtype: torch.dtype) -> int:
    """Bytes of every parameter (main model and MTP modules) in ``dtype``."""
    a = analyze(plan)
    params = a.params.total + (a.mtp.params if a.mtp else 0)
    return params * dtype.itemsize


def resolve_device(name: str) -> torch.device:
    """``auto`` (the GPU when torch sees one, else the CPU), ``cpu``, ``cuda`` or ``cuda:N`` → a device
    that exists here; anything else is a :class:`CommandError` naming what is available."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError, TypeError):
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        raise CommandError(f"unknown device {name!r}: moec runs on auto, cpu, cuda or cuda:N")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise CommandError(f"device {name} was asked for, but torch sees no CUDA device")
        n = torch.cuda.device_count()
        if device.index is not None and device.index >= n:
            raise CommandError(f"device {name} does not exist: torch sees {n} CUDA device(s), cuda:0 to cuda:{n - 1}")
    return device


def _memory_limit() -> int | None:
    text = os.environ.get(MEMORY_LIMIT_ENV, "").strip()
    if not text:
        return None
    try:
        limit = int(text.replace("_", ""))
    except ValueError:
        limit = -1
    if limit < 0:
        raise CommandError(f"{MEMORY_LIMIT_ENV}={text!r} is not a whole number of bytes")
    return limit


def available_bytes(device: torch.device) -> int | None:
    """Free memory on ``device``, capped by ``MOEC_MEMORY_LIMIT`` (None where it cannot be known, e.g. MPS)."""
    free = None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise CommandError(f"device {device} was asked for, but torch sees no CUDA device")
        free = torch.cuda.mem_get_info(device)[0]
    elif device.type == "cpu":
        free = _cpu_available()
    limit = _memory_limit()
    if limit is None:
        return free
    return limit if free is None else min(free, limit)


def require_memory(need: RunMemory, device: torch.device, *, lead: str, hint: str = "") -> None:
    """Refuse, before anything is allocated, a run whose upper estimate ``need`` exceeds the free memory of
    ``device``: :class:`DoesNotFitError` (a CommandError) ``"{lead} about X GiB in fp32 (parts) but cpu has
    Y GiB free{hint}"``."""
    refuse_unless_fits(need, available_bytes(device), lead=lead, where=str(device), hint=hint)


def weights_memory(plan: ResolvedModel, dtype: torch.dtype, *, serialized: bool = False) -> RunMemory:
    """Initialised weights, and with ``serialized`` the byte copy safetensors makes of every tensor while it
    writes them (``moec build --weights``)."""
    need = weight_bytes(plan, dtype)
    parts = (("weights", need), ("serialized copy", need if serialized else 0))
    return RunMemory(str(dtype).removeprefix("torch."), parts)


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
    spec_or_plan: SpecLike,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    backend: str = "auto",
    seed: int | None = None,
) -> MoecModel | EncoderDecoderModel:
    """Build the model a spec describes (in any form :func:`as_plan` takes).

    device: None = the CPU if the weights fit comfortably, else ``meta``; "meta" = shapes only, instant.
    dtype: parameter dtype (default: torch's default dtype). backend: MoE kernel backend (moec.kernels).
    seed: seeds the initialisation (same seed, device and dtype → identical weights).
    """
    plan = as_plan(spec_or_plan)
    dtype = dtype or torch.get_default_dtype()
    if device is None:
        free = available_bytes(torch.device("cpu"))
        fits = free is None or weight_bytes(plan, dtype) <= AUTO_FRACTION * free
        device = "cpu" if fits else "meta"
    device = torch.device(device)
    if device.type == "meta":
        return model_class(plan)(plan, backend=backend, device=device, dtype=dtype)

    require_memory(
        weights_memory(plan, dtype),
        device,
        lead=f"{plan.name}: its weights need",
        hint="; build on device='meta', use a smaller dtype, or shrink the spec (moec smoke-run fits a scaled-down copy)",
    )
    rng_devices = (
        [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else []
    )
    with torch.random.fork_rng(devices=rng_devices, enabled=seed is not None, device_type="cuda"):
        if seed is not None:
            torch.manual_seed(seed)
        return model_class(plan)(plan, backend=backend, device=device, dtype=dtype)


def model_class(plan: ResolvedModel) -> type[MoecModel] | type[EncoderDecoderModel]:
    """The module a plan builds into: an encoder-decoder model (moec.nn.encdec) or a decoder-only one."""
    return EncoderDecoderModel if plan.encoder else MoecModel
