"""Mixture of attention heads (MoA; JetMoE, arXiv 2404.07413): the spec's ``attention.experts`` section with
``attention.kind: moa``, and its cross-field checks. docs/conventions.md, "Mixture of attention heads", says how
it is counted; moec/nn/moa.py runs it.

Each of the E attention experts owns a query projection (d → h·head_dim) and an output projection
(h·head_dim → d); the keys and values (n_kv_heads heads of head_dim) are one projection shared by every expert.
A router (d → E, no bias) picks top_k experts per token; each chosen expert's h query heads attend the shared
keys and values (its query head j reads KV head j // (h / n_kv_heads), as GQA), its output projection maps them
back to d, and the k outputs are summed weighted by the router's gates, plus ``attention.out_bias`` (one bias of
d on the combined output).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import Field

from moec.strict import MAX_EXPERTS, Strict

if TYPE_CHECKING:
    from moec.spec.plan import ResolvedModel
    from moec.spec.schema import Spec

MOA_SCORES = ("softmax", "sigmoid")

# the attention section's fields a mixture of attention heads uses (everything else written is refused by name)
MOA_FIELDS = ("kind", "n_heads", "n_kv_heads", "head_dim", "scale", "out_bias", "window", "experts")


class AttentionExpertsSection(Strict):
    n_experts: Annotated[int, Field(gt=0, le=MAX_EXPERTS)]
    """Attention experts E, each with its own query and output projection (JetMoE-8B: 8)."""
    top_k: Annotated[int, Field(gt=0, le=MAX_EXPERTS)]
    """Attention experts each token uses (JetMoE-8B: 2)."""
    score: Literal[MOA_SCORES] = "softmax"
    """How the router's logits become gate weights: softmax or sigmoid."""
    softmax_after_topk: bool = False
    """Softmax over the k chosen logits only (JetMoE) instead of over all E experts."""
    normalize_topk: bool = False
    """Renormalise the k chosen weights to sum to 1."""


Section = AttentionExpertsSection  # the contract name, as the mixers' and the indexer's sections


# the refusal of a field moa does not take; moec.spec.checks gives such a field this one error and no other
NOT_TAKEN = "not supported with attention.kind moa (mixture of attention heads)"


def problems(spec: Spec) -> list[tuple[tuple[str | int, ...], str]]:
    """Cross-field problems of ``attention.kind: moa`` and ``attention.experts``: (path, message), every one."""
    a = spec.attention
    ex = a.experts
    here = ("attention", "experts")
    if a.kind != "moa":
        return [(here, "attention experts need attention.kind moa")] if ex is not None else []
    if ex is None:
        return [(("attention", "kind"), "moa (mixture of attention heads) needs an attention.experts section")]
    out: list[tuple[tuple[str | int, ...], str]] = []
    if ex.top_k > ex.n_experts:
        out.append(((*here, "top_k"), f"must be at most n_experts ({ex.n_experts})"))
    if ex.softmax_after_topk and ex.score != "softmax":
        out.append(((*here, "softmax_after_topk"), "only meaningful with score softmax"))
    for f in sorted(a.model_fields_set - set(MOA_FIELDS)):
        out.append((("attention", f), NOT_TAKEN))
    layer_sets = [(*path, f) for path, section in spec.layers.attention_sections() for f in section.model_fields_set]
    for path in layer_sets:
        if path[-1] not in ("window", "rope", "rope_theta"):
            out.append((path, NOT_TAKEN))
    return out


def plan_fields(ex: AttentionExpertsSection | None) -> dict[str, object]:
    """attention.experts as AttentionPlan's flat moa_* fields (none without experts: the defaults)."""
    if ex is None:
        return {}
    return {
        "moa_n_experts": ex.n_experts,
        "moa_top_k": ex.top_k,
        "moa_score": ex.score,
        "moa_softmax_after_topk": ex.softmax_after_topk,
        "moa_normalize_topk": ex.normalize_topk,
    }


# how a mixture of attention heads is counted; analyze prints it under "mixture_of_attention_heads"
CONVENTION = (
    "E attention experts, each a query (d·h·hd) and an output (h·hd·d) projection: total counts all E, active top_k; "
    "both also count the shared key and value projections (2·d·kv·hd), the router (d·E) and the output bias (d); "
    "linear FLOPs per token 2·(top_k·2·d·h·hd + 2·d·kv·hd + d·E); attention scores over top_k·h query heads; "
    "the KV cache holds the shared kv heads only"
)


def conventions(model: ResolvedModel) -> dict[str, str]:
    """analyze's convention line for a model with a mixture of attention heads (none without one)."""
    if any(lp.has_attention and lp.attention.kind == "moa" for lp in model.layers):
        return {"mixture_of_attention_heads": CONVENTION}
    return {}
