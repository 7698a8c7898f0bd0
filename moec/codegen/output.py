"""``moec build``'s output folder, written atomically, replaced only when moec wrote it (docs/output-safety.md).

    DIR/model.py             the generated model (moec.codegen.render_model_source)
    DIR/spec.resolved.yaml   the resolved plan; moec.spec.plan_from_dict(yaml.safe_load(text)) reloads it
    DIR/analysis.json        moec.analyze.analyze(plan).to_dict()
    DIR/model.safetensors    only with weights: the model's state_dict, each tensor once
    DIR/moec-manifest.json   written last: every file above with its size and SHA-256

Everything is written into a hidden sibling folder first (named with ``moec-partial``) and renamed into
place at the end, so DIR either appears complete or not at all. An existing DIR is replaced only with
``force``, and only when its manifest lists every entry in it and every file still has the recorded size
and hash: a folder holding anything else (a user's file, a changed model.py) is refused, naming what is in
the way. The old DIR is moved aside (``moec-replaced``), the new one renamed in, the old one removed; a run
killed between those renames is repaired by the next one.

A tied ``lm_head.weight`` is the same tensor as ``embed.weight``, which safetensors refuses to store twice:
it is stored once, as ``embed.weight``, and ``safetensors.torch.load_model(model, path)`` restores the alias
(``load_state_dict`` needs ``strict=False`` for it). The only metadata is ``{"format": "pt"}``: safetensors
writes a metadata map in no fixed order, and the same seed must give the same bytes.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import TYPE_CHECKING, Any

from moec.errors import CommandError
from moec.output_files import (
    REPLACED_TAG,
    check_folder_writable,
    interrupts_raise,
    kind_of,
    leftovers_of,
    lstat_or_none,
    parent_of,
    refuse_special,
    remove_tree,
    sha256_of,
    sweep_partials,
    temporary_sibling,
    write_new_file,
)
from moec.spec.plan import ResolvedModel

if TYPE_CHECKING:
    import torch

MODEL_PY = "model.py"
RESOLVED = "spec.resolved.yaml"
ANALYSIS = "analysis.json"
WEIGHTS = "model.safetensors"
MANIFEST = "moec-manifest.json"
MAX_MANIFEST_BYTES = 1 << 20  # ~100 bytes an entry: room for thousands of checkpoint shards
_SHOWN = 5  # entries named when a folder is refused


def check_output_dir(out: str | os.PathLike[str], *, force: bool) -> Path:
    """Refuse early (before any rendering or allocation) what :func:`write_build` would refuse."""
    out = Path(out)
    st = lstat_or_none(out)
    if st is not None:
        refuse_special(out, st)
        if not stat.S_ISDIR(st.st_mode):
            raise CommandError(f"{out}: is {kind_of(st.st_mode)}, not a folder; moec build writes a folder")
        _check_replaceable(out, force=force)
    check_folder_writable(parent_of(out), str(out))
    return out


def _entries(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def _check_replaceable(out: Path, *, force: bool) -> None:
    """An existing folder may be filled when empty, and replaced (with ``force``) when moec wrote it."""
    entries = _entries(out)
    if not entries:
        return
    strangers = _not_written_by_moec(out, entries)
    if strangers:
        shown = ", ".join(strangers[:_SHOWN]) + (
            f" and {len(strangers) - _SHOWN} more" if len(strangers) > _SHOWN else ""
        )
        raise CommandError(
            f"{out}: exists and holds files moec did not write, or changed since ({shown}); moec replaces "
            "only a folder it built itself, so choose another -o"
        )
    if not force:
        raise CommandError(f"{out}: exists (an earlier moec build); pass --force to replace it")
    if stat.S_IMODE(os.stat(out).st_mode) & 0o222 == 0:
        raise CommandError(f"{out}: is read-only; nothing was replaced")


def _read_manifest(out: Path) -> dict[str, Any] | None:
    path = out / MANIFEST
    st = lstat_or_none(path)
    if st is None or not stat.S_ISREG(st.st_mode) or st.st_size > MAX_MANIFEST_BYTES:
        return None
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    files = manifest.get("files") if isinstance(manifest, dict) else None
    return files if isinstance(files, dict) else None


def _not_written_by_moec(out: Path, entries: list[str]) -> list[str]:
    """The entries of ``out`` that its manifest does not vouch for (all of them when there is none)."""
    files = _read_manifest(out)
    if files is None:
        return entries
    return [name for name in entries if name != MANIFEST and not _unchanged(out / name, files.get(name))]


def _unchanged(path: Path, recorded: Any) -> bool:
    st = lstat_or_none(path)
    if st is None or not stat.S_ISREG(st.st_mode) or not isinstance(recorded, dict):
        return False
    return recorded.get("bytes") == st.st_size and recorded.get("sha256") == sha256_of(path)


def _plain(x: Any) -> Any:
    """Tuples → lists (yaml.safe_dump refuses tuples), recursively."""
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    return x


def resolved_yaml(plan: ResolvedModel) -> str:
    import yaml

    head = "# The resolved per-layer plan, written by `moec build`.\n"
    head += "# moec.spec.plan_from_dict(yaml.safe_load(text)) reloads it.\n"
    return head + yaml.safe_dump(_plain(plan.to_dict()), sort_keys=False, allow_unicode=True)


def read_build_plan(folder: str | os.PathLike[str]) -> ResolvedModel:
    """The plan a build folder's spec.resolved.yaml holds (the inverse of resolved_yaml). A hand-edited,
    truncated or foreign file is the user's to fix: one CommandError naming it, never an internal error."""
    import yaml

    from moec.spec import plan_from_dict

    path = Path(folder) / RESOLVED
    try:
        return plan_from_dict(yaml.safe_load(path.read_text(encoding="utf-8")))
    except (yaml.YAMLError, TypeError, KeyError, ValueError, AttributeError) as e:
        reason = " ".join(str(e).split())  # YAML's messages span lines
        raise CommandError(f"{path}: not a plan moec build wrote ({type(e).__name__}: {reason})") from None


def analysis_json(plan: ResolvedModel) -> str:
    from moec.analyze import analyze

    return json.dumps(analyze(plan).to_dict(), indent=2) + "\n"


def unique_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The state_dict with every tensor once: an alias (a tied head) is dropped in favour of the first name."""
    seen: set[tuple[int, tuple[int, ...], tuple[int, ...]]] = set()
    out: dict[str, torch.Tensor] = {}
    for name, t in model.state_dict().items():
        key = (t.untyped_storage().data_ptr() + t.storage_offset() * t.element_size(), tuple(t.shape), t.stride())
        if key in seen:
            continue
        seen.add(key)
        out[name] = t.detach().contiguous()
    return out


def write_build(
    out: str | os.PathLike[str],
    plan: ResolvedModel,
    source: str,
    *,
    model: torch.nn.Module | None = None,
    force: bool = False,
) -> tuple[list[str], list[str]]:
    """Write ``source`` (the rendered model.py), the resolved plan, its analysis and, given a ``model``, its
    weights into ``out``; return the file names written and notes about an earlier run's leftovers."""
    notes = clear_leftovers(out)
    check_output_dir(out, force=force)
    files: dict[str, str | dict[str, torch.Tensor]] = {
        MODEL_PY: source,
        RESOLVED: resolved_yaml(plan),
        ANALYSIS: analysis_json(plan),
    }
    if model is not None:
        files[WEIGHTS] = unique_state_dict(model)
    return write_folder(out, files, force=force, written_by="moec build"), notes


def write_folder(out: str | os.PathLike[str], files: dict[str, Any], *, force: bool, written_by: str) -> list[str]:
    """``files`` (name → text, or a dict of tensors stored as safetensors) as the folder ``out`` under the rules
    above: a temporary sibling renamed into place, the manifest written last. The caller has checked ``out``
    (check_output_dir) and swept leftovers (clear_leftovers). Returns the names written, the manifest last."""
    out = Path(out)
    tmp = temporary_sibling(out)
    with interrupts_raise():
        try:
            tmp.mkdir()  # the caller's umask applies (mkdtemp would make it private)
            for name, content in files.items():
                if isinstance(content, str):
                    write_new_file(tmp / name, content.encode("utf-8"))
                else:
                    _write_tensors(tmp / name, content)
            _write_manifest(tmp, written_by)
            _move_into_place(tmp, out, force=force)
        except OSError as e:
            raise CommandError(f"{out}: cannot write: {e.strerror or e}; nothing was written") from None
        finally:
            remove_tree(tmp)
    return [*files, MANIFEST]


def _write_tensors(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    from safetensors.torch import save_file

    write_new_file(path, b"")  # created with the umask's mode, then filled
    mode = path.stat().st_mode & 0o777
    save_file(tensors, str(path), metadata={"format": "pt"})
    os.chmod(path, mode)  # safetensors makes its files private


def _write_manifest(folder: Path, written_by: str) -> None:
    files = {
        name: {"bytes": (folder / name).stat().st_size, "sha256": sha256_of(folder / name)} for name in _entries(folder)
    }
    text = json.dumps({"written_by": written_by, "files": files}, indent=2) + "\n"
    write_new_file(folder / MANIFEST, text.encode("utf-8"))


def _move_into_place(tmp: Path, out: Path, *, force: bool) -> None:
    if lstat_or_none(out) is None or not _entries(out):
        try:
            os.rename(tmp, out)  # fails if a non-empty DIR appeared meanwhile: nothing is overwritten
        except OSError as e:
            raise CommandError(f"{out}: appeared while building ({e.strerror}); nothing was replaced") from None
        return
    _check_replaceable(out, force=force)  # again, just before the swap: the folder may have changed
    old = temporary_sibling(out, REPLACED_TAG)
    os.rename(out, old)
    try:
        os.rename(tmp, out)
    except BaseException:
        os.rename(old, out)  # put the previous output back
        raise
    remove_tree(old)


def clear_leftovers(out: str | os.PathLike[str]) -> list[str]:
    """Repair or remove what an interrupted earlier build of ``out`` left beside it; a note for each."""
    out = Path(out)
    return _repair_interrupted_swap(out) + sweep_partials(out)


def _repair_interrupted_swap(out: Path) -> list[str]:
    """A run killed between moving the old DIR aside and renaming the new one in leaves the old one under a
    ``moec-replaced`` name: put it back if DIR is missing, otherwise remove it (DIR is its replacement)."""
    notes = []
    for old in leftovers_of(out, REPLACED_TAG):
        if lstat_or_none(out) is None:
            os.rename(old, out)
            notes.append(f"restored {out} from {old}, where an interrupted earlier --force build had moved it")
        elif not _not_written_by_moec(old, _entries(old)):
            remove_tree(old)
            notes.append(f"removed {old}, a previous build an interrupted earlier --force build had replaced")
        else:
            notes.append(f"{old} is left over from an interrupted earlier build and was left as it is")
    return notes
