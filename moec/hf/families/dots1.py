"""dots.llm1 (``model_type`` dots1, Dots1ForCausalLM): Qwen3's attention (GQA, RMSNorm over each head's q and
k before the rotation, sliding windows on the layer_types layers) around DeepSeek-V3's MoE (sigmoid scores, a
selection-only bias, group-limited top-k by each group's two best scores, optional renormalisation, a routed
scale, the shared experts fused into one MLP), dense before first_k_dense_replace. Its checkpoints use
transformers' common names (the base Mapper).

Fields dots.llm1's release carries from DeepSeek's config and that transformers' Dots1 does not read
(scoring_func, topk_method, moe_layer_freq, use_sliding_window) are accepted when they say what Dots1 does, and
named in the note of the spec field they concern; a value that says otherwise is refused as ambiguous.
"""

from __future__ import annotations

from moec.hf.draft import Draft, Family, HFConfig, shown
from moec.hf.families._common import (
    base,
    defaults,
    dense_layers_ffn,
    gqa,
    moe_core,
    router,
    shared_experts,
    typed_windows,
)

# fmt: off
DEFAULTS = defaults(10000.0, vocab_size=152064, hidden_size=4608, intermediate_size=10944, moe_intermediate_size=1408,
                    num_hidden_layers=62, num_attention_heads=32, num_key_value_heads=32, n_shared_experts=None,
                    n_routed_experts=None, n_group=1, topk_group=1, num_experts_per_tok=None,
                    first_k_dense_replace=0, norm_topk_prob=False, max_position_embeddings=2048, rms_norm_eps=1e-6,
                    attention_bias=False, routed_scaling_factor=1.0, sliding_window=4096, max_window_layers=62,
                    layer_types=None)
# fmt: on


def translate(c: HFConfig, d: Draft) -> None:
    base(c, d, "Dots1")
    b = c.bool("attention_bias")
    gqa(c, d, bias=b, out_bias=b, bias_src=c.src("attention_bias") + " (q, k, v and o)", qk_norm=True)
    d.put("attention.qk_norm", True, "Dots1Attention: RMSNorm(head_dim) on q and k, before the rotation")
    _windows(c, d)
    moe_core(c, d, experts_key="n_routed_experts", width_key="moe_intermediate_size")
    _router(c, d)
    shared_experts(c, d, "n_shared_experts", " (Dots1MoE fuses them into one MLP of n·width)")
    k_dense = c.int("first_k_dense_replace", minimum=0)
    d.ffn = ["dense" if i < k_dense else "moe" for i in range(d.n_layers)]
    d.ffn_note = f"Dots1DecoderLayer: MoE from layer first_k_dense_replace ({k_dense}) on"
    freq = c.value("moe_layer_freq")
    if freq is not None and (freq != 1 or isinstance(freq, bool)):
        d.gap(
            "moe_layer_freq",
            freq,
            "transformers' Dots1 ignores moe_layer_freq (every layer ≥ first_k_dense_replace is MoE), while "
            "DeepSeek-style code puts MoE on layer % moe_layer_freq == 0 only: ambiguous",
            "layers.overrides",
        )
    dense_layers_ffn(c, d, bias_src="Dots1MLP has no biases")


def _windows(c: HFConfig, d: Draft) -> None:
    """layer_types, else sliding from max_window_layers on whenever sliding_window is set (Dots1Config)."""
    w = c.int("sliding_window", optional=True)
    first = c.int("max_window_layers", minimum=0)
    default = ["sliding_attention" if w is not None and i >= first else "full_attention" for i in range(d.n_layers)]
    typed_windows(c, d, w, default, f"sliding from layer max_window_layers ({first}) on when sliding_window is set")
    # Qwen's switch, which transformers' Dots1 does not have
    use = c.bool("use_sliding_window") if c.given("use_sliding_window") else None
    slides = any(d.window)
    if use is not None and use != slides:
        d.gap(
            "use_sliding_window",
            use,
            f"transformers' Dots1 ignores use_sliding_window and {'slides on' if slides else 'has no'} windowed "
            "layers by layer_types, sliding_window and max_window_layers: ambiguous",
            "none: remove use_sliding_window, or make layer_types say which layers slide",
        )
    elif use is not None:  # reported beside the attention it concerns (the window note shows only with windows)
        d.put("attention.kind", "gqa", f"use_sliding_window {str(use).lower()}: agrees (transformers ignores it)")


def _router(c: HFConfig, d: Draft) -> None:
    """DeepSeek-V3's router; n_group and topk_group may both be null."""
    deepseek_v3_router(c, d, "Dots1TopkRouter")
    groups, best = c.int("n_group", optional=True), c.int("topk_group", optional=True)
    if (groups is None) != (best is None):
        null = "n_group" if groups is None else "topk_group"
        c.bad(null, f"null while {'topk_group' if groups is None else 'n_group'} is {shown(groups or best)}")
        return
    # null (as dots.llm1's release config may leave them): Dots1TopkRouter cannot split the experts into None
    # groups, and ports of dots1 to other runtimes read null as one group, i.e. no group limit; so does moec
    note = "" if groups is not None else " (null: one group, no group limit)"
    d.put("moe.router.n_groups", groups or 1, c.src("n_group") + note)
    d.put("moe.router.topk_groups", best or 1, c.src("topk_group") + note)


def deepseek_v3_router(c: HFConfig, d: Draft, cls: str) -> None:
    """The router of DeepSeek-V3, which transformers copies into Dots1 and EXAONE-MoE (``cls``): sigmoid scores,
    a selection-only bias, top-2-sum groups (their counts are the caller's), optional renormalisation, a scale.
    scoring_func and topk_method, which the copies do not read, must say the same; they are named in the score's
    note when they do, refused as ambiguous when they do not."""
    agrees = []
    for key, what in (("scoring_func", "sigmoid"), ("topk_method", "noaux_tc")):
        v = c.value(key)
        if v is None:
            continue
        if v != what:
            d.gap(
                key,
                v,
                f"transformers' {cls} ignores {key} and always routes as {what!r}: ambiguous",
                f"none: remove {key} (what transformers runs) or set it to {what!r}",
            )
        else:
            agrees.append(f"{key} {v!r}")
    note = f"{cls}: sigmoid, + e_score_correction_bias for selection only, groups by top-2 sum"
    if agrees:
        note += f" ({', '.join(agrees)}: {'agree' if len(agrees) > 1 else 'agrees'}; transformers ignores it)"
    router(d, note, score="sigmoid", softmax_after_topk=False, selection_bias=True, group_score="top2_sum")
    d.put("moe.router.normalize_topk", c.bool("norm_topk_prob"), c.src("norm_topk_prob") + " (sum + 1e-20)")
    d.put("moe.router.scale", c.float("routed_scaling_factor"), c.src("routed_scaling_factor"))


FAMILY = Family(
    "dots1",
    "Dots1ForCausalLM",
    DEFAULTS,
    translate,
    aliases={"num_local_experts": "n_routed_experts"},
)
