"""Flint (``model_type`` flint, FlintForCausalLM; RecursiveSI): Qwen3-MoE's attention (RMSNorm(head_dim) on q
and k) with a learned sink logit per head and sliding windows on the layers ``layer_types`` names; rotary
positions on the sliding layers only (the full-attention layers have none); sigmoid routing over the top-k
logits, renormalised with ``norm_topk_prob``; one shared expert added without a gate; dense MLPs on
``mlp_only_layers`` (by default the first two). Checkpoints name the shared expert ``shared_expert`` and
save the sinks as ``softmax_offset``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from moec.hf.draft import Draft, Family, HFConfig, spelt
from moec.hf.families._common import base, defaults, gqa, moe_core, qwen_moe_ffn, router, typed_windows
from moec.hf.families.qwen2_moe import Qwen2MoeMapper
from moec.spec.plan import LayerPlan

if TYPE_CHECKING:
    import torch

# fmt: off
DEFAULTS = defaults(10000.0, vocab_size=150144, hidden_size=2048, intermediate_size=6144, num_hidden_layers=49,
                    num_attention_heads=32, num_key_value_heads=4, head_dim=128, max_position_embeddings=262144,
                    rms_norm_eps=1e-6, attention_bias=False, sliding_window=513, decoder_sparse_step=1,
                    moe_intermediate_size=512, shared_expert_intermediate_size=1024, num_experts_per_tok=6,
                    num_experts=256, norm_topk_prob=True, router_aux_loss_coef=0.0005, mlp_only_layers=None,
                    layer_types=None)
# fmt: on

# FlintConfig.__post_init__ when mlp_only_layers is unset
DENSE_LAYERS = (0, 1)


def translate(c: HFConfig, d: Draft) -> None:
    base(c, d, "Flint")
    b = c.bool("attention_bias")
    gqa(c, d, bias=b, out_bias=b, bias_src=c.src("attention_bias") + " (q, k, v and o)", qk_norm=True)
    d.put("attention.qk_norm", True, "FlintAttention: RMSNorm(head_dim) on q and k, before the rotation")
    d.put("attention.sinks", True, "FlintAttention.sinks: one learned logit per head")
    _windows(c, d)
    moe_core(c, d, experts_key="num_experts", width_key="moe_intermediate_size")
    router(d, "FlintTopKRouter: sigmoid of the logits, the top-k, no selection bias", score="sigmoid",
           softmax_after_topk=False)  # fmt: skip
    # FlintTopKRouter divides by the plain sum, moec's sigmoid renormalisation by sum + 1e-20 (DeepSeek-V3's):
    # in fp32 the two agree unless the chosen scores sum below ~1e-13, every top-k logit below -30
    norm_note = " (sum; moec adds 1e-20, felt only below a sum of ~1e-13)"
    d.put("moe.router.normalize_topk", c.bool("norm_topk_prob"), c.src("norm_topk_prob") + norm_note)
    d.section(
        "moe",
        n_shared_experts=(1, "FlintSparseMoeBlock.shared_expert, added in full (no gate)"),
        d_ff_shared=(c.int("shared_expert_intermediate_size"), c.src("shared_expert_intermediate_size")),
    )
    qwen_moe_ffn(c, d, "num_experts", bias_src="FlintMLP has no biases", unset_dense=DENSE_LAYERS)


def _windows(c: HFConfig, d: Draft) -> None:
    """layer_types, by default full attention on the first two layers, every layer i % 4 == 1 and the last;
    FlintAttention rotates q and k on the sliding layers only."""
    n = d.n_layers
    default = ["full_attention" if i < 2 or i % 4 == 1 or i == n - 1 else "sliding_attention" for i in range(n)]
    typed_windows(c, d, c.int("sliding_window"), default, "full on layers 0, 1, i % 4 == 1 and the last")
    d.rope = [w is not None for w in d.window]
    d.rope_note = "FlintAttention: rotary positions on the sliding layers only"
    # Qwen2-MoE's fields FlintConfig deletes (layer_types and attention_bias decide): transformers ignores them,
    # and Flint has no other implementation that reads them, so they are named, never refused
    ignored = [
        f"{k} {spelt(c.value(k))}" for k in ("use_sliding_window", "max_window_layers", "qkv_bias") if c.given(k)
    ]
    if ignored:
        d.put("attention.kind", "gqa", f"{', '.join(ignored)}: FlintConfig deletes them (transformers ignores them)")


class FlintMapper(Qwen2MoeMapper):
    """Qwen2-MoE's names (``shared_expert``); save_pretrained writes the sinks as ``softmax_offset``."""

    def attention(self, p: str, lp: LayerPlan, leaf: str) -> torch.Tensor:
        if leaf == "sinks":
            return self.ck.get(self._first([f"{p}{self.attn}softmax_offset", f"{p}{self.attn}sinks"]))
        return super().attention(p, lp, leaf)


FAMILY = Family("flint", "FlintForCausalLM", DEFAULTS, translate, mapper=FlintMapper)
