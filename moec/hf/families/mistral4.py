"""Mistral 4 (``model_type`` mistral4, Mistral4ForCausalLM; Mistral Small 4, whose multimodal release wraps it as
``text_config``): DeepSeek-V3's multi-head latent attention, dense MLPs before first_k_dense_replace, shared
experts fused into one MLP, and a router of its own: softmax scores, groups ranked by their two best scores, the
top-k of the kept groups, optionally renormalised (sum + 1e-20) and scaled; no selection bias. Its checkpoints use
transformers' common names (the base Mapper).

Two things moec cannot say yet are refused by name: the query scaling 1 + β·log(1 + floor(pos / L)) that
``rope_parameters.llama_4_scaling_beta`` turns on (Llama-4's temperature tuning counts floor((pos + 1) / L) and
acts on layers without rotary positions only), and rotary pairs split by halves (``rope_interleave`` false) on
MLA, which moec rotates as adjacent pairs.
"""

from __future__ import annotations

from typing import Any

from moec.hf.draft import Draft, Family, HFConfig, is_number, shown
from moec.hf.families._common import (
    base,
    defaults,
    dense_ffn,
    mla,
    mla_rope_interleave,
    moe_core,
    router,
    shared_experts,
)

# fmt: off
DEFAULTS = defaults(10000.0, vocab_size=131072, hidden_size=4096, intermediate_size=12288, moe_intermediate_size=2048,
                    num_hidden_layers=36, num_attention_heads=32, num_key_value_heads=32, n_shared_experts=1,
                    n_routed_experts=128, routed_scaling_factor=1.0, kv_lora_rank=256, q_lora_rank=1024,
                    qk_rope_head_dim=64, v_head_dim=128, qk_nope_head_dim=64, n_group=1, topk_group=1,
                    num_experts_per_tok=4, first_k_dense_replace=0, norm_topk_prob=True,
                    max_position_embeddings=1048576, rms_norm_eps=1e-6, rope_interleave=True, attention_bias=False,
                    head_dim=None)
# fmt: on


def default_rope(c: HFConfig) -> dict[str, Any]:
    """Mistral4Config.__post_init__'s rope_parameters when the config gives none."""
    return {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 128.0, "original_max_position_embeddings": 8192,
            "beta_fast": 32.0, "beta_slow": 1.0, "mscale_all_dim": 1.0, "mscale": 1.0, "llama_4_scaling_beta": 0.1,
            "max_position_embeddings": c.value("max_position_embeddings")}  # fmt: skip


def translate(c: HFConfig, d: Draft) -> None:
    _base(c, d)
    mla(c, d, "Mistral4")
    mla_rope_interleave(c, d)
    dense_ffn(c, d, bias_src="Mistral4MLP has no biases")
    moe_core(c, d, experts_key="n_routed_experts", width_key="moe_intermediate_size")
    shared_experts(c, d, "n_shared_experts", " (Mistral4MoE fuses them into one MLP of n·width)")
    k_dense = c.int("first_k_dense_replace", minimum=0)
    d.ffn = ["dense" if i < k_dense else "moe" for i in range(d.n_layers)]
    d.ffn_note = f"Mistral4DecoderLayer: MoE from layer first_k_dense_replace ({k_dense}) on"
    router(
        d,
        "Mistral4TopkRouter: softmax over all experts, groups by top-2 sum, no selection bias",
        score="softmax",
        softmax_after_topk=False,
        group_score="top2_sum",
    )
    d.put("moe.router.normalize_topk", c.bool("norm_topk_prob"), c.src("norm_topk_prob") + " (sum + 1e-20)")
    d.put("moe.router.scale", c.float("routed_scaling_factor"), c.src("routed_scaling_factor"))
    d.put("moe.router.n_groups", c.int("n_group"), c.src("n_group"))
    d.put("moe.router.topk_groups", c.int("topk_group"), c.src("topk_group"))


def _base(c: HFConfig, d: Draft) -> None:
    """The common base, its rope read from rope_parameters without the three keys only Mistral 4 reads there:
    partial_rotary_factor (the MLA rope share, checked), max_position_embeddings (unread by transformers) and
    llama_4_scaling_beta (refused unless 0, which scales nothing)."""
    given = "rope_parameters" in c.raw
    params = c.value("rope_parameters")
    if params is None:
        params = default_rope(c)
    if not isinstance(params, dict):
        base(c, d, "Mistral4")  # read_rope refuses it, located
        return
    view = dict(params)
    factor = view.pop("partial_rotary_factor", None)
    unread = view.pop("max_position_embeddings", None)
    beta = view.pop("llama_4_scaling_beta", None)
    if (view.get("rope_type") or view.get("type") or "default") == "default":
        view.pop("original_max_position_embeddings", None)  # the query scaling's length only, without YaRN
    saved = c.raw.get("rope_parameters")
    c.raw["rope_parameters"] = view
    base(c, d, "Mistral4")
    if given:
        c.raw["rope_parameters"] = saved
    else:
        del c.raw["rope_parameters"]
    where = "rope_parameters" if given else "rope_parameters (Mistral4Config default)"
    _rope_share(c, factor)
    _query_scaling(c, d, beta, where)
    if unread is not None:
        note = d.fields["model.positions.theta"][1]
        d.put("model.positions.theta", d.get("model.positions.theta"),
              f"{note}; rope_parameters.max_position_embeddings {shown(unread)}: transformers ignores it")  # fmt: skip


def _rope_share(c: HFConfig, factor: Any) -> None:
    """Mistral4RotaryEmbedding rotates int(head_dim · partial_rotary_factor) dims, head_dim = nope + rope: they
    must be MLA's qk_rope_head_dim (what __post_init__ writes when it is unset)."""
    if factor is None:
        return
    nope, rope = c.value("qk_nope_head_dim"), c.value("qk_rope_head_dim")
    if not (is_number(factor) and isinstance(nope, int) and isinstance(rope, int)):
        if not is_number(factor):
            c.bad("rope_parameters.partial_rotary_factor", f"{shown(factor)}: expected a number")
        return
    if int((nope + rope) * factor) != rope:
        c.bad(
            "rope_parameters.partial_rotary_factor",
            f"{shown(factor)} rotates {int((nope + rope) * factor)} of {nope + rope} dims; MLA rotates "
            f"qk_rope_head_dim ({rope}) of them (transformers' cos/sin would not fit)",
        )


def _query_scaling(c: HFConfig, d: Draft, beta: Any, where: str) -> None:
    """llama_4_scaling_beta: Mistral4Attention multiplies every query by 1 + β·log(1 + floor(pos / L)),
    L = original_max_position_embeddings; transformers needs the key (its forward multiplies by it)."""
    key = "rope_parameters.llama_4_scaling_beta"
    if beta is None:
        c.bad("rope_parameters", "no llama_4_scaling_beta: Mistral4Attention's query scaling needs it (0 for none)")
    elif not is_number(beta):
        c.bad(key, f"{shown(beta)}: expected a number")
    elif beta != 0:
        d.gap(
            key,
            beta,
            f"{where} asks for a query scaling 1 + β·log(1 + floor(pos / original_max_position_embeddings)) on "
            "every layer; moec's temperature tuning is Llama-4's floor((pos + 1) / L), on layers without rotary "
            "positions",
            "attention.query_log_scaling: {beta, length} — q · (1 + β·log(1 + floor(pos / length))) on every "
            "layer (Mistral 4, Ministral 3). No count change",
        )


FAMILY = Family(
    "mistral4",
    "Mistral4ForCausalLM",
    DEFAULTS,
    translate,
    aliases={"num_local_experts": "n_routed_experts"},
)
