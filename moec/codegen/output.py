"""``moec build``'s output folder, written atomically.

    DIR/model.py             the generated model (moec.codegen.render_model_source)
    DIR/spec.resolved.yaml   the resolved plan; moec.spec.plan_from_dict(yaml.safe_load(text)) reloads it
    DIR/analysis.json        moec.analyze.analyze(plan).to_dict()
    DIR/model.safetensors    only with weights: the model's state_dict, each tensor once

Everything is written into a fresh hidden sibling folder first and renamed into place at the end, so DIR
either appears complete or not at all; an existing DIR is replaced only with ``force`` (moved aside,
swapped, then removed). A tied ``lm_head.weight`` is the same tensor as ``embed.weight``, which
safetensors refuses to store twice: it is stored once, as ``embed.weight``, and
``safetensors.torch.load_model(model, path)`` restores the alias (``load_state_dict`` needs
``strict=False`` for it). The only metadata is ``{"format": "pt"}``: safetensors writes a metadata map
in no fixed order, and the same seed must give the same bytes.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from moec.spec.plan import ResolvedModel

if TYPE_CHECKING:
    import torch

MODEL_PY = "model.py"
RESOLVED = "spec.resolved.yaml"
ANALYSIS = "analysis.json"
WEIGHTS = "model.safetensors"


class OutputError(ValueError):
    """The output folder cannot be written as asked (exists without force, not a folder, no parent)."""


def check_output_dir(out: str | os.PathLike[str], *, force: bool) -> Path:
    """Refuse early (before any rendering or allocation) what :func:`write_build` would refuse."""
    out = Path(out)
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise OutputError(f"{out}: exists and is not a folder")
    if out.exists() and not force:
        raise OutputError(f"{out}: exists; pass --force to replace it")
    parent = out.parent if str(out.parent) else Path(".")
    if not parent.is_dir():
        raise OutputError(f"{out}: its parent folder {parent} does not exist")
    return out


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
) -> list[str]:
    """Write ``source`` (the rendered model.py), the resolved plan, its analysis and, given a ``model``, its
    weights into ``out``; return the file names written."""
    out = check_output_dir(out, force=force)
    files = {MODEL_PY: source, RESOLVED: resolved_yaml(plan), ANALYSIS: analysis_json(plan)}
    parent = out.parent if str(out.parent) else Path(".")
    tmp = parent / f".{out.name}.{secrets.token_hex(6)}.tmp"
    tmp.mkdir()  # the caller's umask applies (mkdtemp would make it private)
    try:
        for name, text in files.items():
            (tmp / name).write_text(text, encoding="utf-8")
        if model is not None:
            from safetensors.torch import save_file

            save_file(unique_state_dict(model), str(tmp / WEIGHTS), metadata={"format": "pt"})
            os.chmod(tmp / WEIGHTS, (tmp / MODEL_PY).stat().st_mode & 0o777)  # safetensors makes it private
        _move_into_place(tmp, out, force=force)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return [*files, *([WEIGHTS] if model is not None else [])]


def _move_into_place(tmp: Path, out: Path, *, force: bool) -> None:
    if not out.exists():
        os.rename(tmp, out)  # fails if a non-empty DIR appeared meanwhile: nothing is overwritten
        return
    if not force:
        raise OutputError(f"{out}: exists; pass --force to replace it")
    old = tmp.with_name(tmp.name[: -len(".tmp")] + ".old")
    os.rename(out, old)
    try:
        os.rename(tmp, out)
    except BaseException:
        os.rename(old, out)  # put the previous output back
        raise
    shutil.rmtree(old, ignore_errors=True)
