"""Laguna (``model_type`` laguna, LagunaForCausalLM; Poolside's Laguna XS/S): GQA with RMSNorm(head_dim) on q and
k before the rotation and a softplus output gate per head (``gating`` true or "per-head") or per element
("per-element") from its own projection ``g_proj`` (``attention.output_gate_fn: softplus``); each layer's query
heads from ``num_attention_heads_per_layer``; sliding-window layers by ``layer_types``, and rotary parameters per
attention type: ``rope_parameters`` maps full_attention and sliding_attention to their own base and
``partial_rotary_factor`` (class defaults: 500000 and 0.5 on full layers, 10000 and 1.0 on sliding ones), which moec
gives a layer as its own ``rope_theta`` and ``rotary_dim``. Dense MLPs on the ``mlp_layer_types`` "dense" layers,
else MoE: sigmoid scores of the (optionally tanh-softcapped) logits, a selection-only ``e_score_correction_bias``,
the top-k weights renormalised by their bare sum and scaled by ``moe_routed_scaling_factor``, plus one shared MLP
of ``shared_expert_intermediate_size`` without a gate.

Types whose rope_type or scaling parameters differ (Laguna XS 2.1: YaRN on the full layers, none on the sliding
ones) give each layer its type's scaling (``layers.*.attention.rope_scaling``; dynamic and longrope, which depend on
the live length, refused by name). Checkpoints keep transformers' names, the gate's projection ``g_proj`` (moec's
``gate_proj``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from moec.hf.draft import CannotExport, Draft, Family, HFConfig, is_number, shown
from moec.hf.families._common import (
    aux,
    defaults,
    dense_layers_ffn,
    gqa,
    mlp_layer_types,
    moe_core,
    router,
    typed_windows,
)
from moec.hf.families._export_common import dense_plan, export_base, export_moe_common, layer_types, moe_plan
from moec.hf.families._typed_rope import (
    TypedRope,
    export_typed_rope,
    layer_rope,
    rope_layer_types,
    rope_per_type,
    typed_base,
)
from moec.hf.mapper import Mapper

if TYPE_CHECKING:
    import torch

    from moec.spec.plan import LayerPlan, ResolvedModel

# fmt: off
DEFAULTS = defaults(10000.0, vocab_size=100352, hidden_size=2048, intermediate_size=8192, num_hidden_layers=40,
                    num_attention_heads=48, num_key_value_heads=8, head_dim=128, max_position_embeddings=131072,
                    rms_norm_eps=1e-6, attention_bias=False, sliding_window=512, moe_intermediate_size=512,
                    shared_expert_intermediate_size=512, num_experts_per_tok=8, num_experts=256,
                    router_aux_loss_coef=0.001, layer_types=None, mlp_layer_types=None, gating=True,
                    num_attention_heads_per_layer=None, moe_routed_scaling_factor=1.0,
                    moe_apply_router_weight_on_input=False, moe_router_logit_softcapping=0.0, hidden_act="silu")
# fmt: on

# LagunaConfig.__post_init__ when rope_parameters is unset
DEFAULT_ROPE = {
    "full_attention": {"rope_type": "default", "rope_theta": 500000.0, "partial_rotary_factor": 0.5},
    "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 1.0},
}
LAGUNA_ROPE = TypedRope(
    "Laguna",
    DEFAULT_ROPE,
    lambda mapping: 1.0,  # LagunaRotaryEmbedding: a type without partial_rotary_factor rotates whole heads
)
GATES = {True: "head", "per-head": "head", "per-element": "element"}


def translate(c: HFConfig, d: Draft) -> None:
    types = rope_layer_types(c, ["full_attention"])
    per_type = rope_per_type(c, types, LAGUNA_ROPE)
    typed_base(c, d, per_type, types, LAGUNA_ROPE)
    b = c.bool("attention_bias")
    gqa(c, d, bias=b, out_bias=b, bias_src=c.src("attention_bias") + " (q, k, v and o)", qk_norm=True)
    d.put("attention.qk_norm", True, "LagunaAttention: RMSNorm(head_dim) on q and k, before the rotation")
    _gate(c, d)
    w = c.int("sliding_window", optional=True)
    typed_windows(c, d, w, ["full_attention"] * d.n_layers, "all full attention (LagunaConfig)", null_refused=True)
    _heads_per_layer(c, d)
    if per_type is not None and not c.failed("layer_types") and d.layers_known:
        layer_rope(c, d, per_type, types, LAGUNA_ROPE)
    _moe(c, d)
    first_dense_mlp_layers(c, d)
    dense_layers_ffn(c, d, bias_src="LagunaMLP has no biases")


def _gate(c: HFConfig, d: Draft) -> None:
    g = c.value("gating")
    kind = GATES.get(g) if isinstance(g, (bool, str)) else None
    if kind is None:
        c.bad("gating", f"{shown(g)}: expected true, 'per-head' or 'per-element' (LagunaAttention always gates)")
        kind = "head"
    d.put("attention.output_gate", kind, f"{c.src('gating')}: o_proj(attn · softplus(g_proj(x))), per {kind}")
    d.put("attention.output_gate_fn", "softplus", "LagunaAttention: softplus of g_proj, in fp32")


def _heads_per_layer(c: HFConfig, d: Draft) -> None:
    """num_attention_heads_per_layer (unset: num_attention_heads on every layer)."""
    if c.value("num_attention_heads_per_layer") is None:
        return
    heads = c.value("num_attention_heads_per_layer")
    if not isinstance(heads, list) or not all(isinstance(h, int) and not isinstance(h, bool) and h > 0 for h in heads):
        c.bad("num_attention_heads_per_layer", f"{shown(heads)}: expected a positive head count per layer")
        return
    if d.fits_layers(c, "num_attention_heads_per_layer", heads):
        d.layer_attention["n_heads"] = (list(heads), "num_attention_heads_per_layer")


def _moe(c: HFConfig, d: Draft) -> None:
    moe_core(c, d, experts_key="num_experts", width_key="moe_intermediate_size")
    router(
        d,
        "LagunaTopKRouter: sigmoid, + e_score_correction_bias for selection only, top-k renormalised by their sum",
        score="sigmoid",
        softmax_after_topk=False,
        selection_bias=True,
        selection_bias_parameter=True,  # an nn.Parameter without gradient
        normalize_topk=True,
        normalize_eps=0.0,
    )
    d.put("moe.router.scale", c.float("moe_routed_scaling_factor"), c.src("moe_routed_scaling_factor"))
    cap = c.float("moe_router_logit_softcapping")
    if is_number(cap) and cap > 0:
        d.put("moe.router.logit_softcap", cap, c.src("moe_router_logit_softcapping"))
    elif is_number(cap) and cap < 0:
        c.bad("moe_router_logit_softcapping", f"{shown(cap)}: expected 0 (off) or a positive cap")
    if c.bool("moe_apply_router_weight_on_input"):
        c.bad("moe_apply_router_weight_on_input", "true: transformers' Laguna refuses it (NotImplementedError)")
    shared = c.int("shared_expert_intermediate_size", minimum=0)
    if shared:
        d.section(
            "moe",
            n_shared_experts=(1, "LagunaSparseMoeBlock: one shared LagunaMLP, no gate, added to the routed sum"),
            d_ff_shared=(shared, c.src("shared_expert_intermediate_size")),
        )
    aux(c, d)


def first_dense_mlp_layers(c: HFConfig, d: Draft, name: str = "Laguna") -> None:
    """mlp_layer_types, unset: the first layer dense and the rest sparse, as LagunaConfig and MiMoV2FlashConfig
    (``name``) fill it in."""
    unset = ["dense"] + ["sparse"] * (d.n_layers - 1) if d.layers_known else []
    mlp_layer_types(c, d, unset, f"mlp_layer_types unset: the first layer dense, the rest sparse ({name}Config)")


def export(m: ResolvedModel) -> dict[str, Any]:
    """The plan as a laguna config.json: per-type rope, per-layer heads, the softplus gate, dense layers by
    mlp_layer_types, the softcapped sigmoid router with one shared MLP (the rest comes back changed from the
    re-import and is refused)."""
    cfg = export_base(m, FAMILY)
    a = m.layers[0].attention
    if a.output_gate == "none" or a.output_gate_fn != "softplus":
        raise CannotExport("gates every attention output with a softplus (spec: no softplus gate)")
    window, types = layer_types(m)
    base_rope = cfg.pop("rope_scaling")
    del cfg["rope_theta"]
    e, f = moe_plan(m), dense_plan(m)
    export_moe_common(cfg, e)
    cfg.update(
        layer_types=types,
        rope_parameters=export_typed_rope(m, types, base_rope),
        num_attention_heads_per_layer=[lp.attention.n_heads for lp in m.layers],
        gating={"head": "per-head", "element": "per-element"}[a.output_gate],
        attention_bias=a.bias,
        mlp_layer_types=["sparse" if lp.ffn.kind == "moe" else "dense" for lp in m.layers],
        intermediate_size=f.d_ff if f else e.d_ff,
        moe_intermediate_size=e.d_ff,
        num_experts=e.n_experts,
        shared_expert_intermediate_size=e.d_ff_shared if e.n_shared_experts else 0,
        moe_routed_scaling_factor=e.router.scale,
        moe_router_logit_softcapping=e.router.logit_softcap or 0.0,
    )
    if window is not None:  # LagunaConfig takes an int only: no sliding layer, its default stands (unused)
        cfg["sliding_window"] = window
    return cfg


class GProjGateMapper(Mapper):
    """The attention's output gate under transformers' name ``g_proj`` (moec's ``gate_proj``), as Laguna, Step-3.7
    and Dots3 save it; a family's Mapper takes it first among its bases."""

    def attention(self, p: str, lp: LayerPlan, leaf: str) -> torch.Tensor:
        if leaf.startswith("gate_proj."):
            leaf = "g_proj." + leaf.removeprefix("gate_proj.")
        return super().attention(p, lp, leaf)


class LagunaMapper(GProjGateMapper):
    """The names transformers saves (its conversion mapping for Laguna): the shared MLP ``mlp.shared_expert.``, the
    selection bias ``mlp.experts.e_score_correction_bias`` (the module's ``mlp.gate.`` name also read); the
    attention's output gate is ``g_proj``."""

    shared = "shared_expert."
    expert_biases = ("experts.e_score_correction_bias", "gate.e_score_correction_bias")


FAMILY = Family("laguna", "LagunaForCausalLM", DEFAULTS, translate, export=export, export_rank=345, mapper=LagunaMapper)
