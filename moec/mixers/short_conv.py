"""The gated short convolution (LFM2, LiquidAI 2025): ``b, c, v = in_proj(h)``; ``y = out_proj(c ⊙ conv(b ⊙ v))``,
the convolution causal and depthwise over the last ``kernel`` tokens of each of the ``d`` channels
(docs/mixers.md, "short_conv").

Its decode state is the last ``kernel − 1`` inputs of the convolution per channel: d·(kernel − 1) elements,
whatever the context.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from typing import Annotated

from pydantic import Field

from moec.strict import Strict

KIND = "short_conv"
MODULE = "ShortConv"


class ShortConvSection(Strict):
    """The spec's ``mixers.short_conv``: LFM2's gated short convolution, whose every width is the model's ``d``."""

    kernel: Annotated[int, Field(gt=0, le=64)] = 3
    """Tokens the causal depthwise convolution spans, the current one included (LFM2's conv_L_cache)."""
    bias: bool = False
    """Biases on the in/out projections and the convolution, all three or none (LFM2's conv_bias)."""


Section = ShortConvSection  # the contract's name (moec/mixers/__init__.py)


@dataclass(frozen=True, kw_only=True)
class Plan:
    kernel: int
    bias: bool
    kind: str = KIND


def plan(section: Section, d_model: int, norm_eps: float) -> Plan:
    """The section as it is: it has no defaults left to resolve and no norms of its own (``norm_eps`` unused)."""
    return Plan(kernel=section.kernel, bias=section.bias)


def problems(section: Section, d_model: int) -> list[tuple[tuple[str, ...], str]]:
    """None: every width is ``d``, so no field can disagree with another or with ``d`` (the bounds of ``kernel`` are
    the section's own)."""
    return []


def matmul_weights(plan: Plan, d_model: int) -> int:
    """in_proj (d → 3d: the two gates and the convolution's input) and out_proj (d → d)."""
    return 4 * d_model * d_model


def params(plan: Plan, d_model: int) -> int:
    """The projections' 4·d², the convolution's ``kernel`` taps per channel, and with ``bias`` the biases of all
    three: 3d (in_proj) + d (out_proj) + d (conv)."""
    d = d_model
    biases = (3 * d + d + d) if plan.bias else 0
    return matmul_weights(plan, d) + d * plan.kernel + biases


def mixing_flops(plan: Plan, d_model: int, seq: int) -> dict[str, Fraction]:
    """Per token, beyond the projections: the depthwise convolution, ``kernel`` multiply-adds per channel
    (2·kernel·d FLOPs); the gates ``b ⊙ v`` and ``c ⊙ ·`` and the bias are elementwise (0).

    The parallel (training, prefill) form convolves the whole sequence at once after ``kernel − 1`` zeros (or the
    cached inputs), so each of its ``seq`` outputs costs every tap, the first ones' zero taps included; a decode
    step is one window of ``kernel`` inputs. The two forms cost the same at every context: there is no chunking and
    nothing grows with ``seq``."""
    per_token = Fraction(2 * plan.kernel * d_model)
    return {"chunked": per_token, "recurrent": per_token}


def state_elements(plan: Plan, d_model: int) -> dict[str, int]:
    """The convolution's ``kernel − 1`` previous inputs, per channel (transformers' cache keeps ``kernel`` per
    channel, one of them never read again; moec counts what a decode step needs)."""
    return {"conv": d_model * (plan.kernel - 1)}


def module_kwargs(plan: Plan) -> dict[str, int | float | bool | str]:
    return {"kernel": plan.kernel, "bias": plan.bias}
