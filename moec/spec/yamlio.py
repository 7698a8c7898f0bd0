"""YAML loading that remembers where every value came from.

A spec is data, never code: moec reads YAML *events* (libyaml's parser when present, PyYAML's otherwise)
and builds the values itself, so no constructor of PyYAML ever runs on a spec. On top of plain YAML:

- every mapping key and value is recorded with its line and column, so validation errors can point at the
  exact place (1-based; a collection's mark is its start: its first key in block style, its ``{``/``[``
  in flow style);
- scalars follow the YAML 1.2 core schema: ``010`` is 10 (``0o10`` is 8, ``0x10`` is 16), ``1e-5`` is a
  float, ``true``/``false`` are the only booleans (``yes``, ``on``, ``1:0`` are strings). PyYAML follows
  YAML 1.1, where ``010`` is 8 and ``1:0`` is 60, both silent misreads of a config;
- the only tags are the core ones (``!!str``, ``!!int``, ``!!float``, ``!!bool``, ``!!null``, ``!!map``,
  ``!!seq``); any other tag, a value its tag cannot hold (``!!int ""``), a tagged or non-scalar key, an
  over-long key or string and an integer of more than ``MAX_INT_DIGITS`` digits are located errors;
- duplicate keys are an error (YAML silently keeps the last one), except that keys merged in with
  ``<<: *base`` are defaults that the mapping's own keys override, as the YAML merge-key spec says;
- nesting is at most ``MAX_DEPTH`` deep, aliases may not refer to a node that contains them, and the
  expansion of aliases is bounded (``MAX_NODES``), so a "billion laughs" file is an error, not a hang.
"""

from __future__ import annotations

import math
import re
import reprlib
from dataclasses import dataclass, field
from typing import Any

import yaml

from moec.errors import Problem, SpecError

try:  # libyaml's event parser, 5-10x faster; events only, so the rules below apply either way
    from yaml.cyaml import CParser as _EventParser
except ImportError:  # pragma: no cover - PyYAML without libyaml

    class _EventParser(yaml.reader.Reader, yaml.scanner.Scanner, yaml.parser.Parser):  # type: ignore[no-redef]
        def __init__(self, stream: str) -> None:
            yaml.reader.Reader.__init__(self, stream)
            yaml.scanner.Scanner.__init__(self)
            yaml.parser.Parser.__init__(self)


MAX_FILE_BYTES = 1 << 20
MAX_NODES = 200_000  # values built, aliases and merges expanded
MAX_DEPTH = 64  # a spec nests about 6 deep; libyaml itself slows down quadratically with depth
MAX_KEY_CHARS = 256
MAX_SCALAR_CHARS = 10_000
MAX_INT_DIGITS = 1000  # Python refuses to print integers of more than 4,300 digits

Path = tuple[str | int, ...]


@dataclass(frozen=True)
class Mark:
    file: str
    line: int | None
    column: int | None


@dataclass
class Located:
    """A plain Python value (dicts, lists, scalars) plus the mark of every path inside it."""

    value: Any
    marks: dict[Path, Mark] = field(default_factory=dict)
    # marks of mapping *keys* (where an unknown key should be reported)
    key_marks: dict[Path, Mark] = field(default_factory=dict)

    def mark_for(self, path: Path, *, key: bool = False) -> Mark:
        """The most specific mark known for ``path``: its own, else its closest parent's, else the document's."""
        table = self.key_marks if key else self.marks
        p = tuple(path)
        while True:
            if p in table:
                return table[p]
            if key and p in self.marks:
                return self.marks[p]
            if not p:
                return Mark("<unknown>", None, None)  # only a Located not built by parse_yaml lacks ()
            p = p[:-1]


# ---------------------------------------------------------------------------------------------
# scalars: the YAML 1.2 core schema (yaml.org/spec/1.2.2, section 10.3.2)

_NULL = re.compile(r"(?:~|null|Null|NULL|)")
_BOOL = {"true": True, "True": True, "TRUE": True, "false": False, "False": False, "FALSE": False}
_INT = re.compile(r"[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+")
_FLOAT = re.compile(
    r"[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN)"
)
_CORE_TAG = "tag:yaml.org,2002:"
_SCALAR_TAGS = ("str", "int", "float", "bool", "null")
# YAML's printable set (1.2.2, section 5.1); anything else is refused before parsing, with its place
_NOT_PRINTABLE = re.compile("[^\x09\x0a\x0d\x20-\x7e\x85\xa0-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
_LINE_BREAK = re.compile("\r\n|[\r\n\x85\u2028\u2029]")  # what libyaml counts as a new line


def _implicit_tag(text: str) -> str:
    """The core-schema type of a plain (unquoted, untagged) scalar."""
    if _NULL.fullmatch(text):
        return "null"
    if text in _BOOL:
        return "bool"
    if _INT.fullmatch(text):
        return "int"
    if _FLOAT.fullmatch(text):
        return "float"
    return "str"


def _to_int(text: str) -> int:
    if not _INT.fullmatch(text):
        raise ValueError(f"{short_repr(text)} is not an integer (YAML 1.2: 10, -3, 0o17, 0x1F)")
    digits = len(text.lstrip("+-"))
    if digits > MAX_INT_DIGITS:
        raise ValueError(f"an integer of {digits} digits is too long (at most {MAX_INT_DIGITS})")
    if text.startswith(("0o", "0x")):
        return int(text[2:], 8 if text[1] == "o" else 16)
    return int(text)


def _to_float(text: str) -> float:
    if not _FLOAT.fullmatch(text):
        raise ValueError(f"{short_repr(text)} is not a number (YAML 1.2: 1.5, 1e-5, .inf, .nan)")
    if text.lstrip("+-").lower() == ".inf":
        return -math.inf if text.startswith("-") else math.inf
    return math.nan if text.lower() == ".nan" else float(text)


def _to_bool(text: str) -> bool:
    if text not in _BOOL:
        raise ValueError(f"{short_repr(text)} is not a boolean (YAML 1.2: true or false)")
    return _BOOL[text]


def _to_null(text: str) -> None:
    if not _NULL.fullmatch(text):
        raise ValueError(f"{short_repr(text)} is not null (null, ~ or nothing)")
    return None


_CONSTRUCT = {"str": str, "int": _to_int, "float": _to_float, "bool": _to_bool, "null": _to_null}


def _tag_name(tag: str) -> str:
    """A tag as a spec writes it (``!!int``, ``!custom``), at most 40 characters, for messages."""
    if tag in _SCALAR_TAGS or tag in ("seq", "map"):
        tag = _CORE_TAG + tag
    name = "!!" + tag[len(_CORE_TAG) :] if tag.startswith(_CORE_TAG) else tag
    return name if len(name) <= 40 else name[:37] + "..."


def _tag_problem(node: _Node) -> str:
    name = _tag_name(node.tag)
    if node.tag.startswith(_CORE_TAG) and node.tag[len(_CORE_TAG) :] in (*_SCALAR_TAGS, "seq", "map"):
        return f"{name} cannot tag a {_KIND_WORDS[node.kind]}"
    return f"unsupported tag {name} (a spec holds only core YAML)"


_KIND_WORDS = {"scalar": "plain value", "seq": "list", "map": "mapping"}


# ---------------------------------------------------------------------------------------------
# events → nodes


@dataclass(eq=False)
class _Node:
    kind: str  # "scalar", "seq" or "map"
    tag: str  # a core type name ("int", "map", ...) or, when unsupported, the tag as written
    mark: Mark
    text: str = ""  # a scalar's content
    items: list[Any] = field(default_factory=list)  # seq: nodes; map: keys and values, alternating
    explicit: bool = False  # the tag was written (``!!int 5``), not read off the text
    merge: bool = False  # a plain ``<<`` key


def _mark_at(file: str, m: Any) -> Mark:
    return Mark(file, m.line + 1, m.column + 1)


def _position_mark(file: str, text: str, index: int) -> Mark:
    """Line and column of ``text[index]``, counting line breaks as libyaml does."""
    line, start = 1, 0
    for brk in _LINE_BREAK.finditer(text, 0, index):
        line, start = line + 1, brk.end()
    return Mark(file, line, index - start + 1)


def _tag_of(event: Any, kind: str) -> tuple[str, bool]:
    """(type name, whether the tag was written) of a scalar, sequence or mapping event."""
    tag = event.tag
    if tag is None or tag == "!":  # untagged; "!" (non-specific) makes a scalar a string
        if kind != "scalar":
            return kind, False
        plain = event.implicit[0] and tag is None
        return (_implicit_tag(event.value) if plain else "str"), False
    name = tag[len(_CORE_TAG) :] if tag.startswith(_CORE_TAG) else None
    core = _SCALAR_TAGS if kind == "scalar" else (kind,)
    return (name if name in core else tag), True


class _Composer:
    """Builds the node graph from events, refusing what a spec never needs before it costs anything."""

    def __init__(self, file: str) -> None:
        self.file = file
        self.anchors: dict[str, _Node] = {}
        self.stack: list[_Node] = []  # open collections, outermost first
        self.root: _Node | None = None
        self.documents = 0

    def fail(self, event: Any, message: str) -> None:
        raise SpecError([Problem(self.file, *_lc(_mark_at(self.file, event.start_mark)), "", message)])

    def add(self, node: _Node, event: Any) -> None:
        if event.anchor is not None:
            self.anchors[event.anchor] = node
        if self.stack:
            self.stack[-1].items.append(node)
        else:
            self.root = node

    def feed(self, event: Any) -> None:
        if isinstance(event, yaml.DocumentStartEvent):
            self.documents += 1
            if self.documents > 1:
                self.fail(event, "a spec is one YAML document; this starts a second one")
        elif isinstance(event, yaml.AliasEvent):
            self.alias(event)
        elif isinstance(event, yaml.ScalarEvent):
            tag, explicit = _tag_of(event, "scalar")
            merge = event.value == "<<" and event.tag is None and event.implicit[0]
            self.add(
                _Node("scalar", tag, _mark_at(self.file, event.start_mark), event.value, [], explicit, merge), event
            )
        elif isinstance(event, (yaml.SequenceStartEvent, yaml.MappingStartEvent)):
            if len(self.stack) >= MAX_DEPTH:
                self.fail(event, f"nested more than {MAX_DEPTH} levels deep")
            kind = "seq" if isinstance(event, yaml.SequenceStartEvent) else "map"
            tag, explicit = _tag_of(event, kind)
            node = _Node(kind, tag, _mark_at(self.file, event.start_mark), explicit=explicit)
            self.add(node, event)
            self.stack.append(node)
        elif isinstance(event, yaml.CollectionEndEvent):
            self.stack.pop()

    def alias(self, event: Any) -> None:
        node = self.anchors.get(event.anchor)
        if node is None:
            self.fail(event, f"alias *{event.anchor[:40]} refers to no anchor before it")
        elif any(node is open_node for open_node in self.stack):
            self.fail(event, f"alias *{event.anchor[:40]} refers to a node that contains it (recursive)")
        else:
            self.add(node, event)


def _compose(text: str, file: str) -> _Node | None:
    bad = _NOT_PRINTABLE.search(text)
    if bad is not None:
        m = _position_mark(file, text, bad.start())
        raise SpecError(
            [Problem(file, m.line, m.column, "", f"character U+{ord(bad.group()):04X} is not allowed in YAML")]
        )
    composer = _Composer(file)
    parser = _EventParser(text)
    try:
        while parser.check_event():
            composer.feed(parser.get_event())
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = _lc(_mark_at(file, mark)) if mark is not None else (1, 1)
        raise SpecError([Problem(file, *where, "", f"invalid YAML: {e.problem or e.context}")]) from None
    except yaml.YAMLError as e:  # a reader error (the check above catches what libyaml refuses)
        position = getattr(e, "position", None)
        m = _position_mark(file, text, min(position, len(text))) if isinstance(position, int) else Mark(file, 1, 1)
        reason = getattr(e, "reason", None) or type(e).__name__
        raise SpecError([Problem(file, m.line, m.column, "", f"invalid YAML: {reason}")]) from None
    finally:
        parser.dispose()
    return composer.root


# ---------------------------------------------------------------------------------------------
# nodes → values with marks


class _Builder:
    def __init__(self, file: str) -> None:
        self.file = file
        self.out = Located(None)
        self.problems: list[Problem] = []
        self.budget = MAX_NODES
        self.pairs_of: dict[int, list[tuple[str, _Node, _Node]]] = {}  # a mapping's, merges applied, once

    def problem(self, mark: Mark, path: Path, message: str) -> None:
        self.problems.append(Problem(mark.file, mark.line, mark.column, dotted(path), message))

    def spend(self, node: _Node, path: Path) -> None:
        self.budget -= 1
        if self.budget < 0:
            raise SpecError(
                [
                    Problem(
                        self.file,
                        *_lc(node.mark),
                        dotted(path),
                        "document too large (aliases expand past the node limit)",
                    )
                ]
            )

    def value(self, node: _Node, path: Path, depth: int) -> Any:
        self.spend(node, path)
        if depth > MAX_DEPTH:  # aliases can stack up nesting the text does not show
            raise SpecError(
                [Problem(self.file, *_lc(node.mark), dotted(path), f"nested more than {MAX_DEPTH} levels deep")]
            )
        self.out.marks[path] = node.mark
        if node.tag not in (node.kind, *_SCALAR_TAGS):
            self.problem(node.mark, path, _tag_problem(node))
            return None
        if node.kind == "map":
            result: dict[str, Any] = {}
            for key, key_node, value_node in self.pairs(node, path, 0):
                self.out.key_marks[path + (key,)] = key_node.mark
                result[key] = self.value(value_node, path + (key,), depth + 1)
            return result
        if node.kind == "seq":
            return [self.value(item, path + (i,), depth + 1) for i, item in enumerate(node.items)]
        return self.scalar(node, path)

    def scalar(self, node: _Node, path: Path) -> Any:
        if len(node.text) > MAX_SCALAR_CHARS:
            self.problem(
                node.mark, path, f"a value of {len(node.text)} characters is too long (at most {MAX_SCALAR_CHARS})"
            )
            return None
        try:
            return _CONSTRUCT[node.tag](node.text)
        except ValueError as e:
            tag = f"{_tag_name(node.tag)} " if node.explicit else ""
            self.problem(node.mark, path, f"{tag}{e}")
            return None

    def key(self, node: _Node, path: Path) -> str | None:
        """A mapping key's text, or None after reporting why it cannot be a field name."""
        if node.kind != "scalar" or (node.explicit and node.tag != "str"):
            what = node.kind if node.kind != "scalar" else f"tagged {_tag_name(node.tag)}"
            self.problem(node.mark, path, f"mapping keys must be plain strings, not a {what} key")
            return None
        if len(node.text) > MAX_KEY_CHARS:
            self.problem(node.mark, path, f"a key of {len(node.text)} characters is too long (at most {MAX_KEY_CHARS})")
            return None
        if not node.text.isprintable():
            self.problem(node.mark, path, f"key {short_repr(node.text)} holds a line break or control character")
            return None
        return node.text

    def pairs(self, node: _Node, path: Path, merge_depth: int) -> list[tuple[str, _Node, _Node]]:
        """(key, key node, value node) of a mapping: its own keys, then merged ones it does not override."""
        if id(node) in self.pairs_of:
            return self.pairs_of[id(node)]
        if merge_depth > MAX_DEPTH:
            raise SpecError(
                [Problem(self.file, *_lc(node.mark), dotted(path), f"merges nested more than {MAX_DEPTH} deep")]
            )
        own: dict[str, tuple[str, _Node, _Node]] = {}
        merged: list[_Node] | None = None
        for key_node, value_node in zip(node.items[::2], node.items[1::2], strict=True):
            if key_node.merge:
                if merged is not None:
                    self.problem(key_node.mark, path + ("<<",), "duplicate key")
                else:
                    merged = self.merge_sources(value_node, path)
                continue
            key = self.key(key_node, path)
            if key is None:
                continue
            if key in own:
                self.problem(key_node.mark, path + (key,), "duplicate key")
            else:
                own[key] = (key, key_node, value_node)
        for source in merged or ():
            for entry in self.pairs(source, path, merge_depth + 1):
                self.spend(source, path)
                own.setdefault(entry[0], entry)
        self.pairs_of[id(node)] = result = list(own.values())
        return result

    def merge_sources(self, node: _Node, path: Path) -> list[_Node]:
        """The mappings a ``<<`` key merges, earlier ones first (they win over later ones)."""
        items = node.items if node.kind == "seq" else [node]
        good = [item for item in items if item.kind == "map" and item.tag == "map"]
        if len(good) != len(items) or node.tag not in ("seq", "map"):
            self.problem(node.mark, path + ("<<",), "a merge (<<) takes a mapping or a list of mappings, as <<: *base")
        return good


def parse_yaml(text: str, file: str) -> Located:
    """Parse one YAML document into a :class:`Located` (value None for an empty document).
    Raises SpecError with every problem located."""
    size = len(text.encode("utf-8", "replace"))
    if size > MAX_FILE_BYTES:
        raise SpecError([Problem(file, 1, 1, "", f"{size} bytes is larger than {MAX_FILE_BYTES} (1 MiB)")])
    root = _compose(text, file)
    if root is None:
        return Located(None, {(): Mark(file, 1, 1)})
    builder = _Builder(file)
    value = builder.value(root, (), 0)
    if builder.problems:
        raise SpecError(builder.problems)
    builder.out.value = value
    return builder.out


def parse_scalar(text: str) -> Any:
    """Parse the value of a ``--set key=value`` with the same YAML rules as a spec file."""
    return parse_yaml(text, "--set").value


def _lc(m: Mark) -> tuple[int | None, int | None]:
    return m.line, m.column


_REPR = reprlib.Repr()  # (keyword arguments need Python 3.12)
_REPR.maxlevel, _REPR.maxdict, _REPR.maxlist = 2, 4, 4
_REPR.maxstring = _REPR.maxother = _REPR.maxlong = 36


def short_repr(v: Any) -> str:
    """A bounded repr for messages: about 40 characters at most, at a cost bounded whatever the input's size."""
    s = _REPR.repr(v)
    return s if len(s) <= 40 else s[:37] + "..."


def dotted(path: Path) -> str:
    s = ""
    for p in path:
        s += f"[{p}]" if isinstance(p, int) else (f".{p}" if s else str(p))
    return s
