"""DeepSeek-V2 and V3 (``model_type`` deepseek_v2 / deepseek_v3, DeepseekV{2,3}ForCausalLM): multi-head latent
attention, dense layers before first_k_dense_replace, shared experts, and their routers: V2's softmax
(optionally limited to the best groups), V3's sigmoid with a selection bias and top-2-sum groups, plus
V3's multi-token-prediction layers. Their checkpoints use transformers' common names (the base Mapper);
V3's MTP depth j is stored as decoder layer n_layers + j.
"""

from __future__ import annotations

from typing import Any

from moec.hf.draft import CannotExport, Draft, Family, HFConfig, shown
from moec.hf.families._common import base, defaults, dense_ffn, mla_rope_interleave, moe_core, router
from moec.hf.families._common import mla as _mla  # mistral4 imports it from here too
from moec.hf.families._export_common import deepseek_mla_fields, dense_plan, export_base, moe_plan
from moec.spec.plan import ResolvedModel

# fmt: off
DEFAULTS_V2 = defaults(10000.0, vocab_size=102400, hidden_size=4096, intermediate_size=11008,
                       num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=None,
                       max_position_embeddings=2048, rms_norm_eps=1e-6, attention_bias=False, mlp_bias=False,
                       head_dim=None, first_k_dense_replace=0, kv_lora_rank=512, q_lora_rank=1536, n_group=None,
                       n_routed_experts=64, n_shared_experts=2, qk_nope_head_dim=128, qk_rope_head_dim=64,
                       routed_scaling_factor=1.0, topk_group=None, topk_method="greedy", norm_topk_prob=False,
                       v_head_dim=128, moe_intermediate_size=1407)
DEFAULTS_V3 = defaults(10000.0, vocab_size=129280, hidden_size=7168, intermediate_size=18432,
                       moe_intermediate_size=2048, num_hidden_layers=61, num_attention_heads=128,
                       num_key_value_heads=128, n_shared_experts=1, n_routed_experts=256,
                       routed_scaling_factor=2.5, kv_lora_rank=512, q_lora_rank=1536, qk_rope_head_dim=64,
                       v_head_dim=128, qk_nope_head_dim=128, n_group=8, topk_group=4, num_experts_per_tok=8,
                       first_k_dense_replace=3, norm_topk_prob=True, max_position_embeddings=4096,
                       rms_norm_eps=1e-6, rope_interleave=True, attention_bias=False, num_nextn_predict_layers=1,
                       head_dim=None)
# fmt: on


def _translate(c: HFConfig, d: Draft, v3: bool) -> None:
    name = "DeepseekV3" if v3 else "DeepseekV2"
    base(c, d, name)
    _mla(c, d, name)
    if v3:
        mla_rope_interleave(c, d)
    n_shared = c.int("n_shared_experts", minimum=0)
    f = c.int("moe_intermediate_size")
    mlp_bias = not v3 and c.bool("mlp_bias")
    dense_ffn(c, d, bias=mlp_bias, bias_src=c.src("mlp_bias") if not v3 else f"{name}MLP has no biases")
    moe_core(c, d, experts_key="n_routed_experts", width_key="moe_intermediate_size")
    if n_shared:
        d.section(
            "moe",
            n_shared_experts=(n_shared, c.src("n_shared_experts") + " (HF fuses them into one MLP of n·width)"),
            d_ff_shared=(f, c.src("moe_intermediate_size")),
        )
    k_dense = c.int("first_k_dense_replace", minimum=0)
    if mlp_bias and n_shared:
        n_moe = max(d.n_layers - k_dense, 0)
        d.gap(
            "mlp_bias",
            True,
            "DeepseekV2MLP biases reach the shared experts but not the routed ones",
            "moe.shared_bias: bool — biases on the shared experts only",
            param_delta=n_moe * (2 * n_shared * f + d.get("model.d_model")),
        )
    freq = c.value("moe_layer_freq", 1)
    if freq != 1:
        d.gap(
            "moe_layer_freq",
            freq,
            "transformers ignores moe_layer_freq (every layer ≥ first_k_dense_replace is "
            "MoE) while DeepSeek's own code uses layer % moe_layer_freq == 0: ambiguous",
            "layers.overrides",
        )
    d.ffn = ["dense" if i < k_dense else "moe" for i in range(d.n_layers)]
    d.ffn_note = f"MoE from layer first_k_dense_replace ({k_dense}) on"
    d.put("moe.router.scale", c.float("routed_scaling_factor"), c.src("routed_scaling_factor"))
    if v3:
        _v3_router(c, d, k_dense)
    else:
        _v2_router(c, d)
    alpha = c.float("aux_loss_alpha", optional=True)
    if alpha is not None:
        seq = c.bool("seq_aux", default=True)
        d.put("moe.balance.load_balance_coeff", alpha, c.src("aux_loss_alpha") + " (training only)")
        d.put("moe.balance.load_balance_granularity", "sequence" if seq else "batch", c.src("seq_aux"))
    c.value("ep_size")  # expert-parallel degree of DeepSeek's own code: a deployment choice


def _v3_router(c: HFConfig, d: Draft, k_dense: int) -> None:
    score = c.str("scoring_func", default="sigmoid")
    method = c.str("topk_method", default="noaux_tc")
    if score not in (None, "sigmoid"):
        d.gap(c.prefix + "scoring_func", score, "DeepseekV3TopkRouter always scores with sigmoid", "moe.router.score")
    if method not in (None, "noaux_tc"):
        d.gap(c.prefix + "topk_method", method, "DeepseekV3TopkRouter always routes noaux_tc", "moe.router")
    router(
        d,
        "DeepseekV3TopkRouter: sigmoid, + e_score_correction_bias for selection, groups by top-2 sum",
        score="sigmoid",
        softmax_after_topk=False,
        selection_bias=True,
        group_score="top2_sum",
    )
    d.put("moe.router.normalize_topk", c.bool("norm_topk_prob"), c.src("norm_topk_prob"))
    d.put("moe.router.n_groups", c.int("n_group"), c.src("n_group"))
    d.put("moe.router.topk_groups", c.int("topk_group"), c.src("topk_group"))
    n_mtp = c.int("num_nextn_predict_layers", minimum=0)
    if n_mtp:
        mtp_kind = "moe" if d.n_layers >= k_dense else "dense"
        d.section(
            "mtp",
            n_layers=(n_mtp, c.src("num_nextn_predict_layers") + " (transformers builds none)"),
            ffn=(mtp_kind, "an MTP block is a layer past the last, so MoE"),
        )


def _v2_router(c: HFConfig, d: Draft) -> None:
    score = c.str("scoring_func", default="softmax")
    method = c.str("topk_method")
    if score not in (None, "softmax"):
        d.gap(c.prefix + "scoring_func", score, "DeepseekV2TopkRouter always scores with softmax", "moe.router.score")
    if method is not None and method not in ("greedy", "group_limited_greedy"):
        c.bad("topk_method", f"{shown(method)}: DeepseekV2TopkRouter knows greedy and group_limited_greedy")
    if c.bool("norm_topk_prob"):
        d.gap(
            c.prefix + "norm_topk_prob",
            True,
            "transformers' DeepseekV2TopkRouter ignores it while DeepSeek's own code renormalises: ambiguous",
            "moe.router.normalize_topk",
        )
    router(
        d,
        "DeepseekV2TopkRouter: softmax over all experts, top-k, no renormalisation",
        score="softmax",
        softmax_after_topk=False,
        normalize_topk=False,
    )
    if method == "group_limited_greedy":
        d.put("moe.router.n_groups", c.int("n_group"), c.src("n_group"))
        d.put("moe.router.topk_groups", c.int("topk_group"), c.src("topk_group"))
        d.put("moe.router.group_score", "max", "group_limited_greedy: a group scores its best expert")
    else:
        c.value("n_group")
        c.value("topk_group")
    n_mtp = c.value("num_nextn_predict_layers")
    if n_mtp:
        d.gap(c.prefix + "num_nextn_predict_layers", n_mtp, "MTP on deepseek_v2 (only deepseek_v3 maps it)", "mtp")


def translate_v2(c: HFConfig, d: Draft) -> None:
    _translate(c, d, v3=False)


def translate_v3(c: HFConfig, d: Draft) -> None:
    _translate(c, d, v3=True)


def _export(m: ResolvedModel, v3: bool) -> dict[str, Any]:
    cfg = export_base(m, DEEPSEEK_V3 if v3 else DEEPSEEK_V2, mtp=v3)
    a, e, f = m.layers[0].attention, moe_plan(m), dense_plan(m)
    if a.kind != "mla":
        raise CannotExport("needs MLA attention")
    kinds = [lp.ffn.kind for lp in m.layers]
    k_dense = kinds.index("moe")
    if "dense" in kinds[k_dense:]:
        raise CannotExport("puts dense layers only before the first MoE layer (first_k_dense_replace)")
    r = e.router
    cfg.update(
        deepseek_mla_fields(a, e, f),
        first_k_dense_replace=k_dense,
        moe_layer_freq=1,
        routed_scaling_factor=r.scale,
        aux_loss_alpha=e.load_balance_coeff,
        seq_aux=e.load_balance_granularity == "sequence",
    )
    if v3:
        cfg.update(
            n_group=r.n_groups,
            topk_group=r.topk_groups,
            norm_topk_prob=r.normalize_topk,
            scoring_func="sigmoid",
            topk_method="noaux_tc",
            num_nextn_predict_layers=len(m.mtp),
        )
    else:
        grouped = r.n_groups is not None
        cfg.update(
            n_group=r.n_groups or 1,
            topk_group=r.topk_groups or 1,
            norm_topk_prob=False,
            scoring_func="softmax",
            topk_method="group_limited_greedy" if grouped else "greedy",
        )
    return cfg


def export_v2(m: ResolvedModel) -> dict[str, Any]:
    return _export(m, v3=False)


def export_v3(m: ResolvedModel) -> dict[str, Any]:
    return _export(m, v3=True)


DEEPSEEK_V2 = Family(
    "deepseek_v2",
    "DeepseekV2ForCausalLM",
    DEFAULTS_V2,
    translate_v2,
    aliases={"num_experts": "n_routed_experts"},
    export=export_v2,
    export_rank=50,
)
DEEPSEEK_V3 = Family(
    "deepseek_v3",
    "DeepseekV3ForCausalLM",
    DEFAULTS_V3,
    translate_v3,
    aliases={"num_local_experts": "n_routed_experts", "num_mtp_layers": "num_nextn_predict_layers"},
    export=export_v3,
    export_rank=40,
)
FAMILIES = (DEEPSEEK_V2, DEEPSEEK_V3)
