"""The gated short convolution (LFM2): ``B, C, x = in_proj(h)``; ``y = out_proj(C ⊙ conv(B ⊙ x))``, the
convolution causal and depthwise over the last ``kernel`` tokens (docs/mixers.md, "short_conv").

Its decode state is the last ``kernel − 1`` inputs of the convolution per channel: d·(kernel − 1) elements,
whatever the context.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from typing import Annotated

from pydantic import Field

from moec.spec.base import Strict

KIND = "short_conv"
MODULE = "ShortConv"


class Section(Strict):
    kernel: Annotated[int, Field(gt=0, le=64)] = 3
    """Tokens the causal depthwise convolution spans (LFM2's conv_L_cache)."""
    bias: bool = False
    """Biases on the in/out projections and the convolution (LFM2's conv_bias)."""


@dataclass(frozen=True, kw_only=True)
class Plan:
    kernel: int
    bias: bool
    kind: str = KIND


def plan(section: Section, d_model: int, norm_eps: float) -> Plan:
    return Plan(kernel=section.kernel, bias=section.bias)


def problems(section: Section, d_model: int) -> list[tuple[tuple[str, ...], str]]:
    return []


def matmul_weights(plan: Plan, d_model: int) -> int:
    """in_proj (d → 3d) and out_proj (d → d)."""
    return 4 * d_model * d_model


def params(plan: Plan, d_model: int) -> int:
    d = d_model
    biases = (3 * d + d + d) if plan.bias else 0  # in_proj, out_proj, conv
    return matmul_weights(plan, d) + d * plan.kernel + biases


def mixing_flops(plan: Plan, d_model: int, seq: int) -> dict[str, Fraction]:
    """Per token: the kernel-tap depthwise convolution, 2·kernel per channel; the two gates are elementwise (0).
    The same in both forms and at every context."""
    per_token = Fraction(2 * plan.kernel * d_model)
    return {"chunked": per_token, "recurrent": per_token}


def state_elements(plan: Plan, d_model: int) -> dict[str, int]:
    """The convolution's kernel − 1 previous inputs, per channel."""
    return {"conv": d_model * (plan.kernel - 1)}


def module_kwargs(plan: Plan) -> dict[str, int | float | bool | str]:
    return {"kernel": plan.kernel, "bias": plan.bias}
