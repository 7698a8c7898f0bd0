"""A low-rank sigmoid gate on the output of chosen norms (GatedNorm, arXiv 2601.22966; A.X-K2's AXK2GatedRMSNorm):
the spec's ``model.norm_gate`` section, its plan and its cross-field checks. moec/nn/norm_gate.py runs it.

    y = norm(x);   y · sigmoid(up(silu(down(y))))        down: d → rank, up: rank → d, no biases

Each gated norm has 2·d·rank matrix weights, counted with the norms (component ``norms``), and 2 FLOPs per
multiply-add of its two projections, 4·d·rank per token (docs/conventions.md, "Norm gates"); the silu, the sigmoid
(in float32, as transformers computes it) and the product are elementwise, 0.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import Field

from moec.strict import MAX_D, Strict

if TYPE_CHECKING:
    from moec.spec.plan import LayerPlan
    from moec.spec.schema import Spec

SITES = ("mixer", "dense_ffn", "moe_ffn")


class NormGateSection(Strict):
    rank: Annotated[int, Field(gt=0, le=MAX_D)]
    """Width of the gate's bottleneck (A.X-K2: gated_norm_rank, 16)."""
    sites: Annotated[list[Literal[SITES]], Field(min_length=1, max_length=len(SITES))]
    """The norms gated: before each layer's token mixer, before the FFN of dense layers, of MoE layers (A.X-K2: mixer and moe_ffn)."""


@dataclass(frozen=True)
class NormGatePlan:
    rank: int
    sites: tuple[str, ...]

    def gates(self, layer: LayerPlan) -> tuple[str, ...]:
        """The sites of ``layer``'s norms that are gated: ``mixer`` where it has a token mixer, ``dense_ffn`` or
        ``moe_ffn`` by its FFN."""
        present = {"mixer"} if layer.mixer_kind != "none" else set()
        if layer.has_ffn:
            present.add("moe_ffn" if layer.ffn.kind == "moe" else "dense_ffn")
        return tuple(s for s in self.sites if s in present)


def plan(section: NormGateSection | None) -> NormGatePlan | None:
    return None if section is None else NormGatePlan(section.rank, tuple(section.sites))


def problems(spec: Spec) -> list[tuple[tuple[str | int, ...], str]]:
    """Cross-field problems of ``model.norm_gate``: (path, message), every one, each at the field to change. The gate
    wraps the pre-norms of standard blocks (A.X-K2's), the layouts moec.nn.block gates."""
    m = spec.model
    if m.norm_gate is None:
        return []
    here = ("model", "norm_gate")
    out: list[tuple[tuple[str | int, ...], str]] = []
    if m.norm.placement != "pre" or m.block != "standard":
        out.append(
            (here, "norm_gate gates the pre-norms of standard blocks: needs norm.placement pre and block standard")
        )
    sites = m.norm_gate.sites
    out += [((*here, "sites", i), f"{s}: each site once") for i, s in enumerate(sites) if s in sites[:i]]
    return out
