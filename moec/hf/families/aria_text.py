"""Aria's text model (``model_type`` aria_text, AriaTextForCausalLM): Llama attention (attention_bias on q, k, v
and o), every layer MoE: experts chosen on the raw router logits, weighted by the softmax over the chosen ones
(AriaTextTopKRouter), always SiLU-gated, plus moe_num_shared_experts shared experts fused into one MLP of
intermediate_size · n that always runs. No balance loss (AriaTextForCausalLM computes none).

Checkpoints hold the router as ``mlp.router.weight`` and the stacked experts in moec's own layout, (E, d, 2f)
[gate | up] and (E, f, d) (AriaExperts is "transposed"), named ``experts.fc1.weight`` and ``experts.fc2.weight``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from moec.hf.draft import Draft, Family, HFConfig, shown
from moec.hf.families._common import base, defaults, gqa, moe_core, router, shared_experts
from moec.hf.mapper import Mapper, Missing

if TYPE_CHECKING:
    import torch

    from moec.spec.plan import MoEPlan

# fmt: off
DEFAULTS = defaults(10000.0, vocab_size=32000, hidden_size=4096, intermediate_size=4096, num_hidden_layers=32,
                    num_attention_heads=32, num_key_value_heads=None, head_dim=None, max_position_embeddings=2048,
                    rms_norm_eps=1e-6, pad_token_id=2, bos_token_id=1, eos_token_id=2, attention_bias=False,
                    mlp_bias=False, moe_num_experts=8, moe_topk=2, moe_num_shared_experts=2)
# fmt: on


def translate(c: HFConfig, d: Draft) -> None:
    base(c, d, "AriaText")
    b = c.bool("attention_bias")
    gqa(c, d, bias=b, out_bias=b, bias_src=c.src("attention_bias") + " (q, k, v and o)")
    moe_core(c, d, experts_key="moe_num_experts", width_key="intermediate_size", top_k_key="moe_topk")
    act = c.value("hidden_act")
    if act not in ("silu", "swish"):  # AriaExperts is SiLU whatever the config says; the shared MLP follows it
        d.gap(
            c.prefix + "hidden_act",
            act,
            f"{shown(act)} gates the shared experts while AriaExperts stays SiLU: moec has one activation per MoE",
            "moe.shared_activation: the shared experts' own activation. No count change",
        )
    router(
        d,
        "AriaTextTopKRouter: top-k of the logits, softmax over the chosen",
        score="softmax",
        softmax_after_topk=True,
        normalize_topk=False,
    )
    shared_experts(
        c, d, "moe_num_shared_experts", " (AriaSharedExpertsMLP: one MLP of n·width)", width_key="intermediate_size"
    )
    if c.bool("mlp_bias"):
        d.gap(
            c.prefix + "mlp_bias",
            True,
            "biases on the shared experts' projections only (AriaExperts has none)",
            "moe.shared_bias: biases on the shared MLP (width W = n·width). Count: +2W + d_model per MoE layer",
        )
    d.ffn_note = "every AriaText layer is MoE (AriaTextMoELayer)"


class AriaTextMapper(Mapper):
    """The router is ``mlp.router.``; stacked experts are in moec's layout already, (E, d, 2f) [gate | up] and
    (E, f, d), named ``fc1.weight`` / ``fc2.weight`` as Aria's checkpoints (and save_pretrained) write them, or
    ``gate_up_proj`` / ``down_proj`` as transformers holds them in memory."""

    routers = ("router.",)

    def experts(self, blk: str, plan: MoEPlan, leaf: str) -> torch.Tensor:
        names = {"w_gate_up": ("fc1.weight", "gate_up_proj"), "w_down": ("fc2.weight", "down_proj")}.get(leaf)
        if names is None:
            raise Missing([f"{blk}experts.{leaf}"])
        e = f"{blk}experts."
        return self.ck.get(e + next((n for n in names if e + n in self.ck), names[0]))


FAMILY = Family("aria_text", "AriaTextForCausalLM", DEFAULTS, translate, mapper=AriaTextMapper)
