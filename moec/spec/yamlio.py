"""YAML loading that remembers where every value came from.

Only ``yaml.SafeLoader`` is used: a spec is data, never code.  On top of it:
- every mapping key and value is recorded with its line and column, so validation errors can point
  at the exact place (PyYAML node marks are 0-based; we report 1-based);
- duplicate keys are an error (YAML silently keeps the last one);
- ``1e-5`` is a float (YAML 1.1 / PyYAML reads it as a string, a classic config trap);
- the expansion of aliases is bounded, so a "billion laughs" file is an error, not a hang.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import yaml

from moec.errors import Problem, SpecError

MAX_FILE_BYTES = 1 << 20
MAX_NODES = 200_000

Path = tuple[str | int, ...]


# libyaml's parser when present (5-10x faster); the resolver and constructor stay the Python ones,
# so the float rule below and the safe constructor apply either way.
class _Loader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # type: ignore[misc]
    pass


# YAML 1.2-style floats: accept 1e-5, 1E5, .5, 5. as floats (PyYAML 1.1 needs a dot and a sign).
_FLOAT = re.compile(
    r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
    |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
    |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
    |[-+]?\.(?:inf|Inf|INF)
    |\.(?:nan|NaN|NAN))$""",
    re.X,
)
_Loader.yaml_implicit_resolvers = {
    k: [(tag, rx) for tag, rx in v if tag != "tag:yaml.org,2002:float"]
    for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT, list("-+0123456789."))


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
        """The most specific mark known for ``path`` (falling back to its closest parent)."""
        table = self.key_marks if key else self.marks
        p = tuple(path)
        while True:
            if p in table:
                return table[p]
            if key and p in self.marks:
                return self.marks[p]
            if not p:
                return Mark("<unknown>", None, None)
            p = p[:-1]


def _mark(file: str, node: yaml.Node) -> Mark:
    return Mark(file, node.start_mark.line + 1, node.start_mark.column + 1)


def parse_yaml(text: str, file: str) -> Located:
    """Parse one YAML document into a :class:`Located`. Raises SpecError with the location."""
    if len(text.encode("utf-8", "replace")) > MAX_FILE_BYTES:
        raise SpecError([Problem(file, None, None, "", f"file is larger than {MAX_FILE_BYTES} bytes")])
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
    except yaml.MarkedYAMLError as e:
        m = e.problem_mark or e.context_mark
        line = m.line + 1 if m else None
        col = m.column + 1 if m else None
        msg = f"invalid YAML: {e.problem or e.context}"
        raise SpecError([Problem(file, line, col, "", msg)]) from None
    except yaml.YAMLError as e:  # pragma: no cover - other YAML errors carry no mark
        raise SpecError([Problem(file, None, None, "", f"invalid YAML: {e}")]) from None
    finally:
        loader.dispose()
    out = Located(None)
    if node is None:
        return Located({}, {(): Mark(file, 1, 1)})
    problems: list[Problem] = []
    budget = [MAX_NODES]

    def walk(n: yaml.Node, path: Path) -> Any:
        budget[0] -= 1
        if budget[0] < 0:
            raise SpecError(
                [Problem(file, *_lc(n), _dotted(path), "document too large (aliases expand past the node limit)")]
            )
        out.marks[path] = _mark(file, n)
        if isinstance(n, yaml.MappingNode):
            loader.flatten_mapping(n)  # resolves `<<` merge keys
            result: dict[str, Any] = {}
            for kn, vn in n.value:
                if not isinstance(kn, yaml.ScalarNode):
                    problems.append(Problem(file, *_lc(kn), _dotted(path), "mapping keys must be plain strings"))
                    continue
                key = loader.construct_object(kn)
                if not isinstance(key, str):
                    key = str(key)
                if key in result:
                    problems.append(Problem(file, *_lc(kn), _dotted(path + (key,)), "duplicate key"))
                    continue
                out.key_marks[path + (key,)] = _mark(file, kn)
                result[key] = walk(vn, path + (key,))
            return result
        if isinstance(n, yaml.SequenceNode):
            return [walk(c, path + (i,)) for i, c in enumerate(n.value)]
        try:
            return loader.construct_object(n, deep=True)
        except yaml.constructor.ConstructorError as e:
            problems.append(Problem(file, *_lc(n), _dotted(path), f"cannot read value: {e.problem}"))
            return None

    out.value = walk(node, ())
    if problems:
        raise SpecError(problems)
    return out


def parse_scalar(text: str) -> Any:
    """Parse the value of a ``--set key=value`` with the same YAML rules as a spec file."""
    return parse_yaml(text, "--set").value


def _lc(n: yaml.Node) -> tuple[int, int]:
    return n.start_mark.line + 1, n.start_mark.column + 1


def _dotted(path: Path) -> str:
    s = ""
    for p in path:
        s += f"[{p}]" if isinstance(p, int) else (f".{p}" if s else str(p))
    return s


dotted = _dotted
