"""Options that take a real number refuse nan and inf while the command line is read, before any work: nan
passes every bound comparison click makes, so a plain FloatRange lets it through to torch or the sampler."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from moec.cli import cli


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
@pytest.mark.parametrize(
    "args",
    [
        ["smoke-run", "textbook-moe", "--lr"],
        ["upcycle", "{dense}", "-o", "{out}", "--experts", "2", "--top-k", "1", "--noise"],
        ["upcycle", "{dense}", "-o", "{out}", "--experts", "2", "--top-k", "1", "--router-std"],
        ["upcycle", "{dense}", "-o", "{out}", "--experts", "2", "--top-k", "1", "--lora", "2", "--lora-alpha"],
    ],
    ids=["smoke-run --lr", "upcycle --noise", "upcycle --router-std", "upcycle --lora-alpha"],
)
def test_non_finite_numbers_are_refused_as_bad_input(args, value, tmp_path):
    filled = [a.format(dense=tmp_path, out=tmp_path / "out") for a in args]
    r = CliRunner().invoke(cli, [*filled, value])
    assert r.exit_code == 2, r.output
    assert "is not a finite number" in r.output or "not in the range" in r.output
    if value == "nan":  # nan passes every bound comparison: only the finiteness check can refuse it
        assert "is not a finite number" in r.output, r.output
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["bench", "textbook-moe", "--decode", "--batch-sizes", "1,x"], "--batch-sizes: expected whole numbers"),
        (["bench", "textbook-moe", "--tokens", "-3"], "--tokens: expected numbers >= 0"),
    ],
)
def test_list_options_say_what_they_expect(args, message):
    r = CliRunner().invoke(cli, args)
    assert r.exit_code == 2, r.output
    assert message in r.output
