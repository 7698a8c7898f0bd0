"""The base spec of a sweep, read and parsed once; each combination is the same checks and resolution as
``moec.spec.load_model(spec, sets=...)`` on a copy of it, without reading and parsing the YAML again.

This uses moec/spec/load.py's own steps (``load_with_extends``, ``apply_set``, ``validate``) rather than a
copy of them, so a combination is accepted or refused exactly as `moec analyze --set` would; tests/sweep
holds the two to the same counts."""

from __future__ import annotations

from collections.abc import Sequence

from moec.errors import SpecError
from moec.spec.checks import check_spec
from moec.spec.encdec import refuse_encoder_decoder
from moec.spec.load import apply_set, load_with_extends, read_text_file, resolve_spec_path, validate
from moec.spec.plan import ResolvedModel
from moec.spec.resolve import resolve
from moec.spec.yamlio import Located


def _copy_for(base: Located, sets: Sequence[str]) -> Located:
    """A copy that ``sets`` may write into without touching ``base``: the marks, and the mappings along
    each assigned path (the rest is shared and only read)."""
    value = dict(base.value)
    for assignment in sets:
        node = value
        for part in assignment.split("=", 1)[0].strip().split(".")[:-1]:
            child = node.get(part)
            if not isinstance(child, dict):
                break
            node[part] = child = dict(child)
            node = child
    return Located(value, dict(base.marks), dict(base.key_marks))


class BaseSpec:
    def __init__(self, source: str, base_sets: Sequence[str] = ()) -> None:
        self.file = resolve_spec_path(source)
        self.located = load_with_extends(self.file, read_text_file(self.file), ())
        for assignment in base_sets:
            apply_set(self.located, assignment)
        self._prefix: tuple[tuple[str, ...] | None, Located] = (None, self.located)

    def _applied(self, sets: tuple[str, ...]) -> Located:
        """The base with ``sets`` applied, on a copy. A grid's combinations come in product order, all values
        of the last axis after one another, so the base with all but the last assignment is kept and reused
        (each value is then read as YAML once per run of the last axis rather than once per combination)."""
        prefix, last = sets[:-1], sets[-1:]
        if self._prefix[0] != prefix:
            loc = _copy_for(self.located, prefix)
            for assignment in prefix:
                apply_set(loc, assignment)
            self._prefix = (prefix, loc)
        loc = _copy_for(self._prefix[1], last)
        for assignment in last:
            apply_set(loc, assignment)
        return loc

    def model(self, sets: Sequence[str]) -> ResolvedModel:
        """The base with ``sets`` applied, checked and resolved; a SpecError as `--set` would give."""
        loc = self._applied(tuple(sets))
        spec = validate(loc, self.file)
        problems = check_spec(spec, loc)
        if problems:
            raise SpecError(problems)
        plan = resolve(spec, file=self.file)
        refuse_encoder_decoder(plan, "moec sweep")  # its headline sums decoder-only layers
        return plan
