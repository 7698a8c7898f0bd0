"""What a plan's layers ask of the generated ``model.py`` beyond attention's shape and one FFN: a mixture of attention
heads (JetMoE), zero-computation experts (LongCat-Flash), a bias on the MoE output (JetMoE), LongCat-Flash's
shortcut-MoE pair layers, each checked (for
:mod:`moec.codegen.features`)."""

from __future__ import annotations

from dataclasses import dataclass

from moec.codegen.checks import checked_bool, checked_choice, int_text
from moec.spec.moa import MOA_SCORES
from moec.spec.plan import AttentionPlan, MoEPlan


@dataclass(frozen=True)
class BlockParts:
    """The optional parts of the layers (all off by default)."""

    moa: bool = False  # attention.kind moa: a mixture of attention heads
    moa_choice: str = ""  # how MoA weighs its k experts: "softmax_after_topk", or the score (softmax, sigmoid)
    moa_normalize: bool = False  # the k weights renormalised
    zero_experts: bool = False  # moe.n_zero_experts: experts that return their weight times the token
    moe_output_bias: bool = False  # moe.output_bias: one bias on the combined output
    moe_output_norm: bool = False  # moe.output_norm: the MoE's output normed before the residual (A.X-K1)
    depth_scaled: bool = False  # model.depth_scaled_residual: Beam's scaled residual adds
    pair: bool = False  # model.block shortcut_moe_pair: every layer two (attention, dense FFN) pairs and one MoE


def block_parts(a: AttentionPlan | None, moe: MoEPlan | None, pair: bool, depth_scaled: bool = False) -> BlockParts:
    """The parts of ``a`` (every attention layer's configuration; None without attention), ``moe`` (the MoE
    configuration; None without MoE) and the layers (``pair``: shortcut-MoE pair layers)."""
    moa = a is not None and a.kind == "moa"
    choice, normalize = "", False
    if moa:
        assert a is not None
        if a.qk_norm or a.bias or a.sinks or a.clip_qkv is not None or a.output_gate != "none":
            raise ValueError("a mixture of attention heads has no qk_norm, clip_qkv, sinks, gate or q/k/v biases")
        after = checked_bool(a.moa_softmax_after_topk, "attention.experts.softmax_after_topk")
        choice = "softmax_after_topk" if after else checked_choice(a.moa_score, MOA_SCORES, "attention.experts.score")
        normalize = not after and checked_bool(a.moa_normalize_topk, "attention.experts.normalize_topk")
    return BlockParts(
        moa=moa,
        moa_choice=choice,
        moa_normalize=normalize,
        zero_experts=moe is not None and int_text(moe.n_zero_experts, "moe.n_zero_experts", minimum=0) != "0",
        moe_output_bias=moe is not None and checked_bool(moe.output_bias, "moe.output_bias"),
        moe_output_norm=moe is not None and checked_bool(moe.output_norm, "moe.output_norm"),
        pair=pair,
        depth_scaled=checked_bool(depth_scaled, "model.depth_scaled_residual"),
    )
