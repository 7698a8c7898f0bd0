"""Fuzzing the spec loader: every input either loads (and then resolves and analyzes) or is refused with a
SpecError whose every problem names a file and a line and prints as one line, within 2 s of CPU time and 200 MB
(tracemalloc peak). A ``--set`` problem names the option (``--set``) instead of a line.

Inputs, all from fixed seeds:

- every shipped spec in ``specs/``, mutated one to three times by ``tests/fuzz/spec_mutations.py``:
  characters inserted, deleted, duplicated and swapped (YAML indicators, control characters, a lone
  surrogate, a byte-order mark), lines deleted, duplicated, swapped, re-indented and truncated, values
  replaced by odd scalars (``010``, ``1:0``, ``yes``, 5,000-digit integers, ``!!int ""``, unknown tags,
  recursive aliases, bad merges, nesting 70 deep), anchors and aliases, ``<<`` merge keys, tagged,
  duplicate and over-long keys, ``extends`` to absolute paths, ``../`` and missing files, thousands of
  unknown keys, a second document;
- Hypothesis properties: random YAML-ish text; random nested values dumped as YAML into a random section
  of a valid spec; random ``--set`` assignments on a shipped spec.

``MOEC_FUZZ_N`` sets how many mutated specs to run (default 2,000, about 20 s on a 2-core machine; the
Hypothesis properties run a tenth of that each, at least 100). A long run, with the figures printed::

    MOEC_FUZZ_N=20000 python3 -m pytest -s -p no:cacheprovider tests/fuzz/test_fuzz_specs.py

The same variable sizes ``tests/fuzz/test_fuzz_hf_config.py``.
"""

from __future__ import annotations

import os
import random
import time
import tracemalloc
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from moec.analyze import analyze
from moec.errors import SpecError
from moec.spec import load_spec, resolve
from moec.spec.paths import shipped_specs
from tests.fuzz.spec_mutations import INDICATORS, ODD_CHARS, ODD_SCALARS, mutate

N = int(os.environ.get("MOEC_FUZZ_N", "2000"))
N_HYPOTHESIS = max(100, N // 10)
# CPU seconds of this process, not wall-clock: a hang or a blow-up is caught, other processes on a shared machine
# do not count
MAX_SECONDS = 2.0
MAX_PEAK_BYTES = 200 << 20
FAILURE_KINDS = ("uncaught", "unlocated", "not one line", "too slow", "too large")

SPECS = shipped_specs()
TEXTS = {p: p.read_text() for p in SPECS}


@dataclass
class Tally:
    inputs: int = 0
    loaded: int = 0
    refused: int = 0
    max_seconds: float = 0.0
    max_peak: int = 0
    refusals: Counter = field(default_factory=Counter)  # first words of the first problem, for the report
    failures: list[tuple[str, str]] = field(default_factory=list)  # (kind, what happened)

    def summary(self) -> str:
        count = Counter(kind for kind, _ in self.failures)
        kinds = ", ".join(f"{count[k]} {k}" for k in FAILURE_KINDS)
        return (
            f"{self.inputs} inputs: {self.loaded} loaded, {self.refused} refused; {kinds}; slowest "
            f"{self.max_seconds * 1000:.0f} ms, largest tracemalloc peak {self.max_peak / 2**20:.1f} MiB"
        )


def _problem_failures(e: SpecError) -> list[tuple[str, str]]:
    out = []
    if not e.problems:
        out.append(("unlocated", "a SpecError with no problem"))
    for p in e.problems:
        located = p.file and p.file != "<unknown>" and (p.line is not None or p.file == "--set")
        if not located:
            out.append(("unlocated", str(p)[:200]))
        if "\n" in str(p) or "\r" in str(p):
            out.append(("not one line", repr(str(p))[:200]))
    return out


def check_input(tally: Tally, what: str, source: str, text: str | None, sets: tuple[str, ...] = ()) -> None:
    """Load one input; on success resolve and analyze it. Record how it went, and any failure."""
    tally.inputs += 1
    tracemalloc.start()
    started = time.process_time()
    try:
        model = resolve(load_spec(source, text=text, sets=sets))
        analyze(model)
        tally.loaded += 1
    except SpecError as e:
        tally.refused += 1
        tally.refusals[" ".join(e.problems[0].message.split()[:3]) if e.problems else "?"] += 1
        tally.failures += [(kind, f"{what}: {msg}") for kind, msg in _problem_failures(e)]
    except Exception as e:  # noqa: BLE001 - the point is to catch anything
        tally.failures.append(("uncaught", f"{what}: {type(e).__name__}: {str(e)[:200]}"))
    finally:
        seconds = time.process_time() - started
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    tally.max_seconds, tally.max_peak = max(tally.max_seconds, seconds), max(tally.max_peak, peak)
    if seconds > MAX_SECONDS:
        tally.failures.append(("too slow", f"{what}: {seconds:.2f} s"))
    if peak > MAX_PEAK_BYTES:
        tally.failures.append(("too large", f"{what}: {peak / 2**20:.0f} MiB"))


def report(tally: Tally) -> None:
    print(f"\n{tally.summary()}\nmost common refusals: {tally.refusals.most_common(8)}")
    assert not tally.failures, tally.summary() + "\n" + "\n".join(f"{k}: {w}" for k, w in tally.failures[:20])


# ---------------------------------------------------------------------------------------------
# mutated shipped specs


def test_mutated_shipped_specs_load_or_give_located_errors():
    tally = Tally()
    for seed in range(N):
        rng = random.Random(seed)
        path = SPECS[seed % len(SPECS)]
        text, names = mutate(rng, TEXTS[path])
        check_input(tally, f"seed {seed} ({path.name}: {', '.join(names)})", str(path), text)
    report(tally)
    assert tally.loaded > N // 20 and tally.refused > N // 2  # the mutations neither all fail nor all pass


# ---------------------------------------------------------------------------------------------
# Hypothesis properties

YAMLISH = st.text(
    alphabet=st.sampled_from([c for c in INDICATORS + ODD_CHARS if len(c) == 1] + list("abcmnoe019_. "))
    | st.characters(),
    max_size=300,
)
FIELD_NAMES = ["model", "attention", "moe", "router", "n_layers", "top_k", "layers", "overrides", "select", "<<"]
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(10**1200), max_value=10**1200)
    | st.floats()
    | st.text(max_size=20)
    | st.sampled_from(ODD_SCALARS)
)
NESTED = st.recursive(
    SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.sampled_from(FIELD_NAMES) | st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)
BASE = {
    "moec": 1,
    "name": "h",
    "model": {"vocab_size": 100, "d_model": 64, "n_layers": 4, "max_seq_len": 128},
    "attention": {"n_heads": 4},
    "moe": {"n_experts": 4, "d_ff": 32, "router": {"top_k": 2}},
    "layers": {"default": {"ffn": "moe"}},
}
SECTIONS = [(), ("model",), ("attention",), ("moe",), ("moe", "router"), ("layers",), ("layers", "default")]


def _run_alone(what: str, source: str, text: str | None, sets: tuple[str, ...] = ()) -> None:
    tally = Tally()
    check_input(tally, what, source, text, sets)
    assert not tally.failures, tally.failures


@settings(max_examples=N_HYPOTHESIS, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(YAMLISH)
def test_random_yamlish_text_loads_or_gives_located_errors(text: str):
    _run_alone(repr(text), "r.yaml", text)


@settings(max_examples=N_HYPOTHESIS, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(SECTIONS), st.text(max_size=12) | st.sampled_from(FIELD_NAMES), NESTED)
def test_random_values_in_a_valid_spec_load_or_give_located_errors(section: tuple[str, ...], key: str, value: Any):
    import copy

    spec = copy.deepcopy(BASE)
    target = spec
    for part in section:
        target = target[part]
    target[key] = value
    try:
        text = yaml.safe_dump(spec, allow_unicode=True)
    except (yaml.YAMLError, ValueError):  # PyYAML cannot write every Python value (> 4,300 digits)
        return
    _run_alone(repr(text[:300]), "w.yaml", text)


SET_KEYS = ["model.n_layers", "moe.router.top_k", "attention", "extends", "name", "moe", "layers.overrides", "a..b"]


@settings(max_examples=N_HYPOTHESIS, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(SET_KEYS) | st.text(max_size=20), YAMLISH | st.sampled_from(ODD_SCALARS), st.booleans())
def test_random_set_assignments_load_or_give_errors_naming_the_option(key: str, value: str, with_equals: bool):
    spec = SPECS[len(key) % len(SPECS)]
    assignment = f"{key}={value}" if with_equals else key
    _run_alone(repr(assignment[:200]), str(spec), None, (assignment,))
