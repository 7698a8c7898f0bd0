"""`moec smoke-run` on the CPU: it learns, reports balance, and catches a collapsed router."""

from __future__ import annotations

import json
import math

import pytest
import torch
from click.testing import CliRunner

from moec.cli import cli
from moec.smoke.run import SmokeConfig, smoke_run
from moec.spec import load_model
from tests.conftest import SPECS

FAST = SmokeConfig(device="cpu", steps=24, batch=4, seq=32, seed=0)


@pytest.mark.parametrize("name, top_k", [("mixtral-8x7b", 2), ("deepseek-v3", 8), ("switch-base-8", 1)])
def test_smoke_run_learns_on_cpu(name: str, top_k: int):
    r = smoke_run(load_model(str(SPECS / f"{name}.yaml")), FAST, progress=False)
    assert r.ok, r.failures
    assert r.loss_fell and r.loss_last < r.loss_first
    assert r.backend == "reference" and r.dtype == "fp32" and r.scale == "tiny"
    assert r.layers and all(sum(l.tokens_per_expert) > 0 for l in r.layers)
    assert r.numerics is not None and r.numerics.ok
    assert r.tokens_per_s > 0 and r.achieved_tflops > 0
    # every routing slot of every step is either kept by an expert or counted as dropped
    slots = r.steps * FAST.batch * FAST.seq * top_k
    for layer in r.layers:
        assert sum(layer.tokens_per_expert) + layer.dropped == slots
    if name == "switch-base-8":  # capacity 1.25: no expert ever holds more than ceil(1.25·T·k/E) per step
        cap = math.ceil(1.25 * FAST.batch * FAST.seq * top_k / 8)
        assert all(max(l.tokens_per_expert) <= r.steps * cap for l in r.layers)
    else:
        assert r.dropped_tokens == 0  # dropless


def collapse(model: torch.nn.Module) -> None:
    """All router logits equal and frozen: top-k ties pick the same k experts for every token."""
    from moec.nn.moe import MoE

    for m in model.modules():
        if isinstance(m, MoE):
            m.router.weight.data.zero_()
            m.router.weight.requires_grad_(False)


def test_a_collapsed_router_is_reported_as_imbalanced():
    plan = load_model(str(SPECS / "mixtral-8x7b.yaml"))
    r = smoke_run(plan, FAST, progress=False, tamper=collapse)
    assert r.imbalanced
    for layer in r.layers:
        assert len(layer.starved) == 8 - 2  # only the k chosen experts ever see a token
        assert layer.max_mean_ratio == pytest.approx(8 / 2)
    healthy = smoke_run(plan, FAST, progress=False)
    assert not healthy.imbalanced


def test_cli_json_has_every_field():
    r = CliRunner().invoke(
        cli,
        [
            "smoke-run",
            "textbook-moe",
            "--device",
            "cpu",
            "--steps",
            "12",
            "--batch",
            "2",
            "--seq",
            "16",
            "--format",
            "json",
        ],
    )
    assert r.exit_code == 0, r.output
    d = json.loads(r.output)
    for key in (
        "schema",
        "loss_first",
        "loss_last",
        "loss_fell",
        "aux_first",
        "aux_last",
        "layers",
        "imbalanced",
        "dropped_tokens",
        "tokens_per_s",
        "achieved_tflops",
        "mfu",
        "peak_tflops",
        "peak_source",
        "peak_memory_bytes",
        "numerics",
        "changes",
        "ok",
    ):
        assert key in d, key
    assert d["layers"][0]["tokens_per_expert"] and "max_mean_ratio" in d["layers"][0]


def test_cli_refuses_bf16_on_cpu_and_triton_without_cuda():
    r = CliRunner().invoke(cli, ["smoke-run", "textbook-moe", "--device", "cpu", "--dtype", "bf16"])
    assert r.exit_code == 2 and "fp32" in r.output
    r = CliRunner().invoke(cli, ["smoke-run", "textbook-moe", "--device", "cpu", "--backend", "triton"])
    assert r.exit_code == 2 and "CUDA" in r.output
