"""The spec language: schema, YAML loading with locations, validation, per-layer resolution.

Knows nothing of torch.
"""

from moec.errors import Problem, SpecError
from moec.spec.load import LoadedSpec, load_spec, resolve_spec_path
from moec.spec.plan import (
    AttentionPlan,
    DenseFFNPlan,
    LayerPlan,
    MoEPlan,
    NormPlan,
    PositionsPlan,
    ResolvedModel,
    RouterPlan,
    plan_from_dict,
)
from moec.spec.resolve import resolve
from moec.spec.schema import Spec


def load_model(source: str, *, sets: list[str] | tuple[str, ...] = ()) -> ResolvedModel:
    """Path or shipped name → validated, resolved model (the one-call entry point)."""
    return resolve(load_spec(resolve_spec_path(source), sets=sets))


__all__ = [
    "AttentionPlan",
    "DenseFFNPlan",
    "LayerPlan",
    "LoadedSpec",
    "MoEPlan",
    "NormPlan",
    "PositionsPlan",
    "Problem",
    "ResolvedModel",
    "RouterPlan",
    "Spec",
    "SpecError",
    "load_model",
    "load_spec",
    "plan_from_dict",
    "resolve",
    "resolve_spec_path",
]
