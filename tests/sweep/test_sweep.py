"""`moec sweep` against independent figures: `moec analyze` and `moec roofline` on the same specs, a
brute-force Pareto check, hand-derived budget widths, and every skipped combination explained."""

from __future__ import annotations

import csv
import io
import json
import random

import pytest
from click.testing import CliRunner

from moec.cli import cli
from moec.sweep.pareto import pareto_front


def run(*args: str):
    return CliRunner().invoke(cli, list(args))


def sweep_json(*args: str) -> dict:
    r = run("sweep", *args, "--format", "json")
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)


GRID = ("--grid", "moe.n_experts=8,16", "--grid", "moe.router.top_k=1,2", "--grid", "moe.n_shared_experts=0,1")


def test_rows_equal_moec_analyze_and_moec_roofline_on_the_same_spec():
    d = sweep_json("mixtral-8x7b", *GRID, "--seq", "1024", "--batch", "8", "--gpu", "h200")
    assert d["kept"] == 8
    for row in d["rows"][::3]:  # a sample
        sets = [f"--set={path}={row[path]}" for path in d["grid"]]
        [a] = json.loads(run("analyze", "mixtral-8x7b", *sets, "--seq", "1024", "--format", "json").stdout)
        assert row["total_params"] == a["params"]["total"]
        assert row["active_params"] == a["params"]["active"]
        assert row["forward_flops"] == a["flops"]["forward"]
        assert row["kv_bytes_per_token"] == a["memory"]["kv_cache_bytes_per_token"]
        assert row["weights_bytes"] == a["memory"]["weights_bytes"]
        roof = run(
            "roofline",
            "mixtral-8x7b",
            *sets,
            "--seq",
            "1024",
            "--batch",
            "8",
            "--gpu",
            "h200",
            "--max-batch",
            "1",
            "--format",
            "json",
        )
        assert row["decode_tokens_per_s"] == json.loads(roof.stdout)["tokens_per_s"]


def brute_force_front(points: list[tuple[float, ...]]) -> list[int]:
    """On the frontier iff no other point is ≤ on every axis and < on one: every pair checked."""
    return [
        i for i, p in enumerate(points) if not any(all(q[a] <= p[a] for a in range(len(p))) and q != p for q in points)
    ]


@pytest.mark.parametrize("dims", [2, 3])
def test_the_frontier_equals_brute_force_on_random_points_with_ties(dims):
    rng = random.Random(dims)
    for _ in range(50):
        points = [tuple(float(rng.randint(0, 6)) for _ in range(dims)) for _ in range(rng.randint(1, 40))]
        assert pareto_front(points) == brute_force_front(points)


def test_the_marked_rows_are_the_brute_force_frontier():
    d = sweep_json(
        "mixtral-8x7b",
        *GRID,
        "--grid",
        "moe.granularity=1,2",
        "--objective",
        "total_params:min",
        "--objective",
        "decode_tokens_per_s:max",
        "--objective",
        "kv_bytes_per_token",
    )
    points = [(r["total_params"], -r["decode_tokens_per_s"], r["kv_bytes_per_token"]) for r in d["rows"]]
    assert [i for i, r in enumerate(d["rows"]) if r["pareto"]] == brute_force_front(points)
    assert [r["total_params"] for r in d["rows"]] == sorted(r["total_params"] for r in d["rows"])


def test_glam_study_holds_ffn_flops_by_halving_the_expert_width():
    # every layer dense (d 4096, GELU FFN 16384: 2 matrices, 4·d·F FLOPs a token) against every layer 64E
    # top-2: two experts of width f cost 2·4·d·f, equal when f = 16384 / 2
    d = sweep_json(
        "glam-style",
        "--set",
        "layers.overrides=[]",
        "--grid",
        "layers.default.ffn=dense,moe",
        "--grid",
        "moe.n_experts=8,64",
        "--budget",
        "ffn_flops=base",
    )
    assert d["budget"] == {"metric": "ffn_flops", "value": 32 * 4 * 4096 * 16384}
    widths = {(r["layers.default.ffn"], r["moe.n_experts"]): r["d_ff"] for r in d["rows"]}
    assert widths == {("dense", "8"): 16384, ("moe", "8"): 8192, ("moe", "64"): 8192}
    assert d["duplicates"] == 1  # dense with 8 or 64 (unused) experts is one model
    assert all(r["ffn_flops"] == 32 * 4 * 4096 * 16384 for r in d["rows"])


def test_a_budget_without_a_whole_width_is_skipped_with_the_width_it_would_need():
    # textbook-moe: 8 GELU experts of 2048, top-1; top-3 would need 2048/3 per expert
    d = sweep_json("textbook-moe", "--grid", "moe.router.top_k=1,2,3", "--budget", "ffn_flops=base")
    assert sorted(r["d_ff"] for r in d["rows"]) == [1024, 2048]
    (skip,) = d["skipped"]
    assert skip["count"] == 1 and skip["example"] == "moe.router.top_k=3"
    assert skip["reason"] == "no whole moe.d_ff gives ffn_flops = 33,554,432 exactly (moe.d_ff = 682.67 would)"


def test_invalid_combinations_are_counted_and_explained():
    d = sweep_json("mixtral-8x7b", "--grid", "moe.n_experts=4,8", "--grid", "moe.router.top_k=2,6")
    assert (d["combinations"], d["kept"]) == (4, 3)
    (skip,) = d["skipped"]
    assert skip == {
        "reason": "--set moe.router.top_k: 6 exceeds moe.n_experts (4)",
        "count": 1,
        "example": "moe.n_experts=4 moe.router.top_k=6",
    }


def test_keep_filters_and_csv_carries_every_metric():
    r = run(
        "sweep",
        "mixtral-8x7b",
        *GRID,
        "--keep",
        "active_params<=13e9",
        "--keep",
        "total_params<90e9",
        "--format",
        "csv",
    )
    assert r.exit_code == 0, r.output
    rows = list(csv.DictReader(io.StringIO(r.output)))
    assert rows and all(int(x["active_params"]) <= 13e9 and int(x["total_params"]) < 90e9 for x in rows)
    assert list(rows[0])[-3:] == ["weights_bytes", "decode_tokens_per_s", "pareto"]


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (("--grid", "moe.n_experts"), "--grid moe.n_experts: expected FIELD=V1,V2,..."),
        (("--grid", "moe.n_experts=8", "--keep", "speed>3"), "--keep speed>3: unknown metric 'speed'"),
        (("--grid", "moe.n_experts=8", "--objective", "total_params:most"), "the sense is min or max"),
        (
            ("--grid", "moe.n_experts=8", "--objective", "total_params", "--objective", "total_params:max"),
            "--objective total_params: given twice",
        ),
        (
            ("--grid", "moe.n_expert=8,16"),
            "no combination of the grid is a valid model: --set moe.n_expert: unknown field",
        ),
        (("--grid", "moe.d_ff=8,16", "--budget", "ffn_flops=base"), "--budget solves for d_ff; do not also --grid it"),
        (("--grid", "moe.n_experts=8", "--budget", "ffn_flops=-5"), "--budget ffn_flops=-5: a budget is a number > 0"),
        (("--grid", "moe.n_experts=8", "--plot", "p.png", "--objective", "total_params"), "--plot draws the first two"),
    ],
)
def test_bad_requests_are_one_clear_error(args, words, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    r = run("sweep", "mixtral-8x7b", *args)
    assert r.exit_code == 2 and words in r.output and "Traceback" not in r.output, r.output
    assert not (tmp_path / "p.png").exists()


def test_the_pareto_plot_is_a_png(tmp_path):
    png = tmp_path / "pareto.png"
    r = run(
        "sweep", "textbook-moe", "--grid", "moe.n_experts=4,8,16", "--grid", "moe.router.top_k=1,2", "--plot", str(png)
    )
    assert r.exit_code == 0, r.output
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_every_table_line_fits_in_80_columns():
    r = run("sweep", "mixtral-8x7b", *GRID, "--grid", "moe.granularity=1,2,4")
    assert r.exit_code == 0 and max(map(len, r.output.splitlines())) <= 80, r.output
