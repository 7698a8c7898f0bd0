"""Load a spec: read YAML with locations, follow ``extends``, apply ``--set``, validate everything.

All problems are collected and raised together as one :class:`SpecError`.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
import stat
from dataclasses import dataclass, replace
from pathlib import Path as FsPath
from typing import Any

from pydantic import BaseModel, ValidationError

from moec.errors import Problem, SpecError
from moec.output_files import SPECIAL_KINDS
from moec.spec.paths import shipped_spec_path
from moec.spec.schema import Spec
from moec.spec.yamlio import Located, Mark, Path, dotted, parse_scalar, parse_yaml
from moec.spec.yamlio import short_repr as _short

MAX_EXTENDS_DEPTH = 8
MAX_SUGGESTIONS = 100  # unknown fields for which a "did you mean" is looked up
SPEC_SUFFIXES = (".yaml", ".yml")
_BASE_RULE = "extends takes a shipped spec name or a .yaml/.yml file in this spec's folder"


@dataclass(frozen=True)
class LoadedSpec:
    spec: Spec
    file: str  # the file the user named (or "<string>")
    located: Located  # merged raw data with marks, for later error reporting
    spec_hash: str
    warnings: tuple[Problem, ...] = ()  # valid but probably not meant (moec.spec.traps)


def load_spec(source: str | FsPath, *, sets: list[str] | tuple[str, ...] = (), text: str | None = None) -> LoadedSpec:
    """Load and validate a spec from a path (or from ``text``, named ``source``)."""
    file = str(source)
    located = load_with_extends(file, text, chain=())
    for s in sets:
        apply_set(located, s)
    spec = validate(located, file)
    from moec.spec.checks import check_spec

    problems = check_spec(spec, located)
    if problems:
        raise SpecError(problems)
    from moec.spec.traps import spec_warnings

    canon = json.dumps(spec.model_dump(mode="json", exclude={"extends"}), sort_keys=True)
    spec_hash = hashlib.sha256(canon.encode()).hexdigest()[:16]
    return LoadedSpec(spec, file, located, spec_hash, tuple(spec_warnings(spec, located)))


def read_text_file(file: str, *, max_bytes: int = 1 << 20, kind: str = "spec") -> str:
    """A small UTF-8 regular file, or a SpecError naming the file and what is wrong with it.

    Never blocks and never reads more than ``max_bytes + 1`` bytes: a directory, FIFO, device or socket is
    refused from its ``stat`` before it is opened, the file is opened non-blocking (a FIFO swapped in after
    the stat would otherwise wait for a writer) and checked again on the open descriptor."""
    try:
        data = _read_regular(file, max_bytes, kind)
    except (FileNotFoundError, NotADirectoryError):
        raise SpecError([Problem(file, None, None, "", "no such file")]) from None
    except PermissionError:
        raise SpecError([Problem(file, None, None, "", "permission denied")]) from None
    except OSError as e:
        raise SpecError([Problem(file, None, None, "", f"cannot read: {e.strerror or e}")]) from None
    except ValueError:  # a NUL in the name
        raise SpecError([Problem(file, None, None, "", "not a valid file name")]) from None
    if isinstance(data, str):
        raise SpecError([Problem(file, None, None, "", data)])
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line_start = data.rfind(b"\n", 0, e.start) + 1
        line, column = data.count(b"\n", 0, e.start) + 1, len(data[line_start : e.start].decode("utf-8")) + 1
        raise SpecError([Problem(file, line, column, "", f"not UTF-8 text (byte 0x{data[e.start]:02x})")]) from None


_NOT_REGULAR = ((stat.S_ISDIR, "a directory"), *SPECIAL_KINDS)
_OPEN_FLAGS = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_CLOEXEC", 0)


def _not_regular(mode: int) -> str | None:
    """What a file is when it is not a regular file ("a FIFO (named pipe)"), else None."""
    if stat.S_ISREG(mode):
        return None
    return next((name for test, name in _NOT_REGULAR if test(mode)), "not a regular file")


def _read_regular(file: str, max_bytes: int, kind: str) -> bytes | str:
    """The bytes of a regular file of at most ``max_bytes``, or why not (a str)."""
    what = _not_regular(os.stat(file).st_mode)
    if what is not None:
        return f"is {what}, not a {kind} file"
    too_large = f"larger than {_size(max_bytes)}; not a {kind}"
    fd = os.open(file, _OPEN_FLAGS)
    try:
        st = os.fstat(fd)
        what = _not_regular(st.st_mode)  # replaced between the stat and the open
        if what is not None:
            return f"is {what}, not a {kind} file"
        if st.st_size > max_bytes:
            return too_large
        chunks, left = [], max_bytes + 1  # the size can grow after the fstat
        while left > 0:
            chunk = os.read(fd, min(left, 1 << 16))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
    finally:
        os.close(fd)
    return too_large if left <= 0 else b"".join(chunks)


def _size(n: int) -> str:
    return f"{n >> 20} MiB" if n % (1 << 20) == 0 else f"{n} bytes"


def resolve_spec_path(name: str) -> str:
    """A path as given if it exists; otherwise a shipped spec by name (``mixtral-8x7b``)."""
    try:
        if FsPath(name).exists():
            return name
    except (OSError, ValueError):  # a name too long to stat, or holding a NUL
        return name
    shipped = shipped_spec_path(name)
    return str(shipped) if shipped is not None else name


def load_with_extends(file: str, text: str | None, chain: tuple[str, ...]) -> Located:
    """``file``'s YAML (``text``, or read from it) with its ``extends:`` chain merged in, every node located;
    ``chain``: the files already being read, so that a cycle is refused rather than followed."""
    if text is None:
        text = read_text_file(file)
    loc = parse_yaml(text, file)
    if not isinstance(loc.value, dict):
        m = loc.mark_for(())
        what = "an empty document" if loc.value is None else f"a {type(loc.value).__name__}"
        raise SpecError([Problem(file, m.line, m.column, "", f"a spec must be a YAML mapping, not {what}")])
    ref = loc.value.get("extends")
    if ref is None:
        return loc
    m = loc.mark_for(("extends",))
    base_file = _find_base(ref, file, m)
    here = _real(file)
    if base_file in chain or base_file == here:
        raise SpecError([_at(m, f"cycle: {_short(ref)} extends this spec again")])
    if len(chain) >= MAX_EXTENDS_DEPTH:
        raise SpecError([_at(m, f"more than {MAX_EXTENDS_DEPTH} levels of extends")])
    try:
        base_text = read_text_file(base_file)
    except SpecError as e:  # the base as a file (a FIFO, too large): reported where extends names it
        raise SpecError([_at(m, f"{_short(ref)}: {p.message}") for p in e.problems]) from None
    base = load_with_extends(base_file, base_text, chain + (here,))
    own = {k: v for k, v in loc.value.items() if k != "extends"}
    return _merged(base, own, loc)


def _at(m: Mark, message: str) -> Problem:
    return Problem(m.file, m.line, m.column, "extends", message)


def _real(file: str) -> str:
    try:
        return str(FsPath(file).resolve())
    except (OSError, RuntimeError, ValueError):
        return file


def _find_base(ref: Any, from_file: str, m: Mark) -> str:
    """The file ``extends: ref`` names: a shipped spec, or a .yaml/.yml file inside the folder of the spec
    that names it (after resolving symbolic links). Anything else is refused before it is opened, so that
    no error can quote a line of a file that is not a spec (``extends: /etc/shadow``)."""
    if not isinstance(ref, str):
        raise SpecError([_at(m, "must be a spec name or a relative path")])
    if not (ref.endswith(SPEC_SUFFIXES) or "/" in ref or "\\" in ref):
        shipped = shipped_spec_path(ref)
        if shipped is None:
            raise SpecError([_at(m, f"no spec named or at {_short(ref)}")])
        return str(shipped.resolve())
    if "\0" in ref:
        raise SpecError([_at(m, f"{_short(ref)} holds a NUL character")])
    if FsPath(ref).is_absolute():  # (pathlib never expands "~": "~/x.yaml" is a folder named "~" here)
        raise SpecError([_at(m, f"{_short(ref)}: {_BASE_RULE}, not an absolute path")])
    if not ref.endswith(SPEC_SUFFIXES):
        raise SpecError([_at(m, f"{_short(ref)}: {_BASE_RULE}")])
    try:
        folder = FsPath(from_file).parent.resolve()
        target = (folder / ref).resolve()
    except (OSError, RuntimeError):  # a symbolic link loop
        raise SpecError([_at(m, f"{_short(ref)} cannot be resolved (a symbolic link loop?)")]) from None
    if not target.is_relative_to(folder) or target.suffix not in SPEC_SUFFIXES:
        raise SpecError([_at(m, f"{_short(ref)} leaves the folder of this spec; {_BASE_RULE}")])
    try:
        found = target.exists()
    except OSError:  # a name too long for the file system
        found = False
    if not found:
        raise SpecError([_at(m, f"no spec named or at {_short(ref)}")])
    return str(target)


def _merged(base: Located, own: dict[str, Any], child: Located) -> Located:
    """``own`` (the child's keys) deep-merged over ``base``: mappings merge, everything else replaces.
    Each path keeps the mark of the file whose value it holds. Linear in the size of both."""
    out = Located(_deep_merge(base.value, own))
    stack: list[tuple[Path, Any]] = [((), out.value)]
    while stack:
        path, value = stack.pop()
        mark = child.marks.get(path) or base.marks.get(path)
        if mark is not None:
            out.marks[path] = mark
        key_mark = child.key_marks.get(path) or base.key_marks.get(path)
        if key_mark is not None:
            out.key_marks[path] = key_mark
        if isinstance(value, dict):
            stack += [(path + (k,), v) for k, v in value.items()]
        elif isinstance(value, list):
            stack += [(path + (i,), v) for i, v in enumerate(value)]
    return out


def _deep_merge(base: dict[str, Any], own: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in own.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def apply_set(loc: Located, assignment: str) -> None:
    """``--set a.b=value``: the value read as YAML, written at ``a.b``; problems name the option."""
    if "=" not in assignment:
        raise SpecError([Problem("--set", None, None, "", f"expected key=value, got {_short(assignment)}")])
    key, raw = assignment.split("=", 1)
    parts = key.strip().split(".")
    if not all(p and p.isprintable() for p in parts):
        raise SpecError([Problem("--set", None, None, "", f"{_short(key)}: empty or unprintable field name")])
    field = dotted(tuple(parts))
    if parts[0] == "extends":
        raise SpecError(
            [Problem("--set", None, None, field, "extends is read before --set applies; write it in the spec")]
        )
    try:
        value = parse_scalar(raw)
    except SpecError as e:
        raise SpecError([Problem("--set", None, None, field, p.message) for p in e.problems]) from None
    mark = Mark("--set", None, None)
    target = loc.value
    path: Path = ()
    for p in parts[:-1]:
        path += (p,)
        if not isinstance(target.get(p), dict):
            if p in target and target[p] is not None:
                raise SpecError([Problem("--set", None, None, dotted(path), "is not a mapping")])
            target[p] = {}
            loc.marks[path] = mark
        target = target[p]
    path += (parts[-1],)
    target[parts[-1]] = value
    loc.marks[path] = mark
    loc.key_marks[path] = mark


def validate(loc: Located, file: str) -> Spec:
    try:
        return Spec.model_validate(loc.value)
    except ValidationError as e:
        errors = e.errors()
        # "did you mean" is for typos; a file of thousands of unknown keys is not one, and difflib would
        # spend most of the time of its errors on them
        suggest = sum(err["type"] == "extra_forbidden" for err in errors) <= MAX_SUGGESTIONS
        found = [(err, _problem_from_pydantic(err, loc, suggest)) for err in errors]
        raise SpecError(_one_per_union(found, loc.value)) from None


def _one_per_union(found: list[tuple[dict[str, Any], Problem]], value: Any) -> list[Problem]:
    """pydantic reports a value that no member of a union accepts once per member ('yes' for
    ``bool | Literal["shared"]``: not a boolean, not 'shared'); that is one problem, at its place, the members'
    complaints joined by "or"."""
    out: list[Problem] = []
    union_at: dict[tuple[str, int | None, int | None], int] = {}
    for err, p in found:
        if len(_data_path(err["loc"], value)) == len(err["loc"]):  # no union member's name left out
            out.append(p)
            continue
        key = (p.path, p.line, p.column)
        if key not in union_at:
            union_at[key] = len(out)
            out.append(p)
            continue
        first = out[union_at[key]]
        own = p.message.removeprefix(f"{_short(err['input'])}: ") if "input" in err else p.message
        out[union_at[key]] = replace(first, message=f"{first.message}, or {own}")
    return out


def _problem_from_pydantic(err: dict[str, Any], loc: Located, suggest: bool = True) -> Problem:
    path = _data_path(err["loc"], loc.value)
    kind = err["type"]
    msg = err["msg"]
    if kind == "extra_forbidden":
        m = loc.mark_for(path, key=True)
        msg = _unknown_field(path, suggest)
    elif kind == "missing":
        m = loc.mark_for(path[:-1])
        msg = "required field is missing"
    else:
        m = loc.mark_for(path)
        if "input" in err and kind not in ("model_type", "dict_type"):
            msg = f"{_short(err['input'])}: {msg[0].lower() + msg[1:]}"
        if msg.startswith("Value error, "):
            msg = msg[len("Value error, ") :]
        msg = msg.replace("Value error, ", "")
    return Problem(m.file, m.line, m.column, dotted(path), msg)


def _unknown_field(path: Path, suggest: bool) -> str:
    """ "unknown field 'x'", with the closest known name or the list of known names of its section."""
    msg = f"unknown field {path[-1]!r}"
    parent_model = _model_at(Spec, path[:-1])
    if parent_model is None:
        return msg
    close = suggest and difflib.get_close_matches(str(path[-1]), list(parent_model.model_fields), n=1, cutoff=0.6)
    if close:
        return msg + f"; did you mean {close[0]!r}?"
    return msg + f" (known: {', '.join(parent_model.model_fields)})"


def _data_path(pydantic_loc: tuple[Any, ...], value: Any) -> Path:
    """The path in the spec's data of an error's loc, without the union member names pydantic adds. An item
    the data holds is always kept: a key may be spelt like a member name (a top-level ``none:``)."""
    path: list[str | int] = []
    for p in pydantic_loc:
        held = isinstance(value, dict) and p in value
        held = held or (isinstance(value, list) and isinstance(p, int) and 0 <= p < len(value))
        if not held and _is_union_tag(p):
            continue
        path.append(p)
        value = value[p] if held else None
    return tuple(path)


def _is_union_tag(p: Any) -> bool:
    # pydantic adds the union member name ("int", "constrained-int", "list[...]", "literal[...]") to locs
    return isinstance(p, str) and (
        p.startswith(("constrained-", "list[", "literal[", "function-"))
        or p in ("int", "float", "str", "bool", "Select", "none")
    )


def _model_at(model: type[BaseModel], path: Path) -> type[BaseModel] | None:
    import typing

    cur: Any = model
    for p in path:
        if isinstance(p, int):
            continue
        if not (isinstance(cur, type) and issubclass(cur, BaseModel)) or p not in cur.model_fields:
            return None
        ann = cur.model_fields[p].annotation
        cur = _first_model(ann, typing)
    return cur if isinstance(cur, type) and issubclass(cur, BaseModel) else None


def _first_model(ann: Any, typing: Any) -> Any:
    if isinstance(ann, type) and issubclass(ann, BaseModel):
        return ann
    for a in typing.get_args(ann):
        found = _first_model(a, typing)
        if found is not None:
            return found
    return None
