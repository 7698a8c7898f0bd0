"""smoke-run's per-step record: its arithmetic against hand-derived values, the JSONL and PNGs of --log and
--plot through the CLI against the run's own whole-run totals and the spec's shape, the refusals, and the
trainable / frozen counts against the built model."""

from __future__ import annotations

import json
import math
import os
import re

import pytest
import torch
from click.testing import CliRunner

from moec.cli import cli
from moec.smoke.metrics import LayerStep, StepRecord, dynamics, load_entropy, max_mean
from tests.conftest import SPECS

TINY = ["--device", "cpu", "--steps", "4", "--batch", "2", "--seq", "16"]


@pytest.mark.parametrize(
    "load, entropy, ratio",
    [
        ([4, 0, 0, 0], 0.0, 4.0),
        ([1, 1, 1, 1], math.log(4), 1.0),
        ([2, 1, 1, 0], -(0.5 * math.log(0.5) + 2 * 0.25 * math.log(0.25)), 2.0),
        ([0, 0], 0.0, 0.0),
    ],
)
def test_load_entropy_and_max_mean_by_hand(load: list[int], entropy: float, ratio: float):
    assert load_entropy(load) == pytest.approx(entropy)
    assert max_mean(load) == pytest.approx(ratio)


def test_dynamics_pool_the_last_window_and_judge_collapse():
    """8 steps: the window is 2 (a quarter). Layer 3 is even; layer 5 puts every slot on expert 0 in the last
    2 steps (collapsed); layer 7 alternates between two experts, so each step alone has entropy 0 but the
    window's summed load [8, 8, 0, 0] has H/ln E = ln 2 / ln 4 = 0.5, not below the threshold."""
    even, one = [2, 2, 2, 2], [8, 0, 0, 0]
    steps = [
        StepRecord(
            i,
            1.0,
            0.0,
            [
                LayerStep(even, 0, 1.0, 0.5, None),
                LayerStep(even if i < 6 else one, 8, 1.0, 0.5 + i, 0.1 * i),
                LayerStep([8, 0, 0, 0] if i % 2 else [0, 8, 0, 0], 0, 1.0, 0.5, None),
            ],
        )
        for i in range(8)
    ]
    d = dynamics(steps, [3, 5, 7])
    assert d.window == 2 and d.collapsed == [5]
    assert d.layers[0].entropy_norm == pytest.approx(1.0) and d.layers[1].entropy_norm == 0.0
    assert d.layers[1].max_mean == 4.0 and d.layers[1].dropped_fraction == pytest.approx(16 / 32)
    assert d.layers[1].router_z == pytest.approx((6.5 + 7.5) / 2) and d.layers[1].bias_drift == pytest.approx(0.7)
    assert d.layers[2].entropy_norm == pytest.approx(0.5) and d.layers[0].bias_drift is None


def smoke(*args: str) -> tuple[int, str, str]:
    r = CliRunner().invoke(cli, ["smoke-run", *args])
    return r.exit_code, r.stdout, r.stderr


def test_log_and_plot_write_jsonl_and_pngs(tmp_path, one_torch_thread):
    """The acceptance command at a small size: every step's loads plus drops are batch × seq × top-k, the
    steps add up to the whole-run loads of --format json, and the PNGs are PNGs."""
    out = tmp_path / "out"
    code, stdout, stderr = smoke(
        str(SPECS / "textbook-moe.yaml"), *TINY, "--format", "json", "--log", str(out), "--plot", str(out)
    )
    assert code in (0, 1), stdout + stderr  # 4 steps may be too few for the loss to fall: written either way
    report = json.loads(stdout)
    lines = (out / "steps.jsonl").read_text().splitlines()
    header, steps = json.loads(lines[0]), [json.loads(line) for line in lines[1:]]
    assert header["schema"] == "moec.smoke.steps/1" and header["n_experts"] == [8, 8]  # textbook-moe: 8 experts
    assert [s["step"] for s in steps] == [0, 1, 2, 3]
    slots = 2 * 16 * 1  # batch × seq × top-1
    for s in steps:
        for layer in s["layers"]:
            assert sum(layer["load"]) == slots - layer["dropped"] and layer["dropped"] == 0  # dropless
    for j, layer in enumerate(report["layers"]):
        summed = [sum(s["layers"][j]["load"][e] for s in steps) for e in range(8)]
        assert summed == layer["tokens_per_expert"]
    for name in ("loss.png", "expert-load.png", "balance.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert report["dynamics"]["collapse_entropy"] == 0.5 and "params_trainable" in report


def test_a_run_without_moe_layers_plots_its_loss_alone(tmp_path, one_torch_thread):
    """textbook-dense has no router: the load and balance figures would be empty axes, so they are not drawn."""
    code, stdout, stderr = smoke(str(SPECS / "textbook-dense.yaml"), *TINY, "--plot", str(tmp_path))
    assert code in (0, 1), stdout + stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["loss.png"]
    assert "no MoE layers: expert-load.png and balance.png not drawn" in stderr


def test_bias_drift_follows_the_sign_rule(tmp_path, one_torch_thread):
    """Aux-loss-free balancing (DeepSeek-V3, arXiv 2412.19437, section 2.1.2) moves every selection bias by ±rate
    (0 for an expert exactly at the mean) once per step, so after step s the largest move from the start is a
    whole multiple of the rate, at most s + 1 of them, and exactly one after the first step (32 top-1 slots
    over 8 experts are never all at the mean of 4 here)."""
    rate = 0.001
    sets = ["--set", "moe.router.selection_bias=true", "--set", f"moe.balance.bias_update_rate={rate}"]
    code, stdout, stderr = smoke(str(SPECS / "textbook-moe.yaml"), *TINY, *sets, "--log", str(tmp_path))
    assert code in (0, 1), stdout + stderr
    steps = [json.loads(line) for line in (tmp_path / "steps.jsonl").read_text().splitlines()[1:]]
    for s in steps:
        for layer in s["layers"]:
            moves = layer["bias_drift"] / rate
            assert abs(moves - round(moves)) < 1e-4 and 0 <= round(moves) <= s["step"] + 1, (s["step"], moves)
    assert [round(layer["bias_drift"] / rate) for layer in steps[0]["layers"]] == [1, 1]


def test_capacity_drops_are_logged_per_step(tmp_path, one_torch_thread):
    """switch-base-8 (top-1, capacity factor 1.25): per step, kept + dropped = the slots, and no expert keeps more
    than its capacity ceil(1.25 · T · k / E)."""
    code, stdout, stderr = smoke(str(SPECS / "switch-base-8.yaml"), *TINY, "--log", str(tmp_path))
    assert code in (0, 1), stdout + stderr
    steps = [json.loads(line) for line in (tmp_path / "steps.jsonl").read_text().splitlines()[1:]]
    cap = math.ceil(1.25 * 2 * 16 * 1 / 8)
    for s in steps:
        for layer in s["layers"]:
            assert sum(layer["load"]) + layer["dropped"] == 2 * 16
            assert max(layer["load"]) <= cap
            assert layer["dropped_fraction"] == pytest.approx(layer["dropped"] / 32)
    assert "dropped routing slots" in stdout and "% (" in stdout  # a share with its count


def test_existing_files_are_refused_before_training(tmp_path):
    (tmp_path / "steps.jsonl").write_text("mine\n")
    code, stdout, stderr = smoke(str(SPECS / "textbook-moe.yaml"), *TINY, "--log", str(tmp_path))
    assert code == 2 and "steps.jsonl: exists; pass --force" in stdout + stderr
    assert "step " not in stderr  # no training started
    assert (tmp_path / "steps.jsonl").read_text() == "mine\n"
    afile = tmp_path / "afile"
    afile.write_text("")
    code, stdout, stderr = smoke(str(SPECS / "textbook-moe.yaml"), *TINY, "--plot", str(afile))
    assert code == 2 and "is not a folder" in stdout + stderr
    for option in ("--log", "--plot"):  # "" would have been the current folder, written into unasked
        code, stdout, stderr = smoke(str(SPECS / "textbook-moe.yaml"), *TINY, option, "")
        assert code == 2 and f"{option}: an empty folder name" in stdout + stderr and "step " not in stderr


def test_plot_without_matplotlib_names_the_package(tmp_path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "matplotlib" else real(name, *a))
    code, stdout, stderr = smoke(str(SPECS / "textbook-moe.yaml"), *TINY, "--plot", str(tmp_path / "p"))
    assert code == 2 and "needs matplotlib" in stdout + stderr and "Traceback" not in stdout + stderr


def test_compare_refuses_a_spec_without_moe_layers():
    """Every layer dense: there is no routing to compare (its table would read max/mean 0.00, 0/0 starved)."""
    spec = str(SPECS / "textbook-moe.yaml")
    code, stdout, stderr = smoke(spec, *TINY, "--set", "layers.default.ffn=dense", "--compare", "top1")
    assert code == 2 and "--compare top1: textbook-moe has no MoE layer" in stdout + stderr
    assert "step " not in stderr  # refused before any training


def test_a_linked_tensorboard_folder_is_refused_before_training(tmp_path, monkeypatch):
    """TensorBoard's writer creates its files itself, outside moec/output_files.py: with tensorboard installed,
    DIR/tensorboard is checked like DIR before the run (a link is neither followed nor replaced)."""
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: real("json") if name == "tensorboard" else
                        real(name, *a))  # fmt: skip
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (tmp_path / "log").mkdir()
    (tmp_path / "log" / "tensorboard").symlink_to(elsewhere)
    code, stdout, stderr = smoke(str(SPECS / "textbook-moe.yaml"), *TINY, "--log", str(tmp_path / "log"))
    assert code == 2 and "tensorboard: is a symbolic link" in stdout + stderr, stdout + stderr
    assert "step " not in stderr and list(elsewhere.iterdir()) == []


def test_threads_stop_at_the_machines_cores():
    """--threads 4096 was a segfault (exit 139) in torch's training threads."""
    code, stdout, stderr = smoke(str(SPECS / "textbook-moe.yaml"), *TINY, "--threads", str((os.cpu_count() or 1) + 1))
    assert code == 2 and "is not in the range 1<=x<=" in stdout + stderr


def test_log_is_refused_with_several_processes(tmp_path):
    code, stdout, stderr = smoke(str(SPECS / "textbook-moe.yaml"), "--nproc", "2", "--log", str(tmp_path))
    assert code == 2 and "--log and --plot" in stdout + stderr


def test_lora_run_shows_trainable_and_frozen_counts_of_the_built_model(one_torch_thread):
    from moec.smoke.run import SmokeConfig, smoke_run
    from moec.spec import load_model

    seen: list[torch.nn.Module] = []
    cfg = SmokeConfig(device="cpu", steps=2, batch=1, seq=8)
    r = smoke_run(load_model(str(SPECS / "lora-moe.yaml")), cfg, progress=False, tamper=seen.append)
    params = list(seen[0].parameters())
    assert r.params_trainable == sum(p.numel() for p in params if p.requires_grad)
    assert r.params_frozen == sum(p.numel() for p in params if not p.requires_grad) > 0


def test_threads_and_plain_progress(one_torch_thread):
    code, stdout, stderr = smoke(str(SPECS / "textbook-moe.yaml"), *TINY, "--threads", "1")
    assert code in (0, 1), stdout + stderr
    assert "(1 thread)" in stdout
    assert "step 4/4" in stderr and "\x1b[" not in stderr  # not a terminal: plain lines, no cursor codes
    first, last = (line for line in stderr.splitlines() if line.startswith(("step 1/", "step 4/")))
    assert first.endswith("tok/s after warm-up")  # step 1 is untimed: no rate, not "0 tok/s"
    assert re.search(r"  [1-9][\d,]* tok/s$", last), last


def pooled_entropy(steps: list[dict], window: int) -> list[float]:
    """H/ln E of each layer's load summed over the last ``window`` steps, from the JSONL alone."""
    out = []
    for j in range(len(steps[0]["layers"])):
        load = [sum(col) for col in zip(*(s["layers"][j]["load"] for s in steps[-window:]), strict=True)]
        total = sum(load)
        out.append(-sum(n / total * math.log(n / total) for n in load if n) / math.log(len(load)))
    return out


@pytest.mark.parametrize("coeff, collapses", [("0", True), ("1", False)])
def test_balancing_off_collapses_and_on_does_not(coeff: str, collapses: bool, tmp_path, one_torch_thread):
    """textbook-moe at a high learning rate (0.05, 48 steps of 4 × 16 tokens, seed 0, one thread): with its
    load-balance loss off the routing collapses (measured: H/ln E 0.47 and 0.13 over the last 5 steps); with
    the loss at coefficient 1 it does not (0.97 and 0.93). The threshold is 0.5; the margins asked here are
    0.1 either side of it, judged from the JSONL, independently of the report. (Seeds 1, 2, 3 gave 0.21, 0.41
    and 0.54 off, 0.92, 0.88 and 0.95 on: collapse is likely without balancing, not certain; docs/smoke-run.md.)"""
    args = ["--device", "cpu", "--steps", "48", "--batch", "4", "--seq", "16", "--lr", "0.05", "--threads", "1"]
    sets = ["--set", f"moe.balance.load_balance_coeff={coeff}", "--log", str(tmp_path)]
    code, stdout, stderr = smoke(str(SPECS / "textbook-moe.yaml"), *args, *sets)
    assert code in (0, 1), stdout + stderr
    steps = [json.loads(line) for line in (tmp_path / "steps.jsonl").read_text().splitlines()[1:]]
    entropy = pooled_entropy(steps, 5)  # a quarter of 48 steps, at most 5
    assert ("warning: routing collapsed" in stdout) is collapses, stdout
    if collapses:
        assert min(entropy) < 0.4, entropy
        assert "aux loss first → last" in stdout and "off (coefficients 0)" in stdout
    else:
        assert min(entropy) > 0.6, entropy
