"""Commands that run models (smoke-run, bench, analyze --verify, build --weights) check the memory they will
need before they allocate, and every failure around them is one ``error:`` line with exit 2: a run too big
for the free memory, a device that does not exist, an allocation that fails, a full disk.

The estimates are held against what a real small run allocates: the growth of the process's peak resident
set (VmHWM after resetting it through /proc/self/clear_refs), which must never exceed the estimate and must
not be dwarfed by it (at most 20×). ``MOEC_MEMORY_LIMIT`` caps the free memory the checks see, so the
refusals are tried without a huge machine.
"""

from __future__ import annotations

import ctypes
import errno
import gc
import os
from pathlib import Path
from unittest import mock

import click
import pytest
import torch
from click.testing import CliRunner

from moec.cli import cli
from moec.spec import load_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")

GIB = 1 << 30
MIB = 1 << 20
MOE_WITH_SINKS = """
name: sinks-window
model: {vocab_size: 256, d_model: 64, n_layers: 2, max_seq_len: 1024}
attention: {n_heads: 4, n_kv_heads: 2, sinks: true, window: 64}
moe: {n_experts: 4, d_ff: 128, router: {top_k: 2}}
layers: {default: {ffn: moe}}
"""
SMALL = """
name: small-build
model: {vocab_size: 256, d_model: 64, n_layers: 2, max_seq_len: 64}
attention: {n_heads: 4}
moe: {n_experts: 4, d_ff: 128, router: {top_k: 2}}
layers: {default: {ffn: moe}}
"""
TOO_MANY_EXPERTS = """
name: too-many-experts
model: {vocab_size: 256, d_model: 64, n_layers: 2, max_seq_len: 64}
attention: {n_heads: 4}
moe: {n_experts: 65536, d_ff: 2097152, router: {top_k: 2}}
layers: {default: {ffn: moe}}
"""


def invoke(*args: object, limit: int | None = None):
    """The command in this process; with ``limit``, MOEC_MEMORY_LIMIT set to it and the machine's free memory seen
    as 1 TiB, so that the limit is what the checks see (and name) however loaded the machine running the tests is."""
    argv = [str(a) for a in args]
    if limit is None:
        return CliRunner().invoke(cli, argv)
    with mock.patch("moec.nn.build._cpu_available", return_value=1 << 40):
        return CliRunner().invoke(cli, argv, env={"MOEC_MEMORY_LIMIT": str(limit)})


def refusal(result) -> str:
    """The one ``error:`` line of a clean refusal (exit 2, no traceback)."""
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, result.output
    return lines[0]


def _status_bytes(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key):
            return int(line.split()[1]) * 1024
    raise KeyError(key)


class PeakRSS:
    """The growth of this process's peak resident set over a block. Freed heap is handed back to the system
    first (malloc_trim), so what the block allocates shows even where earlier tests left holes."""

    def __enter__(self) -> PeakRSS:
        gc.collect()
        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)
            Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current VmRSS (Linux)
        except OSError as e:
            pytest.skip(f"peak RSS cannot be reset here: {e}")
        self.base = _status_bytes("VmRSS:")
        return self

    def __exit__(self, *exc: object) -> None:
        self.growth = _status_bytes("VmHWM:") - self.base


def _plan(source: str, write_spec):
    return load_model(str(write_spec(source)) if "\n" in source else source)


# ---- the estimates against real runs -------------------------------------------------------------------


@pytest.mark.parametrize(
    "source, batch, seq",
    [
        pytest.param("textbook-moe", 16, 256, id="top-1 MoE"),
        pytest.param("deepseek-v3", 4, 256, id="MLA, MTP, shared experts, 256 experts top-8"),
        pytest.param("lora-moe", 16, 256, id="LoRA experts over a frozen FFN"),
        pytest.param(MOE_WITH_SINKS, 8, 256, id="attention sinks and a window: explicit scores"),
    ],
)
def test_smoke_run_estimate_bounds_its_measured_peak(source, batch, seq, write_spec):
    from moec.smoke.run import SmokeConfig, smoke_run

    plan = _plan(source, write_spec)
    smoke_run(plan, SmokeConfig(device="cpu", steps=2, batch=1, seq=8), progress=False)  # first-call costs
    with PeakRSS() as peak:
        r = smoke_run(plan, SmokeConfig(device="cpu", steps=2, batch=batch, seq=seq), progress=False)
    assert r.memory_estimate_bytes is not None
    assert peak.growth <= r.memory_estimate_bytes <= 20 * peak.growth, (
        peak.growth / MIB,
        r.memory_estimate_bytes / MIB,
    )


def test_training_state_is_counted_from_the_parameters_torch_builds(write_spec):
    # weights, gradients and AdamW state in fp32: 4 bytes per parameter (MTP included), counted on meta
    from moec.nn import build_model
    from moec.smoke.scale import fit

    fitted = fit(load_model("deepseek-v3"), scale="tiny", budget_bytes=None, batch=2, seq=16, dtype="fp32")
    model = build_model(fitted.plan, device="meta")
    n = sum(p.numel() for p in model.parameters())  # every parameter trains in a smoke-run
    parts = dict(fitted.memory.parts)
    assert parts["weights"] == parts["gradients"] == 4 * n
    assert parts["optimizer"] >= 2 * 4 * n  # at least AdamW's two moments


@pytest.mark.parametrize(
    "backends, backward, tokens",
    [
        pytest.param("all_experts", True, 2048, id="all-experts peer, fwd+bwd"),
        pytest.param("naive,reference,hf_loop,ideal_dense", True, 4096, id="sorted-rows peers, fwd+bwd"),
        pytest.param("all_experts,reference", False, 4096, id="forward only"),
    ],
)
def test_bench_estimate_bounds_its_measured_peak(backends, backward, tokens, monkeypatch):
    import moec.bench.moe_bench as moe_bench

    def options(t: int, check: int) -> moe_bench.BenchOptions:
        names = tuple(backends.split(","))
        return moe_bench.BenchOptions(
            tokens=(t,), backends=names, backward=backward, repeats=1, check_tokens=check, threads=1
        )

    shape = moe_bench.BenchShape(d_model=128, d_ff=256, n_experts=8, top_k=2)
    moe_bench.run_bench(shape, options(64, 16))  # first-call costs
    checked = _record_checks(monkeypatch, moe_bench)
    with PeakRSS() as peak:
        moe_bench.run_bench(shape, options(tokens, 256))
    assert peak.growth <= checked[0] <= 20 * peak.growth, (peak.growth / MIB, checked[0] / MIB)


def _record_checks(monkeypatch, module) -> list[int]:
    """The estimates ``module`` checks through require_memory, in order (the checks still run)."""
    checked: list[int] = []
    real = module.require_memory

    def recording(need, device, **kw):
        checked.append(need.total)
        real(need, device, **kw)

    monkeypatch.setattr(module, "require_memory", recording)
    return checked


def test_verify_estimate_bounds_its_measured_peak(monkeypatch):
    import moec.nn.build as nn_build
    from moec.verify import verify

    plan = load_model("qwen3-30b-a3b")
    verify(plan, seq=8, batch=1)  # first-call costs
    checked = _record_checks(monkeypatch, nn_build)  # verify imports require_memory when it runs
    with PeakRSS() as peak:
        verify(plan, seq=256, batch=8)
    assert peak.growth <= checked[0] <= 20 * peak.growth, (peak.growth / MIB, checked[0] / MIB)


# ---- refusals before anything is allocated ---------------------------------------------------------------


def test_a_huge_in_range_batch_is_refused_with_the_estimate_and_the_limit():
    with PeakRSS() as peak:
        line = refusal(invoke("smoke-run", "textbook-moe", "--batch", 65536, "--seq", 256, limit=16 * GIB))
    assert line.startswith("error: smoke-run of textbook-moe-scaled needs about ")
    for words in (
        "in fp32 (weights ",
        "optimizer ",
        "activations ",
        "at batch 65536 × seq 256",
        "cpu has 16.0 GiB free",
    ):
        assert words in line, line
    assert line.endswith("; lower --batch or --seq")
    assert peak.growth < 64 * MIB  # refused from arithmetic: nothing of the 650 GiB was allocated


@pytest.mark.parametrize(
    "scale, advice",
    [("tiny", "lower --batch or --seq"), ("auto", "lower --batch or --seq"), ("full", "use --scale auto")],
)
def test_every_scale_is_checked_before_the_run(scale, advice):
    # 48 MiB is below even the runtime allowance: nothing fits, whatever the scale chooses
    line = refusal(invoke("smoke-run", "textbook-moe", "--scale", scale, "--steps", 2, limit=48 * MIB))
    assert "cpu has 0.0 GiB free" in line and line.endswith(advice), line


def test_a_long_sequence_is_refused():
    line = refusal(invoke("smoke-run", "textbook-moe", "--batch", 1, "--seq", 1 << 20, limit=8 * GIB))
    assert "at batch 1 × seq 1048576" in line and "cpu has 8.0 GiB free" in line, line


def test_the_limit_is_the_line_between_running_and_refusing(write_spec):
    args = ("smoke-run", "textbook-moe", "--steps", 2, "--batch", 1, "--seq", 8, "--format", "json")
    import json

    first = invoke(*args)
    assert first.exit_code == 0, first.output
    need = json.loads(first.output[first.output.index("{") :])["memory_estimate_bytes"]
    assert invoke(*args, limit=need).exit_code == 0
    refusal(invoke(*args, limit=need - 1))


@pytest.mark.parametrize(
    "args, words",
    [
        pytest.param(["--tokens", 10**8], "at 100,000,000 tokens", id="tokens"),
        pytest.param(["--tokens", 1 << 20, "--backward"], "at 1,048,576 tokens with backward", id="backward"),
        pytest.param(
            ["--experts", 64, "--d-model", 256, "--d-ff", 512, "--tokens", 65536, "--backends", "all_experts"],
            "at 65,536 tokens",
            id="all-experts peer",
        ),
        pytest.param(
            ["--tokens", 1 << 22, "--backends", "naive,reference,hf_loop", "--dtype", "bf16"], "in bf16", id="bf16"
        ),
    ],
)
def test_bench_refuses_what_does_not_fit(args, words):
    line = refusal(invoke("bench", *args, limit=4 * GIB))
    assert line.startswith("error: bench needs about ") and words in line and "cpu has 4.0 GiB free" in line, line


def test_verify_refuses_a_valid_spec_whose_scaled_copy_is_too_big(write_spec):
    spec = write_spec(TOO_MANY_EXPERTS)
    with PeakRSS() as peak:
        line = refusal(invoke("analyze", "--verify", spec, limit=16 * GIB))
    assert "analyze --verify of too-many-experts builds too-many-experts-scaled, which needs about" in line, line
    assert "cpu has 16.0 GiB free" in line and "every expert" in line, line
    assert peak.growth < 64 * MIB


def test_build_weights_that_do_not_fit_are_refused_and_nothing_is_written(write_spec, tmp_path):
    out = tmp_path / "out"
    line = refusal(invoke("build", write_spec(SMALL), "-o", out, "--weights", limit=1000))
    assert "small-build: its weights need about" in line and "in float32" in line, line
    assert "cpu has 0.0 GiB free" in line, line
    assert not out.exists()


def test_a_memory_limit_that_is_not_a_number_is_an_error():
    line = refusal(invoke("smoke-run", "textbook-moe", limit="lots"))  # type: ignore[arg-type]
    assert line == "error: MOEC_MEMORY_LIMIT='lots' is not a whole number of bytes"


# ---- devices ------------------------------------------------------------------------------------------------

BAD_DEVICES = ["garbage", "meta", "cuda:99"] + ([] if torch.cuda.is_available() else ["cuda"])


@pytest.mark.parametrize("command", [["smoke-run", "textbook-moe"], ["bench", "--tokens", 16]], ids=lambda c: c[0])
@pytest.mark.parametrize("device", BAD_DEVICES)
def test_a_device_that_does_not_exist_is_one_clean_error(command, device):
    line = refusal(invoke(*command, "--device", device))
    assert device in line, line


# ---- allocation failures and full disks -------------------------------------------------------------------

CPU_OOM = RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory: you tried 9 TB")
GPU_OOM = torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 80.00 GiB")
COMMANDS = {
    "smoke-run": ["smoke-run", "textbook-moe", "--steps", 2, "--batch", 1, "--seq", 8, "--format", "json"],
    "bench": [
        "bench",
        "--tokens",
        16,
        "--backends",
        "reference",
        "--repeats",
        1,
        "--check-tokens",
        0,
        "--format",
        "json",
    ],
    "analyze --verify": ["analyze", "--verify", "textbook-moe"],
}


def _raise(error: BaseException):
    def fail(*args: object, **kwargs: object):
        raise error

    return fail


@pytest.mark.parametrize("error", [CPU_OOM, GPU_OOM, MemoryError()], ids=["cpu", "cuda", "python"])
@pytest.mark.parametrize("name", [*COMMANDS, "build --weights"])
def test_an_allocation_failure_is_one_clean_error(name, error, monkeypatch, tmp_path, write_spec):
    import moec.bench.moe_bench as moe_bench
    import moec.nn

    monkeypatch.setattr(moec.nn, "build_model", _raise(error))  # smoke-run, verify and build import it late
    monkeypatch.setattr(moe_bench, "_make_weights", _raise(error))
    args = COMMANDS.get(name) or ["build", write_spec(SMALL), "-o", tmp_path / "out", "--weights"]
    assert "out of memory" in refusal(invoke(*args))
    assert not (tmp_path / "out").exists()


class _FullStdout:
    """``click`` as a command module sees it, with its standard output on a full disk."""

    def __getattr__(self, name: str) -> object:
        return getattr(click, name)

    @staticmethod
    def echo(
        message: object = None, file: object = None, nl: bool = True, err: bool = False, color: object = None
    ) -> None:
        if not err:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "<stdout>")
        click.echo(message, file=file, nl=nl, err=err, color=color)  # type: ignore[arg-type]


@pytest.mark.parametrize("name", list(COMMANDS))
def test_output_to_a_full_disk_is_one_clean_error(name, monkeypatch):
    import moec.commands.analyze
    import moec.commands.bench
    import moec.commands.smoke

    for module in (moec.commands.analyze, moec.commands.bench, moec.commands.smoke):
        monkeypatch.setattr(module, "click", _FullStdout())
    assert refusal(invoke(*COMMANDS[name])) == "error: <stdout>: No space left on device"


def test_weights_on_a_full_disk_are_one_clean_error_and_leave_nothing(monkeypatch, tmp_path, write_spec):
    import safetensors.torch

    def full(tensors: object, filename: str, metadata: object = None) -> None:
        Path(filename).write_bytes(b"partial")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), filename)

    monkeypatch.setattr(safetensors.torch, "save_file", full)
    spec = write_spec(SMALL)
    out = tmp_path / "out"
    line = refusal(invoke("build", spec, "-o", out, "--weights"))
    assert "No space left on device" in line, line
    assert sorted(p.name for p in tmp_path.iterdir()) == [spec.name]  # no output folder, no temporary one
