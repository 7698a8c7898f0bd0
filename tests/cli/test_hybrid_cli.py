"""Every command on a tiny hybrid spec (tests/hybrid_specs.py: Gated DeltaNet, short convolution, attention and a
Mamba layer without an FFN): what supports hybrids gives their figures, what does not refuses by name, with one
error line and exit 2, never a traceback or a wrong number (docs/mixers.md, "Analyzer and commands")."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
from click.testing import CliRunner

from moec.cli import cli
from tests.conftest import SPECS
from tests.hybrid_specs import TINY_HYBRID

MIXERS = ("gated_deltanet", "short_conv", "attention", "mamba")


@pytest.fixture
def hybrid(write_spec) -> str:
    return str(write_spec(TINY_HYBRID, "tiny-hybrid.yaml"))


def run(*args: str) -> tuple[int, str, str]:
    """The CLI in a fresh interpreter (as a user runs it): exit code, stdout, stderr."""
    done = subprocess.run([sys.executable, "-m", "moec", *args], capture_output=True, text=True, timeout=300)
    return done.returncode, done.stdout, done.stderr


def assert_refused(args: list[str], command: str, feature: str) -> None:
    code, out, err = run(*args)
    assert code == 2, (code, out, err)
    assert "Traceback" not in err and not out
    [line] = err.strip().splitlines()  # one error line
    assert line.startswith(f"error: {command} does not support hybrid models yet ({feature}")
    # it names what makes the model a hybrid: its other mixers and the layer without an FFN
    assert "tiny-hybrid has token mixers gated_deltanet, mamba, short_conv; no FFN in layer 3" in line


@pytest.mark.parametrize(
    ("args", "command", "feature"),
    [
        (["plan"], "moec plan", "the planner's"),
        (["plan", "--ep", "2", "--gpus", "2"], "moec plan", "the planner's"),
        (["smoke-run", "--nproc", "2", "--device", "cpu"], "moec smoke-run --nproc / torchrun", "the distributed smoke-run"),
    ],
)  # fmt: skip
def test_commands_without_hybrid_support_refuse_by_name(hybrid, args, command, feature):
    assert_refused([args[0], hybrid, *args[1:]], command, feature)


def test_roofline_sweep_and_the_decode_bench_count_each_mixer(hybrid):
    """The roofline charges the mixers' projections and their state (tests/roofline/test_hybrid_roofline.py holds
    the figures); a sweep's rows count as the analyzer does (tests/sweep/test_counts.py); the decode bench
    measures beside the roofline."""
    code, out, err = run("roofline", hybrid, "--format", "json")
    assert code == 0, err
    assert {"mixers", "mixer_state", "attention_scores"} <= {c["name"] for c in json.loads(out)["components"]}
    code, out, err = run("sweep", hybrid, "--grid", "mixers.mamba.state_size=4,16", "--format", "json")
    assert code == 0, err
    rows = json.loads(out)["rows"]
    params = {r["mixers.mamba.state_size"]: r["total_params"] for r in rows}
    # Mamba's x_proj writes 2·N more columns (B and C) from the inner width 64, and A_log holds N per channel
    assert params["16"] - params["4"] == (16 - 4) * (2 * 64 + 64)
    code, out, err = run(
        "bench", hybrid, "--decode", "--device", "cpu", "--batch-sizes", "1", "--context", "4", "--steps", "2"
    )
    assert code == 0, err
    assert re.search(r"^\s+1\s+[\d,.]+\s+[\d,.]+", out, flags=re.M), out  # measured and predicted tokens/s


def test_analyze_formats_and_layer_tables_name_each_mixer(hybrid):
    res = CliRunner().invoke(cli, ["analyze", hybrid, "--layers", "-q"], env={"COLUMNS": "80"})
    assert res.exit_code == 0, res.output
    rows = re.findall(r"^\W*(\d)\W+(dense|moe|none)\W+(\w+)", res.output, flags=re.M)
    assert [(int(i), ffn, mixer) for i, ffn, mixer in rows] == [
        (0, "dense", "gated_deltanet"),
        (1, "moe", "short_conv"),
        (2, "moe", "gqa"),  # attention's kind on the attention layer
        (3, "none", "mamba"),
    ]
    assert all(len(line) <= 80 for line in res.output.splitlines())
    doc = json.loads(CliRunner().invoke(cli, ["analyze", hybrid, "--format", "json", "-q"]).output)[0]
    assert [layer["mixer"] for layer in doc["layers"]] == list(MIXERS)
    assert doc["memory"]["state_bytes"] > 0 and doc["flops"]["decode_step"] > 0
    for fmt in ("csv", "md"):
        res = CliRunner().invoke(cli, ["analyze", hybrid, "--format", fmt, "--layers", "-q"])
        assert res.exit_code == 0 and "short_conv" in res.output, res.output


def test_diff_and_validate_take_hybrids(hybrid):
    res = CliRunner().invoke(cli, ["diff", hybrid, hybrid, "--set-b", "mixers.mamba.state_size=8", "--format", "json"])
    assert res.exit_code == 0, res.output
    d = json.loads(res.output)
    assert {f["field"]: (f["a"], f["b"]) for f in d["fields"]} == {"layers 3 mixer.state_size": (4, 8)}
    state = {m["metric"]: m for m in d["metrics"]}["mixer state/sequence"]
    # the Mamba layer's state grows by its (expand 2 × d 32) channels × 4 more states, in float32
    assert state["delta"] == 2 * 32 * 4 * 4
    res = CliRunner().invoke(cli, ["diff", hybrid, str(SPECS / "textbook-moe.yaml"), "--seq", "64"])
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(cli, ["validate", hybrid])
    assert res.exit_code == 0 and "mixers gated_deltanet, short_conv, attention, mamba" in res.output


def test_analyze_verify_checks_parameters_and_refuses_flops_by_name(hybrid):
    code, out, err = run("analyze", hybrid, "--verify", "--seq", "8", "--format", "json", "-q", "--threads", "1")
    assert code == 0, err
    verify = json.loads(out)[0]["verify"]
    [check] = verify["checks"]
    assert check["passes"] == "parameters" and check["ok"] and check["measured"] == check["expected"]
    assert any(n.startswith("FLOPs not checked: a hybrid's token mixers") for n in verify["adjustments"])


def test_generate_decodes_a_hybrid_as_the_uncached_forward_does(hybrid, one_torch_thread):
    """Greedy tokens through the decode cache (each mixer's state, docs/mixers.md) equal those of the whole
    forward recomputed at every step from the same random weights."""
    import torch

    from moec.nn import build_model
    from moec.nn.cache import without_capacity
    from moec.spec import load_model

    res = CliRunner().invoke(
        cli,
        [
            "generate",
            hybrid,
            "--prompt-tokens",
            "1,2,3",
            "--max-new-tokens",
            "5",
            "--device",
            "cpu",
            "--format",
            "json",
        ],
    )
    assert res.exit_code == 0, res.output
    new = json.loads(res.output[res.output.index("{") :])["new_tokens"][0]
    model = build_model(without_capacity(load_model(hybrid)), device="cpu", dtype=torch.float32, seed=0).eval()
    tokens = torch.tensor([[1, 2, 3]])
    with torch.no_grad():
        for _ in range(5):
            tokens = torch.cat([tokens, model(tokens)[0][:, -1:].argmax(-1)], dim=1)
    assert new == tokens[0, 3:].tolist()


def test_upcycle_refuses_a_hybrid_source(tmp_path):
    folder = tmp_path / "qwen3-next"
    folder.mkdir()
    code, out, err = run("export-hf", str(SPECS / "qwen3-next-80b-a3b.yaml"))
    assert code == 0, err
    (folder / "config.json").write_text(out)
    code, out, err = run("upcycle", str(folder), "-o", str(tmp_path / "out"), "--experts", "4", "--top-k", "2")
    assert code == 2 and "Traceback" not in err
    assert "model_type 'qwen3_next' is not a dense source upcycle reads" in err
    assert not (tmp_path / "out").exists()


def test_export_hf_refuses_a_hybrid_no_family_expresses(hybrid):
    code, out, err = run("export-hf", hybrid)
    assert code == 2 and not out and "Traceback" not in err and "internal error" not in err
    assert "no supported Hugging Face family expresses this spec exactly" in err
