"""The config.json an export writes, and the export's sizes: the torch-free part of ``moec export-hf``
(moec/hf/export_weights.py writes the weights)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from moec.errors import CommandError, Problem, SpecError
from moec.hf.config import export_hf_config, hf_to_model, plan_differences
from moec.hf.draft import CannotExport
from moec.hf.families import FAMILIES
from moec.spec.plan import ResolvedModel

if TYPE_CHECKING:
    from moec.nn.model import MoecModel

DEFAULT_MAX_SHARD = 5 * 10**9  # transformers' save_pretrained default, "5GB"
_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}


def parse_size(text: str) -> int:
    """``"5GB"``, ``"500MB"``, ``"2GiB"`` or a byte count → bytes (decimal units, as transformers reads them)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?I?B?)\s*", text.upper())
    if not m or m.group(2) not in _UNITS or float(m.group(1)) <= 0:
        raise CommandError(f"--max-shard-size: {text!r} is not a size (e.g. 5GB, 500MB, 2GiB or a byte count)")
    return int(float(m.group(1)) * _UNITS[m.group(2)])


def family_config(plan: ResolvedModel, model_type: str) -> dict[str, Any]:
    """``model_type``'s config.json for ``plan``, refused unless it imports back to the identical plan."""
    fam = FAMILIES.get(model_type)
    where = plan.source_file or plan.name
    if fam is None or fam.export is None:
        known = ", ".join(f.model_type for f in FAMILIES.values() if f.export is not None)
        raise SpecError([Problem(where, None, None, "family", f"{model_type!r} has no exporter (these do: {known})")])
    try:
        cfg = fam.export(plan)
    except CannotExport as e:
        raise SpecError([Problem(where, None, None, model_type, str(e))]) from None
    diff = plan_differences(plan, hf_to_model(cfg))
    if diff:
        raise SpecError([Problem(where, None, None, model_type, "cannot express " + "; ".join(diff[:3]))])
    return cfg


def model_config(
    model: MoecModel,
    *,
    family: str | None = None,
    config: Mapping[str, Any] | None = None,
    drop_training: bool = False,
) -> dict[str, Any]:
    """The config.json to write for ``model``: ``config`` as given, else ``family``'s, else the config it was
    imported from, else the first family that expresses the plan exactly. A given or remembered config must
    import to the model's plan."""
    if family is not None:
        return family_config(model.plan, family)
    if model.plan.mtp:
        where = model.plan.source_file or model.plan.name
        message = (
            f"the model has {len(model.plan.mtp)} multi-token-prediction module(s), which transformers neither "
            "builds nor saves; export a model without them (moec.from_hf(..., mtp=False))"
        )
        raise SpecError([Problem(where, None, None, "mtp", message)])
    given = config if config is not None else getattr(model, "hf_config", None)
    if given is not None:
        diff = plan_differences(model.plan, hf_to_model(dict(given)).replace(mtp=()))
        if not diff and config is None:
            return dict(given)
        if diff and config is not None:
            where = model.plan.source_file or model.plan.name
            raise SpecError([Problem(where, None, None, "config", "is not the model's: " + "; ".join(diff[:3]))])
        if config is not None:
            return dict(config)
    return export_hf_config(model.plan, drop_training=drop_training)
