"""Load a spec: read YAML with locations, follow ``extends``, apply ``--set``, validate everything.

All problems are collected and raised together as one :class:`SpecError`.
"""

from __future__ import annotations

import copy
import difflib
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path as FsPath
from typing import Any

from pydantic import BaseModel, ValidationError

from moec.errors import Problem, SpecError
from moec.spec.paths import shipped_spec_path
from moec.spec.schema import Spec
from moec.spec.yamlio import Located, Mark, Path, dotted, parse_scalar, parse_yaml

MAX_EXTENDS_DEPTH = 8


@dataclass(frozen=True)
class LoadedSpec:
    spec: Spec
    file: str  # the file the user named (or "<string>")
    located: Located  # merged raw data with marks, for later error reporting
    spec_hash: str


def load_spec(source: str | FsPath, *, sets: list[str] | tuple[str, ...] = (), text: str | None = None) -> LoadedSpec:
    """Load and validate a spec from a path (or from ``text``, named ``source``)."""
    file = str(source)
    located = _load_with_extends(file, text, chain=())
    for s in sets:
        _apply_set(located, s)
    spec = validate(located, file)
    from moec.spec.checks import check_spec

    problems = check_spec(spec, located)
    if problems:
        raise SpecError(problems)
    canon = json.dumps(spec.model_dump(mode="json", exclude={"extends"}), sort_keys=True)
    return LoadedSpec(spec, file, located, hashlib.sha256(canon.encode()).hexdigest()[:16])


def read_text_file(file: str, *, max_bytes: int = 1 << 20, kind: str = "spec") -> str:
    """A small UTF-8 file, or a SpecError naming the file (missing, a directory, too large, binary)."""
    p = FsPath(file)
    try:
        if p.is_dir():
            raise SpecError([Problem(file, None, None, "", f"is a directory, not a {kind} file")])
        if p.stat().st_size > max_bytes:
            raise SpecError([Problem(file, None, None, "", f"larger than {max_bytes >> 20} MiB; not a {kind}")])
        return p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError([Problem(file, None, None, "", "no such file")]) from None
    except UnicodeDecodeError:
        raise SpecError([Problem(file, None, None, "", "not UTF-8 text")]) from None
    except OSError as e:
        raise SpecError([Problem(file, None, None, "", f"cannot read: {e.strerror}")]) from None


def resolve_spec_path(name: str) -> str:
    """A path as given if it exists; otherwise a shipped spec by name (``mixtral-8x7b``)."""
    p = FsPath(name)
    if p.exists():
        return str(p)
    shipped = shipped_spec_path(name)
    return str(shipped) if shipped is not None else name


def _load_with_extends(file: str, text: str | None, chain: tuple[str, ...]) -> Located:
    if text is None:
        text = read_text_file(file)
    loc = parse_yaml(text, file)
    if not isinstance(loc.value, dict):
        m = loc.mark_for(())
        raise SpecError([Problem(file, m.line, m.column, "", "a spec must be a YAML mapping")])
    base_ref = loc.value.get("extends")
    if base_ref is None:
        return loc
    m = loc.mark_for(("extends",))
    if not isinstance(base_ref, str):
        raise SpecError([Problem(file, m.line, m.column, "extends", "must be a spec name or a relative path")])
    base_file = _find_base(base_ref, file)
    if base_file is None:
        raise SpecError([Problem(file, m.line, m.column, "extends", f"no spec named or at {base_ref!r}")])
    key = str(FsPath(base_file).resolve())
    if key in chain or key == str(FsPath(file).resolve()):
        raise SpecError([Problem(file, m.line, m.column, "extends", f"cycle: {base_ref!r} extends this spec again")])
    if len(chain) >= MAX_EXTENDS_DEPTH:
        raise SpecError(
            [Problem(file, m.line, m.column, "extends", f"more than {MAX_EXTENDS_DEPTH} levels of extends")]
        )
    base = _load_with_extends(base_file, None, chain + (str(FsPath(file).resolve()),))
    merged = Located(copy.deepcopy(base.value), dict(base.marks), dict(base.key_marks))
    own = dict(loc.value)
    own.pop("extends")
    _merge_into(merged, own, loc, ())
    merged.value.pop("extends", None)
    return merged


def _find_base(ref: str, from_file: str) -> str | None:
    if ref.endswith((".yaml", ".yml")) or "/" in ref:
        cand = (FsPath(from_file).parent / ref) if not FsPath(ref).is_absolute() else FsPath(ref)
        return str(cand) if cand.is_file() else None
    shipped = shipped_spec_path(ref)
    return str(shipped) if shipped is not None else None


def _merge_into(dst: Located, src: Any, src_loc: Located, path: Path) -> None:
    """Deep-merge mapping ``src`` (from ``src_loc``) into ``dst.value`` at ``path``. Lists replace."""
    target = dst.value
    for p in path:
        target = target[p]
    for k, v in src.items():
        sub = path + (k,)
        if isinstance(v, dict) and isinstance(target.get(k), dict):
            _merge_into(dst, v, src_loc, sub)
            dst.marks[sub] = src_loc.mark_for(sub)
        else:
            target[k] = copy.deepcopy(v)
            for table, src_table in ((dst.marks, src_loc.marks), (dst.key_marks, src_loc.key_marks)):
                for old in [q for q in table if q[: len(sub)] == sub]:
                    del table[old]
                for q, mk in src_table.items():
                    if q[: len(sub)] == sub:
                        table[q] = mk
        if sub in src_loc.key_marks:
            dst.key_marks[sub] = src_loc.key_marks[sub]


def _apply_set(loc: Located, assignment: str) -> None:
    mark = Mark("--set", None, None)
    if "=" not in assignment:
        raise SpecError([Problem("--set", None, None, "", f"expected key=value, got {assignment!r}")])
    key, raw = assignment.split("=", 1)
    parts = key.strip().split(".")
    if not all(parts):
        raise SpecError([Problem("--set", None, None, key, "empty field name in path")])
    value = parse_scalar(raw)
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
        raise SpecError([_problem_from_pydantic(err, loc) for err in e.errors()]) from None


def _problem_from_pydantic(err: dict[str, Any], loc: Located) -> Problem:
    path: Path = tuple(p for p in err["loc"] if not _is_union_tag(p))
    kind = err["type"]
    msg = err["msg"]
    if kind == "extra_forbidden":
        m = loc.mark_for(path, key=True)
        parent_model = _model_at(Spec, path[:-1])
        msg = f"unknown field {path[-1]!r}"
        if parent_model is not None:
            close = difflib.get_close_matches(str(path[-1]), list(parent_model.model_fields), n=1, cutoff=0.6)
            if close:
                msg += f"; did you mean {close[0]!r}?"
            else:
                msg += f" (known: {', '.join(parent_model.model_fields)})"
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


def _is_union_tag(p: Any) -> bool:
    # pydantic adds the union member name ("int", "constrained-int", "list[...]") to locs
    return isinstance(p, str) and (
        p.startswith(("constrained-", "list[", "function-")) or p in ("int", "float", "str", "bool", "Select", "none")
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


def _short(v: Any) -> str:
    s = repr(v)
    return s if len(s) <= 40 else s[:37] + "..."
