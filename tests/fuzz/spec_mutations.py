"""Seeded text mutations of spec YAML, for tests/fuzz/test_fuzz_specs.py.

Each mutation takes a ``random.Random`` and a text and returns a new text. They work on characters
(insert, delete, duplicate, swap), on lines (delete, duplicate, swap, re-indent, truncate), on values
(an odd scalar in place of a real one) and on YAML features (anchors and aliases, merge keys, tags,
duplicate keys, ``extends``), so that a mutated shipped spec reaches every corner of the loader: the
YAML reader, the node builder, ``extends``, the schema and the cross-field checks.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable

# characters that mean something to YAML, and a few that must never reach a parser unlocated
INDICATORS = list(":{}[],&*!|>'\"%@`#-?<=~ \t\n")
ODD_CHARS = ["\x00", "\x07", "\x1b", "\x85", "\u2028", "\ufeff", "\ud800", "é", "😀", "\r", "\r\n", "\\"]
ODD_SCALARS = [
    "010",
    "0o10",
    "0x10",
    "0b10",
    "1:0",
    "1_000",
    "yes",
    "no",
    "on",
    "off",
    "y",
    "~",
    "",
    ".inf",
    "-.inf",
    ".nan",
    "-0",
    "+7",
    "1e999",
    "1e-999",
    "9" * 5000,
    "0x" + "f" * 3000,
    "-" + "9" * 1001,
    "2001-12-14",
    "!!int ''",
    "!!int 0x1F",
    "!!int 1.5",
    "!!float abc",
    "!!bool maybe",
    "!!bool yes",
    "!!null x",
    "!!str 5",
    "!!timestamp nope",
    "!!binary AAAA",
    "!!set {a}",
    "!!omap [a: 1]",
    "!custom 5",
    "! 5",
    "!!python/object/apply:os.system ['echo hi']",
    "!!python/name:os.system",
    "&r [*r]",
    "&m {a: *m}",
    "*nowhere",
    "{<<: 5}",
    "{<<: [1, 2]}",
    "[" * 70 + "]" * 70,
    "{a: " * 70 + "1" + "}" * 70,
    "'" + "a" * 20000 + "'",
    '"\\x00\\x1b[31m"',
    '"\\u2028"',
    '"line\\nbreak"',
    "|\n  block\n  text",
    "[1, 2, 3]",
    "{}",
    "[]",
    "null",
    "true",
    "-1",
    "1.5",
    "=",
]
EXTENDS = [
    "/etc/passwd",
    "/etc/shadow",
    "../secret.yaml",
    "../../etc/passwd",
    "sub/../base.yaml",
    "~/x.yaml",
    "missing.yaml",
    "mixtral-8x7b",
    "no-such-spec",
    ".hidden",
    "textbook-dense",
    "x\\y.yaml",
    "[a]",
    "1",
]

_VALUE = re.compile(r"(?m)(?<=: )[^\s#{}\[\],][^#\n,}\]]*")
_KEY = re.compile(r"(?m)^(\s*)([A-Za-z_][\w]*):")


def _span(rng: random.Random, text: str, longest: int = 40) -> tuple[int, int]:
    start = rng.randrange(len(text) + 1)
    return start, min(len(text), start + rng.randint(0, longest))


def insert_char(rng: random.Random, text: str) -> str:
    i = rng.randrange(len(text) + 1)
    c = rng.choice(INDICATORS + ODD_CHARS + [chr(rng.randrange(32, 0x2FF))])
    return text[:i] + c + text[i:]


def delete_span(rng: random.Random, text: str) -> str:
    a, b = _span(rng, text)
    return text[:a] + text[b:]


def duplicate_span(rng: random.Random, text: str) -> str:
    a, b = _span(rng, text)
    return text[:b] + text[a:b] + text[b:]


def swap_spans(rng: random.Random, text: str) -> str:
    a, b = sorted(_span(rng, text, 20))
    c, d = sorted(_span(rng, text, 20))
    if b > c:
        return text
    return text[:a] + text[c:d] + text[b:c] + text[a:b] + text[d:]


def _lines(text: str) -> list[str]:
    return text.splitlines(keepends=True) or [""]


def delete_line(rng: random.Random, text: str) -> str:
    lines = _lines(text)
    del lines[rng.randrange(len(lines))]
    return "".join(lines)


def duplicate_line(rng: random.Random, text: str) -> str:
    lines = _lines(text)
    i = rng.randrange(len(lines))
    lines.insert(rng.randrange(len(lines) + 1), lines[i])
    return "".join(lines)


def swap_lines(rng: random.Random, text: str) -> str:
    lines = _lines(text)
    i, j = rng.randrange(len(lines)), rng.randrange(len(lines))
    lines[i], lines[j] = lines[j], lines[i]
    return "".join(lines)


def reindent_line(rng: random.Random, text: str) -> str:
    lines = _lines(text)
    i = rng.randrange(len(lines))
    lines[i] = " " * rng.choice([0, 1, 2, 3, 4, 8]) + lines[i].lstrip(" ")
    return "".join(lines)


def truncate(rng: random.Random, text: str) -> str:
    return text[: rng.randrange(len(text) + 1)]


def odd_value(rng: random.Random, text: str) -> str:
    """A real value (``n_layers: 32``) replaced by an odd scalar, tag or structure."""
    spots = list(_VALUE.finditer(text))
    if not spots:
        return text
    m = rng.choice(spots)
    return text[: m.start()] + rng.choice(ODD_SCALARS) + text[m.end() :]


def anchor_and_alias(rng: random.Random, text: str) -> str:
    """An anchor on one value and an alias to it in place of another (possibly inside itself)."""
    spots = list(_VALUE.finditer(text))
    if len(spots) < 2:
        return text
    a, b = sorted(rng.sample(spots, 2), key=lambda m: m.start())
    if rng.random() < 0.5:
        a, b = b, a  # an alias before its anchor
    edits = sorted([(a.start(), a.start(), "&v "), (b.start(), b.end(), "*v")], reverse=True)
    for start, end, new in edits:
        text = text[:start] + new + text[end:]
    return text


def merge_key(rng: random.Random, text: str) -> str:
    """A section anchored and merged into another with ``<<``, sometimes with an override of its keys."""
    keys = [m for m in _KEY.finditer(text) if text[m.end() : m.end() + 1] == "\n"]
    if len(keys) < 2:
        return text
    src, dst = rng.sample(keys, 2)
    text = text[: src.end()] + " &sec" + text[src.end() :]
    dst = next((m for m in _KEY.finditer(text) if m.group(0) == dst.group(0)), None)
    if dst is None:
        return text
    pad = dst.group(1) + "  "
    value = rng.choice(["*sec", "[*sec]", "5", "[1]", "*nowhere", "{a: 1}"])
    return text[: dst.end()] + f"\n{pad}<<: {value}" + text[dst.end() :]


def tagged_key(rng: random.Random, text: str) -> str:
    keys = list(_KEY.finditer(text))
    if not keys:
        return text
    m = rng.choice(keys)
    tag = rng.choice(["!!str", "!!int", "!!python/name:os.system", "!x", "!!null", "? "])
    return text[: m.start(2)] + tag + " " + text[m.start(2) :]


def duplicate_key(rng: random.Random, text: str) -> str:
    lines = _lines(text)
    keyed = [i for i, line in enumerate(lines) if _KEY.match(line)]
    if not keyed:
        return text
    i = rng.choice(keyed)
    lines.insert(i + 1, lines[i])
    return "".join(lines)


def long_key(rng: random.Random, text: str) -> str:
    key = rng.choice(["k" * 300, "name" * 1000, "a b", "x" * 256, "k\\u0007"])
    return text + f'"{key}": 1\n' if rng.random() < 0.5 else f'? "{key}"\n: 1\n' + text


def extends(rng: random.Random, text: str) -> str:
    ref = rng.choice(EXTENDS)
    text = re.sub(r"(?m)^extends:.*\n", "", text)
    return f"extends: {ref}\n" + text


def many_keys(rng: random.Random, text: str) -> str:
    """Hundreds of unknown keys, a long list or a long flow mapping (sizes the loader must take in stride)."""
    n = rng.choice([200, 1000, 2000])
    kind = rng.randrange(3)
    if kind == 0:
        return text + "".join(f"junk{i}: {i}\n" for i in range(n))
    if kind == 1:
        return text + "frozen: [" + ", ".join(["embedding"] * n) + "]\n"
    return text + "extra: {" + ", ".join(f"k{i}: {i}" for i in range(n)) + "}\n"


def second_document(rng: random.Random, text: str) -> str:
    return text + rng.choice(["---\nname: again\n", "...\n", "%YAML 1.1\n---\n", "--- |\n  x\n"])


MUTATIONS: list[Callable[[random.Random, str], str]] = [
    insert_char,
    delete_span,
    duplicate_span,
    swap_spans,
    delete_line,
    duplicate_line,
    swap_lines,
    reindent_line,
    truncate,
    odd_value,
    odd_value,
    odd_value,
    anchor_and_alias,
    merge_key,
    tagged_key,
    duplicate_key,
    long_key,
    extends,
    many_keys,
    second_document,
]


def mutate(rng: random.Random, text: str) -> tuple[str, list[str]]:
    """One to three mutations of ``text``; also returns their names (for a failure's report)."""
    names = []
    for _ in range(rng.choice([1, 1, 1, 2, 3])):
        mutation = rng.choice(MUTATIONS)
        text = mutation(rng, text)
        names.append(mutation.__name__)
    return text, names
