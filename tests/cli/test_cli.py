"""The CLI: exit codes, formats, side-by-side, diff, and that analyzing never imports torch."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys

from click.testing import CliRunner

from moec.cli import cli
from tests.conftest import ROOT, SPECS


def run(*args: str):
    return CliRunner().invoke(cli, list(args))


def test_analyze_json_is_versioned_and_states_conventions():
    r = run("analyze", str(SPECS / "mixtral-8x7b.yaml"), "--seq", "4096", "--format", "json")
    assert r.exit_code == 0, r.output
    d = json.loads(r.output)[0]
    assert d["schema"] == "moec.analysis/1"
    assert d["conventions"]["flop_unit"] == "1 multiply-add = 2 FLOPs"
    assert d["params"]["total"] == 46_702_792_704
    assert d["flops"]["forward"] == 27_644_657_664
    assert len(d["layers"]) == 32


def test_several_specs_print_side_by_side():
    r = run("analyze", str(SPECS / "textbook-dense.yaml"), str(SPECS / "textbook-moe.yaml"))
    assert r.exit_code == 0, r.output
    assert (
        "textbook-dense" in r.output and "textbook-moe" in r.output and "FLOPs: 1 multiply-add = 2 FLOPs ·" in r.output
    )


def test_csv_and_markdown():
    r = run("analyze", "mixtral-8x7b", "--format", "csv")
    rows = list(csv.reader(io.StringIO(r.output)))
    assert rows[0] == ["spec", "metric", "value"]
    assert ["mixtral-8x7b", "params.total", "46702792704"] in rows
    r = run("analyze", "mixtral-8x7b", "--format", "md", "--layers")
    assert "| total params |" in r.output and "mixtral-8x7b: layers" in r.output


def test_bad_spec_exits_2_with_located_errors(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text((SPECS / "mixtral-8x7b.yaml").read_text().replace("top_k: 2", "top_k: 9"))
    r = run("analyze", str(p))
    assert r.exit_code == 2
    assert f"{p}:" in r.output and "moe.router.top_k: 9 exceeds moe.n_experts (8)" in r.output
    assert "Traceback" not in r.output


def test_set_override_from_the_command_line():
    r = run("analyze", "mixtral-8x7b", "--set", "moe.router.top_k=1", "--format", "json")
    d = json.loads(r.stdout)[0]  # stderr holds the top-1 normalize_topk warning
    assert d["params"]["active"] < 12_879_925_248
    r = run("analyze", "mixtral-8x7b", "--set", "moe.router.top_k")
    assert r.exit_code == 2 and "expected key=value" in r.output


def test_diff_lists_field_changes_and_metric_deltas():
    r = run("diff", "textbook-dense", "textbook-moe", "--format", "json")
    assert r.exit_code == 0, r.output
    d = json.loads(r.output)
    fields = {f["field"] for f in d["fields"]}
    assert "layer pattern" in fields
    total = next(m for m in d["metrics"] if m["metric"] == "total params")
    assert total["delta"] == 151_045_120 - 33_571_840


def test_validate_schema_and_specs_commands():
    assert run("validate", *[str(p) for p in sorted(SPECS.glob("*.yaml"))]).exit_code == 0
    s = json.loads(run("schema").output)
    assert "moe" in s["properties"]
    r = run("specs", "--format", "json")
    names = {x["name"] for x in json.loads(r.output)}
    assert {"mixtral-8x7b", "deepseek-v3", "qwen3-30b-a3b", "llama-2-7b", "lora-moe"} <= names


def test_analysis_commands_never_import_torch():
    """analyze, plan, roofline and sweep run in one interpreter without torch, triton or matplotlib."""
    runs = [
        ["analyze", "specs/deepseek-v3.yaml", "--seq", "4096", "--layers"],
        ["plan", "deepseek-v3", "--ep", "64", "--gpus", "64"],
        ["plan", "mixtral-8x7b", "--gpus", "16"],
        ["roofline", "deepseek-v3", "--batch", "32"],
        ["sweep", "textbook-moe", "--grid", "moe.n_experts=4,8"],
    ]
    code = (
        "import sys\n"
        "from moec.cli import cli\n"
        f"for args in {runs!r}:\n"
        "    try:\n        cli(args)\n"
        "    except SystemExit as e:\n        assert e.code in (0, None), (args, e.code)\n"
        "heavy = {'torch', 'triton', 'matplotlib'} & set(sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr


def test_the_commands_seq_bound_is_the_schemas_max_seq():
    from moec.commands.common import SEQ_LEN
    from moec.spec.schema import MAX_SEQ

    assert (SEQ_LEN.min, SEQ_LEN.max) == (1, MAX_SEQ)
    r = run("analyze", "mixtral-8x7b", "--seq", str(MAX_SEQ + 1))
    assert r.exit_code == 2 and "--seq" in r.output


def test_building_the_command_line_loads_no_spec_schema_hf_reader_or_torch():
    # every `moec` run builds every command's options: the planning commands read the accelerator table, upcycle
    # its router choices; none of that may load pydantic, the HF families or torch
    code = (
        "import sys\nimport moec.cli, moec.commands.plan, moec.commands.roofline, moec.commands.sweep\n"
        "heavy = {'pydantic', 'moec.spec.schema', 'moec.hf.config', 'moec.hf.upcycle', 'torch'} & set(sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
