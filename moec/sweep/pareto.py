"""The Pareto frontier: the points no other point beats on every objective (smaller is better on each)."""

from __future__ import annotations

from collections.abc import Sequence


def dominates(a: Sequence[float], b: Sequence[float]) -> bool:
    """a is at least as good as b everywhere and better somewhere."""
    return all(x <= y for x, y in zip(a, b, strict=True)) and any(x < y for x, y in zip(a, b, strict=True))


def pareto_front(points: Sequence[Sequence[float]]) -> list[int]:
    """Indices of the non-dominated points, in input order. Visited best-first in lexicographic order, a
    point can only be dominated by one visited before it, and if by any then by one already on the
    frontier (dominance is transitive), so each point is checked against the frontier alone."""
    order = sorted(range(len(points)), key=lambda i: tuple(points[i]))
    front: list[int] = []
    for i in order:
        if not any(dominates(points[j], points[i]) for j in front):
            front.append(i)
    return sorted(front)
