"""Export: a resolved plan → the config.json of one Hugging Face family (``moec export-hf``).

Each ``_export_*`` writes the fields its family reads; it raises :class:`CannotExport` for what the
family plainly cannot say. It need not be exhaustive: :func:`moec.hf.config.export_hf_config` imports the
written config again and accepts it only if the plan comes back identical, so a feature an exporter
forgets to refuse is caught there, never dropped.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from moec.hf.families import FAMILIES
from moec.spec.plan import DenseFFNPlan, MoEPlan, ResolvedModel


class CannotExport(Exception):
    """This family cannot express the plan (the message says why)."""


def _one(values: list[Any], what: str) -> Any:
    distinct = set(values)
    if len(distinct) != 1:
        raise CannotExport(f"{what} differs between layers")
    return distinct.pop()


def _export_base(m: ResolvedModel, model_type: str, *, nope: bool = False, norm: str = "rmsnorm") -> dict[str, Any]:
    fam = FAMILIES[model_type]
    if m.norm.kind != norm or m.norm.placement != "pre" or (norm == "layernorm" and not m.norm.bias):
        want = "RMSNorm" if norm == "rmsnorm" else "LayerNorm with bias"
        raise CannotExport(f"needs pre-norm {want} (spec: {m.norm.placement} {m.norm.kind})")
    if m.positions.kind != "rope":
        raise CannotExport(f"needs rotary positions (spec: {m.positions.kind})")
    if m.frozen:
        raise CannotExport("config.json has no frozen components")
    if m.mtp and model_type != "deepseek_v3":
        raise CannotExport("has no multi-token-prediction layers")
    attn = m.layers[0].attention
    cfg: dict[str, Any] = {
        "architectures": [fam.architecture],
        "model_type": model_type,
        "vocab_size": m.vocab_size,
        "hidden_size": m.d_model,
        "num_hidden_layers": m.n_layers,
        "num_attention_heads": attn.n_heads,
        "max_position_embeddings": m.max_seq_len,
        "rms_norm_eps": m.norm.eps,
        "tie_word_embeddings": m.tie_embeddings,
        "rope_theta": m.positions.theta,
        "rope_scaling": _export_rope(m),
    }
    acts = {lp.ffn.activation for lp in m.layers}
    act = _one(list(acts), "the activation")
    if model_type == "gpt_oss":  # the clamped SwiGLU is fixed in GptOssExperts; hidden_act is unused
        if act != "swiglu_clamped":
            raise CannotExport(f"has only the clamped SwiGLU (swiglu_clamped), not {act}")
        act = "swiglu"
    cfg["hidden_act"] = {"swiglu": "silu", "geglu": "gelu_pytorch_tanh"}.get(act)
    if cfg["hidden_act"] is None:
        raise CannotExport(f"needs a gated activation (swiglu or geglu), not {act}")
    if attn.kind == "gqa":
        cfg["num_key_value_heads"] = attn.n_kv_heads
        cfg["head_dim"] = attn.head_dim
    if not nope and any(not lp.attention.rope for lp in m.layers):
        raise CannotExport("has no NoPE layers")
    return cfg


def _export_rope(m: ResolvedModel) -> dict[str, Any] | None:
    s = m.positions.scaling
    if s is None:
        return None
    out: dict[str, Any] = {"rope_type": s.kind, "factor": s.factor}
    if s.original_max_seq_len is not None:
        out["original_max_position_embeddings"] = s.original_max_seq_len
    for k in ("beta_fast", "beta_slow", "mscale", "mscale_all_dim", "low_freq_factor", "high_freq_factor"):
        if getattr(s, k) is not None:
            out[k] = getattr(s, k)
    if s.attention_factor is not None:
        out["attention_factor"] = s.attention_factor
    for k in ("short_factor", "long_factor", "short_mscale", "long_mscale"):  # longrope
        v = getattr(s, k)
        if v is not None:
            out[k] = list(v) if isinstance(v, tuple) else v
    if not s.truncate:
        out["truncate"] = False
    return out


def _moe_plan(m: ResolvedModel, *, all_layers: bool = False) -> MoEPlan:
    plans = [lp.ffn for lp in m.layers if isinstance(lp.ffn, MoEPlan)]
    if not plans:
        raise CannotExport("is an MoE family and the spec has no MoE layer")
    if all_layers and len(plans) != len(m.layers):
        raise CannotExport("makes every layer MoE (the spec has dense layers)")
    return plans[0]


def _dense_plan(m: ResolvedModel) -> DenseFFNPlan | None:
    plans = [lp.ffn for lp in m.layers if isinstance(lp.ffn, DenseFFNPlan)]
    return plans[0] if plans else None


def _uniform_window_of(m: ResolvedModel) -> int | None:
    return _one([lp.attention.window for lp in m.layers], "the sliding window")


def _layer_types(m: ResolvedModel) -> tuple[int | None, list[str]]:
    ws = {lp.attention.window for lp in m.layers} - {None}
    if len(ws) > 1:
        raise CannotExport("layers slide over different windows")
    types = ["sliding_attention" if lp.attention.window else "full_attention" for lp in m.layers]
    return (ws.pop() if ws else None), types


def _export_llama(m: ResolvedModel) -> dict[str, Any]:
    cfg = _export_base(m, "llama")
    a, f = m.layers[0].attention, _dense_plan(m)
    if f is None:
        raise CannotExport("is a dense family and the spec has MoE layers")
    cfg.update(intermediate_size=f.d_ff, attention_bias=a.bias, mlp_bias=f.bias)
    return cfg


def _export_mistral(m: ResolvedModel) -> dict[str, Any]:
    cfg = _export_base(m, "mistral")
    f = _dense_plan(m)
    if f is None:
        raise CannotExport("is a dense family and the spec has MoE layers")
    cfg.update(intermediate_size=f.d_ff, sliding_window=_uniform_window_of(m))
    return cfg


def _export_qwen_dense(m: ResolvedModel, model_type: str) -> dict[str, Any]:
    cfg = _export_base(m, model_type)
    f = _dense_plan(m)
    if f is None:
        raise CannotExport("is a dense family and the spec has MoE layers")
    w, types = _layer_types(m)
    cfg.update(
        intermediate_size=f.d_ff,
        use_sliding_window=w is not None,
        sliding_window=w,
        max_window_layers=m.n_layers,
        layer_types=types,
    )
    if model_type == "qwen3":
        cfg["attention_bias"] = m.layers[0].attention.bias
    else:
        cfg.pop("head_dim")  # Qwen2Config has no head_dim (the model derives hidden_size / heads)
    return cfg


def _export_moe_common(cfg: dict[str, Any], e: MoEPlan) -> None:
    cfg["num_experts_per_tok"] = e.router.top_k
    cfg["router_aux_loss_coef"] = e.load_balance_coeff


def _export_mixtral(m: ResolvedModel) -> dict[str, Any]:
    cfg = _export_base(m, "mixtral")
    e = _moe_plan(m, all_layers=True)
    cfg.update(
        intermediate_size=e.d_ff,
        num_local_experts=e.n_experts,
        sliding_window=_uniform_window_of(m),
        router_jitter_noise=0.0,
    )
    _export_moe_common(cfg, e)
    return cfg


def _export_qwen_moe(m: ResolvedModel, model_type: str) -> dict[str, Any]:
    cfg = _export_base(m, model_type)
    e, f = _moe_plan(m), _dense_plan(m)
    dense = [lp.index for lp in m.layers if not isinstance(lp.ffn, MoEPlan)]
    cfg.update(
        num_experts=e.n_experts,
        moe_intermediate_size=e.d_ff,
        norm_topk_prob=e.router.normalize_topk,
        decoder_sparse_step=1,
        mlp_only_layers=dense,
        intermediate_size=f.d_ff if f else FAMILIES[model_type].defaults["intermediate_size"],
    )
    _export_moe_common(cfg, e)
    if model_type == "qwen2_moe":
        w, types = _layer_types(m)
        cfg.update(
            use_sliding_window=w is not None,
            sliding_window=w,
            max_window_layers=m.n_layers,
            layer_types=types,
            shared_expert_intermediate_size=e.d_ff_shared,
            qkv_bias=m.layers[0].attention.bias,
        )
    else:
        w = _uniform_window_of(m)
        cfg.update(use_sliding_window=w is not None, sliding_window=w, attention_bias=m.layers[0].attention.bias)
    return cfg


def _export_deepseek(m: ResolvedModel, model_type: str) -> dict[str, Any]:
    cfg = _export_base(m, model_type)
    a, e, f = m.layers[0].attention, _moe_plan(m), _dense_plan(m)
    if a.kind != "mla":
        raise CannotExport("needs MLA attention")
    kinds = [lp.ffn.kind for lp in m.layers]
    k_dense = kinds.index("moe")
    if "dense" in kinds[k_dense:]:
        raise CannotExport("puts dense layers only before the first MoE layer (first_k_dense_replace)")
    r = e.router
    cfg.update(
        num_key_value_heads=a.n_heads,
        q_lora_rank=a.q_lora_rank,
        kv_lora_rank=a.kv_lora_rank,
        qk_nope_head_dim=a.qk_nope_head_dim,
        qk_rope_head_dim=a.qk_rope_head_dim,
        v_head_dim=a.v_head_dim,
        attention_bias=False,
        intermediate_size=f.d_ff if f else e.d_ff * 4,
        moe_intermediate_size=e.d_ff,
        n_routed_experts=e.n_experts,
        n_shared_experts=e.n_shared_experts,
        num_experts_per_tok=r.top_k,
        first_k_dense_replace=k_dense,
        moe_layer_freq=1,
        routed_scaling_factor=r.scale,
        aux_loss_alpha=e.load_balance_coeff,
        seq_aux=e.load_balance_granularity == "sequence",
    )
    if model_type == "deepseek_v3":
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


def _export_granitemoe(m: ResolvedModel) -> dict[str, Any]:
    cfg = _export_base(m, "granitemoe")
    e = _moe_plan(m, all_layers=True)
    a = m.layers[0].attention
    cfg.update(
        intermediate_size=e.d_ff,
        num_local_experts=e.n_experts,
        attention_bias=a.bias,
        embedding_multiplier=m.embedding_multiplier,
        residual_multiplier=m.residual_multiplier,
        logits_scaling=m.logits_scaling,
        attention_multiplier=a.scale if a.scale is not None else 1.0 / a.head_dim**0.5,
    )
    _export_moe_common(cfg, e)
    return cfg


def _export_olmoe(m: ResolvedModel) -> dict[str, Any]:
    cfg = _export_base(m, "olmoe")
    a, e = m.layers[0].attention, _moe_plan(m, all_layers=True)
    if a.n_heads * a.head_dim != m.d_model:
        raise CannotExport("derives head_dim as hidden_size / heads (its q_norm spans hidden_size)")
    if _uniform_window_of(m) is not None:
        raise CannotExport("has no sliding window (transformers' OLMoE ignores sliding_window)")
    cfg.pop("head_dim")
    cfg.update(
        intermediate_size=e.d_ff,
        num_experts=e.n_experts,
        norm_topk_prob=e.router.normalize_topk,
        attention_bias=a.bias,
        clip_qkv=a.clip_qkv,
    )
    _export_moe_common(cfg, e)
    return cfg


def _export_gpt_oss(m: ResolvedModel) -> dict[str, Any]:
    cfg = _export_base(m, "gpt_oss")
    a, e = m.layers[0].attention, _moe_plan(m, all_layers=True)
    w, types = _layer_types(m)
    cfg.update(
        intermediate_size=e.d_ff,
        num_local_experts=e.n_experts,
        attention_bias=a.bias,
        sliding_window=w,
        layer_types=types,
        swiglu_alpha=e.activation_alpha,
        swiglu_limit=e.activation_limit,
    )
    if cfg["rope_scaling"] is None:
        # without rope parameters GptOssConfig applies its own YaRN: say "default" outright
        del cfg["rope_scaling"], cfg["rope_theta"]
        cfg["rope_parameters"] = {"rope_type": "default", "rope_theta": m.positions.theta}
    _export_moe_common(cfg, e)
    return cfg


def _export_phimoe(m: ResolvedModel) -> dict[str, Any]:
    cfg = _export_base(m, "phimoe", norm="layernorm")
    a, e = m.layers[0].attention, _moe_plan(m, all_layers=True)
    cfg.update(
        intermediate_size=e.d_ff,
        num_local_experts=e.n_experts,
        sliding_window=_uniform_window_of(m),
        attention_bias=a.bias,
        lm_head_bias=m.head_bias,
        router_jitter_noise=e.router.sparsemixer_eps,
        input_jitter_noise=0.0,
    )
    _export_moe_common(cfg, e)
    return cfg


def _export_llama4_text(m: ResolvedModel) -> dict[str, Any]:
    cfg = _export_base(m, "llama4_text", nope=True)
    attns = [lp.attention for lp in m.layers]
    a, e, f = attns[0], _moe_plan(m), _dense_plan(m)
    chunks = {x.chunk for x in attns} - {None}
    if len(chunks) > 1:
        raise CannotExport("layers attend in chunks of different sizes")
    if any(x.qk_norm and x.qk_norm_kind != "l2" for x in attns):
        raise CannotExport("has only the weightless l2 qk-norm")
    tuned = [x for x in attns if x.temperature_floor_scale is not None]
    cfg.update(
        intermediate_size=e.d_ff,
        intermediate_size_mlp=f.d_ff if f else FAMILIES["llama4_text"].defaults["intermediate_size_mlp"],
        num_local_experts=e.n_experts,
        moe_layers=[lp.index for lp in m.layers if isinstance(lp.ffn, MoEPlan)],
        attention_bias=a.bias,
        no_rope_layers=[int(x.rope) for x in attns],
        attention_chunk_size=chunks.pop() if chunks else None,
        layer_types=["chunked_attention" if x.chunk else "full_attention" for x in attns],
        use_qk_norm=any(x.qk_norm for x in attns),
        attn_temperature_tuning=bool(tuned),
        router_jitter_noise=0.0,
    )
    if tuned:
        cfg.update(floor_scale=tuned[0].temperature_floor_scale, attn_scale=tuned[0].temperature_scale)
    _export_moe_common(cfg, e)
    return cfg


def _export_dbrx(m: ResolvedModel) -> dict[str, Any]:
    n = m.norm
    if (n.kind, n.placement, n.bias, n.eps) != ("layernorm", "pre", False, 1e-5):
        raise CannotExport("needs pre-norm LayerNorm without bias, eps 1e-5 (nn.LayerNorm's default)")
    if m.positions.kind != "rope" or m.positions.scaling is not None:
        raise CannotExport("needs plain rotary positions (no scaling)")
    if m.frozen or m.mtp or m.tie_embeddings:
        raise CannotExport("has no frozen components, MTP layers or tied embeddings")
    a, e = m.layers[0].attention, _moe_plan(m, all_layers=True)
    act = {"swiglu": "silu", "geglu": "gelu_pytorch_tanh"}.get(e.activation)
    if act is None:
        raise CannotExport(f"needs a gated activation (swiglu or geglu), not {e.activation}")
    r = e.router
    theta = m.positions.theta
    return {
        "architectures": [FAMILIES["dbrx"].architecture],
        "model_type": "dbrx",
        "vocab_size": m.vocab_size,
        "d_model": m.d_model,
        "n_heads": a.n_heads,
        "n_layers": m.n_layers,
        "max_seq_len": m.max_seq_len,
        "tie_word_embeddings": False,
        # transformers 5.23 reads the rope base here, DBRX's own code in attn_config: write both
        "rope_theta": theta,
        "attn_config": {"kv_n_heads": a.n_kv_heads, "clip_qkv": a.clip_qkv, "rope_theta": theta},
        "ffn_config": {
            "ffn_act_fn": {"name": act},
            "ffn_hidden_size": e.d_ff,
            "moe_num_experts": e.n_experts,
            "moe_top_k": r.top_k,
            "moe_normalize_expert_weights": 1.0 if r.normalize_topk else None,
            "moe_jitter_eps": r.jitter or None,
            "moe_loss_weight": e.load_balance_coeff,
        },
    }


# Tried in this order; the first whose config re-imports to the identical plan wins.
EXPORTERS_DENSE: list[tuple[str, Callable[[ResolvedModel], dict[str, Any]]]] = [
    ("llama", _export_llama),
    ("mistral", _export_mistral),
    ("qwen2", lambda m: _export_qwen_dense(m, "qwen2")),
    ("qwen3", lambda m: _export_qwen_dense(m, "qwen3")),
]
EXPORTERS_MOE: list[tuple[str, Callable[[ResolvedModel], dict[str, Any]]]] = [
    ("mixtral", _export_mixtral),
    ("qwen3_moe", lambda m: _export_qwen_moe(m, "qwen3_moe")),
    ("qwen2_moe", lambda m: _export_qwen_moe(m, "qwen2_moe")),
    ("deepseek_v3", lambda m: _export_deepseek(m, "deepseek_v3")),
    ("deepseek_v2", lambda m: _export_deepseek(m, "deepseek_v2")),
    ("granitemoe", _export_granitemoe),
    ("olmoe", _export_olmoe),
    ("gpt_oss", _export_gpt_oss),
    ("dbrx", _export_dbrx),
    ("llama4_text", _export_llama4_text),
    ("phimoe", _export_phimoe),
]
