"""Cohere2-MoE (``model_type`` cohere2_moe, Cohere2MoeForCausalLM; Cohere's North): a parallel block, one norm a
layer read by both attention and the FFN, ``x + attn(h) + ffn(h)`` (``model.norm.placement: parallel``); that norm is
an RMSNorm when the config gives ``rms_norm_eps``, else a mean-centred LayerNorm without bias (``layer_norm_eps``).
GQA without q/k norms; sliding-window layers by ``layer_types`` (unset: from ``sliding_window_pattern`` and, before
``first_k_dense_replace``, ``prefix_dense_sliding_window_pattern``), which alone rotate q and k, except that the dense
prefix layers rotate too when ``prefix_dense_sliding_window_pattern`` is 1; the rotary pairs are interleaved
(dims 2i, 2i+1). Dense MLPs of ``prefix_dense_intermediate_size`` where ``mlp_layer_types`` says dense (unset: the
first ``first_k_dense_replace``), MoE elsewhere: experts of ``intermediate_size``, the top-k router logits scored by a
softmax over the k or by sigmoids (renormalised with ``norm_topk_prob``), ``num_shared_experts`` shared experts run as
one MLP and summed; logits × ``logit_scale``; embeddings tied by default.

Checkpoints use transformers' common names; the loader permutes q_proj's and k_proj's rows (and biases) of each head
from interleaved rotary pairs to moec's halves, as for ERNIE-4.5. The shared experts' "average" combination,
(routed + shared) / 2, has no moec field and is refused by name.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from moec.hf.draft import CannotExport, Draft, Family, HFConfig, shown
from moec.hf.families._common import all_known, base, defaults, dense_ffn, gqa, mlp_layer_kinds, moe_core, router
from moec.hf.families._export_common import dense_plan, layer_types, moe_plan
from moec.hf.families.afmoe import export_placed
from moec.hf.families.hy_v3 import equals, ignored
from moec.hf.mapper import Mapper, half_layout

if TYPE_CHECKING:
    import torch

    from moec.spec.plan import LayerPlan, ResolvedModel

# fmt: off
DEFAULTS = defaults(10000.0, vocab_size=256000, hidden_size=8192, intermediate_size=22528, logit_scale=0.0625,
                    num_hidden_layers=40, num_attention_heads=64, num_key_value_heads=None, head_dim=128,
                    max_position_embeddings=8192, layer_norm_eps=1e-5, tie_word_embeddings=True,
                    attention_bias=False, sliding_window=4096, num_experts_per_tok=2, num_experts=8,
                    num_shared_experts=0, shared_expert_combination_strategy="average", expert_selection_fn="softmax",
                    layer_types=None, mlp_layer_types=None, prefix_dense_sliding_window_pattern=1,
                    norm_topk_prob=True, prefix_dense_intermediate_size=None, rms_norm_eps=None,
                    sliding_window_pattern=4, first_k_dense_replace=0)
# fmt: on

SLIDING, FULL = "sliding_attention", "full_attention"


def translate(c: HFConfig, d: Draft) -> None:
    rms = c.value("rms_norm_eps") is not None
    base(
        c, d, "Cohere2-MoE", norm="rmsnorm" if rms else "layernorm", eps_key="rms_norm_eps" if rms else "layer_norm_eps"
    )
    c.value("layer_norm_eps" if rms else "rms_norm_eps")  # the other norm's eps: unused
    if not rms:
        d.put("model.norm.bias", False, "Cohere2MoeLayerNorm: mean-centred, a weight and no bias")
    d.put("model.norm.placement", "parallel", "Cohere2MoeDecoderLayer: x + attn(norm(x)) + mlp(norm(x))")
    b = c.bool("attention_bias")
    c.int("head_dim")  # Cohere2MoeAttention reads it as given: null would build no model
    gqa(c, d, bias=b, out_bias=b, bias_src=c.src("attention_bias") + " (q, k, v and o)")
    scale = c.float("logit_scale")
    if scale > 0:
        d.put("model.logits_scaling", 1 / scale, f"{c.src('logit_scale')} ({shown(scale)}): logits ÷ 1/logit_scale")
    elif not c.failed("logit_scale"):
        d.gap(
            "logit_scale",
            scale,
            "logits multiplied by zero or a negative number; moec divides them by a positive logits_scaling",
            "model.logits_scaling of either sign (or a logit multiplier). No count change",
        )
    k = c.int("first_k_dense_replace", minimum=0)
    _mlp_layers(c, d, k)
    _layer_types(c, d, k)
    _moe(c, d)
    if "dense" in d.ffn:
        width = "prefix_dense_intermediate_size" if c.value("prefix_dense_intermediate_size") is not None else None
        dense_ffn(c, d, key=width or "intermediate_size", bias_src="Cohere2MoeMLP has no biases")
    # North's release fields (Cohere's own code) that Cohere2MoeConfig does not define and transformers does not read
    ignored(c, d, "Cohere2Moe", "use_parallel_block", equals(True), "model.norm.placement")
    ignored(c, d, "Cohere2Moe", "use_qk_norm", equals(False), "attention.qk_norm")


def _mlp_layers(c: HFConfig, d: Draft, k: int) -> None:
    """mlp_layer_types ('dense' / 'sparse'), else dense before first_k_dense_replace."""
    if c.value("mlp_layer_types") is None:
        d.ffn = ["dense" if i < k else "moe" for i in range(d.n_layers)]
        d.ffn_note = f"mlp_layer_types unset: dense before {c.src('first_k_dense_replace')} ({k})"
        return
    mlp_layer_kinds(c, d, c.str_list("mlp_layer_types"))


def _layer_types(c: HFConfig, d: Draft, k: int) -> None:
    """layer_types as Cohere2MoeConfig derives them when unset; windows on the sliding layers; rotary positions on
    the sliding layers and, when prefix_dense_sliding_window_pattern is 1, on the dense layers (force_rope)."""
    prefix, rest = c.int("prefix_dense_sliding_window_pattern"), c.int("sliding_window_pattern")
    if c.value("layer_types") is None:
        types = [SLIDING if (i + 1) % prefix else FULL for i in range(min(k, d.n_layers))]
        types += [SLIDING if (i + 1) % rest else FULL for i in range(d.n_layers - len(types))]
        src = "layer_types unset: from sliding_window_pattern (prefix_dense_sliding_window_pattern before "
        src += "first_k_dense_replace)"
    else:
        types, src = c.str_list("layer_types"), "layer_types"
    if not d.fits_layers(c, "layer_types", types) or not all_known(c, "layer_types", types, (FULL, SLIDING)):
        return
    w = c.int("sliding_window", optional=True)
    d.window = [w if t == SLIDING else None for t in types]
    d.window_note = f"{src}; sliding layers use {c.src('sliding_window')}" if any(d.window) else ""
    forced = prefix == 1 and len(d.ffn) == d.n_layers
    d.rope = [t == SLIDING or (forced and f == "dense") for t, f in zip(types, d.ffn, strict=False)]
    d.rope_note = f"{src}: Cohere2MoeAttention rotates q and k on the sliding layers only" + (
        " and on the dense layers (prefix_dense_sliding_window_pattern 1: force_rope)" if forced else ""
    )


def _moe(c: HFConfig, d: Draft) -> None:
    moe_core(c, d, experts_key="num_experts", width_key="intermediate_size")
    fn = c.str("expert_selection_fn")
    if fn == "softmax":
        note = "Cohere2MoeTopKRouter: top-k of the logits, softmax over the k (norm_topk_prob unused)"
        router(d, note, score="softmax", softmax_after_topk=True, normalize_topk=False)
        c.value("norm_topk_prob")
    elif fn == "sigmoid":
        router(
            d, "Cohere2MoeTopKRouter: top-k of the logits, their sigmoids", score="sigmoid", softmax_after_topk=False
        )
        if c.bool("norm_topk_prob"):
            d.put("moe.router.normalize_topk", True, c.src("norm_topk_prob"))
            d.put("moe.router.normalize_eps", 0.0, "Cohere2MoeTopKRouter divides by the bare sum of the k weights")
    elif fn is not None:
        c.bad("expert_selection_fn", f"{shown(fn)}: Cohere2MoeTopKRouter knows softmax and sigmoid")
    n = c.int("num_shared_experts", minimum=0)
    how = c.str("shared_expert_combination_strategy")
    if how not in (None, "sum", "average"):
        c.bad("shared_expert_combination_strategy", f"{shown(how)}: Cohere2MoeSparseMoeBlock knows sum and average")
    if not n:
        return
    d.section(
        "moe",
        n_shared_experts=(n, c.src("num_shared_experts") + " (one MLP of n·intermediate_size)"),
        d_ff_shared=(d.get("moe.d_ff"), c.src("intermediate_size")),
    )
    if how == "average":
        d.gap(
            "shared_expert_combination_strategy",
            how,
            "the MoE block returns (routed + shared) / 2; moec adds the shared experts' output in full",
            "moe.shared_scale: float (the shared experts' output × it; router.scale 0.5 covers the routed half). "
            "No count change",
        )


def export(m: ResolvedModel) -> dict[str, Any]:
    """The plan as a cohere2_moe config.json: the parallel block with an RMSNorm, rotation on the sliding layers
    and, all together or not at all, the dense global ones (force_rope), a softmax over the top-k logits or sigmoid
    scores, shared experts summed (the rest comes back changed from the re-import and is refused)."""
    cfg = export_placed(m, FAMILY, "parallel", nope=True)
    window, types = layer_types(m)
    dense_global = [
        lp.attention.rope for lp, t in zip(m.layers, types, strict=True) if t == FULL and lp.ffn.kind == "dense"
    ]
    forced = any(dense_global)
    if len(set(dense_global)) > 1 or any(
        lp.attention.rope != (t == SLIDING or (forced and lp.ffn.kind == "dense"))
        for lp, t in zip(m.layers, types, strict=True)
    ):
        raise CannotExport("rotates q and k on the sliding layers and, all or none, the dense global ones")
    e, f = moe_plan(m), dense_plan(m)
    r = e.router
    a = m.layers[0].attention
    cfg.update(
        layer_types=types,
        sliding_window=window,
        mlp_layer_types=["sparse" if lp.ffn.kind == "moe" else "dense" for lp in m.layers],
        prefix_dense_sliding_window_pattern=1 if forced else 2,  # with layer_types given it only forces rotation
        prefix_dense_intermediate_size=f.d_ff if f else None,
        intermediate_size=e.d_ff,
        num_experts=e.n_experts,
        num_experts_per_tok=r.top_k,
        expert_selection_fn="softmax" if r.softmax_after_topk else "sigmoid",
        norm_topk_prob=r.normalize_topk,
        num_shared_experts=e.n_shared_experts,
        shared_expert_combination_strategy="sum",
        attention_bias=a.bias,
        logit_scale=1 / m.logits_scaling,
    )
    return cfg


class Cohere2MoeMapper(Mapper):
    """transformers' common names; q_proj's and k_proj's rows (and biases) permuted from interleaved rotary pairs
    (2i, 2i+1) to moec's halves (i, i + head_dim/2), the same permutation for q and k, so q·k is unchanged."""

    def attention(self, p: str, lp: LayerPlan, leaf: str) -> torch.Tensor:
        t = super().attention(p, lp, leaf)
        heads = {"q_proj": lp.attention.n_heads, "k_proj": lp.attention.n_kv_heads}.get(leaf.split(".")[0])
        return half_layout(t, heads) if heads else t


FAMILY = Family(
    "cohere2_moe", "Cohere2MoeForCausalLM", DEFAULTS, translate, export=export, export_rank=340, mapper=Cohere2MoeMapper
)
