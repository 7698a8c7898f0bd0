"""Hyper-connections: a residual of n parallel streams instead of one (Zhu et al. 2024, "Hyper-Connections",
arXiv 2409.19606; the dynamic, manifold-constrained form mHC of DeepSeek-V4, Xie et al. 2026, arXiv 2512.24880).
The spec's ``model.hyper_connections`` section, its plan and its cross-field checks; docs/hyper-connections.md
says how the model computes with it and docs/conventions.md, "Hyper-connections", how it is counted; moec/nn/hyper.py
runs it.

The embedding is copied into n streams x (n, d). Around every sublayer f (token mixer or FFN) a connection reads
the streams, flattened and RMS-normalised without a weight, through one projection to its coefficients:

    pre  = σ(α_pre · p_pre + b_pre) + ε                      (n)      the streams' weights into f
    post = post_scale · σ(α_post · p_post + b_post) (+ ε)   (n)      f's output into each stream
    comb = Sinkhorn(softmax(α_comb · P_comb + B_comb) + ε)  (n, n)   the streams' mix (residual: sinkhorn)

and the layer is  x ← post ⊗ f(norm(Σ_j pre_j x_j)) + combᵀ x  (``identity``: + x, no comb). Before the final
norm a head merges the streams: ``dynamic``, by a weighting of its own as ``pre``; ``mean``, by their mean.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import Field

from moec.strict import Strict

if TYPE_CHECKING:
    from moec.spec.schema import Spec

RESIDUALS = ("sinkhorn", "identity")
HEADS = ("dynamic", "mean")
MAX_STREAMS = 64
MAX_SINKHORN_ITERS = 1000


class HyperConnectionsSection(Strict):
    n_streams: Annotated[int, Field(ge=2, le=MAX_STREAMS)]
    """Residual streams n (DeepSeek-V4, GLM-5-Next, HY-V4: 4)."""
    residual: Literal[RESIDUALS] = "sinkhorn"
    """sinkhorn: the streams carry over mixed by a per-token doubly stochastic n×n matrix (mHC); identity: unmixed."""
    sinkhorn_iters: Annotated[int, Field(ge=1, le=MAX_SINKHORN_ITERS)] = 20
    """sinkhorn only: Sinkhorn-Knopp iterations (one column normalisation, then iters − 1 row-column pairs)."""
    post_scale: Annotated[float, Field(gt=0, le=1e4)] = 2.0
    """The factor on post's sigmoid (DeepSeek-V4: 2; HY-V4: hc_magnitude)."""
    post_eps: bool = False
    """Whether eps is added to post as to pre (HY-V4) or not (DeepSeek-V4)."""
    eps: Annotated[float, Field(gt=0, lt=1)] = 1e-6
    """Added to pre's sigmoid, to comb's softmax and to each Sinkhorn denominator (hc_eps)."""
    head: Literal[HEADS] = "dynamic"
    """The streams' merge before the final norm: dynamic, weighted as pre (DeepSeek-V4, HY-V4); mean (GLM-5-Next)."""


@dataclass(frozen=True)
class HyperConnectionsPlan:
    """``model.hyper_connections`` as the model uses it; the flattened streams' RMS norm takes model.norm's eps."""

    n_streams: int
    residual: str = "sinkhorn"
    sinkhorn_iters: int = 20
    post_scale: float = 2.0
    post_eps: bool = False
    eps: float = 1e-6
    head: str = "dynamic"

    @property
    def n_coefficients(self) -> int:
        """Outputs of a sublayer connection's projection: pre and post (n each), and comb's n² with sinkhorn."""
        n = self.n_streams
        return 2 * n + (n * n if self.residual == "sinkhorn" else 0)

    @property
    def n_scales(self) -> int:
        """A sublayer connection's learned factors on its logits: one each for pre, post (and comb)."""
        return 3 if self.residual == "sinkhorn" else 2


def plan_of(section: HyperConnectionsSection | None) -> HyperConnectionsPlan | None:
    return None if section is None else HyperConnectionsPlan(**section.model_dump())


def problems(spec: Spec) -> list[tuple[tuple[str, ...], str]]:
    """Cross-field problems of ``model.hyper_connections``: (path, message), every one. The streams replace the
    single residual of the pre-norm block; the other residual forms, shortcut-MoE pair layers, MTP blocks and
    encoder-decoder models have no hyper-connected form here and are refused by name."""
    m = spec.model
    hc = m.hyper_connections
    if hc is None:
        return []
    here = ("model", "hyper_connections")
    out: list[tuple[tuple[str, ...], str]] = []
    if hc.residual == "identity" and "sinkhorn_iters" in hc.model_fields_set:
        out.append(((*here, "sinkhorn_iters"), "only meaningful with residual: sinkhorn"))
    if m.norm.placement != "pre":
        out.append((here, f"hyper-connections wrap pre-norm sublayers; model.norm.placement is {m.norm.placement}"))
    if m.residual_multiplier != 1.0:
        out.append((here, "hyper-connections with model.residual_multiplier are not supported"))
    if getattr(m, "depth_scaled_residual", False):
        out.append((here, "hyper-connections with model.depth_scaled_residual are not supported"))
    if m.block != "standard":
        out.append((here, f"hyper-connections with model.block {m.block} are not supported"))
    if spec.mtp is not None:
        out.append((here, "hyper-connections with multi-token prediction (mtp) are not supported"))
    if spec.encoder is not None:
        out.append((here, "hyper-connections in an encoder-decoder model are not supported"))
    return out
