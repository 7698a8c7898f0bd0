"""A.X-K1 (``model_type`` axk1, AXK1ForCausalLM; SK Telecom): DeepSeek-V3 with one change, an RMSNorm on the MoE
block's output (``post_mlp_layernorm``, after the shared experts are added, before the residual) on the MoE layers
only. Multi-head latent attention always with a query bottleneck (``q_lora_rank`` may not be null), interleaved rotary
pairs by ``rope_interleave``; dense MLPs where ``mlp_layer_types`` says (unset: before ``first_k_dense_replace`` and
where ``i % moe_layer_freq`` ≠ 0); DeepSeek-V3's router (sigmoid, a selection-only bias, top-2-sum groups,
renormalised and scaled weights) and shared experts run as one MLP.

Checkpoints use transformers' common names; the released ones keep the post-MoE norm at the layer level
(``post_mlp_layernorm``, which transformers renames into ``mlp.post_mlp_layernorm`` on load) and a copy of it on the
dense layers too, which transformers, and moec, let go.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from moec.hf.draft import CannotExport, Draft, Family, HFConfig
from moec.hf.families._common import (
    base,
    defaults,
    dense_layers_ffn,
    mla,
    mla_rope_interleave,
    mlp_layer_kinds,
    moe_core,
    shared_experts,
)
from moec.hf.families._export_common import deepseek_mla_fields, dense_plan, export_base, moe_plan
from moec.hf.families.dots1 import deepseek_v3_router
from moec.hf.mapper import Mapper
from moec.spec.plan import DenseFFNPlan, MoEPlan, ResolvedModel

if TYPE_CHECKING:
    import torch

    from moec.hf.checkpoint import Checkpoint
    from moec.spec.plan import LayerPlan

# fmt: off
DEFAULTS = defaults(10000.0, vocab_size=163840, hidden_size=7168, intermediate_size=18432, moe_intermediate_size=2048,
                    num_hidden_layers=61, num_attention_heads=64, num_key_value_heads=64, n_shared_experts=1,
                    n_routed_experts=192, routed_scaling_factor=2.5, kv_lora_rank=512, q_lora_rank=1536,
                    qk_rope_head_dim=64, v_head_dim=128, qk_nope_head_dim=128, n_group=8, topk_group=4,
                    num_experts_per_tok=8, norm_topk_prob=True, max_position_embeddings=32768, rms_norm_eps=1e-6,
                    rope_interleave=True, attention_bias=False, mlp_layer_types=None, first_k_dense_replace=1,
                    moe_layer_freq=1)
# fmt: on


def translate(c: HFConfig, d: Draft) -> None:
    base(c, d, "AXK1")
    c.int("q_lora_rank")  # AXK1Attention always builds q_a_proj: null is refused here, before mla reads it
    mla(c, d, "AXK1")
    mla_rope_interleave(c, d)
    moe_core(c, d, experts_key="n_routed_experts", width_key="moe_intermediate_size")
    deepseek_v3_router(c, d, "AXK1TopkRouter")
    d.put("moe.router.n_groups", c.int("n_group"), c.src("n_group"))
    d.put("moe.router.topk_groups", c.int("topk_group"), c.src("topk_group"))
    shared_experts(c, d, "n_shared_experts", " (one MLP of n·moe_intermediate_size)")
    mlp_layers(c, d)
    dense_layers_ffn(c, d, bias_src="AXK1MLP has no biases")
    d.put("moe.output_norm", True, "AXK1MoE.post_mlp_layernorm: an RMSNorm on the MoE block's output")


def mlp_layers(c: HFConfig, d: Draft) -> None:
    """mlp_layer_types ('dense' / 'sparse'), else sparse where i ≥ first_k_dense_replace and i % moe_layer_freq == 0
    (AXK1Config's conversion of the legacy fields, which it then drops)."""
    if c.value("mlp_layer_types") is None:
        k, freq = c.int("first_k_dense_replace", minimum=0), c.int("moe_layer_freq")
        d.ffn = ["moe" if i >= k and i % freq == 0 else "dense" for i in range(d.n_layers)]
        d.ffn_note = f"mlp_layer_types unset: MoE from first_k_dense_replace ({k}) on, every moe_layer_freq ({freq})"
        return
    c.value("first_k_dense_replace")  # given with mlp_layer_types: AXK1Config leaves them unread
    c.value("moe_layer_freq")
    mlp_layer_kinds(c, d, c.str_list("mlp_layer_types"))


def export(m: ResolvedModel) -> dict[str, Any]:
    """The plan as an axk1 config.json: MLA with a query bottleneck, DeepSeek-V3's router and a norm on every MoE
    block's output; mlp_layer_types places the MoE layers. What else differs comes back changed from the re-import
    and is refused."""
    moe = [lp.ffn for lp in m.layers if isinstance(lp.ffn, MoEPlan)]
    if not all(e.output_norm for e in moe):
        raise CannotExport("normalises every MoE block's output (moe.output_norm)")
    cfg = export_base(m, FAMILY)
    a, e, f = m.layers[0].attention, moe_plan(m), dense_plan(m)
    if a.kind != "mla" or a.q_lora_rank is None:
        raise CannotExport("needs MLA with a query bottleneck (q_lora_rank)")
    r = e.router
    cfg.update(
        deepseek_mla_fields(a, e, f),
        rope_interleave=True,
        intermediate_size=f.d_ff if f else e.d_ff,  # no dense layer: the expert width (DeepSeek's writes 4 ×)
        mlp_layer_types=["sparse" if isinstance(lp.ffn, MoEPlan) else "dense" for lp in m.layers],
        routed_scaling_factor=r.scale,
        n_group=r.n_groups or 1,
        topk_group=r.topk_groups or 1,
        norm_topk_prob=r.normalize_topk,
    )
    return cfg


class AXK1Mapper(Mapper):
    """The MoE block's output norm (moec's ``ffn_post_norm``) at the layer level, as the releases and save_pretrained
    keep it (``post_mlp_layernorm``), or inside the block, as transformers holds it in memory
    (``mlp.post_mlp_layernorm``); the releases' copies on the dense layers, which transformers builds no module for,
    are let go."""

    def __init__(self, ck: Checkpoint, plan: ResolvedModel):
        super().__init__(ck, plan)
        for i, lp in enumerate(plan.layers):
            if isinstance(lp.ffn, DenseFFNPlan):
                p = self.layer(i)
                ck.used.update(n for n in ck.file_of if n.startswith((p + "post_mlp_layernorm.", p + "mlp.post_mlp")))

    def block(self, lp: LayerPlan, i: int, part: str, leaf: str) -> torch.Tensor:
        if part == "ffn_post_norm":
            p = self.layer(i)
            return self.ck.get(self._first([p + "post_mlp_layernorm." + leaf, p + "mlp.post_mlp_layernorm." + leaf]))
        return super().block(lp, i, part, leaf)


FAMILY = Family(
    "axk1",
    "AXK1ForCausalLM",
    DEFAULTS,
    translate,
    aliases={"num_local_experts": "n_routed_experts"},
    export=export,
    export_rank=55,
    mapper=AXK1Mapper,
)
