"""DeepSeekMoE's fine-grained segmentation with shared-expert isolation, written the paper's way.

The moe section's ``segmentation`` is resolved into its plain fields before they are checked
(:func:`segmented_moe`, the schema's ``MoE`` validator), so every other part of moec sees only those.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field, ValidationError

from moec.strict import Strict


class Segmentation(Strict):
    """DeepSeekMoE's fine-grained segmentation with shared-expert isolation (arXiv 2401.06066, section 3): N
    experts of width moe.d_ff are each split into m, giving mN experts of width d_ff/m and top mK; K_s of them
    become shared, so mN − K_s are routed with top-k mK − K_s. Resolved into the plain fields (docs/conventions.md,
    "Fine-grained segmentation")."""

    # finite; the counts they resolve to meet moe.n_experts' and router.top_k's own bounds
    experts: Annotated[float, Field(gt=0, allow_inf_nan=False)]
    """N: standard experts of width moe.d_ff before segmentation (fractional when m·N is whole: 16.5 × 4 = 66)."""
    top_k: Annotated[float, Field(gt=0, allow_inf_nan=False)]
    """K: standard experts per token before segmentation; m·K segments are active, K_s of them shared."""
    granularity: Annotated[int, Field(gt=0, le=1024)]
    """m: segments per standard expert, each of width moe.d_ff / m."""
    shared: Annotated[int, Field(ge=0, le=1024)] = 0
    """K_s: segments isolated as shared experts, which every token passes (moe.n_shared_experts)."""


# the plain fields a segmentation writes, which the moe section may then not write itself
_SEGMENTED = ("n_experts", "granularity", "n_shared_experts", "d_ff_shared")


def segmented_moe(data: Any) -> Any:
    """The moe section's data with ``segmentation`` resolved into the plain fields: n_experts mN − K_s,
    d_ff d_ff/m, router.top_k mK − K_s, n_shared_experts K_s (of the same width d_ff/m). A spec written this
    way equals the one written with those plain fields, to the byte of its dump and hash. A segmentation that
    cannot be resolved is left as written, for its field's own error or checks.py's located one (a stand-in
    n_experts keeps a second, misleading "n_experts is missing" away)."""
    if not isinstance(data, dict) or not isinstance(data.get("segmentation"), dict):
        return data
    try:
        seg = Segmentation.model_validate(data["segmentation"])
    except ValidationError:
        seg = None
    if seg is None or segmentation_problems(seg, data):
        return {**data, "n_experts": data.get("n_experts", 1)}
    m, router = seg.granularity, data.get("router") or {}
    resolved = {
        "n_experts": int(seg.experts * m) - seg.shared,
        "d_ff": data["d_ff"] // m,
        "n_shared_experts": seg.shared,
        "router": {**router, "top_k": int(seg.top_k * m) - seg.shared},
    }
    return {**data, **resolved}


def segmentation_problems(seg: Segmentation, moe: dict[str, Any]) -> list[tuple[tuple[str, ...], str]]:
    """(path within the moe section, message) for each reason ``seg`` cannot resolve the raw ``moe`` data."""
    m, d_ff, router = seg.granularity, moe.get("d_ff"), moe.get("router")
    router = router if isinstance(router, dict) else {}
    out: list[tuple[tuple[str, ...], str]] = []
    written = [f for f in _SEGMENTED if f in moe] + [f"router.{f}" for f in ("top_k", "dense") if f in router]
    if written:
        out.append((("segmentation",), f"sets the expert counts itself; remove {', '.join(written)}"))
    if seg.experts * m != int(seg.experts * m):
        out.append((("segmentation", "experts"), f"experts × granularity ({seg.experts} × {m}) must be whole"))
    if seg.top_k * m != int(seg.top_k * m):
        out.append((("segmentation", "top_k"), f"top_k × granularity ({seg.top_k} × {m}) must be whole"))
    if seg.top_k > seg.experts:
        out.append((("segmentation", "top_k"), f"{seg.top_k} exceeds experts ({seg.experts})"))
    if seg.shared >= seg.top_k * m:
        out.append((("segmentation", "shared"), f"{seg.shared} leaves no routed expert of the top_k × granularity"))
    if not isinstance(d_ff, int) or d_ff % m:
        out.append((("d_ff",), f"{d_ff!r} is not divisible by segmentation.granularity ({m})"))
    return out
