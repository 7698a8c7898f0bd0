"""A.X-K2 (``model_type`` axk2, AXK2ForCausalLM; SK Telecom): DeepSeek-V3.2 (MLA with the lightning indexer,
DeepSeek-V3's MoE) with two changes of A.X's own, from transformers' AXK2 classes:

- The query bottleneck feeds one projection of the normed and the raw latent side by side, ``q_gate_proj`` over
  [q_a_layernorm(c_q) | c_q], whose rows give each head's query and a sigmoid gate per element of its values, applied
  before o_proj (``attention.query_gate``; there is no q_b_proj). The indexer reads the normed latent, as
  DeepSeek-V3.2's does (AXK2Indexer is DeepseekV32Indexer: rotary dims in halves).
- AXK2GatedRMSNorm: the input norm of every layer and the post-attention norm of the MoE layers multiply their output
  y by sigmoid(fc2(silu(fc1(y)))), fc1 of hidden_size → gated_norm_rank (``model.norm_gate``, sites mixer and
  moe_ffn); the dense layers' post-attention norm and the final norm are plain.

The router is DeepSeek-V3's (sigmoid, a selection-only bias, renormalised and scaled weights), over all experts when
n_group and topk_group are null (A.X-K2-Light) and by top-2-sum groups when they are given; shared experts run as one
MLP of n_shared_experts·moe_intermediate_size; dense MLPs where mlp_layer_types says (unset: before
first_k_dense_replace and where i % moe_layer_freq ≠ 0). MLA's latent norms keep RMSNorm's 1e-6 whatever rms_norm_eps
says, its rotary dims pair adjacently. Checkpoints use transformers' names but the release's for what transformers
renames on load: the gates' ``W_down`` / ``W_up`` (``mlp.fc1`` / ``mlp.fc2``) and the fused ``q_b_proj``
(``q_gate_proj``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from moec.hf.draft import Draft, Family, HFConfig, shown
from moec.hf.families._common import all_known, base, defaults, dense_layers_ffn, mla, moe_core, shared_experts
from moec.hf.families.axk1 import mlp_layers
from moec.hf.families.deepseek_v32 import indexer
from moec.hf.families.dots1 import deepseek_v3_router
from moec.hf.families.glm4_moe import mtp_not_built
from moec.hf.mapper import Mapper

if TYPE_CHECKING:
    import torch

    from moec.spec.plan import LayerPlan

CLS = "AXK2"
# AXK2Config's fields (its rope base: PreTrainedConfig's 10000)
# fmt: off
DEFAULTS = defaults(10000.0, vocab_size=163840, hidden_size=2048, intermediate_size=5120, moe_intermediate_size=512,
                    num_hidden_layers=48, num_attention_heads=32, num_key_value_heads=32, n_shared_experts=1,
                    n_routed_experts=128, routed_scaling_factor=2.5, kv_lora_rank=128, q_lora_rank=384,
                    qk_rope_head_dim=32, v_head_dim=64, qk_nope_head_dim=64, n_group=None, topk_group=None,
                    num_experts_per_tok=8, norm_topk_prob=True, hidden_act="silu", max_position_embeddings=131072,
                    rms_norm_eps=1e-6, tie_word_embeddings=False, rope_parameters=None, mlp_layer_types=None,
                    attention_bias=False, index_topk=2048, index_head_dim=128, index_n_heads=16, head_dim=64,
                    layer_types=None, gated_norm_rank=16, first_k_dense_replace=1, moe_layer_freq=1)
# fmt: on


def translate(c: HFConfig, d: Draft) -> None:
    base(c, d, CLS)
    c.int("q_lora_rank")  # AXK2Config requires a query bottleneck: null is refused here, before mla reads it
    mla(c, d, CLS)
    if c.value("rope_interleave") is False:
        c.bad("rope_interleave", f"false, but {CLS}Attention always rotates adjacent pairs: ambiguous")
    d.put(
        "attention.query_gate", True, f"{CLS}Attention.q_gate_proj over [q_a_layernorm(c_q) | c_q]: queries and gates"
    )
    indexer(c, d, CLS, "halves")
    _indexed_layers(c, d)
    d.section(
        "model.norm_gate",
        rank=(c.int("gated_norm_rank"), c.src("gated_norm_rank")),
        sites=(["mixer", "moe_ffn"], f"{CLS}GatedRMSNorm: input_layernorm everywhere, post_attention_layernorm on MoE"),
    )
    _moe(c, d)
    mlp_layers(c, d)
    dense_layers_ffn(c, d, bias_src=f"{CLS}'s MLP has no biases")
    mtp_not_built(c, d)


def _indexed_layers(c: HFConfig, d: Draft) -> None:
    """layer_types: AXK2Config fills it with indexed_attention (every layer runs the indexer); no other type."""
    if c.value("layer_types") is None:
        return
    types = c.str_list("layer_types")
    if d.fits_layers(c, "layer_types", types):
        all_known(c, "layer_types", types, ("indexed_attention",))  # type: ignore[arg-type]


def _moe(c: HFConfig, d: Draft) -> None:
    """AXK2MoE: DeepSeek-V3's router, by groups only where n_group and topk_group are given (both or neither)."""
    moe_core(c, d, experts_key="n_routed_experts", width_key="moe_intermediate_size")
    deepseek_v3_router(c, d, f"{CLS}TopkRouter")
    groups, topk = c.int("n_group", optional=True), c.int("topk_group", optional=True)
    if (groups is None) != (topk is None):
        c.bad("n_group", f"{shown(groups)} with topk_group {shown(topk)}: both or neither (AXK2Config)")
    elif groups is not None:
        d.put("moe.router.n_groups", groups, c.src("n_group"))
        d.put("moe.router.topk_groups", topk, c.src("topk_group"))
    shared_experts(c, d, "n_shared_experts", f" ({CLS}MoE runs them as one MLP of n·width)")


# the release's (and save_pretrained's) names of what transformers renames on load (conversion_mapping's axk2 entry)
SAVED = {"mlp.fc1.weight": "W_down.weight", "mlp.fc2.weight": "W_up.weight", "q_gate_proj.weight": "q_b_proj.weight"}


class AXK2Mapper(Mapper):
    """The gated norms' gate MLP and the fused query and gate projection under their saved names, else under
    transformers' in-memory ones."""

    def block(self, lp: LayerPlan, i: int, part: str, leaf: str) -> torch.Tensor:
        if part in ("attn_norm", "ffn_norm") and leaf in SAVED:
            p = self.layer(i) + (self.attn_norm if part == "attn_norm" else self.ffn_norm)
            return self.ck.get(self._first([p + SAVED[leaf], p + leaf]))
        return super().block(lp, i, part, leaf)

    def attention(self, p: str, lp: LayerPlan, leaf: str) -> torch.Tensor:
        if leaf in SAVED:
            return self.ck.get(self._first([p + self.attn + SAVED[leaf], p + self.attn + leaf]))
        return super().attention(p, lp, leaf)


FAMILY = Family(
    "axk2",
    "AXK2ForCausalLM",
    DEFAULTS,
    translate,
    aliases={"num_local_experts": "n_routed_experts"},
    mapper=AXK2Mapper,
)
