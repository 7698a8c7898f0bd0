"""``moe.shared_activation``: the shared experts' own activation, where it differs from the routed experts'
(HY-V4: plain SwiGLU shared experts beside ``swiglu_limit`` routed ones). Null: the routed experts' ``moe.activation``.
It must be gated exactly when ``moe.activation`` is, so the shared experts keep the routed ones' matrices (the
counts do not change); the clamp parameters (``activation_alpha``, ``activation_limit``) are the section's.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from moec.vocab import GATED

if TYPE_CHECKING:
    from moec.spec.schema import Spec


def problems(spec: Spec) -> list[tuple[tuple[str, ...], str]]:
    """Cross-field problems of ``moe.shared_activation``: (path, message), every one."""
    e = spec.moe
    if e is None or e.shared_activation is None:
        return []
    here = ("moe", "shared_activation")
    out: list[tuple[tuple[str, ...], str]] = []
    if not e.n_shared_experts:
        out.append((here, "only meaningful with moe.n_shared_experts"))
    if (e.shared_activation in GATED) != (e.activation in GATED):
        kind = "gated" if e.activation in GATED else "ungated"
        out.append(
            (here, f"must be {kind} as moe.activation ({e.activation}) is: the shared experts keep its matrices")
        )
    return out
