"""LFM2-MoE (``model_type`` lfm2_moe, Lfm2MoeForCausalLM; Liquid AI's LFM2-8B-A1B): a hybrid whose ``layer_types``
put LFM2's gated short convolution (``conv``; docs/mixers.md, "short_conv") in most layers and GQA with RMSNorm on
each head's q and k (``full_attention``) in the rest; pre-norm RMSNorm (``operator_norm``, ``ffn_norm``) and a final
norm transformers names ``embedding_norm``; a dense SwiGLU MLP in the first ``num_dense_layers`` layers and an MoE
after them: sigmoid scores, top-k on the scores plus a selection-only ``expert_bias`` buffer (``use_expert_bias``),
the chosen scores renormalised by their sum + 1e-6 (``norm_topk_prob``) and scaled, no shared expert.

transformers' Lfm2MoeConfig has no default ``layer_types`` (its model cannot be built without them), reads
``norm_eps`` (not rms_norm_eps) and fixes every activation to SiLU in code (it has no hidden_act).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from moec.hf.draft import CannotExport, Draft, Family, HFConfig
from moec.hf.families._common import all_known, base, defaults, gqa, router
from moec.hf.families._export_common import dense_plan, export_base, moe_plan, one
from moec.hf.mapper import Mapper, Missing, gate_up
from moec.mixers import short_conv
from moec.spec.plan import DenseFFNPlan, LayerPlan, MoEPlan, ResolvedModel

if TYPE_CHECKING:
    import torch

# what transformers' Lfm2MoeTopKRouter adds to the top-k sum it divides by
NORMALIZE_EPS = 1e-6
# layer_types → moec's mixer; transformers builds attention for any entry but conv, and its masks know only these two
MIXERS = {"conv": short_conv.KIND, "full_attention": "attention"}

# fmt: off
DEFAULTS = defaults(1000000.0, vocab_size=65536, hidden_size=2048, intermediate_size=7168, moe_intermediate_size=1792,
                    num_hidden_layers=32, tie_word_embeddings=True, max_position_embeddings=128000, norm_eps=1e-5,
                    num_attention_heads=32, num_key_value_heads=8, conv_bias=False, conv_L_cache=3,
                    num_dense_layers=2, num_experts_per_tok=4, num_experts=32, use_expert_bias=True,
                    routed_scaling_factor=1.0, norm_topk_prob=True, layer_types=None)
# fmt: on


def translate(c: HFConfig, d: Draft) -> None:
    base(c, d, "LFM2-MoE", eps_key="norm_eps")
    gqa(c, d, bias=False, out_bias=False, bias_src="Lfm2MoeAttention has no biases", qk_norm=True)
    d.put("attention.qk_norm", True, "Lfm2MoeAttention: RMSNorm(head_dim) on q and k (q_layernorm, k_layernorm)")
    _mixers(c, d)
    _ffn_layers(c, d)
    _moe(c, d)


def _mixers(c: HFConfig, d: Draft) -> None:
    """layer_types: ``conv`` layers hold the short convolution (conv_L_cache taps, conv_bias), ``full_attention``
    layers GQA; the convolution's fields are read whether or not a layer uses them."""
    kernel = c.int("conv_L_cache", maximum=64)
    bias = c.bool("conv_bias")
    if c.value("layer_types") is None:
        c.bad("layer_types", "unset: Lfm2MoeConfig derives no default, and its model needs one entry per layer")
        return
    types = c.str_list("layer_types")
    if not d.fits_layers(c, "layer_types", types) or not all_known(c, "layer_types", types, tuple(MIXERS)):
        return
    d.mixer = [MIXERS[t] for t in types]
    d.mixer_note = "layer_types: conv → Lfm2MoeShortConv, full_attention → Lfm2MoeAttention"
    if short_conv.KIND in d.mixer:
        d.section("mixers.short_conv", kernel=(kernel, c.src("conv_L_cache")), bias=(bias, c.src("conv_bias")))


def _ffn_layers(c: HFConfig, d: Draft) -> None:
    """Lfm2MoeMLP (w2(silu(w1·x) ⊙ w3·x), intermediate_size wide) in the first num_dense_layers, MoE after."""
    n = c.int("num_dense_layers", minimum=0)
    d.ffn = ["dense" if i < n else "moe" for i in range(d.n_layers)]
    d.ffn_note = f"{c.src('num_dense_layers')} ({n}): Lfm2MoeMLP before, Lfm2MoeSparseMoeBlock from there"
    width = c.int("intermediate_size")
    if "dense" in d.ffn:
        d.section(
            "ffn",
            d_ff=(width, c.src("intermediate_size")),
            activation=("swiglu", "Lfm2MoeMLP: silu on w1, times w3 (no hidden_act field)"),
            bias=(False, "Lfm2MoeMLP has no biases"),
        )


def _moe(c: HFConfig, d: Draft) -> None:
    """Lfm2MoeSparseMoeBlock: Lfm2MoeTopKRouter over Lfm2MoeExperts (silu-gated), no shared expert."""
    values = {
        "n_experts": (c.int("num_experts"), c.src("num_experts")),
        "d_ff": (c.int("moe_intermediate_size"), c.src("moe_intermediate_size")),
        "activation": ("swiglu", "Lfm2MoeExperts: act_fn = silu (no hidden_act field)"),
    }
    top_k = c.int("num_experts_per_tok")
    selection, renormalise = c.bool("use_expert_bias"), c.bool("norm_topk_prob")
    scale = c.float("routed_scaling_factor")
    if "moe" not in d.ffn:  # every layer dense: the fields are read, the section would be unused
        return
    d.section("moe", **values)
    d.put("moe.router.top_k", top_k, c.src("num_experts_per_tok"))
    router(d, "Lfm2MoeTopKRouter: sigmoid scores, weights from the scores", score="sigmoid", softmax_after_topk=False)
    d.put("moe.router.selection_bias", selection, c.src("use_expert_bias") + " (the expert_bias buffer)")
    d.put("moe.router.normalize_topk", renormalise, c.src("norm_topk_prob"))
    if renormalise:
        d.put("moe.router.normalize_eps", NORMALIZE_EPS, "Lfm2MoeTopKRouter divides by the sum + 1e-6")
    d.put("moe.router.scale", scale, c.src("routed_scaling_factor"))
    # transformers' model has no auxiliary loss and never updates expert_bias: the spec says no balancing is meant
    d.put("moe.balance.load_balance_coeff", 0.0, "Lfm2MoeConfig has no auxiliary loss")


def export(m: ResolvedModel) -> dict[str, Any]:
    """The plan as an lfm2_moe config.json: every layer's mixer short_conv or attention, dense layers first."""
    cfg = export_base(m, FAMILY)
    cfg["norm_eps"] = cfg.pop("rms_norm_eps")
    if cfg.pop("hidden_act") != "silu":  # fixed in code: Lfm2MoeConfig has no hidden_act
        raise CannotExport("computes SwiGLU only")
    types = [_layer_type(lp) for lp in m.layers]
    cfg["layer_types"] = types
    convs = [lp.mixer for lp in m.layers if lp.mixer is not None]
    if convs:
        conv = one(convs, "the short convolution")
        cfg.update(conv_L_cache=conv.kernel, conv_bias=conv.bias)
    cfg.update(_export_ffn(m))
    return cfg


def _layer_type(lp: LayerPlan) -> str:
    if lp.mixer is None:
        return "full_attention"
    if lp.mixer_kind != short_conv.KIND:
        raise CannotExport(f"has no {lp.mixer_kind} layers (only conv and full_attention)")
    return "conv"


def _export_ffn(m: ResolvedModel) -> dict[str, Any]:
    e, f = moe_plan(m), dense_plan(m)
    n_dense = sum(isinstance(lp.ffn, DenseFFNPlan) for lp in m.layers)
    if any(isinstance(lp.ffn, MoEPlan) != (lp.index >= n_dense) for lp in m.layers):
        raise CannotExport("has its dense layers first, then MoE ones, and no layer without an FFN")
    r = e.router
    if r.score != "sigmoid" or e.n_shared_experts or r.normalize_eps != (NORMALIZE_EPS if r.normalize_topk else None):
        raise CannotExport("routes by sigmoid scores renormalised by sum + 1e-6 (or not), without shared experts")
    out = {
        "num_experts": e.n_experts,
        "moe_intermediate_size": e.d_ff,
        "num_experts_per_tok": r.top_k,
        "use_expert_bias": r.selection_bias,
        "norm_topk_prob": r.normalize_topk,
        "routed_scaling_factor": r.scale,
        "num_dense_layers": n_dense,
    }
    if f is not None:
        out["intermediate_size"] = f.d_ff
    return out


class Lfm2MoeMapper(Mapper):
    """LFM2-MoE's names: ``operator_norm`` / ``ffn_norm`` before the sublayers, ``model.embedding_norm`` the final
    norm; the attention's ``out_proj``, ``q_layernorm`` and ``k_layernorm`` (moec: o_proj, q_norm, k_norm); the
    convolution under ``conv.`` with transformers' own names (in_proj, conv, out_proj); the dense MLP's and each
    expert's ``w1`` (gate), ``w3`` (up), ``w2`` (down) under ``feed_forward.``, the selection bias
    ``feed_forward.expert_bias``."""

    final_norm = "model.embedding_norm."
    attn_norm = "operator_norm."
    ffn_norm = "ffn_norm."
    moe_blocks = ("feed_forward.",)
    expert_biases = ("expert_bias",)
    ATTENTION_NAMES = {"o_proj.": "out_proj.", "q_norm.": "q_layernorm.", "k_norm.": "k_layernorm."}

    def attention(self, p: str, lp: LayerPlan, leaf: str) -> torch.Tensor:
        for ours, theirs in self.ATTENTION_NAMES.items():
            if leaf.startswith(ours):
                leaf = theirs + leaf.removeprefix(ours)
        return self.ck.get(p + self.attn + leaf)

    def mixer(self, p: str, lp: LayerPlan, leaf: str) -> torch.Tensor:
        return self.ck.get(p + "conv." + leaf)

    def block(self, lp: LayerPlan, i: int, part: str, leaf: str) -> torch.Tensor:
        if part == "ffn" and isinstance(lp.ffn, DenseFFNPlan):
            return self.dense_w(self.layer(i) + "feed_forward.", leaf)
        return super().block(lp, i, part, leaf)

    def dense_w(self, p: str, leaf: str) -> torch.Tensor:
        """Lfm2MoeMLP: w1 (gate), w3 (up) (f, d) and w2 (down) (d, f), no biases."""
        if leaf == "w_gate_up":
            return gate_up(self.ck.get(p + "w1.weight"), self.ck.get(p + "w3.weight"))  # (d, 2f)
        if leaf == "w_down":
            return self.ck.get(p + "w2.weight").T  # (f, d)
        raise Missing([f"<no checkpoint name known for moec's FFN {leaf}>"])


FAMILY = Family(
    "lfm2_moe",
    "Lfm2MoeForCausalLM",
    DEFAULTS,
    translate,
    aliases={"tie_embedding": "tie_word_embeddings"},
    export=export,
    export_rank=300,
    mapper=Lfm2MoeMapper,
)
