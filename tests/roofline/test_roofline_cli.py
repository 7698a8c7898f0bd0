"""`moec roofline` through the CLI: JSON, a user's accelerator file, a measured load, the plot, clean
errors, no torch."""

from __future__ import annotations

import json
import math

import pytest
from click.testing import CliRunner

from moec.cli import cli
from moec.plan.accelerators import ACCELERATORS


def run(*args: str):
    return CliRunner().invoke(cli, ["roofline", *args])


GPU_FILE = """\
accelerators:
  x1:
    name: Acme X1
    hbm_bytes: 96e9
    hbm_bytes_per_s: 4.0e12
    peak_flops: {bf16: 1.0e15, fp8: null}
    source: Acme X1 datasheet
"""


def test_json_states_the_step_the_crossovers_and_the_curve():
    r = run("mixtral-8x7b", "--batch", "64", "--max-batch", "8", "--format", "json")
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)
    assert d["schema"] == "moec.roofline/1" and d["workload"]["batch"] == 64
    names = [c["name"] for c in d["components"]]
    assert names == ["embedding", "attention", "attention_scores", "router", "routed_experts", "lm_head"]
    assert [p["batch"] for p in d["tokens_per_s_by_batch"]] == [1, 2, 4, 8]
    assert d["tokens_per_s"] == pytest.approx(64 / d["time_per_output_token_s"])
    # attention projections: 2 FLOPs per weight per token, each weight read once in 2 bytes: intensity = b,
    # so compute-bound from the first whole batch at the H100's ridge (peak / bandwidth, 295.2 FLOP/B)
    attention = d["components"][1]
    ridge = ACCELERATORS["h100"].peak_flops["bf16"] / ACCELERATORS["h100"].hbm_bytes_per_s
    assert attention["intensity"] == pytest.approx(64)
    assert attention["compute_bound_from_batch"] == math.ceil(ridge) == 296


def test_every_table_line_fits_in_80_columns():
    r = run("deepseek-v3", "--batch", "256", "--tp", "8", "--ep", "8", "--gpu", "h200")
    assert r.exit_code == 0, r.output
    assert max(len(line) for line in r.output.splitlines()) <= 80


def test_a_users_accelerator_file_adds_a_gpu(tmp_path):
    f = tmp_path / "gpus.yaml"
    f.write_text(GPU_FILE)
    r = run("mixtral-8x7b", "--gpu", "x1", "--gpu-file", str(f), "--format", "json")
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)
    assert d["accelerator"]["name"] == "Acme X1" and d["ridge_flops_per_byte"] == 250
    refused = run("mixtral-8x7b", "--gpu", "x1", "--gpu-file", str(f), "--dtype", "fp8")
    assert refused.exit_code == 2 and "x1 (Acme X1) has no fp8 tensor-core peak" in refused.output


def test_a_bad_accelerator_file_gives_one_located_error_per_problem(tmp_path):
    f = tmp_path / "gpus.yaml"
    f.write_text(GPU_FILE.replace("4.0e12", "-1").replace("source: Acme X1 datasheet", "sorce: x"))
    r = run("mixtral-8x7b", "--gpu", "x1", "--gpu-file", str(f))
    assert r.exit_code == 2
    lines = [line for line in r.output.splitlines() if line.startswith("error:")]
    assert lines == [
        f"error: {f}:3:5 accelerators.x1: required field source is missing",
        f"error: {f}:5:22 accelerators.x1.hbm_bytes_per_s: -1: expected a number > 0 and at most 1e+21",
        f"error: {f}:7:5 accelerators.x1.sorce: unknown field; expected name, hbm_bytes, hbm_bytes_per_s, "
        "peak_flops, source, link_bytes_per_s, nic_bytes_per_s, gpus_per_node",
    ]


def test_a_measured_load_changes_the_experts_read(tmp_path):
    # textbook-moe: 8 layers of 8 experts, top-1; every token of the smoke-run went to two experts
    loads = [{"layer": i, "tokens_per_expert": [50, 50, 0, 0, 0, 0, 0, 0]} for i in range(8)]
    f = tmp_path / "smoke.json"
    f.write_text(json.dumps({"schema": "moec.smoke/1", "layers": loads}))
    r = run("textbook-moe", "--batch", "2", "--load", str(f), "--format", "json")
    assert r.exit_code == 0, r.output
    # p = (1/2, 1/2, 0, …): two tokens touch 2·(1 − (1/2)²) = 1.5 experts, uniform routing 8·(1 − (7/8)²)
    assert json.loads(r.stdout)["distinct_experts_per_moe_layer"] == pytest.approx(1.5)
    # a smoke-run at a reduced scale has fewer layers: refused, unless summed over them with --load-pool
    two = [
        {"layer": 0, "tokens_per_expert": [50, 50, 0, 0, 0, 0, 0, 0]},
        {"layer": 1, "tokens_per_expert": [0, 0, 50, 50, 0, 0, 0, 0]},
    ]
    f.write_text(json.dumps({"schema": "moec.smoke/1", "layers": two}))
    short = run("textbook-moe", "--load", str(f))
    assert short.exit_code == 2 and "histograms for layers [0, 1], but the model's MoE layers are" in short.output
    pool = run("textbook-moe", "--batch", "2", "--load", str(f), "--load-pool", "--format", "json")
    # summed: 4 experts of 8 at p = 1/4 each: 4·(1 − (3/4)²)
    assert json.loads(pool.stdout)["distinct_experts_per_moe_layer"] == pytest.approx(4 * (1 - 0.75**2))


def test_the_plot_is_a_png_and_existing_outputs_need_force(tmp_path):
    png = tmp_path / "roof.png"
    r = run("mixtral-8x7b", "--max-batch", "4", "--plot", str(png), "-o", str(tmp_path / "r.md"), "--format", "md")
    assert r.exit_code == 0, r.output
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "r.md").read_text().startswith("<!-- moec.roofline/1 -->")
    again = run("mixtral-8x7b", "--plot", str(png))
    assert again.exit_code == 2 and f"{png}: exists; pass --force to overwrite it" in again.output


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (("--gpu", "tpu9"), "--gpu tpu9: unknown accelerator; choose from a100, h100"),
        (("--tp", "3"), "--tp: n_heads = 32 does not divide by tp = 3"),
        (("--gpu", "a100", "--dtype", "fp8"), "a100 (NVIDIA A100 SXM4 80GB) has no fp8 tensor-core peak"),
        (("--plot", "roof.svg"), "the plot is a PNG"),
    ],
)
def test_bad_options_are_one_clear_error(args, words):
    r = run("mixtral-8x7b", *args)
    assert r.exit_code == 2 and words in r.output and "Traceback" not in r.output


def test_each_problem_of_a_load_file_is_one_error(tmp_path):
    layers = [
        {"layer": 0, "tokens_per_expert": [50, 50, 0, 0, 0, 0, 0, 0]},
        {"layer": 0, "tokens_per_expert": [0, 0, 50, 50, 0, 0, 0, 0]},  # would replace the first unseen
        {"layer": 1, "tokens_per_expert": [0] * 8},
        {"layer": -1, "tokens_per_expert": [1] * 8},
        {"layer": 2, "tokens_per_expert": [1, 2.5]},
    ]
    f = tmp_path / "smoke.json"
    f.write_text(json.dumps({"schema": "moec.smoke/1", "layers": layers}))
    r = run("textbook-moe", "--load", str(f))
    assert r.exit_code == 2 and "Traceback" not in r.output
    assert [line for line in r.output.splitlines() if line.startswith("error:")] == [
        f"error: {f} layers[1].layer: layer 0 is given twice",
        f"error: {f} layers[2].tokens_per_expert: every count is 0",
        f"error: {f} layers[3].layer: expected a layer index",
        f"error: {f} layers[4].tokens_per_expert: expected a list of token counts",
    ]
