"""A config.json's text: parsed within bounds, and every key findable by line and column.

``json.loads`` alone is not safe on hostile text: deep nesting raises RecursionError, an integer of more
than 4300 digits raises a bare ValueError, and ``NaN`` / ``Infinity`` (not JSON) are accepted. Here each
of those, and a key given twice, is a :class:`SpecError` located at the offending spot.
"""

from __future__ import annotations

import bisect
import json
import re
from collections.abc import Callable
from itertools import accumulate, islice
from typing import Any

from moec.errors import Problem, SpecError

# Released configs nest three or four levels (a rope dict holding a list; a quantization_config's groups);
# far deeper would only exhaust the recursion of json and of repr.
MAX_DEPTH = 32
# No config number needs more digits than this; Python's own limit (4300) raises an unlocated ValueError.
MAX_INT_DIGITS = 100

# One JSON string, skipped whole so that nothing inside it is mistaken for structure. Every attempt that
# starts at a quote succeeds (an unterminated string runs to the end of the text, a lone trailing backslash
# included), so no scan restarts inside a string: a value of 200,000 escaped quotes is one match, not
# 200,000 rescans of the rest of the text.
_STRING = r'"[^"\\]*(?:\\[\s\S][^"\\]*)*(?:\\?(?:"|\Z))'
_STRING_RE = re.compile(_STRING)
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")
_STEP = {"[": 1, "{": 1, "]": -1, "}": -1}
_KEY = re.compile(_STRING + r"(?P<colon>\s*:)?")  # every string; keys are those followed by a colon
_BRACKET = re.compile(_STRING + r"|(?P<hit>[\[\]{}])")
_LONG_INT = re.compile(_STRING + r"|(?P<hit>-?\d{" + str(MAX_INT_DIGITS + 1) + ",})")
_CONSTANT = re.compile(_STRING + r"|(?P<hit>NaN|-?Infinity)")
_IDENTIFIER = re.compile(r"[A-Za-z_][\w.]*")


class _Refused(Exception):
    """Raised from inside json.loads by a parse hook; :func:`parse_object` locates it in the text."""

    def __init__(self, path: str, message: str, find: Callable[[str], int | None]):
        self.path, self.message, self.find = path, message, find


def _first_hit(pattern: re.Pattern[str]) -> Callable[[str], int | None]:
    def find(text: str) -> int | None:
        return next((m.start() for m in pattern.finditer(text) if m.group("hit") is not None), None)

    return find


def _line_col(text: str, offset: int) -> tuple[int, int]:
    line = text.count("\n", 0, offset) + 1
    return line, offset - (text.rfind("\n", 0, offset) + 1) + 1


def printable(key: str, limit: int = 100) -> str:
    """A field name as an error line shows it: as written, or JSON-escaped when it holds a line break, a
    control character or an unpaired surrogate (which would split the line or fail to print); cut short."""
    shown = key if key.isprintable() else json.dumps(key)
    return shown if len(shown) <= limit else shown[: limit - 3] + "..."


def _problem(file: str, text: str, offset: int | None, path: str, message: str) -> Problem:
    line, col = _line_col(text, _start(text) if offset is None else offset)
    return Problem(file, line, col, printable(path), message)


def _too_deep(text: str) -> int | None:
    """Offset of the first bracket that opens level MAX_DEPTH + 1, outside strings (at regex speed: a text
    of 300,000 empty lists is checked in milliseconds)."""
    if text.count("[") + text.count("{") <= MAX_DEPTH:
        return None  # the common case, without scanning
    brackets = _NOT_BRACKET.sub("", _STRING_RE.sub("", text))
    depths = list(accumulate(map(_STEP.__getitem__, brackets)))
    if max(depths, default=0) <= MAX_DEPTH:
        return None
    k = next(i for i, d in enumerate(depths) if d > MAX_DEPTH)
    outside = (m for m in _BRACKET.finditer(text) if m.group("hit") is not None)
    return next(islice(outside, k, None)).start()


def _int(digits: str) -> int:
    if len(digits.lstrip("-")) > MAX_INT_DIGITS:
        message = f"an integer of more than {MAX_INT_DIGITS} digits; no config value is that large"
        raise _Refused("", message, _first_hit(_LONG_INT))
    return int(digits)


def _constant(name: str) -> Any:
    raise _Refused("", f"{name} is not a JSON number (write a finite number)", _first_hit(_CONSTANT))


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:

            def second(text: str, key: str = k) -> int | None:
                found = KeyLocator(text).offsets(key)
                return found[1] if len(found) > 1 else None

            raise _Refused(k, "given twice in one object; which value counts is ambiguous", second)
        out[k] = v
    return out


def parse_object(text: str, file: str, what: str = "a config.json") -> dict[str, Any]:
    """The JSON object of a config.json (or other small JSON file's) text; a located SpecError otherwise."""
    deep = _too_deep(text)
    if deep is not None:
        raise SpecError([_problem(file, text, deep, "", f"nested more than {MAX_DEPTH} levels deep")])
    try:
        raw = json.loads(text, parse_int=_int, parse_constant=_constant, object_pairs_hook=_object)
    except json.JSONDecodeError as e:
        raise SpecError([Problem(file, e.lineno, e.colno, "", f"not valid JSON: {e.msg}")]) from None
    except _Refused as e:
        raise SpecError([_problem(file, text, e.find(text), e.path, e.message)]) from None
    except RecursionError:  # not expected after the depth check; kept so that no input escapes unlocated
        raise SpecError([_problem(file, text, None, "", "nested too deep to read")]) from None
    if not isinstance(raw, dict):
        raise SpecError([_problem(file, text, None, "", f"{what} must be a JSON object")])
    return raw


def _start(text: str) -> int:
    """Offset of the first non-blank character: where the config as a whole begins."""
    return len(text) - len(text.lstrip())


class KeyLocator:
    """Line and column of a config field's key, found by its dotted name (``attn_config.kv_n_heads``: the
    first ``kv_n_heads`` key after the ``attn_config`` key). A field the text does not spell (one at its
    transformers default) is located at its nearest spelled parent, else at the config's opening brace."""

    def __init__(self, text: str):
        self.text = text
        self._offsets: dict[str, list[int]] | None = None  # built on the first problem, not before
        self._line_starts: list[int] | None = None  # likewise: offsets where lines begin

    def offsets(self, key: str) -> list[int]:
        """Where ``key`` appears as an object key, in text order."""
        return self._keys().get(key, [])

    def _keys(self) -> dict[str, list[int]]:
        if self._offsets is None:
            self._offsets = {}
            for m in _KEY.finditer(self.text):
                if m.group("colon") is None:
                    continue  # a value
                raw = m.group(0)[: m.start("colon") - m.start()]
                try:
                    key = json.loads(raw) if "\\" in raw else raw[1:-1]
                except ValueError:
                    continue
                self._offsets.setdefault(key, []).append(m.start())
        return self._offsets

    def _after(self, key: str, offset: int) -> int | None:
        found = self.offsets(key)
        i = bisect.bisect_left(found, offset)
        return found[i] if i < len(found) else None

    def _walk(self, field: str) -> int | None:
        """The deepest key of the dotted field found in order; a part can hold dots itself (longest first).
        Field paths are a few parts deep; a key of 100,000 dots stays whole in the last of at most nine."""
        parts, best, i = field.split(".", 8), None, 0
        while i < len(parts):
            for j in range(len(parts), i, -1):
                hit = self._after(".".join(parts[i:j]), best if best is not None else 0)
                if hit is not None:
                    best, i = hit, j
                    break
            else:
                i += 1
        return best

    def locate(self, field: str) -> tuple[int, int]:
        hit = self._walk(field) if field else None
        if hit is None:  # a field named in words ("num_key_value_heads unset: = heads"): its leading name
            m = _IDENTIFIER.match(field)
            hit = self._walk(m.group(0)) if m else None
        offset = _start(self.text) if hit is None else hit
        if self._line_starts is None:  # thousands of problems: one pass over the text, not one each
            self._line_starts = [0] + [m.end() for m in re.finditer("\n", self.text)]
        line = bisect.bisect_right(self._line_starts, offset)
        return line, offset - self._line_starts[line - 1] + 1
