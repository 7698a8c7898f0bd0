"""Fuzzing the Hugging Face config.json importer: every input either translates (and analyzes) or is
refused with a SpecError whose every problem names the file and a line and prints as one line, within 2 s
of CPU time and 200 MB (tracemalloc peak).

Inputs are the real release configs of ``tests/hf/configs.py`` mutated two ways, from fixed seeds:

- in their parsed values: a wrong type (a list for a string, a string for an integer, a mapping, null),
  huge, negative and fractional numbers, NaN and infinity, deep nesting, long lists, missing keys, extra
  keys (other families' fields and junk), inside nested mappings too (rope_scaling, attn_config, ...);
- in their JSON text: deleted and inserted characters, duplicated and swapped lines, truncation, numbers
  of hundreds of digits, brackets nested 40 deep, duplicate keys, a byte-order mark.

Plus Hypothesis properties: random JSON values in random fields; random integers in the integer fields
(judged by the spec's bounds and rules, their problems pointed back at the config); and a size field of
the wrong type, which must be refused at that field's own line (located independently, from the text).

``MOEC_FUZZ_N``: how many seeded inputs to run (default 1,000: 14 s of CPU, 24 s on a busy 2-core machine);
the Hypothesis properties run a tenth of that, at least 100 each. A long run, with the figures printed::

    MOEC_FUZZ_N=20000 python3 -m pytest -s -p no:cacheprovider tests/fuzz/test_fuzz_hf_config.py

The same variable sizes ``tests/fuzz/test_fuzz_specs.py``.
"""

from __future__ import annotations

import copy
import json
import math
import os
import random
import time
import tracemalloc
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from moec.analyze import analyze
from moec.errors import SpecError
from moec.hf.config import hf_to_model
from moec.hf.families import FAMILIES
from tests.hf.configs import RELEASES

N = int(os.environ.get("MOEC_FUZZ_N", "1000"))
N_HYPOTHESIS = max(100, N // 10)
# CPU seconds of this process, not wall-clock: a hang or a blow-up is caught, other processes on a shared machine
# do not count
MAX_SECONDS = 2.0
MAX_PEAK_BYTES = 200 << 20
FAILURE_KINDS = ("uncaught", "unlocated", "not one line", "too slow", "too large")

BASES = sorted(RELEASES)
# field names a mutation may add: every family's own (so a field of another family turns up) and junk
KNOWN_FIELDS = sorted({k for f in FAMILIES.values() for k in f.defaults} | {"text_config", "layer_types"})
JUNK_FIELDS = ["x", "", "model_type ", "a.b", "rope_scaling.factor", "ünïcode", "line\nbreak", "\ud800", "__class__"]


# ---------------------------------------------------------------------------------------------
# running one input


@dataclass
class Tally:
    inputs: int = 0
    translated: int = 0
    refused: int = 0
    max_seconds: float = 0.0
    max_peak: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)  # (kind, what happened)

    def summary(self) -> str:
        count = Counter(kind for kind, _ in self.failures)
        kinds = ", ".join(f"{count[k]} {k}" for k in FAILURE_KINDS)
        return (
            f"{self.inputs} inputs: {self.translated} translated, {self.refused} refused; {kinds}; slowest "
            f"{self.max_seconds * 1000:.0f} ms, largest tracemalloc peak {self.max_peak / 2**20:.1f} MiB"
        )

    def report(self) -> str:
        return "\n".join(f"{kind}: {text}" for kind, text in self.failures[:20])


def check(path: Path, text: str, what: str, tally: Tally) -> None:
    """Write ``text`` to ``path`` and import it; record anything but a translation or a located refusal."""
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    tally.inputs += 1
    tracemalloc.reset_peak()
    start = time.process_time()
    failure: tuple[str, str] | None = None
    try:
        analyze(hf_to_model(path))  # what `moec analyze config.json` does with a config that translates
        tally.translated += 1
    except SpecError as e:
        tally.refused += 1
        unlocated = [p for p in e.problems if p.file != str(path) or p.line is None]
        if unlocated or not e.problems:
            failure = "unlocated", f"{unlocated[:2] or 'no problems'}"
        elif not all(_one_printable_line(str(p)) for p in e.problems):
            failure = "not one line", f"{[str(p) for p in e.problems][:2]}"
    except Exception as e:  # noqa: BLE001 - anything else is the defect being hunted
        failure = "uncaught", f"{type(e).__name__}: {str(e)[:200]}"
    seconds = time.process_time() - start
    peak = tracemalloc.get_traced_memory()[1]
    tally.max_seconds, tally.max_peak = max(tally.max_seconds, seconds), max(tally.max_peak, peak)
    if failure is None and seconds > MAX_SECONDS:
        failure = "too slow", f"{seconds:.1f} s"
    if failure is None and peak > MAX_PEAK_BYTES:
        failure = "too large", f"tracemalloc peak {peak / 2**20:.0f} MiB"
    if failure is not None:
        tally.failures.append((failure[0], f"{what}: {failure[1]}"))


def _one_printable_line(line: str) -> bool:
    """What the CLI prints as ``error: <line>`` stays one line and encodes (no unpaired surrogate)."""
    try:
        line.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return len(line.splitlines()) == 1


@pytest.fixture
def tracing():
    tracemalloc.start()
    yield
    tracemalloc.stop()


# ---------------------------------------------------------------------------------------------
# mutations of parsed values


def _deep(depth: int) -> Any:
    v: Any = 1
    for _ in range(depth):
        v = [v]
    return v


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def weird_value(rng: random.Random, old: Any) -> Any:
    """A value of the wrong type or size for a config field, often derived from the one it replaces."""
    pool = [
        lambda: str(old),
        lambda: [old],
        lambda: {"name": old},
        lambda: None,
        lambda: not old if isinstance(old, bool) else True,
        lambda: rng.choice([-1, 0, 1, 2, 3]),
        # plausible integers: they pass the importer's type checks and meet the spec's bounds and rules
        lambda: rng.choice([1, 2, 3, 5, 7, 12, 100, 4095, 4097, 10**6, 2**31, 2**40]),
        lambda: old + rng.choice([-1, 1]) if _is_int(old) else 4097,
        lambda: old * rng.choice([2, 3, 1024]) if _is_int(old) else 2**20,
        lambda: old // rng.choice([2, 3, 7]) if _is_int(old) else 0,
        lambda: 10 ** rng.randint(3, 60),
        lambda: -(10 ** rng.randint(1, 30)),
        lambda: rng.choice([0.5, -0.0, 1e300, 1e-320, 2.5, -7.25]),
        lambda: old * 1.5 if isinstance(old, (int, float)) and not isinstance(old, bool) and abs(old) < 1e300 else 1.5,
        lambda: rng.choice([math.nan, math.inf, -math.inf]),
        lambda: rng.choice(["", "silu", "gelu", "yarn", "full_attention", "sliding_attention", "mixtral", "\u2028"]),
        lambda: [rng.choice(["full_attention", "sliding_attention", "chunked_attention", 1, None])] * rng.randint(0, 64),
        lambda: [0] * rng.choice([5000, 10000]),
        lambda: _deep(rng.randint(20, 40)),
        lambda: {"rope_type": rng.choice(["yarn", "llama3", "longrope", "linear", "dynamic", "default", 3, ["x"]]),
                 "factor": rng.choice([2.0, "2", None, -1]), "rope_theta": rng.choice([1e4, "1e4", 0])},
        lambda: 10**rng.randint(101, 400),  # more digits than any config value has
    ]  # fmt: skip
    return rng.choice(pool)()


def _slots(cfg: Any, depth: int = 0) -> list[tuple[Any, Any]]:
    """(container, key or index) of every value, nested mappings and lists included."""
    out: list[tuple[Any, Any]] = []
    items = cfg.items() if isinstance(cfg, dict) else enumerate(cfg) if isinstance(cfg, list) else []
    for k, v in items:
        out.append((cfg, k))
        if depth < 3 and isinstance(v, (dict, list)) and len(v) < 200:
            out += _slots(v, depth + 1)
    return out


def mutate_values(rng: random.Random, cfg: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    cfg = copy.deepcopy(cfg)
    done = []
    for _ in range(rng.randint(1, 3)):
        slots = _slots(cfg)
        container, key = rng.choice(slots) if slots else (cfg, "model_type")
        op = rng.random()
        if op < 0.6:
            container[key] = weird_value(rng, container[key])
            done.append(f"set {key!r}")
        elif op < 0.75 and isinstance(container, dict):
            del container[key]
            done.append(f"del {key!r}")
        else:
            target = container if isinstance(container, dict) else cfg
            new = rng.choice(KNOWN_FIELDS + JUNK_FIELDS)
            target[new] = weird_value(rng, target.get(new, 1))
            done.append(f"add {new!r}")
    return cfg, done


# ---------------------------------------------------------------------------------------------
# mutations of the JSON text

_TOKENS = ['"', "{", "}", "[", "]", ",", ":", "0", "-", "e", ".", "1e999", "null", "NaN", " ", "\n", "\\", "é", "\x00"]


def mutate_text(rng: random.Random, text: str) -> tuple[str, list[str]]:
    done = []
    for _ in range(rng.randint(1, 2)):
        lines = text.split("\n")
        at = rng.randrange(len(text) + 1)
        op = rng.randrange(9)
        if op == 0:
            text = text[:at] + text[at + rng.randint(1, 12) :]
        elif op == 1:
            text = text[:at] + rng.choice(_TOKENS) * rng.randint(1, 3) + text[at:]
        elif op == 2 and len(lines) > 2:
            i = rng.randrange(1, len(lines) - 1)
            lines.insert(i, lines[i])  # a key given twice, or a broken object
            text = "\n".join(lines)
        elif op == 3 and len(lines) > 3:
            i, j = rng.sample(range(1, len(lines) - 1), 2)
            lines[i], lines[j] = lines[j], lines[i]
            text = "\n".join(lines)
        elif op == 4:
            text = text[:at]
        elif op == 5:  # a number of hundreds of digits in place of the first digit after `at`
            k = next((i for i in range(at, len(text)) if text[i].isdigit()), None)
            if k is not None:
                text = text[:k] + "9" * rng.randint(90, 5000) + text[k:]
        elif op == 6:  # a value wrapped 30 to 45 brackets deep
            k = text.find(": ", at)
            if k >= 0:
                d = rng.randint(30, 45)
                end = text.find("\n", k)
                end = len(text) if end < 0 else end
                value = text[k + 2 : end].rstrip(",")
                text = text[: k + 2] + "[" * d + value + "]" * d + text[k + 2 + len(value) :]
        elif op == 7:
            text = "\ufeff" + text
        else:
            text = text.replace("true", "1", 1) if rng.random() < 0.5 else text.replace('": 0', '": -0.0e-0', 1)
        done.append(f"text op {op} at {at}")
    return text, done


def seeded_input(seed: int) -> tuple[str, str]:
    """(config.json text, what was done): a release config mutated in its values, its text, or both."""
    rng = random.Random(seed)
    base = rng.choice(BASES)
    cfg, done = RELEASES[base], []
    kind = rng.random()
    if kind < 0.6:
        cfg, done = mutate_values(rng, cfg)
    text = json.dumps(cfg, indent=2)
    if kind >= 0.45:
        text, more = mutate_text(rng, text)
        done += more
    return text, f"seed {seed} ({base}: {', '.join(done)})"


# ---------------------------------------------------------------------------------------------
# the tests


def test_release_configs_translate(tmp_path, tracing):
    """The unmutated bases: each translates (so a refusal of a mutant is the mutation's doing)."""
    tally = Tally()
    for name in BASES:
        check(tmp_path / "config.json", json.dumps(RELEASES[name], indent=2), name, tally)
    assert tally.failures == [], tally.report()
    assert tally.translated == len(BASES)


# Texts whose cost grows with the square of their length if any scan restarts inside a string or a key name.
PATHOLOGICAL = {
    "a value of escaped quotes": '{"model_type": "mixtral", "x": "' + '\\"' * 200_000 + '"}',
    "an unterminated string of escaped quotes": '{"model_type": "mixtral", "x": ' + "[" * 40 + '"' + '\\"' * 200_000,
    "a lone trailing backslash": '{"model_type": "mixtral", "x": ' + "[" * 40 + '"' + "\\\n" * 100_000 + "\\",
    "a key of 100,000 dots": '{"model_type": "mixtral", "' + "a." * 100_000 + 'b": 1}',
    "a nested key of 100,000 dots": '{"model_type": "dbrx", "attn_config": {"' + "a." * 100_000 + 'b": 1}}',
    "100,000 empty lists": '{"model_type": "mixtral", "x": [' + ",".join(["[]"] * 100_000) + "]}",
}


@pytest.mark.parametrize("case", sorted(PATHOLOGICAL))
def test_pathological_texts_are_refused_within_bounds(tmp_path, tracing, case):
    tally = Tally()
    check(tmp_path / "config.json", PATHOLOGICAL[case], case, tally)
    assert tally.failures == [], tally.report()
    assert tally.refused == 1


@pytest.mark.parametrize("indent", [None, 2])
def test_thirty_thousand_unknown_keys_are_located_within_bounds(tmp_path, indent):
    """One problem per unknown key, each located (all on one line, or one key a line): locating must not
    rescan the text per problem (that took 15 s for 60,000 keys). Timed without tracemalloc, which makes
    30,000 problems' small allocations about seven times slower."""
    cfg = {**RELEASES["mixtral"], **{f"unknown_{i}": i for i in range(30_000)}}
    tally = Tally()
    check(tmp_path / "config.json", json.dumps(cfg, indent=indent), "30,000 unknown keys", tally)
    assert tally.failures == [], tally.report()
    assert tally.refused == 1


def test_seeded_mutations_translate_or_give_located_errors(tmp_path, tracing):
    tally = Tally()
    for seed in range(N):
        text, what = seeded_input(seed)
        check(tmp_path / "config.json", text, what, tally)
    print("\nhf config fuzz:", tally.summary())
    assert tally.failures == [], tally.report()
    # the mutations reach both outcomes in earnest, not only the JSON parser's refusals
    assert tally.translated > N // 20 and tally.refused > N // 2


def _json_containers(children: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20), _json_containers, max_leaves=20
)


@settings(max_examples=N_HYPOTHESIS, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    base=st.sampled_from(BASES),
    changes=st.dictionaries(st.sampled_from(KNOWN_FIELDS + JUNK_FIELDS), json_values, min_size=1, max_size=4),
)
def test_random_values_in_random_fields_translate_or_give_located_errors(tmp_path, tracing, base, changes):
    tally = Tally()
    check(tmp_path / "config.json", json.dumps({**RELEASES[base], **changes}, indent=2), f"{base} + {changes}", tally)
    assert tally.failures == [], tally.report()


def _int_fields(cfg: dict[str, Any]) -> list[tuple[str, ...]]:
    """Key paths of the integer values of a config, nested mappings included."""
    out: list[tuple[str, ...]] = []
    for k, v in cfg.items():
        if _is_int(v):
            out.append((k,))
        elif isinstance(v, dict):
            out += [(k, *sub) for sub in _int_fields(v)]
    return out


@settings(max_examples=N_HYPOTHESIS, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(base=st.sampled_from(BASES), data=st.data())
def test_random_sizes_translate_or_give_located_errors(tmp_path, tracing, base, data):
    """Integers where the config has integers: they pass the importer's type checks, so the spec's bounds and
    rules (divisibility, top_k ≤ experts, ...) judge them, and their problems are pointed back at the config."""
    cfg = copy.deepcopy(RELEASES[base])
    paths = data.draw(st.lists(st.sampled_from(_int_fields(cfg)), min_size=1, max_size=3, unique=True))
    for keys in paths:
        node = cfg
        for k in keys[:-1]:
            node = node[k]
        node[keys[-1]] = data.draw(st.one_of(st.integers(0, 64), st.integers(0, 2**45)))
    tally = Tally()
    check(tmp_path / "config.json", json.dumps(cfg, indent=2), f"{base}: {paths}", tally)
    assert tally.failures == [], tally.report()


# Fields every translator reads as a positive integer (DBRX spells them its own way).
SIZE_FIELDS = {
    "dbrx": ["d_model", "n_heads", "n_layers", "vocab_size", "max_seq_len"],
    **{
        mt: ["hidden_size", "num_hidden_layers", "num_attention_heads", "vocab_size", "max_position_embeddings"]
        for mt in BASES
        if mt != "dbrx"
    },
}


@settings(max_examples=N_HYPOTHESIS, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    base=st.sampled_from(BASES),
    pick=st.integers(0, 4),
    value=st.one_of(st.text(max_size=8), st.lists(st.integers(1, 64), max_size=3), st.floats(0.5, 64.5), st.none()),
)
def test_a_size_field_of_the_wrong_type_is_refused_at_its_own_line(tmp_path, base, pick, value):
    key = SIZE_FIELDS[base][pick]
    text = json.dumps({**RELEASES[base], key: value}, indent=2)
    # json.dumps(indent=2) writes each top-level key on its own line, indented by exactly two spaces
    line = next(i for i, s in enumerate(text.split("\n"), 1) if s.startswith(f'  "{key}": '))
    path = tmp_path / "config.json"
    path.write_text(text)
    with pytest.raises(SpecError) as e:
        hf_to_model(path)
    mine = [p for p in e.value.problems if p.path == key]
    assert mine, [str(p) for p in e.value.problems]
    assert {(p.file, p.line, p.column) for p in mine} == {(str(path), line, 3)}
