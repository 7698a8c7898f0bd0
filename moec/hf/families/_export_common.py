"""The exporter steps families share: a resolved plan → the config.json fields most families spell alike.

A family's exporter raises :class:`CannotExport` for what the family plainly cannot say. It need not be
exhaustive: :func:`moec.hf.config.export_hf_config` imports the written config again and accepts it only if
the plan comes back identical, so a feature an exporter forgets to refuse is caught there, never dropped.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from moec.hf.draft import CannotExport, Family
from moec.spec.plan import AttentionPlan, DenseFFNPlan, MoEPlan, ResolvedModel

# the position kinds export_base knows, as its refusal names them
POSITION_KINDS = {"rope": "rotary positions", "none": "no position encoding"}
# moec's gated activations → config.json's hidden_act (the nonlinearity on the gate)
HIDDEN_ACT = {"swiglu": "silu", "geglu": "gelu", "geglu_tanh": "gelu_pytorch_tanh"}


def one(values: list[Any], what: str) -> Any:
    distinct = set(values)
    if len(distinct) != 1:
        raise CannotExport(f"{what} differs between layers")
    return distinct.pop()


def gated_hidden_act(activation: str) -> str:
    """config.json's hidden_act for a moec activation, which must be one of the gated ones."""
    act = HIDDEN_ACT.get(activation)
    if act is None:
        raise CannotExport(f"needs a gated activation (swiglu, geglu or geglu_tanh), not {activation}")
    return act


def export_base(
    m: ResolvedModel,
    family: Family,
    *,
    nope: bool = False,
    norm: str = "rmsnorm",
    placement: str = "pre",
    positions: tuple[str, ...] = ("rope",),
    mtp: bool = False,
    hidden_act: Callable[[str], str] = gated_hidden_act,
) -> dict[str, Any]:
    """The fields every transformers-style family writes, after refusing what none of them can say.
    ``nope``: the family has layers without rotary positions; ``placement``: where its blocks put their norms
    (sandwich, parallel, normed_residual: the family writes what else that needs); ``positions``: the position
    kinds the family builds (rope_theta and rope_scaling are written for rope only); ``mtp``: it has
    multi-token-prediction layers; ``hidden_act``: the plan's activation → the config's hidden_act (raising
    CannotExport)."""
    if m.norm.kind != norm or m.norm.placement != placement or (norm == "layernorm" and not m.norm.bias):
        want = "RMSNorm" if norm == "rmsnorm" else "LayerNorm with bias"
        raise CannotExport(f"needs {placement}-norm {want} (spec: {m.norm.placement} {m.norm.kind})")
    if m.positions.kind not in positions:
        said = " or ".join(POSITION_KINDS[p] for p in positions)
        raise CannotExport(f"needs {said} (spec: {m.positions.kind})")
    if m.frozen:
        raise CannotExport("config.json has no frozen components")
    if m.mtp and not mtp:
        raise CannotExport("has no multi-token-prediction layers")
    if any(not lp.has_ffn for lp in m.layers):  # a layer with one sublayer (Nemotron-H): docs/mixers.md
        raise CannotExport("has an FFN in every layer (the spec has layers with ffn: none)")
    attn = m.layers[0].attention
    cfg: dict[str, Any] = {
        "architectures": [family.architecture],
        "model_type": family.model_type,
        "vocab_size": m.vocab_size,
        "hidden_size": m.d_model,
        "num_hidden_layers": m.n_layers,
        "num_attention_heads": attn.n_heads,
        "max_position_embeddings": m.max_seq_len,
        "rms_norm_eps": m.norm.eps,
        "tie_word_embeddings": m.tie_embeddings,
    }
    if m.positions.kind == "rope":
        cfg.update(rope_theta=m.positions.theta, rope_scaling=export_rope(m))
    acts = {lp.ffn.activation for lp in m.layers}
    cfg["hidden_act"] = hidden_act(one(list(acts), "the activation"))
    if attn.kind == "gqa":
        cfg["num_key_value_heads"] = attn.n_kv_heads
        cfg["head_dim"] = attn.head_dim
    if not nope and any(not lp.attention.rope for lp in m.layers):
        raise CannotExport("has no NoPE layers")
    return cfg


def export_rope(m: ResolvedModel) -> dict[str, Any] | None:
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


def moe_plan(m: ResolvedModel, *, all_layers: bool = False) -> MoEPlan:
    plans = [lp.ffn for lp in m.layers if isinstance(lp.ffn, MoEPlan)]
    if not plans:
        raise CannotExport("is an MoE family and the spec has no MoE layer")
    if all_layers and len(plans) != len(m.layers):
        raise CannotExport("makes every layer MoE (the spec has dense layers)")
    if len(set(plans)) > 1:  # layers.*.moe: a layer's own activation or limits
        raise CannotExport("has one MoE configuration for every layer (the spec's layers.*.moe give some their own)")
    return plans[0]


def dense_plan(m: ResolvedModel) -> DenseFFNPlan | None:
    plans = [lp.ffn for lp in m.layers if isinstance(lp.ffn, DenseFFNPlan)]
    return plans[0] if plans else None


def uniform_window_of(m: ResolvedModel) -> int | None:
    return one([lp.attention.window for lp in m.layers], "the sliding window")


def layer_types(m: ResolvedModel) -> tuple[int | None, list[str]]:
    ws = {lp.attention.window for lp in m.layers} - {None}
    if len(ws) > 1:
        raise CannotExport("layers slide over different windows")
    types = ["sliding_attention" if lp.attention.window else "full_attention" for lp in m.layers]
    return (ws.pop() if ws else None), types


def export_moe_common(cfg: dict[str, Any], e: MoEPlan) -> None:
    cfg["num_experts_per_tok"] = e.router.top_k
    cfg["router_aux_loss_coef"] = e.load_balance_coeff


def export_qwen_moe(m: ResolvedModel, family: Family) -> tuple[dict[str, Any], MoEPlan]:
    """What Qwen2-MoE and Qwen3-MoE write alike (their MoE layers, the dense ones in mlp_only_layers), and the
    MoE plan, for the fields each family adds."""
    cfg = export_base(m, family)
    e, f = moe_plan(m), dense_plan(m)
    dense = [lp.index for lp in m.layers if not isinstance(lp.ffn, MoEPlan)]
    cfg.update(
        num_experts=e.n_experts,
        moe_intermediate_size=e.d_ff,
        norm_topk_prob=e.router.normalize_topk,
        decoder_sparse_step=1,
        mlp_only_layers=dense,
        intermediate_size=f.d_ff if f else family.defaults["intermediate_size"],
    )
    export_moe_common(cfg, e)
    return cfg, e


def mla_fields(a: AttentionPlan) -> dict[str, Any]:
    """The MLA fields every DeepSeek-style config writes under DeepSeek's names (every head its own KV head, no
    biases): DeepSeek-V2/V3 and its copies, Kimi-Linear, Ling."""
    return dict(
        num_key_value_heads=a.n_heads,
        q_lora_rank=a.q_lora_rank,
        kv_lora_rank=a.kv_lora_rank,
        qk_nope_head_dim=a.qk_nope_head_dim,
        qk_rope_head_dim=a.qk_rope_head_dim,
        v_head_dim=a.v_head_dim,
        attention_bias=False,
    )


def deepseek_mla_fields(a: AttentionPlan, e: MoEPlan, f: DenseFFNPlan | None) -> dict[str, Any]:
    """What DeepSeek-V2/V3 and DeepSeek-V3.2 (GLM-MoE-DSA) write alike: the MLA (:func:`mla_fields`), the dense
    and MoE widths (with no dense layer, 4 × the expert width) and the experts."""
    return dict(
        **mla_fields(a),
        intermediate_size=f.d_ff if f else e.d_ff * 4,
        moe_intermediate_size=e.d_ff,
        n_routed_experts=e.n_experts,
        n_shared_experts=e.n_shared_experts,
        num_experts_per_tok=e.router.top_k,
    )
