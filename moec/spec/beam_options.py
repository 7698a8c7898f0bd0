"""Cross-field checks of three options Beam brought (docs/conventions.md): the output gate's own bias
(attention.output_gate_bias), the power form of the NoPE query temperature (attention.temperature_tuning.form) and
depth-scaled residual adds (model.depth_scaled_residual)."""

from __future__ import annotations

from moec.spec.schema import Spec
from moec.spec.yamlio import Path

# the placements whose sublayers join the residual by a plain add, the add depth scaling rescales
_ADDING_PLACEMENTS = ("pre", "sandwich", "after_sublayer")


def _gate_bias_problems(spec: Spec) -> list[tuple[Path, str]]:
    a = spec.attention
    if a.output_gate_bias == "qkv":
        return []
    where: Path = ("attention", "output_gate_bias")
    if a.output_gate == "none":
        return [(where, "needs attention.output_gate head or element (the gate it biases)")]
    if a.kind != "gqa":
        return [(where, f"only a gqa layer's output gate has a bias to choose; {a.kind}'s gate has none")]
    return []


def _depth_scaled_problems(spec: Spec) -> list[tuple[Path, str]]:
    m = spec.model
    if not m.depth_scaled_residual:
        return []
    where: Path = ("model", "depth_scaled_residual")
    out: list[tuple[Path, str]] = []
    if m.norm.placement not in _ADDING_PLACEMENTS:
        out.append((where, f"needs model.norm.placement pre, sandwich or after_sublayer; got {m.norm.placement}"))
    if m.residual_multiplier != 1:
        out.append((where, "the scaled adds replace model.residual_multiplier: give one of them"))
    if m.block != "standard":
        out.append((where, f"needs model.block standard; got {m.block}"))
    if spec.mtp is not None:
        out.append((where, "MTP blocks have no place in the count of residual adds: not supported with mtp"))
    if spec.encoder is not None:
        out.append((where, "an encoder's residual adds are not counted: not supported with an encoder"))
    return out


def problems(spec: Spec) -> list[tuple[Path, str]]:
    """(path, message) for every problem of the three options; [] when none is written."""
    return [*_gate_bias_problems(spec), *_depth_scaled_problems(spec)]
