"""The analysis of one resolved model: parameters, FLOPs and memory as plain dataclasses."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, Literal

from moec.analyze.counts import (
    ROUTING_CONVENTIONS,
    ZERO_EXPERTS,
    Part,
    attention_score_flops,
    attention_sequence_flops,
    kv_len,
    layer_parts,
    model_edge_parts,
    mtp_parts,
)
from moec.analyze.encdec import (
    attention_label,
    encdec_conventions,
    not_in_decode_step,
    stack_layers,
    stack_sequence_flops,
)
from moec.analyze.hyper import CONVENTION as HYPER_CONNECTIONS
from moec.analyze.memory import Memory, memory
from moec.spec.moa import conventions as moa_conventions
from moec.spec.plan import DenseFFNPlan, MoEPlan, ResolvedModel
from moec.vocab import COMPONENTS

SCHEMA = "moec.analysis/1"
AttentionMode = Literal["full", "causal"]


def conventions(seq: int, attention: AttentionMode, dtype: str) -> dict[str, Any]:
    return {
        "flop_unit": "1 multiply-add = 2 FLOPs",
        "embedding_lookup_flops": 0,
        "lm_head_flops": "2·d·V per token, also when tied",
        "elementwise_flops": 0,
        "rope_variants": "partial rotary (rotary_dim < head_dim), per-layer rope_theta, ntk_alpha scaling, mrope "
        "sections (plain RoPE on text): 0 FLOPs, 0 parameters, KV bytes unchanged (the cache holds whole k heads)",
        "mla_latent_norm_eps": "an eps only: 0 FLOPs, 0 parameters, KV bytes unchanged",
        "mla_latent_scales": "constant factors on the query and the kv latent: elementwise, 0 FLOPs, 0 parameters",
        "qk_norm_after_rope": "the q/k norm's place (before or after the rotation): 0 FLOPs, the same parameters",
        "norm_placement": "pre, post, after_sublayer and normed_residual: one norm of d per sublayer a layer has, "
        "sandwich two, parallel one per layer (0 FLOPs); a final norm of d except with post",
        "mixers": "linear-attention, state-space and convolution mixers (docs/mixers.md): their projections are "
        "linear FLOPs; their sequence mixing is counted in its chunked training form at S (attention column) and "
        "its recurrent form for a decode step; their state replaces a KV cache and is constant in S",
        "decode_step": "one token after S: linear FLOPs + attention over S cached keys (capped by windows and "
        "chunks) + each other mixer's recurrent step",
        "logits": "logits_scaling and logit_softcap (cap·tanh(x/cap)) are elementwise: 0 FLOPs, 0 parameters",
        "selection_bias": "a buffer (DeepSeek-V3): not counted; with selection_bias_parameter (ERNIE-4.5): E router "
        "parameters per MoE layer, in total, active and trainable; 0 FLOPs either way",
        "routing": ROUTING_CONVENTIONS,
        "zero_experts": ZERO_EXPERTS,
        "shortcut_moe_pair": "a LongCat-Flash layer: two attentions, two dense FFNs and four norms of d, one MoE; "
        "a KV cache per attention (two per layer)",
        "hyper_connections": HYPER_CONNECTIONS,
        "attention": attention,
        "attention_kv_len": "S" if attention == "full" else "(S+1)/2 average (causal)",
        "sliding_window": "S_kv capped at the window",
        "seq": seq,
        "training_flops": "3× forward for trainable weights and attention scores, 2× for frozen weights",
        "active_params": "total − routed experts + (k/E)·routed experts; dense routing: all",
        "mtp": "reported separately, not in the headline",
        "weights_memory": "total params (all experts resident)",
        "training_memory": "mixed-precision AdamW: 16 B per trainable param + 2 B per frozen param",
        "activation_memory": "estimate: bf16 matmul inputs and outputs saved for backward, no recompute, flash attention",
        "dtype": dtype,
    }


def convention_line(c: dict[str, Any]) -> str:
    return (
        f"FLOPs: {c['flop_unit']} · embedding lookup 0 · lm_head counted · elementwise 0 · "
        f"attention {c['attention']} (S_kv = {c['attention_kv_len']}, windows capped) · S={c['seq']} · "
        f"training = 3× trainable / 2× frozen · MTP separate · memory in {c['dtype']}"
        + (" · expert choice: active = average over tokens" if "active_average" in c else "")
        + (" · sparse attention: headline at top-k keys (dense-equivalent in JSON)" if "sparse_attention" in c else "")
        + (" · encoder-decoder: per (source, target) token pair" if "encoder_decoder" in c else "")
    )


@dataclass(frozen=True)
class ComponentRow:
    name: str
    params: int
    active: int
    trainable: int
    frozen: int
    flops: int  # forward linear FLOPs per token


@dataclass(frozen=True)
class LayerRow:
    index: int
    ffn: str  # dense | moe | none
    attention: str  # gqa | mla (the attention section's kind, also on layers whose mixer is another)
    window: int | None
    params: int
    active: int
    flops_linear: int
    flops_attention: int | float  # sequence mixing at S: attention scores, or another mixer's chunked form
    mixer: str = "attention"  # moec.vocab.MIXER_KINDS
    flops_decode_mixing: int | float = 0  # sequence mixing of one decode step after S tokens


@dataclass(frozen=True)
class Params:
    total: int
    active: int
    active_non_embedding: int
    trainable: int
    frozen: int
    embedding: int


@dataclass(frozen=True)
class Flops:
    forward_linear: int
    forward_attention: int | float  # sequence mixing at S: attention scores and other mixers' chunked forms
    forward: int | float
    training: int | float
    six_n_active: int  # the popular 6·N_active (non-embedding) shortcut, for comparison
    decode_step: int | float = 0  # one token generated after S: linear + every layer's recurrent/cached step


@dataclass(frozen=True)
class MoESummary:
    moe_layers: int
    dense_layers: int
    n_experts: int
    top_k: int
    n_shared_experts: int
    granularity: int
    active_expert_fraction: float
    routed_expert_params_share: float  # routed experts / total params


@dataclass(frozen=True)
class MTPSummary:
    n_layers: int
    params: int
    active: int
    forward_flops: int | float


@dataclass(frozen=True)
class Analysis:
    name: str
    spec_hash: str
    seq: int
    batch: int
    attention_mode: AttentionMode
    dtype: str
    params: Params
    flops: Flops
    memory: Memory
    components: list[ComponentRow]
    layers: list[LayerRow]
    moe: MoESummary | None
    mtp: MTPSummary | None
    conventions: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = {"schema": SCHEMA}
        d.update(dataclasses.asdict(self))
        return d


def _num(x: Fraction | int) -> int | float:
    x = Fraction(x)
    return int(x) if x.denominator == 1 else float(x)


def analyze(
    model: ResolvedModel,
    *,
    seq: int | None = None,
    batch: int = 1,
    attention: AttentionMode = "full",
    dtype: str = "bf16",
) -> Analysis:
    """Count everything for ``model`` at context length ``seq`` (default 1: the linear part plus one key)."""
    S = 1 if seq is None else seq
    if S <= 0 or batch <= 0:
        raise ValueError("seq and batch must be positive")
    totals: dict[str, list[int]] = {c: [0, 0, 0, 0] for c in COMPONENTS}  # params, active, flops, frozen params

    def add(parts: dict[str, Part]) -> None:
        for name, p in parts.items():
            t = totals[name]
            t[0] += p.params
            t[1] += p.active
            t[2] += p.flops
            t[3] += p.params if p.frozen else 0

    def train_flops(parts: dict[str, Part]) -> int:
        return sum((2 if p.frozen else 3) * p.flops for p in parts.values())

    layers: list[LayerRow] = []
    attn_total = decode_mixing = Fraction(0)
    training = Fraction(0)
    encoder_linear = 0  # an encoder-decoder model's encoder (moec/analyze/encdec.py): not in a decode step
    for lp, in_encoder in stack_layers(model):
        parts = layer_parts(lp, model)
        add(parts)
        score, step = stack_sequence_flops(lp, in_encoder, model.d_model, S, attention)
        encoder_linear += sum(p.flops for p in parts.values()) if in_encoder else 0
        attn_total += score
        decode_mixing += step
        training += train_flops(parts) + 3 * score
        layers.append(
            LayerRow(
                index=lp.index,
                ffn=lp.ffn.kind,
                attention=attention_label(lp, in_encoder),
                window=lp.attention.window if lp.has_attention else None,
                params=sum(p.params for p in parts.values()),
                active=sum(p.active for p in parts.values()),
                flops_linear=sum(p.flops for p in parts.values()),
                flops_attention=_num(score),
                mixer=lp.mixer_kind,
                flops_decode_mixing=_num(step),
            )
        )
    edges = model_edge_parts(model)
    add(edges)
    training += train_flops(edges)

    components = [ComponentRow(name, t[0], t[1], t[0] - t[3], t[3], t[2]) for name, t in totals.items() if t[0] or t[2]]
    total = sum(c.params for c in components)
    active = sum(c.active for c in components)
    frozen = sum(c.frozen for c in components)
    emb = totals["embedding"][0]
    linear = sum(c.flops for c in components)
    non_emb_active = active - emb
    params = Params(total, active, non_emb_active, total - frozen, frozen, emb)
    flops = Flops(
        forward_linear=linear,
        forward_attention=_num(attn_total),
        forward=_num(linear + attn_total),
        training=_num(training),
        six_n_active=6 * non_emb_active,
        decode_step=_num(linear - not_in_decode_step(model, encoder_linear) + decode_mixing),
    )

    moe_plans = [lp.ffn for lp, _ in stack_layers(model) if isinstance(lp.ffn, MoEPlan)]
    moe = None
    if moe_plans:
        f = moe_plans[0]
        moe = MoESummary(
            moe_layers=len(moe_plans),
            dense_layers=sum(isinstance(lp.ffn, DenseFFNPlan) for lp, _ in stack_layers(model)),
            n_experts=f.n_experts,
            top_k=f.top_k,
            n_shared_experts=f.n_shared_experts,
            granularity=f.granularity,
            active_expert_fraction=f.top_k / f.n_experts,
            routed_expert_params_share=totals["routed_experts"][0] / total,  # a MoE layer: total > 0
        )
    mtp = None
    if model.mtp:
        m_params = m_active = 0
        m_flops = Fraction(0)
        for lp in model.mtp:
            parts = mtp_parts(lp, model)
            m_params += sum(p.params for p in parts.values())
            m_active += sum(p.active for p in parts.values())
            m_flops += sum(p.flops for p in parts.values())
            m_flops += attention_score_flops(
                lp.attention, kv_len(S, lp.attention.window, attention, lp.attention.chunk)
            )
        mtp = MTPSummary(len(model.mtp), m_params, m_active, _num(m_flops))

    return Analysis(
        name=model.name,
        spec_hash=model.spec_hash,
        seq=S,
        batch=batch,
        attention_mode=attention,
        dtype=dtype,
        params=params,
        flops=flops,
        memory=memory(model, params.total, params.trainable, params.frozen, seq=S, batch=batch, dtype=dtype),
        components=components,
        layers=layers,
        moe=moe,
        mtp=mtp,
        conventions=conventions(S, attention, dtype)
        | _averaged_active(model)
        | _sparse_attention(model, S, attention)
        | encdec_conventions(model)
        | moa_conventions(model),
    )


def _averaged_active(model: ResolvedModel) -> dict[str, str]:
    """Expert choice gives a token 0 to E experts: its active counts are an average over tokens, said wherever
    the headline is shown (docs/routing.md, "Expert choice")."""
    plans = (lp.ffn for lp in (*model.layers, *model.mtp))
    if any(isinstance(f, MoEPlan) and f.router.kind == "expert_choice" for f in plans):
        return {"active_average": "expert choice: active parameters and FLOPs per token are averages over tokens"}
    return {}


def _sparse_attention(model: ResolvedModel, seq: int, attention: AttentionMode) -> dict[str, Any]:
    """With a sparse-attention indexer (docs/conventions.md, "Sparse attention indexer"): which attention figure the
    headline uses (sparse: what the model computes) and the dense-equivalent beside it, per forward token and for a
    decode step, all layers."""
    layers = [lp.attention for lp in model.layers if lp.has_attention and lp.attention.sparse]
    if not layers:
        return {}
    total = {
        "dense_train": Fraction(0),
        "sparse_train": Fraction(0),
        "dense_step": Fraction(0),
        "sparse_step": Fraction(0),
    }
    for a in layers:
        for form, v in attention_sequence_flops(a, seq, attention).items():
            total[form] += v
    top_k = sorted({a.indexer_top_k for a in layers})
    return {
        "sparse_attention": {
            "headline": "sparse",
            "rule": f"attention over min(S_kv, top_k = {', '.join(map(str, top_k))}) keys chosen by the indexer, plus "
            "the indexer's scores over all S_kv keys (2·H_I·(d_I + 1) per key) and its projections (linear); the "
            "dense-equivalent: attention over all S_kv keys, no indexer scores",
            "flop_unit": "1 multiply-add = 2 FLOPs (these four figures also under --fvcore)",
            "layers": len(layers),
            "forward_attention_sparse": _num(total["sparse_train"]),
            "forward_attention_dense_equivalent": _num(total["dense_train"]),
            "decode_attention_sparse": _num(total["sparse_step"]),
            "decode_attention_dense_equivalent": _num(total["dense_step"]),
        }
    }


FVCORE_UNIT = "1 multiply-add = 1 FLOP"


def in_fvcore_convention(a: Analysis) -> Analysis:
    """The same analysis with every FLOP figure in fvcore's unit, 1 multiply-add = 1 "flop": moec's figures
    halved (exact: every moec FLOP count is a sum of 2-FLOP multiply-adds)."""

    def half(x: int | float) -> int | float:
        return x // 2 if isinstance(x, int) and x % 2 == 0 else x / 2

    f = a.flops
    return dataclasses.replace(
        a,
        flops=dataclasses.replace(
            f,
            forward_linear=half(f.forward_linear),
            forward_attention=half(f.forward_attention),
            forward=half(f.forward),
            training=half(f.training),
            six_n_active=half(f.six_n_active),
            decode_step=half(f.decode_step),
        ),
        components=[dataclasses.replace(c, flops=half(c.flops)) for c in a.components],
        layers=[
            dataclasses.replace(
                l,
                flops_linear=half(l.flops_linear),
                flops_attention=half(l.flops_attention),
                flops_decode_mixing=half(l.flops_decode_mixing),
            )
            for l in a.layers
        ],
        mtp=a.mtp and dataclasses.replace(a.mtp, forward_flops=half(a.mtp.forward_flops)),
        conventions={**a.conventions, "flop_unit": f"{FVCORE_UNIT} (fvcore's convention)"},
    )
