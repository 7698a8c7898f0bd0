"""Kolibri 1 (``model_type`` kolibri1, Kolibri1ForCausalLM; Aleph Alpha): GQA with RMSNorm(head_dim) on q and k and
no biases; sliding-window layers by ``layer_types`` (unset: global every fifth layer), which alone rotate q and k when
``sliding_window`` is set (the global ones are NoPE; without a window every layer rotates); sandwich norms, four
RMSNorms a layer (``model.norm.placement: sandwich``); MoE on every layer: experts chosen by the top-k of the router
logits plus a selection-only bias (``e_score_correction_bias``, added to the *logits*), weighted by their sigmoids
(renormalised with ``norm_topk_prob``), and one shared expert of ``shared_expert_intermediate_size`` added in full.

Checkpoints use transformers' common names, with Kolibri's own, as released and as save_pretrained writes them back,
or transformers' in-memory ones: ``post_attn_norm`` (``post_self_attn_layernorm``) after attention,
``post_attention_layernorm`` before the MLP (the base pre-FFN name), ``post_ffn_norm`` (``post_mlp_layernorm``) after
it, and the selection bias at ``moe.router.expert_bias`` (``mlp.gate.e_score_correction_bias``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from moec.hf.draft import CannotExport, Draft, Family, HFConfig
from moec.hf.families._common import all_known, base, defaults, gqa, moe_core, router
from moec.hf.families._export_common import layer_types, moe_plan
from moec.hf.families.afmoe import FULL, SLIDING, SandwichMapper, export_placed

if TYPE_CHECKING:
    import torch

    from moec.spec.plan import MoEPlan, ResolvedModel

# fmt: off
DEFAULTS = defaults(10000.0, vocab_size=128000, hidden_size=2560, num_hidden_layers=50, num_attention_heads=48,
                    num_key_value_heads=4, max_position_embeddings=262144, rms_norm_eps=1e-6, sliding_window=513,
                    moe_intermediate_size=512, num_experts_per_tok=6, num_local_experts=384, norm_topk_prob=False,
                    head_dim=128, shared_expert_intermediate_size=512, layer_types=None)
# fmt: on


def translate(c: HFConfig, d: Draft) -> None:
    base(c, d, "Kolibri1")
    c.int("head_dim")  # Kolibri1Attention reads it as given: null would build no model
    d.put(
        "model.norm.placement", "sandwich", "Kolibri1DecoderLayer: x + post_norm(f(pre_norm(x))) for attention and MLP"
    )
    gqa(c, d, bias=False, out_bias=False, bias_src="Kolibri1Attention has no biases", qk_norm=True)
    d.put("attention.qk_norm", True, "Kolibri1Attention: RMSNorm(head_dim) on q and k, before the rotation")
    _layer_types(c, d)
    moe_core(c, d, experts_key="num_local_experts", width_key="moe_intermediate_size")
    _router(c, d)
    d.section(
        "moe",
        n_shared_experts=(1, "Kolibri1SparseMoeBlock.shared_experts, added in full"),
        d_ff_shared=(c.int("shared_expert_intermediate_size"), c.src("shared_expert_intermediate_size")),
    )
    d.ffn_note = "Kolibri1DecoderLayer: the MoE block on every layer"


def _layer_types(c: HFConfig, d: Draft) -> None:
    """layer_types (unset: global every fifth layer); with sliding_window set, the sliding layers alone rotate q and
    k (Kolibri1Attention rotates when sliding_window is None or the layer slides)."""
    if c.value("layer_types") is None:
        types = [FULL if (i + 1) % 5 == 0 else SLIDING for i in range(d.n_layers)]
        src = "layer_types unset: global every fifth layer (Kolibri1Config)"
    else:
        types, src = c.str_list("layer_types"), "layer_types"
    if not d.fits_layers(c, "layer_types", types) or not all_known(c, "layer_types", types, (FULL, SLIDING)):
        return
    w = c.int("sliding_window", optional=True)
    if w is None and SLIDING in types:
        c.bad("sliding_window", "null: Kolibri1Config requires a positive sliding_window for sliding layers")
        return
    d.window = [w if t == SLIDING else None for t in types]
    d.window_note = f"{src}; sliding layers use {c.src('sliding_window')}" if any(d.window) else ""
    if w is not None:
        d.rope = [t == SLIDING for t in types]
        d.rope_note = f"{src}: Kolibri1Attention rotates q and k on the sliding layers only; the global ones are NoPE"


def _router(c: HFConfig, d: Draft) -> None:
    note = "Kolibri1TopKRouter: top-k of logits + e_score_correction_bias, weighted by the sigmoids of the logits"
    router(d, note, score="sigmoid", softmax_after_topk=False, selection_bias=True)
    if c.bool("norm_topk_prob"):
        d.put("moe.router.normalize_topk", True, c.src("norm_topk_prob"))
        d.put("moe.router.normalize_eps", 0.0, "Kolibri1TopKRouter divides by the bare sum of the k weights")
    d.put("moe.router.selection_bias_on", "logits", "Kolibri1TopKRouter: the bias joins the logits, before the sigmoid")


def export(m: ResolvedModel) -> dict[str, Any]:
    """The plan as a kolibri1 config.json: sandwich norms, q/k norms and no biases, rotation on exactly the sliding
    layers (on every layer when none slides), every layer MoE with one shared expert and the selection bias on the
    logits (the rest comes back changed from the re-import and is refused)."""
    cfg = export_placed(m, FAMILY, "sandwich", nope=True)
    window, types = layer_types(m)
    rotating = [t == SLIDING for t in types] if window else [True] * len(types)
    if [lp.attention.rope for lp in m.layers] != rotating:
        raise CannotExport("rotates q and k on the sliding layers only (on every layer when none slides)")
    e = moe_plan(m, all_layers=True)
    if e.n_shared_experts != 1:
        raise CannotExport("has one shared expert")
    cfg.update(
        layer_types=types,
        sliding_window=window,
        moe_intermediate_size=e.d_ff,
        num_local_experts=e.n_experts,
        num_experts_per_tok=e.router.top_k,
        norm_topk_prob=e.router.normalize_topk,
        shared_expert_intermediate_size=e.d_ff_shared,
    )
    return cfg


class Kolibri1Mapper(SandwichMapper):
    """Kolibri's names, as released (and as save_pretrained writes them back) or as transformers holds them in memory:
    ``post_attn_norm`` / ``post_self_attn_layernorm`` after attention, ``post_ffn_norm`` / ``post_mlp_layernorm``
    after the MLP (the pre-FFN norm keeps the base ``post_attention_layernorm``), and the selection bias at the layer
    level, ``moe.router.expert_bias``, or under the router, ``mlp.gate.e_score_correction_bias``."""

    attn_post_norms = ("post_attn_norm.", "post_self_attn_layernorm.")
    ffn_post_norms = ("post_ffn_norm.", "post_mlp_layernorm.")

    def moe(self, p: str, plan: MoEPlan, leaf: str) -> torch.Tensor:
        if leaf == "router.expert_bias" and p + "moe.router.expert_bias" in self.ck:
            return self.ck.get(p + "moe.router.expert_bias")
        return super().moe(p, plan, leaf)


FAMILY = Family(
    "kolibri1",
    "Kolibri1ForCausalLM",
    DEFAULTS,
    translate,
    aliases={"num_experts": "num_local_experts"},
    export=export,
    export_rank=330,
    mapper=Kolibri1Mapper,
)
