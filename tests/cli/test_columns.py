"""Every table moec prints is readable at COLUMNS=80: no line wider than 80, no number broken over two lines,
cut short with "…" or separated from its unit, and no --help summary cut at the width.

A number's integrity is judged two ways: every number printed at 80 columns must also be printed, whole, at
250 columns (where nothing needs to wrap), and every number must be well-formed (digit groups of three
after a comma, no dangling separator, no unit alone in its cell)."""

from __future__ import annotations

import io
import re

import pytest
from click.testing import CliRunner

from moec.cli import cli
from tests.conftest import SPECS

NARROW, WIDE = 80, 250
ALL_SPECS = sorted(p.stem for p in SPECS.glob("*.yaml"))
# a number not glued to a name (e64, L12, fp32, 8x7b are names or labels, not figures)
NUMBER = re.compile(r"(?<![\w.,])\d(?:[\d,.]*\d)?(?![\w])")
# a separator left at the end of a cell: the rest of the number went to the next line
# (a label may wrap after "S=1," — a comma is a fragment only inside a figure: "(671,026," or "(671,")
END = r"(?:\s{2,}|\s*[│┃|])"
DANGLING = re.compile(rf"\d\.{END}|\d(?:,\d{{3}})+,{END}|\(\d{{1,3}},{END}")
WELL_FORMED = re.compile(r"\d{1,3}(,\d{3})*(\.\d+)?|\d+(\.\d+)?(e[+-]?\d+)?")
UNIT_ALONE = re.compile(r"^(TiB|GiB|MiB|KiB|B|K|M|T|%|x)$")
CELL_SPLIT = re.compile(r"[│┃|]|\s{2,}")


def numbers(text: str) -> set[str]:
    return set(NUMBER.findall(text))


def width_problems(text: str, width: int = NARROW) -> list[str]:
    problems = [f"{len(line)} columns: {line!r}" for line in text.splitlines() if len(line) > width]
    problems += [f"cut short: {line!r}" for line in text.splitlines() if re.search(r"[\d,.]…", line)]
    for line in text.splitlines():
        broken = [n for n in NUMBER.findall(line) if not WELL_FORMED.fullmatch(n)] + DANGLING.findall(line)
        problems += [f"broken number {n!r}: {line!r}" for n in broken]
        for cell in CELL_SPLIT.split(line):
            if UNIT_ALONE.match(cell.strip()):
                problems.append(f"unit apart from its number: {line!r}")
    return problems


def invoke(args: list[str], columns: int) -> str:
    res = CliRunner().invoke(cli, args, env={"COLUMNS": str(columns)}, catch_exceptions=False)
    assert res.exit_code == 0, res.output
    return res.output


def assert_readable(narrow: str, wide: str) -> None:
    assert not width_problems(narrow), "\n".join(width_problems(narrow))
    assert numbers(narrow) <= numbers(wide), f"broken at {NARROW} columns: {sorted(numbers(narrow) - numbers(wide))}"


@pytest.mark.parametrize("name", ALL_SPECS)
def test_analyze_at_80_columns(name: str):
    path = str(SPECS / f"{name}.yaml")
    assert_readable(invoke(["analyze", path], NARROW), invoke(["analyze", path], WIDE))


@pytest.mark.parametrize("name", ALL_SPECS)
def test_analyze_layers_at_80_columns(name: str):
    """The layer table keeps one line per layer (numbers in units when exact counts do not fit)."""
    path = str(SPECS / f"{name}.yaml")
    narrow = invoke(["analyze", path, "--layers", "--format", "table"], NARROW)
    assert not width_problems(narrow), "\n".join(width_problems(narrow))
    wide = invoke(["analyze", path, "--layers"], WIDE)
    n_layers = len(re.findall(r"^\s*[│┃]?\s*\d+\s+[│┃]?\s*(?:moe|dense)\b", wide, flags=re.M))
    rows = re.findall(r"^\s*[│┃]?\s*\d+\s+[│┃]?\s*(?:moe|dense)\b.*$", narrow, flags=re.M)
    assert n_layers and len(rows) == n_layers
    assert all(len(NUMBER.findall(row)) >= 5 for row in rows)  # index and the four counts, on one line


def test_several_specs_side_by_side_at_80_columns():
    paths = [str(SPECS / f"{n}.yaml") for n in ("mixtral-8x7b", "deepseek-v3", "qwen3-30b-a3b", "lora-moe")]
    narrow, wide = invoke(["analyze", *paths], NARROW), invoke(["analyze", *paths], WIDE)
    assert_readable(narrow, wide)
    for name in ("mixtral-8x7b", "deepseek-v3", "qwen3-30b-a3b", "lora-moe"):
        assert name in narrow  # every spec is shown, in however many tables it takes
    assert "671,026,404,352" in narrow  # DeepSeek-V3's total (docs/conventions.md, "Reference figures")


def test_help_summaries_are_whole_at_80_columns():
    text = invoke(["--help"], NARROW)
    commands = text.split("Commands:")[1]
    assert "..." not in commands and not width_problems(text)
    flat = " ".join(commands.split())
    for name, cmd in cli.commands.items():
        first = " ".join((cmd.help or "").split("\n\n")[0].split())
        sentence = first.split(". ")[0].rstrip(".")
        assert sentence in flat, f"{name}: {sentence!r}"
        sub = invoke([name, "--help"], NARROW)
        assert all(len(line) <= NARROW for line in sub.splitlines()), name


def test_load_histograms_wrap_at_round_expert_numbers():
    """64, 128 and 256 experts at 80 columns: whole lines of 64 bars, each labelled with its first expert."""
    from rich.console import Console

    from moec.smoke.report import print_loads

    for experts in (64, 128, 256):
        r = _result_with_loads([list(range(1, experts + 1))])
        buf = io.StringIO()
        print_loads(r, Console(file=buf, width=NARROW, color_system=None))
        lines = buf.getvalue().splitlines()[1:]
        assert len(lines) == experts // 64 and all(len(line) <= NARROW for line in lines)
        assert [line.split()[-2] if i == 0 else line.split()[0] for i, line in enumerate(lines)] == [
            f"e{e}" for e in range(0, experts, 64)
        ]
        assert sum(len(line.split()[-1]) for line in lines) == experts  # one bar per expert, none lost


def _result_with_loads(loads: list[list[int]]):
    from moec.smoke.report import LayerLoad, SmokeResult

    layers = [LayerLoad(i, load, 1.0, [], 0) for i, load in enumerate(loads)]
    fields = {f: None for f in SmokeResult.__dataclass_fields__}
    return SmokeResult(**{**fields, "layers": layers, "failures": [], "changes": [], "step_records": []})


@pytest.mark.parametrize("name", ALL_SPECS)
def test_smoke_run_report_at_80_columns(name: str, one_torch_thread):
    """Every shipped spec's report (scaled down, two steps), drawn at 80 and at 250 columns."""
    from rich.console import Console

    from moec.smoke.report import print_report
    from moec.smoke.run import SmokeConfig, smoke_run
    from moec.spec import load_model

    cfg = SmokeConfig(device="cpu", steps=2, batch=1, seq=8, seed=0)
    plan = load_model(str(SPECS / f"{name}.yaml"))
    if plan.encoder:  # smoke-run refuses an encoder-decoder spec by name (tests/cli: its one-line refusal)
        pytest.skip("an encoder-decoder model is counted, not built")
    result = smoke_run(plan, cfg, progress=False)
    out = {}
    for width in (NARROW, WIDE):
        buf = io.StringIO()
        print_report(result, Console(file=buf, width=width, color_system=None))
        out[width] = buf.getvalue()
    assert_readable(out[NARROW], out[WIDE])


def test_smoke_run_cli_follows_columns(tmp_path):
    text = invoke(["smoke-run", str(SPECS / "textbook-moe.yaml"), "--steps", "2", "--batch", "1", "--seq", "8"], 80)
    assert "H/ln E" in text and not width_problems(text), "\n".join(width_problems(text))


def test_distributed_rank_table_at_80_columns():
    """Per-rank figures of a large run (a distributed smoke-run's table) split into two tables at 80 columns."""
    from rich.console import Console

    from moec.smoke.dist_report import DistributedReport, RankReport, Step0Check, print_distributed

    big = {"params_experts": 3_700_000_000, "params_other": 1_200_000_000, "planned_params_experts": 3_700_000_001}
    big |= {"planned_params_other": 1_200_000_000, "peak_memory_bytes": 123_456_789_012}
    big |= {"predicted_peak_bytes": 234_567_890_123, "a2a_sent_bytes": 98_765_432_100}
    big |= {"a2a_sent_bytes_on_routing": 98_765_432_100, "a2a_count_bytes": 4096}
    ranks = [RankReport(rank=r, tokens_per_s=12345.6, timed_tokens=1000, timed_s=1.0, **big) for r in range(4)]
    report = DistributedReport(4, "nccl", 2, 2, 2, 1, True, 49382.4, Step0Check(5.1, 5.1, 0.0, 1e-4, True), 1, "cuda")
    report.ranks = ranks
    out = {}
    for width in (NARROW, WIDE):
        buf = io.StringIO()
        print_distributed(report, 10, Console(file=buf, width=width, color_system=None))
        out[width] = buf.getvalue()
    assert_readable(out[NARROW], out[WIDE])


@pytest.mark.parametrize("name", ["deepseek-v3", "mixtral-8x7b", "lora-moe"])
def test_plan_at_80_columns(name: str):
    path = str(SPECS / f"{name}.yaml")
    assert_readable(invoke(["plan", path], NARROW), invoke(["plan", path], WIDE))
