"""Lara-Mini (``model_type`` lara_mini, LaraMiniForCausalLM): Qwen3.5's Gated DeltaNet (moec.mixers.gated_deltanet,
docs/mixers.md) on the layers ``layer_types`` calls linear_attention, and plain GQA with RMSNorm(head_dim) on q and
k elsewhere: sliding_attention layers rotate q and k and see the last ``sliding_window`` tokens, full_attention
layers see every token without positions (NoPE). Unset, layer_types repeats the release's period of five,
[linear, sliding, linear, full, sliding]. Every layer is MoE: softmax top-k over num_experts (optionally
renormalised) and one shared expert added in full, without a gate. Norms are plain RMSNorm (weight initialised 1);
the embeddings are tied unless the config says otherwise.

Lara's gated output norm applies its weight in float32 where Qwen's casts back to the model's dtype first: the two
agree in float32 and differ by a rounding in bf16 (moec computes Qwen's order).

Checkpoints fuse the delta net's input projections into one ``in_proj`` (rows ``[q | k | v | z | b | a]``) and name
its gated norm ``out_norm``; the weight mapping splits and renames them (transformers' in-memory names, moec's,
load as they are).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from moec.hf.draft import Draft, Family, HFConfig, shown
from moec.hf.families._common import aux, base, defaults, gqa
from moec.hf.families.qwen3_next import deltanet_section, shared_expert_moe
from moec.hf.mapper import Mapper
from moec.mixers.gated_deltanet import conv_channels

if TYPE_CHECKING:
    import torch

    from moec.spec.plan import LayerPlan

# fmt: off
DEFAULTS = defaults(10000.0, vocab_size=151936, hidden_size=1024, num_hidden_layers=34, num_attention_heads=16,
                    num_key_value_heads=4, max_position_embeddings=131072, rms_norm_eps=1e-6,
                    tie_word_embeddings=True, attention_bias=False, head_dim=128, linear_conv_kernel_dim=4,
                    linear_key_head_dim=128, linear_value_head_dim=128, linear_num_key_heads=8,
                    linear_num_value_heads=16, moe_intermediate_size=512, shared_expert_intermediate_size=512,
                    num_experts_per_tok=4, num_experts=128, norm_topk_prob=True, router_aux_loss_coef=0.001,
                    layer_types=None, sliding_window=512)
# fmt: on

LINEAR, SLIDING, FULL = "linear_attention", "sliding_attention", "full_attention"
RELEASED_PATTERN = (LINEAR, SLIDING, LINEAR, FULL, SLIDING)  # LaraMiniConfig.__post_init__'s, repeated


def translate(c: HFConfig, d: Draft) -> None:
    base(c, d, "Lara-Mini")
    b = c.bool("attention_bias")
    gqa(c, d, bias=b, out_bias=b, bias_src=c.src("attention_bias") + " (q, k, v and o)", qk_norm=True)
    d.put("attention.qk_norm", True, "LaraMiniAttention: RMSNorm(head_dim) on q and k, before the rotation")
    _layers(c, d)
    deltanet_section(c, d)
    shared_expert_moe(c, d, "LaraMini", gated=False)
    d.put("moe.router.normalize_topk", c.bool("norm_topk_prob"), c.src("norm_topk_prob"))
    aux(c, d)
    d.ffn_note = "LaraMiniDecoderLayer: every layer is MoE"


def _layer_types(c: HFConfig, d: Draft) -> tuple[list[str] | None, str]:
    if c.value("layer_types") is None:
        types = [RELEASED_PATTERN[i % len(RELEASED_PATTERN)] for i in range(d.n_layers)]
        return types, "layer_types unset: linear, sliding, linear, full, sliding repeated (LaraMiniConfig)"
    types = c.str_list("layer_types")
    if not d.fits_layers(c, "layer_types", types):
        return None, ""
    unknown = sorted({t for t in types if t not in (LINEAR, SLIDING, FULL)})
    for t in unknown:
        c.bad("layer_types", f"{shown(t)} is not linear_attention, sliding_attention or full_attention")
    return (None, "") if unknown else (types, "layer_types")


def _layers(c: HFConfig, d: Draft) -> None:
    """Each layer's mixer, and the attention layers' windows and rotary positions, from layer_types."""
    window = c.int("sliding_window")
    types, src = _layer_types(c, d)
    if types is None:
        return
    d.mixer = ["gated_deltanet" if t == LINEAR else "attention" for t in types]
    d.mixer_note = f"{src}: linear_attention is LaraMiniGatedDeltaNet"
    d.window = [window if t == SLIDING else None for t in types]
    d.window_note = f"{src}: sliding_attention layers see {c.src('sliding_window')} tokens"
    d.rope = [t != FULL for t in types]
    d.rope_note = f"{src}: LaraMiniModel gives the full_attention layers no rotary positions (NoPE)"


class LaraMiniMapper(Mapper):
    """The base names, Qwen2-MoE's ``shared_expert``; the delta net's fused ``in_proj`` (rows [qkv | z | b | a])
    split and its ``out_norm`` renamed, where the checkpoint holds them so."""

    shared = "shared_expert."

    def mixer(self, p: str, lp: LayerPlan, leaf: str) -> torch.Tensor:
        where = p + "linear_attn."
        fused = where + "in_proj.weight"
        if leaf.startswith("in_proj_") and fused in self.ck:
            m = lp.mixer
            values = m.n_value_heads * m.value_head_dim
            sizes = {"qkv": conv_channels(m), "z": values, "b": m.n_value_heads, "a": m.n_value_heads}
            parts = dict(zip(sizes, self.ck.get(fused).split(list(sizes.values())), strict=True))
            return parts[leaf.removeprefix("in_proj_").removesuffix(".weight")]
        if leaf == "norm.weight" and where + "out_norm.weight" in self.ck:
            return self.ck.get(where + "out_norm.weight")
        return self.ck.get(where + leaf)


FAMILY = Family("lara_mini", "LaraMiniForCausalLM", DEFAULTS, translate, mapper=LaraMiniMapper)
