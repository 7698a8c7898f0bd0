"""A token mixer's plan (docs/mixers.md) at a smaller model width, for the smoke-run's scaled-down copies.

One function per kind in :data:`SCALERS`, each ``(plan, old_d_model, d_model, seq) → plan``: the model's width
before and after, and the run's sequence length. Heads and widths shrink by
the factor (never below a small floor, never above the original); the structure stays: a grouping of heads
(Gated DeltaNet's value heads per key head, Mamba2's groups), a low rank against full rank (KDA's 0), the
convolution's kernel, the decay kind, every flag. The chunk of a chunked form is capped at half the run's
sequence, as :func:`moec.smoke.scale.shrink` caps an attention chunk, so that a short run still crosses a
chunk boundary. Each result meets its kind's ``problems()`` at the new width (tests/smoke/test_hybrid_smoke.py).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

MIN_HEAD_DIM = 8
MIN_STATE = 4


def _scaled(x: int, factor: float, lo: int, mult: int = 1) -> int:
    """x·factor rounded to a multiple of ``mult``, at least ``lo`` and at most x (a copy never grows)."""
    return min(x, max(lo, int(round(x * factor / mult)) * mult))


def _chunk(chunk: int, seq: int) -> int:
    return min(chunk, max(2, seq // 2))


def _heads(n: int, factor: float) -> int:
    """Heads shrink with the width but stay at least two (one head would hide per-head bugs) unless there was
    one."""
    return _scaled(n, factor, min(n, 2))


def _gated_deltanet(plan: Any, old_d: int, d_model: int, seq: int) -> Any:
    factor = d_model / old_d
    per_key = plan.n_value_heads // plan.n_key_heads  # value heads per key head: problems() wants a multiple
    keys = _heads(plan.n_key_heads, factor)
    return dataclasses.replace(
        plan,
        n_key_heads=keys,
        n_value_heads=keys * per_key,
        key_head_dim=_scaled(plan.key_head_dim, factor, MIN_HEAD_DIM, 2),
        value_head_dim=_scaled(plan.value_head_dim, factor, MIN_HEAD_DIM, 2),
        chunk=_chunk(plan.chunk, seq),
    )


def _kda(plan: Any, old_d: int, d_model: int, seq: int) -> Any:
    factor = d_model / old_d
    head_dim = _scaled(plan.head_dim, factor, MIN_HEAD_DIM, 2)

    def rank(r: int) -> int:  # 0 is full rank, and stays so; a rank equal to head_dim follows the head
        if r == 0:
            return 0
        return head_dim if r == plan.head_dim else _scaled(r, factor, 2, 2)

    return dataclasses.replace(
        plan,
        n_heads=_heads(plan.n_heads, factor),
        head_dim=head_dim,
        decay_rank=rank(plan.decay_rank),
        gate_rank=rank(plan.gate_rank),
        chunk=_chunk(plan.chunk, seq),
    )


def _lightning(plan: Any, old_d: int, d_model: int, seq: int) -> Any:
    factor = d_model / old_d
    # the per-layer decay_scale stays: the layer keeps the slope factor of its depth in the full model
    return dataclasses.replace(
        plan,
        n_heads=_heads(plan.n_heads, factor),
        head_dim=_scaled(plan.head_dim, factor, MIN_HEAD_DIM, 2),
        chunk=_chunk(plan.chunk, seq),
    )


def _mamba(plan: Any, old_d: int, d_model: int, seq: int) -> Any:
    factor = d_model / old_d
    inner = plan.inner_dim * d_model // old_d if plan.inner_dim % old_d == 0 else _scaled(plan.inner_dim, factor, 8)
    return dataclasses.replace(
        plan,
        inner_dim=inner,  # expand (inner over d_model) kept where it was whole
        state_size=_scaled(plan.state_size, factor, MIN_STATE),
        dt_rank=min(inner, _scaled(plan.dt_rank, factor, 1)),  # problems(): dt_rank ≤ the inner width
        chunk=_chunk(plan.chunk, seq),
    )


def _mamba2(plan: Any, old_d: int, d_model: int, seq: int) -> Any:
    factor = d_model / old_d
    groups = min(plan.n_groups, 2)  # one group stays one; several stay several (B and C shared by a group)
    per_group = plan.n_heads // plan.n_groups
    head_dim = _scaled(plan.head_dim, factor, MIN_HEAD_DIM, 2)
    # the inner width n_heads·head_dim follows the model width; heads come in whole groups (problems())
    target_heads = plan.n_heads * plan.head_dim * factor / head_dim
    per_group_new = min(per_group * plan.n_groups // groups, max(1, round(target_heads / groups)))
    return dataclasses.replace(
        plan,
        n_heads=groups * per_group_new,
        n_groups=groups,
        head_dim=head_dim,
        state_dim=_scaled(plan.state_dim, factor, MIN_STATE, 2),
        chunk=_chunk(plan.chunk, seq),
    )


def _short_conv(plan: Any, old_d: int, d_model: int, seq: int) -> Any:
    return plan  # its widths are d_model's; the kernel and the bias are structure


SCALERS: dict[str, Callable[[Any, int, int, int], Any]] = {
    "gated_deltanet": _gated_deltanet,
    "kda": _kda,
    "lightning": _lightning,
    "mamba": _mamba,
    "mamba2": _mamba2,
    "short_conv": _short_conv,
}


def scale_mixer(plan: Any, old_d_model: int, d_model: int, seq: int) -> Any:
    """A layer's mixer plan at width ``d_model`` (from ``old_d_model``): None (attention) and AbsentPlan (none)
    as they are, a kind's Plan through its scaler."""
    kind = getattr(plan, "kind", "none")
    if plan is None or kind == "none":
        return plan
    return SCALERS[kind](plan, old_d_model, d_model, seq)
