"""Granite-MoE with shared experts (``model_type`` granitemoeshared, GraniteMoeSharedForCausalLM): Granite-MoE
(``granitemoe.py``: top-k of the router logits, softmax over the k, the μP multipliers) plus, where
``shared_intermediate_size`` > 0, one shared MLP beside the routed experts, added without a gate. Checkpoints
keep it at the layer, as ``shared_mlp.input_linear`` ([gate | up]) and ``shared_mlp.output_linear``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from moec.hf.draft import Draft, Family, HFConfig
from moec.hf.families import granitemoe
from moec.hf.mapper import Missing
from moec.spec.plan import MoEPlan

if TYPE_CHECKING:
    import torch

# GraniteMoeSharedConfig: GraniteMoeConfig's fields and defaults, plus the shared MLP (0: none)
DEFAULTS = {**granitemoe.DEFAULTS, "shared_intermediate_size": 0}


def shared_mlp(c: HFConfig, d: Draft) -> None:
    """The ungated shared MLP of the Granite families that have one (0 wide: no shared MLP)."""
    width = c.int("shared_intermediate_size", minimum=0)
    if width:
        d.section(
            "moe",
            n_shared_experts=(
                1,
                "shared_mlp: one gated MLP beside the routed experts, its output added without a gate",
            ),
            d_ff_shared=(width, c.src("shared_intermediate_size")),
        )


def translate(c: HFConfig, d: Draft) -> None:
    granitemoe.translate(c, d)
    shared_mlp(c, d)


class GraniteMoeSharedMapper(granitemoe.GraniteMoeMapper):
    """Granite-MoE's names, and the layer's ``shared_mlp``: input_linear (2f, d) [gate | up], output_linear (d, f)."""

    def moe(self, p: str, plan: MoEPlan, leaf: str) -> torch.Tensor:
        part, _, rest = leaf.partition(".")
        if part != "shared":
            return super().moe(p, plan, leaf)
        name = {"w_gate_up": "input_linear.weight", "w_down": "output_linear.weight"}.get(rest)
        if name is None:
            raise Missing([f"{p}shared_mlp.{rest}"])
        return self.ck.get(f"{p}shared_mlp.{name}").T  # (d, 2f) [gate | up], (f, d)


FAMILY = Family("granitemoeshared", "GraniteMoeSharedForCausalLM", DEFAULTS, translate, mapper=GraniteMoeSharedMapper)
