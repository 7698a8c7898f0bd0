"""AFMoE (``model_type`` afmoe, AfmoeForCausalLM; Arcee's Trinity): GQA with RMSNorm(head_dim) on q and k and a
sigmoid gate per element of each head on the attention output (``gate_proj``, no bias: ``attention.output_gate:
element``); sliding-window layers, which alone rotate q and k, and global layers without positions (NoPE), by
``layer_types`` (unset: global every ``global_attn_every_n_layers``-th layer); sandwich norms, four RMSNorms a layer
(``model.norm.placement: sandwich``); a dense MLP on the first ``num_dense_layers`` layers, then MoE: sigmoid scores,
a selection-only ``expert_bias``, the top-k weights always renormalised (sum + 1e-20) and scaled by ``route_scale``,
``num_shared_experts`` shared experts run as one MLP; with ``mup_enabled`` the embeddings are scaled by √d.

Checkpoints keep transformers' names, with AFMoE's own for the sandwich norms (``post_attention_layernorm`` is the
norm *after* attention, ``pre_mlp_layernorm`` the one before the FFN), the router (``mlp.router.gate``) and the
selection bias beside it (``mlp.expert_bias``). Trinity's release configs carry fields of Arcee's own code that
transformers does not read (route_norm, score_func, n_group, ...): named where they agree with the model transformers
builds, refused where they do not.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from moec.hf.draft import CannotExport, Draft, Family, HFConfig
from moec.hf.families._common import all_known, base, defaults, dense_ffn, gqa, moe_core, router, shared_experts
from moec.hf.families._export_common import dense_plan, export_base, layer_types, moe_plan
from moec.hf.families.hy_v3 import equals, ignored
from moec.hf.mapper import Mapper

if TYPE_CHECKING:
    import torch

    from moec.spec.plan import LayerPlan, ResolvedModel

# fmt: off
DEFAULTS = defaults(10000.0, vocab_size=200192, hidden_size=2048, intermediate_size=6144, moe_intermediate_size=1408,
                    num_hidden_layers=32, num_dense_layers=1, num_attention_heads=16, num_key_value_heads=None,
                    head_dim=128, max_position_embeddings=16384, rms_norm_eps=1e-5, num_experts=64,
                    num_experts_per_tok=6, num_shared_experts=2, route_scale=1.0, global_attn_every_n_layers=4,
                    sliding_window=1024, layer_types=None, mup_enabled=False, attention_bias=False)
# fmt: on

SLIDING, FULL = "sliding_attention", "full_attention"
# AfmoeTokenChoiceRouter divides the top-k scores by their sum + 1e-20
NORMALIZE_EPS = 1e-20


def translate(c: HFConfig, d: Draft) -> None:
    base(c, d, "AFMoE")
    d.put("model.norm.placement", "sandwich", "AfmoeDecoderLayer: x + post_norm(f(pre_norm(x))) for attention and MLP")
    if c.bool("mup_enabled"):
        d.put("model.embedding_multiplier", math.sqrt(c.int("hidden_size")), "mup_enabled: embeddings × √hidden_size")
    _attention(c, d)
    _layer_types(c, d)
    moe_core(c, d, experts_key="num_experts", width_key="moe_intermediate_size")
    router(
        d,
        "AfmoeTokenChoiceRouter: sigmoid, + expert_bias for selection only, top-k weights renormalised",
        score="sigmoid",
        softmax_after_topk=False,
        selection_bias=True,
        selection_bias_parameter=True,  # AfmoeSparseMoeBlock.expert_bias: an nn.Parameter without gradient
        normalize_topk=True,
        normalize_eps=NORMALIZE_EPS,
    )
    d.put("moe.router.scale", c.float("route_scale"), c.src("route_scale"))
    shared_experts(c, d, "num_shared_experts", " (one MLP of n·moe_intermediate_size)")
    k = c.int("num_dense_layers", minimum=0)
    d.ffn = ["dense" if i < k else "moe" for i in range(d.n_layers)]
    d.ffn_note = f"AfmoeDecoderLayer: a dense MLP on the first {c.src('num_dense_layers')} ({k}) layers"
    if "dense" in d.ffn:
        dense_ffn(c, d, bias_src="AfmoeMLP has no biases")
    c.value("intermediate_size")
    _release_fields(c, d)


def gated_attention(c: HFConfig, d: Draft, cls: str, gate: str) -> bool:
    """GQA with RMSNorm(head_dim) on q and k and a sigmoid gate per element on the output, AFMoE's attention and
    Beam's (``cls``: the attention class's prefix, ``gate``: its output's formula); returns attention_bias."""
    b = c.bool("attention_bias")
    c.int("head_dim")  # the attention reads it as given: null would build no model
    gqa(c, d, bias=b, out_bias=b, bias_src=c.src("attention_bias") + " (q, k, v and o)", qk_norm=True)
    d.put("attention.qk_norm", True, f"{cls}Attention: RMSNorm(head_dim) on q and k, before the rotation")
    d.put("attention.output_gate", "element", f"{cls}Attention: {gate}")
    return b


def _attention(c: HFConfig, d: Draft) -> None:
    if gated_attention(c, d, "Afmoe", "o_proj(attn · sigmoid(gate_proj(x))), per element"):
        # without attention biases the gate has none either way: only with them is it said
        d.put("attention.output_gate_bias", "none", "AfmoeAttention.gate_proj has no bias while q, k, v and o have one")


def _layer_types(c: HFConfig, d: Draft) -> None:
    """layer_types (unset: global on every global_attn_every_n_layers-th layer); the sliding layers use
    sliding_window and alone rotate q and k (AfmoeAttention.is_local_attention), the global ones are NoPE."""
    n = c.int("global_attn_every_n_layers")
    pattern = [SLIDING if (i + 1) % n else FULL for i in range(d.n_layers)]
    if c.value("layer_types") is None:
        types, src = pattern, f"layer_types unset: global every {c.src('global_attn_every_n_layers')} ({n}) layers"
    else:
        types, src = c.str_list("layer_types"), "layer_types"
    if not d.fits_layers(c, "layer_types", types) or not all_known(c, "layer_types", types, (FULL, SLIDING)):
        c.value("sliding_window")  # what the refused types (reported) would place: no problem of its own
        return
    if types != pattern and c.given("global_attn_every_n_layers"):
        d.gap(
            "global_attn_every_n_layers",
            n,
            "layer_types (which transformers reads) places the global layers otherwise: ambiguous",
            "none: remove global_attn_every_n_layers or make it agree with layer_types",
        )
    w = c.int("sliding_window", optional=True)
    d.window = [w if t == SLIDING else None for t in types]
    d.window_note = f"{src}; sliding layers use {c.src('sliding_window')}" if any(d.window) else ""
    d.rope = [t == SLIDING for t in types]
    d.rope_note = f"{src}: AfmoeAttention rotates q and k on the sliding layers only; the global layers are NoPE"


# Trinity's release fields (Arcee's own code) that AfmoeConfig does not define and transformers does not read:
# each agrees with the model transformers builds (one expert group, sigmoid scores always renormalised) or is refused
RELEASE_FIELDS = {
    "route_norm": (equals(True), "moe.router.normalize_topk"),
    "score_func": (equals("sigmoid"), "moe.router.score"),
    "n_group": (equals(1), "moe.router.top_k"),
    "topk_group": (equals(1), "moe.router.top_k"),
    "num_expert_groups": (equals(1), "moe.router.top_k"),
    "num_limited_groups": (equals(1), "moe.router.top_k"),
    # grouped matrix products in Arcee's code: how the experts run, not what they compute
    "use_grouped_mm": (lambda v: isinstance(v, bool), "moe.n_experts"),
}


def _release_fields(c: HFConfig, d: Draft) -> None:
    for key, (agrees, path) in RELEASE_FIELDS.items():
        ignored(c, d, "Afmoe", key, agrees, path)


def export_placed(m: ResolvedModel, family: Family, placement: str, **kw: Any) -> dict[str, Any]:
    """export_base for a family whose blocks place their norms as ``placement`` (sandwich, parallel) and hold
    attention and an FFN in every layer."""
    if m.hybrid:
        raise CannotExport("has attention and an FFN in every layer (the spec has other token mixers or none)")
    return export_base(m, family, placement=placement, **kw)


def export(m: ResolvedModel) -> dict[str, Any]:
    """The plan as an afmoe config.json: sandwich norms, gated attention with q/k norms and no biases, rotation on
    exactly the sliding layers, dense layers before the MoE ones, a sigmoid router with its selection-bias parameter
    (the rest comes back changed from the re-import and is refused)."""
    cfg = export_placed(m, FAMILY, "sandwich", nope=True)
    window, types = layer_types(m)
    if any(lp.attention.rope != (t == SLIDING) for lp, t in zip(m.layers, types, strict=True)):
        raise CannotExport("rotates q and k on the sliding layers only")
    kinds = [lp.ffn.kind for lp in m.layers]
    k_dense = kinds.index("moe") if "moe" in kinds else len(kinds)
    if "dense" in kinds[k_dense:]:
        raise CannotExport("puts dense layers only before the first MoE layer (num_dense_layers)")
    mup = {1.0: False, math.sqrt(m.d_model): True}.get(m.embedding_multiplier)
    if mup is None:
        raise CannotExport("scales the embeddings by 1 or √hidden_size (mup_enabled)")
    e, f = moe_plan(m), dense_plan(m)
    cfg.update(
        layer_types=types,
        sliding_window=window,
        num_dense_layers=k_dense,
        mup_enabled=mup,
        attention_bias=False,
        intermediate_size=f.d_ff if f else e.d_ff,
        moe_intermediate_size=e.d_ff,
        num_experts=e.n_experts,
        num_experts_per_tok=e.router.top_k,
        num_shared_experts=e.n_shared_experts,
        route_scale=e.router.scale,
    )
    return cfg


class SandwichMapper(Mapper):
    """Sandwich norms under transformers' names for them: ``attn_post_norm`` after attention, ``ffn_post_norm``
    after the FFN, each the first of its names the checkpoint holds (the pre norms keep the base names; a family sets
    ``ffn_norm`` when its pre-FFN norm differs)."""

    attn_post_norms: tuple[str, ...] = ("post_attention_layernorm.",)
    ffn_post_norms: tuple[str, ...] = ("post_mlp_layernorm.",)

    def block(self, lp: LayerPlan, i: int, part: str, leaf: str) -> torch.Tensor:
        names = {"attn_post_norm": self.attn_post_norms, "ffn_post_norm": self.ffn_post_norms}.get(part)
        if names:
            return self.ck.get(self._first([self.layer(i) + n + leaf for n in names]))
        return super().block(lp, i, part, leaf)


class AfmoeMapper(SandwichMapper):
    """AFMoE's names: ``pre_mlp_layernorm`` before the FFN, the router under ``mlp.router.gate`` and its selection
    bias at ``mlp.expert_bias``."""

    ffn_norm = "pre_mlp_layernorm."
    routers = ("router.gate.",)
    expert_biases = ("expert_bias",)


FAMILY = Family("afmoe", "AfmoeForCausalLM", DEFAULTS, translate, export=export, export_rank=320, mapper=AfmoeMapper)
