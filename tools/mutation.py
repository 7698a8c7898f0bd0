"""Mutation testing of the modules where a wrong number is silent (docs/testing.md says why and what the
last run found).

    pip install mutmut==3.8.1          # not a test dependency: CI does not run this
    python3 tools/mutation.py analyze router
    python3 tools/mutation.py hf-weights yamlio --keep
    python3 tools/mutation.py --planted      # the six bugs of issue 21, each must fail its tests

For each target it copies the committed tree (``git archive HEAD``, so edits in the working tree are not
measured) to a fresh folder under /tmp, writes mutmut's ``[tool.mutmut]`` section into the copy's
pyproject.toml (the repository's own has none: running ``mutmut`` in the repository would leave a
``mutants/`` folder there), runs ``mutmut run`` with one worker against the target's test subset, and
prints the kill rate of each module with the mutants that were not killed. ``--keep`` leaves the copy, so
that ``mutmut show NAME`` and ``mutmut results`` can be run in it.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# target -> (modules to mutate, tests that judge them): the module's own tests and the invariants that hold
# it against an independent count (the meta-device model for the analyzer, the float64 oracle and
# transformers' modules for the router, transformers' models for the weight mapping). For each mutant,
# mutmut runs only the tests that called the mutated function, fastest first.
TARGETS: dict[str, tuple[list[str], list[str]]] = {
    "analyze": (
        ["moec/analyze/counts.py", "moec/analyze/memory.py", "moec/analyze/report.py"],
        ["tests/analyze", "tests/nn/test_build.py"],
    ),
    "router": (
        ["moec/nn/router.py"],
        ["tests/nn"],
    ),
    "hf-weights": (["moec/hf/mapper.py", "moec/hf/weights.py"], ["tests/hf/test_weights.py", "tests/hf/families"]),
    "yamlio": (["moec/spec/yamlio.py"], ["tests/spec"]),
}

# Lines mutmut must leave alone, each a regular expression over one source line. Only wording: the prose
# values of the conventions every output carries (report.conventions). Their keys, numbers and the values
# that depend on the run (seq, attention, dtype, the kv length) are mutated and tested.
DO_NOT_MUTATE_LINES = [
    r'^        ("\w+": )?"[^"]*",?$',  # a conventions entry, or a continuation line, that is only string literals
]


# The six bugs of issue 21 that once passed the whole suite: (what, file, text, planted text, tests that
# must now fail). ``--planted`` plants each in its own copy of HEAD and runs those tests there.
PLANTED = [
    ("routed experts' active count without their biases", "moec/analyze/counts.py",
     "Part(E * per_expert, k * per_expert, 2 * k * mm)", "Part(E * per_expert, k * mm, 2 * k * mm)",
     "tests/analyze/test_formulas.py"),
    ("the shared-expert gate left out of the active count", "moec/analyze/counts.py",
     "Part(s_p + gate, s_p + gate, 2 * (s_mm + gate))", "Part(s_p + gate, s_p, 2 * (s_mm + gate))",
     "tests/analyze/test_formulas.py"),
    ("capacity with floor instead of ceil", "moec/nn/router.py",
     "capacity = math.ceil(", "capacity = math.floor(", "tests/nn/test_router.py"),
    ("the MTP target one position short", "moec/nn/loss.py",
     "_shifted_ce(lg, tokens, k + 1)", "_shifted_ce(lg, tokens, k)", "tests/nn/test_model.py"),
    ("16 bytes of optimizer state per frozen parameter", "moec/analyze/memory.py",
     "ADAMW_BYTES_FROZEN = 2", "ADAMW_BYTES_FROZEN = 16", "tests/analyze/test_formulas.py"),
    ("a section's errors located at its end", "moec/spec/yamlio.py",
     "            self.stack.pop()\n", "            self.stack.pop().mark = _mark_at(self.file, event.end_mark)\n",
     "tests/spec/test_error_locations.py"),
]  # fmt: skip


def _pytest_in_copy(tests: str, plant: tuple[str, str, str] | None) -> int:
    """Exit code of pytest on ``tests`` in a fresh copy of HEAD, with ``(path, text, planted)`` applied
    (``text`` must occur exactly once; -1 when it does not)."""
    with tempfile.TemporaryDirectory(prefix="moec-planted-") as tmp:
        work = Path(tmp)
        copy_committed_tree(ROOT, work)
        if plant is not None:
            path, text, planted = plant
            source = (work / path).read_text()
            if source.count(text) != 1:
                return -1
            (work / path).write_text(source.replace(text, planted))
        env = {**os.environ, "PYTHONPATH": str(work), "OMP_NUM_THREADS": "1"}
        run = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", tests],
            cwd=work, env=env, capture_output=True, text=True,
        )  # fmt: skip
        return run.returncode


def check_planted() -> int:
    """Each bug of PLANTED, planted alone in a fresh copy of HEAD, must fail tests that pass without it.
    Returns the number missed."""
    missed = 0
    for tests in sorted({p[-1] for p in PLANTED}):
        clean = _pytest_in_copy(tests, None)
        print(f"without a bug: {tests} exits {clean}", flush=True)
        missed += clean != 0
    for what, path, text, planted, tests in PLANTED:
        code = _pytest_in_copy(tests, (path, text, planted))
        verdict = "caught" if code == 1 else ("CANNOT PLANT (text changed)" if code == -1 else "MISSED")
        print(f"{verdict}: {what} ({tests}, exit {code})", flush=True)
        missed += code != 1
    return missed


def mutmut_section(modules: list[str], tests: list[str]) -> str:
    def toml_list(items: list[str]) -> str:
        return "[" + ", ".join(f"'{x}'" for x in items) + "]"

    return (
        "\n[tool.mutmut]\n"
        "source_paths = ['moec']\n"
        f"only_mutate = {toml_list(modules)}\n"
        "also_copy = ['specs', 'templates']\n"
        "pytest_add_cli_args = ['-p', 'no:cacheprovider', '-x']\n"
        f"pytest_add_cli_args_test_selection = {toml_list(tests)}\n"
        f"do_not_mutate_patterns = {toml_list(DO_NOT_MUTATE_LINES)}\n"
    )


def commit_of(root: Path) -> str:
    return subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True
    ).stdout.strip()


def copy_committed_tree(root: Path, dest: Path) -> None:
    archive = subprocess.run(["git", "archive", "HEAD"], cwd=root, capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)


def kill_rates(results: str) -> dict[str, tuple[int, int, list[str]]]:
    """mutmut's ``results --all true`` lines (``name: status``) → module → (killed, tested, not killed).
    Killed and timed-out mutants count as killed, as mutmut's own score does; skipped ones are not tested."""
    out: dict[str, list] = defaultdict(lambda: [0, 0, []])
    for line in results.splitlines():
        m = re.match(r"\s*([\w.ǁ]+)\.x[_ǁ].*?__mutmut_\d+: (.+)$", line)
        if not m:
            continue
        module, status = m.group(1), m.group(2).strip()
        name = line.split(":")[0].strip()
        if status == "skipped":
            continue
        row = out[module]
        row[1] += 1
        if status in ("killed", "timeout"):
            row[0] += 1
        else:
            row[2].append(f"{name} ({status})")
    return {k: (v[0], v[1], v[2]) for k, v in sorted(out.items())}


def run_target(name: str, keep: bool) -> int:
    modules, tests = TARGETS[name]
    work = Path(tempfile.mkdtemp(prefix=f"moec-mutation-{name}-"))
    copy_committed_tree(ROOT, work)
    with open(work / "pyproject.toml", "a") as f:
        f.write(mutmut_section(modules, tests))
    print(f"== {name}: commit {commit_of(ROOT)}, copy in {work}", flush=True)
    # mutmut forks a worker per mutant from a process that has already run torch: with an OpenMP thread pool
    # alive in the parent, a forked child that reaches a parallel op (printing a tensor in a failed assert)
    # deadlocks and is reported as a timeout, i.e. killed. One thread keeps forked children honest.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    run = subprocess.run(["mutmut", "run", "--max-children", "1"], cwd=work, env=env, capture_output=True, text=True)
    if run.returncode != 0:
        print(run.stdout[-3000:], run.stderr[-3000:], sep="\n")
        return run.returncode
    results = subprocess.run(
        ["mutmut", "results", "--all", "true"], cwd=work, capture_output=True, text=True, check=True
    ).stdout
    for module, (killed, tested, missed) in kill_rates(results).items():
        print(f"{module}: {killed}/{tested} killed ({100 * killed / max(tested, 1):.1f}%)")
        for m in missed:
            print(f"    not killed: {m}")
    if not keep:
        shutil.rmtree(work)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("targets", nargs="*", help=", ".join(sorted(TARGETS)))
    parser.add_argument("--planted", action="store_true", help="check that each bug of issue 21 fails its tests")
    parser.add_argument("--keep", action="store_true", help="leave the copy for `mutmut show` and `mutmut results`")
    args = parser.parse_args()
    if args.planted:
        return min(check_planted(), 1)
    unknown = [t for t in args.targets if t not in TARGETS]
    if unknown or not args.targets:
        parser.error(f"name targets from {', '.join(sorted(TARGETS))}, or --planted (got {args.targets})")
    if shutil.which("mutmut") is None:
        print("mutmut is not installed: pip install mutmut==3.8.1", file=sys.stderr)
        return 2
    return max(run_target(t, args.keep) for t in args.targets)


if __name__ == "__main__":
    sys.exit(main())
