"""`moec bench --decode`: the prediction beside each measurement is `moec roofline`'s own for the same step, the
ratio is measured over predicted, and the experts counted at batch 1 are the router's k. No timing is asserted."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("torch")

from click.testing import CliRunner  # noqa: E402

from moec.cli import cli  # noqa: E402

TINY = ("textbook-moe", "--set", "model.d_model=64", "--set", "model.n_layers=2", "--set", "model.vocab_size=128",
        "--set", "moe.d_ff=32", "--set", "moe.router.top_k=2")  # fmt: skip


def run(*args: str):
    return CliRunner().invoke(cli, list(args))


@pytest.mark.usefixtures("one_torch_thread")
def test_decode_bench_sits_beside_the_roofline_of_the_same_step():
    r = run("bench", *TINY, "--decode", "--batch-sizes", "1,4", "--context", "6", "--steps", "3", "--warmup", "1",
            "--gpu", "h100", "--dtype", "fp32", "--threads", "1", "--format", "json")  # fmt: skip
    assert r.exit_code == 0, r.output
    report = json.loads(r.stdout)
    rows = {row["batch"]: row for row in report["rows"]}
    assert set(rows) == {1, 4}
    for batch, row in rows.items():
        # the timed steps sit at positions 7..9: the roofline's context is their middle, 6 + 1 + 3 // 2
        roof = run("roofline", *TINY, "--gpu", "h100", "--batch", str(batch), "--seq", "8", "--dtype", "fp32",
                   "--format", "json")  # fmt: skip
        assert roof.exit_code == 0, roof.output
        assert row["predicted_tokens_per_s"] == pytest.approx(json.loads(roof.stdout)["tokens_per_s"], rel=1e-12)
        assert row["ratio"] == pytest.approx(row["measured_tokens_per_s"] / row["predicted_tokens_per_s"])
        assert row["measured_tokens_per_s"] == pytest.approx(batch / row["step_s_median"])
    assert rows[1]["distinct_experts_measured"] == 2.0  # one token reads its k = 2 experts
    assert 2.0 <= rows[4]["distinct_experts_measured"] <= 8.0


def test_decode_bench_table_and_refusals():
    r = run("bench", *TINY, "--decode", "--batch-sizes", "2", "--context", "4", "--steps", "2", "--threads", "1")
    assert r.exit_code == 0, r.output
    assert "roofline of cpu (measured)" in r.output and "roofline tok/s" in r.output
    assert max(len(line) for line in r.output.splitlines()) <= 80
    r = run("bench", "--decode")
    assert r.exit_code == 2 and "--decode needs a SPEC" in r.output
    r = run("bench", *TINY, "--decode", "--batch-sizes", "0")
    assert r.exit_code == 2 and "batch sizes must be >= 1" in r.output
    r = run("bench", *TINY, "--decode", "--gpu", "tpu9")
    assert r.exit_code == 2 and "--gpu tpu9: unknown accelerator; choose from a100, h100" in r.output
    # these three were internal errors (exit 70): positions past max_seq_len, a routing decode cannot
    # reproduce, and a build folder's model.py that raises
    r = run("bench", *TINY, "--set", "model.max_seq_len=16", "--decode", "--context", "8", "--steps", "8")
    assert r.exit_code == 2, r.output
    assert "--context 8 + --warmup 1 + --steps 8 need 17 positions; textbook-moe has max_seq_len 16" in r.output
    r = run("bench", *TINY, "--set", "moe.router.kind=expert_choice", "--set", "moe.balance.load_balance_coeff=0",
            "--decode", "--batch-sizes", "1", "--context", "4", "--steps", "2")  # fmt: skip
    assert r.exit_code == 2 and "textbook-moe: moe.router.kind expert_choice (layers 0, 1)" in r.output, r.output


def test_a_decode_cache_that_does_not_fit_is_refused_before_any_timing(monkeypatch):
    """--batch-sizes 4096 was allocated whole (an out-of-memory error at best, a crawl where the CPU overcommits):
    the largest batch's cache is checked first, as moec generate checks its own. TINY: 2 layers, 8 KV heads of
    width 8, fp32: 2·8·8·4 B = 512 B per layer and position; 4096 × (4 + 1 + 2) positions × 2 layers = 28 MiB."""
    monkeypatch.setattr("moec.nn.build.available_bytes", lambda device: 16 << 20)
    r = run("bench", *TINY, "--decode", "--batch-sizes", "1,4096", "--context", "4", "--steps", "2", "--warmup", "1")
    assert r.exit_code == 2, r.output
    assert "its KV cache at batch 4096 × 7 positions needs about" in r.output
    assert "lower --batch-sizes or --context" in r.output and "roofline of cpu" not in r.output


def test_decode_bench_reports_a_build_folders_failing_model_py(tmp_path):
    out = tmp_path / "built"
    assert run("build", *TINY, "-o", str(out)).exit_code == 0
    header = "    def forward(self, tokens: torch.Tensor, cache: KVCache | None = None"
    broken = "    def forward(self, tokens, cache=None, start=0):\n        raise KeyError('edited')\n\n"
    original = (out / "model.py").read_text()
    assert original.count(header) == 1
    (out / "model.py").write_text(original.replace(header, broken + header.replace("def forward", "def unused")))
    r = run("bench", str(out), "--decode", "--batch-sizes", "1", "--context", "4", "--steps", "2")
    assert r.exit_code == 2 and "Traceback" not in r.output, r.output
    assert f"error: {out / 'model.py'}: fails while decoding (KeyError: 'edited')" in r.output
