"""Checks of model.block shortcut_moe_pair (LongCat-Flash) and of moe.n_zero_experts (docs/conventions.md,
"Shortcut-MoE pair layers" and "Zero-computation experts"): what moec computes exactly with them, the rest refused
by name."""

from __future__ import annotations

from collections.abc import Callable

from moec.spec.schema import Spec
from moec.spec.yamlio import Path

Bad = Callable[[Path, str], None]


def check_block(spec: Spec, bad: Bad) -> None:
    """shortcut_moe_pair needs both FFN sections, every layer an attention layer whose ffn is the MoE, the pre
    placement, and no MTP blocks; each layer keeps one attention plan for both of its attentions."""
    if spec.model.block == "standard":
        return
    here: Path = ("model", "block")
    if spec.ffn is None or spec.moe is None:
        bad(here, "shortcut_moe_pair needs an ffn section (the pairs' dense FFNs) and a moe section (the shortcut)")
    if spec.layers.default.ffn != "moe" or spec.layers.default.mixer != "attention":
        bad(
            here, "shortcut_moe_pair needs layers.default ffn: moe and mixer: attention (every layer is one pair layer)"
        )
    for j, ov in enumerate(spec.layers.overrides):
        if ov.ffn not in (None, "moe") or ov.mixer not in (None, "attention"):
            bad(
                ("layers", "overrides", j),
                "shortcut_moe_pair layers are all alike: an override may not change ffn or mixer",
            )
    if spec.model.norm.placement != "pre":
        bad(("model", "norm", "placement"), "shortcut_moe_pair is built with the pre placement only")
    if spec.model.residual_multiplier != 1.0:
        bad(("model", "residual_multiplier"), "not supported with shortcut_moe_pair")
    if spec.moe is not None and spec.moe.output_norm:  # the standard block's norm on its MoE output
        bad(("moe", "output_norm"), "not supported with shortcut_moe_pair")
    if spec.mtp is not None:
        bad(("mtp",), "MTP blocks are not supported with shortcut_moe_pair")


def check_zero_experts(spec: Spec, bad: Bad) -> None:
    """Zero experts with the plain top-k router on FFN experts only: the routing variants below either need
    per-expert work a zero expert does not have or were never checked against a reference with zero experts."""
    e = spec.moe
    if e is None or e.n_zero_experts == 0:
        return
    r = e.router
    here: Path = ("moe", "n_zero_experts")
    refused = {
        "router.kind other than topk": r.kind != "topk",
        "router.dense": r.dense,
        "router.softmax_after_topk": r.softmax_after_topk,
        "router.n_groups": r.n_groups is not None,
        "router.mlp_hidden": r.mlp_hidden is not None,
        "router.apply_to: input": r.apply_to != "output",
        "capacity_factor": e.capacity_factor is not None,
        "expert_kind: lora": e.expert_kind != "ffn",
        "granularity": e.granularity != 1,
    }
    for name, on in refused.items():
        if on:
            bad(here, f"zero experts are not supported with {name}")
