"""MiniMax-M2 (``model_type`` minimax_m2, MiniMaxM2ForCausalLM): GQA without biases, one RMSNorm over the whole q
projection and one over the whole k projection before the rotation (FlexOlmo's attention), rotary positions on the
first rotary_dim dims of each head; every layer MoE, routed by sigmoid scores plus a selection-only bias, the
top-k weights renormalised (no scale, no groups, no shared experts). Checkpoints name the MoE block as Mixtral's
releases do (``block_sparse_moe``, experts' ``w1``/``w3``/``w2``; transformers' save_pretrained writes them so
too) or as transformers holds it (``mlp``), with the selection bias beside the router
(``block_sparse_moe.e_score_correction_bias``).

MiniMax's release configs carry fields of their own code that transformers does not read (scoring_func,
use_routing_bias, use_qk_norm, qk_norm_type, attn_type_list, shared_intermediate_size, attention_bias, and the MTP fields use_mtp,
num_mtp_modules, mtp_transformer_layers): accepted when they say what transformers builds, and named in the note
of the spec field they concern; a value that says otherwise is refused as ambiguous.
"""

from __future__ import annotations

from typing import Any

from moec.hf.draft import Draft, Family, HFConfig, is_int, shown
from moec.hf.families._common import aux, base, defaults, gqa, ignored_field_agrees, jitter_on_hidden, moe_core, router
from moec.hf.families.glm4_moe import take_partial_rotary
from moec.hf.families.mixtral import MixtralMapper

# fmt: off
DEFAULTS = defaults(5000000.0, vocab_size=200064, hidden_size=3072, intermediate_size=1536, num_hidden_layers=62,
                    num_attention_heads=48, num_key_value_heads=8, head_dim=128, max_position_embeddings=196608,
                    rms_norm_eps=1e-6, num_experts_per_tok=8, num_local_experts=256, router_aux_loss_coef=0.001,
                    router_jitter_noise=0.0, rotary_dim=None)
# fmt: on

# MiniMax's fields that transformers' MiniMaxM2 does not read, with the value that says what it builds
_AGREEING = {
    "scoring_func": ("sigmoid", "moe.router.score"),
    "use_routing_bias": (True, "moe.router.score"),
    "use_qk_norm": (True, "attention.qk_norm"),
    "qk_norm_type": ("per_layer", "attention.qk_norm_scope"),
    "shared_intermediate_size": (0, "moe.n_experts"),
    "attention_bias": (False, "attention.bias"),
}
_MTP = ("use_mtp", "num_mtp_modules", "mtp_transformer_layers")


def translate(c: HFConfig, d: Draft) -> None:
    factor, factor_src = take_partial_rotary(c, None)
    base(c, d, "MiniMaxM2")
    gqa(c, d, bias=False, out_bias=False, bias_src="MiniMaxM2Attention has no biases", qk_norm=True)
    d.put("attention.qk_norm", True, "MiniMaxM2Attention: RMSNorm over the whole q and k projections")
    d.put("attention.qk_norm_scope", "projection", "q_norm(h·head_dim), k_norm(kv·head_dim), before the rotation")
    _rotary(c, d, factor, factor_src)
    moe_core(c, d, experts_key="num_local_experts", width_key="intermediate_size")
    router(
        d,
        "MiniMaxM2TopKRouter: sigmoid, + e_score_correction_bias for selection only",
        score="sigmoid",
        softmax_after_topk=False,
        selection_bias=True,
    )
    d.put("moe.router.normalize_topk", True, "MiniMaxM2TopKRouter always renormalises (plain sum; moec's + 1e-20)")
    jitter_on_hidden(c, d, "router_jitter_noise")
    aux(c, d)
    d.ffn_note = "every MiniMaxM2 layer is MoE"
    _release_fields(c, d)


def _rotary(c: HFConfig, d: Draft, factor: Any, factor_src: str) -> None:
    """MiniMaxM2Config turns rotary_dim into partial_rotary_factor = rotary_dim / head_dim unless a factor is
    given (then transformers uses the factor, MiniMax's code rotary_dim: they must agree)."""
    rot = c.int("rotary_dim", optional=True)
    head_dim = d.get("attention.head_dim")
    if rot is not None and factor is not None and int(head_dim * factor) != rot:
        d.gap(
            "rotary_dim",
            rot,
            f"{factor_src} {shown(factor)} rotates {int(head_dim * factor)} of {head_dim} dims (what transformers "
            f"runs), rotary_dim {rot} (what MiniMax's code runs): ambiguous",
            "none: remove one of them, or make them agree",
        )
    elif factor is not None:
        d.put("model.positions.partial_rotary_factor", factor, factor_src)
    elif rot is not None and rot != head_dim:
        d.put("model.positions.rotary_dim", rot, c.src("rotary_dim"))


def _release_fields(c: HFConfig, d: Draft) -> None:
    for key, (what, field) in _AGREEING.items():
        ambiguity = f"transformers' MiniMaxM2 ignores {key} and always builds what {shown(what)} says: ambiguous"
        if ignored_field_agrees(c, d, key, what, ambiguity):
            d.put(field, d.get(field), _noted(d, field, f"{key} {shown(what)}: agrees (transformers ignores it)"))
    _attn_types(c, d)
    given = [f"{k} {shown(c.value(k))}" for k in _MTP if c.value(k) is not None]
    if given:  # reported beside the layer count: transformers builds no MTP module
        d.put("model.n_layers", d.n_layers, _noted(d, "model.n_layers", f"{', '.join(given)}: transformers builds "
              "no MTP module (ignored)"))  # fmt: skip


def _attn_types(c: HFConfig, d: Draft) -> None:
    """attn_type_list: MiniMax's per-layer attention kinds (1 softmax attention, 0 MiniMax-01's lightning
    attention); transformers' MiniMaxM2 builds softmax attention on every layer."""
    types = c.value("attn_type_list")
    if types is None:
        return
    full = isinstance(types, list) and all(is_int(t) and t == 1 for t in types)
    if not full or (d.layers_known and len(types) != d.n_layers):
        d.gap(
            "attn_type_list",
            types,
            "transformers' MiniMaxM2 ignores attn_type_list and builds softmax attention (type 1) on every layer: "
            "ambiguous",
            f"none: remove attn_type_list or make it {d.n_layers} ones",
        )
        return
    d.put("attention.kind", "gqa", "attn_type_list all 1 (softmax attention): agrees (transformers ignores it)")


def _noted(d: Draft, field: str, more: str) -> str:
    """The note a field already has, with ``more`` added."""
    note = d.fields[field][1] if field in d.fields else ""
    return f"{note} ({more})" if note else more


class MiniMaxM2Mapper(MixtralMapper):
    """Mixtral's names, and the selection bias in the MoE block beside the router."""

    expert_biases = ("e_score_correction_bias",)


FAMILY = Family(
    "minimax_m2",
    "MiniMaxM2ForCausalLM",
    DEFAULTS,
    translate,
    aliases={"num_experts": "num_local_experts"},
    mapper=MiniMaxM2Mapper,
)
