"""FlexOlmo (``model_type`` flex_olmo, FlexOlmoForCausalLM): OLMoE's MoE (softmax over all experts, top-k,
optionally renormalised, every layer MoE) inside OLMo 2's block, which normalises each sublayer's *output*
before it joins the residual (x + norm(f(x)); no norm before the sublayers, a final norm), with RMSNorm over
the whole q and k projections. Its checkpoints use transformers' common names, the two norms of a layer being
``post_attention_layernorm`` and ``post_feedforward_layernorm``.
"""

from __future__ import annotations

from moec.hf.draft import Draft, Family, HFConfig
from moec.hf.families._common import base, defaults, gqa, window_ignored
from moec.hf.families.olmoe import olmoe_moe
from moec.hf.mapper import Mapper

# fmt: off
DEFAULTS = defaults(500000.0, vocab_size=100352, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                    num_attention_heads=32, num_key_value_heads=None, max_position_embeddings=4096,
                    rms_norm_eps=1e-6, attention_bias=False, num_experts_per_tok=5, num_experts=7,
                    router_aux_loss_coef=0.01, norm_topk_prob=False)
# fmt: on


def translate(c: HFConfig, d: Draft) -> None:
    base(c, d, "FlexOlmo")
    d.put("model.norm.kind", "rmsnorm", "RMSNorm after each FlexOlmo sublayer, plus a final norm")
    d.put(
        "model.norm.placement",
        "after_sublayer",
        "FlexOlmoDecoderLayer: x + post_attention_layernorm(attn(x)), x + post_feedforward_layernorm(mlp(x))",
    )
    b = c.bool("attention_bias")
    gqa(c, d, bias=b, out_bias=b, bias_src=c.src("attention_bias") + " (q, k, v and o)", qk_norm=True)
    d.put("attention.qk_norm", True, "FlexOlmoAttention: q_norm, k_norm")
    d.put("attention.qk_norm_scope", "projection", "RMSNorm(heads·head_dim) on q, RMSNorm(kv·head_dim) on k, whole")
    # FlexOlmoModel builds one full causal mask: a window in the config does nothing in transformers and would
    # in a model that honours it, so it is refused as ambiguous (as OLMoE's)
    window_ignored(c, d, "FlexOlmo")
    olmoe_moe(c, d, "FlexOlmo", "FlexOlmo")


class FlexOlmoMapper(Mapper):
    """OLMo 2's block: the norm after attention and the norm after the MoE are moec's attn_norm and ffn_norm."""

    attn_norm = "post_attention_layernorm."
    ffn_norm = "post_feedforward_layernorm."


FAMILY = Family(
    "flex_olmo",
    "FlexOlmoForCausalLM",
    DEFAULTS,
    translate,
    aliases={"num_local_experts": "num_experts"},
    mapper=FlexOlmoMapper,
)
