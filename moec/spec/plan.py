"""The resolved model: one explicit plan per layer, which every consumer reads.

Nothing downstream (analyzer, modules, codegen, HF bridge, smoke-run) looks at YAML or re-derives a
default: fine-grained segmentation is already multiplied out, MHA/MQA are GQA with explicit KV heads,
head dims are filled in, and each layer says exactly which attention window and FFN it has.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

from moec.vocab import (
    ATTENTION_KINDS,
    BALANCE_GRANULARITIES,
    DROP_POLICIES,
    EXPERT_KINDS,
    GATED,
    GROUP_SCORES,
    NORM_KINDS,
    NORM_PLACEMENTS,
    POSITION_KINDS,
    QK_NORM_KINDS,
    QK_NORM_SCOPES,
    ROUTER_APPLY_TO,
    ROUTER_KINDS,
    ROUTER_SCORES,
)


@dataclass(frozen=True)
class NormPlan:
    kind: Literal[NORM_KINDS]
    eps: float
    placement: Literal[NORM_PLACEMENTS]
    bias: bool = True  # layernorm only

    @property
    def params_per_dim(self) -> int:
        return 2 if self.kind == "layernorm" and self.bias else 1  # layernorm: weight and bias

    @property
    def final_norm(self) -> bool:
        """Whether the stack ends with a norm before the head: a post-norm stack's last output is normalised
        already; pre and after_sublayer leave the residual stream unnormalised."""
        return self.placement != "post"


@dataclass(frozen=True)
class RopeScalingPlan:
    kind: str
    factor: float | None = None  # every kind but ntk_alpha
    original_max_seq_len: int | None = None
    beta_fast: float | None = None
    beta_slow: float | None = None
    mscale: float | None = None
    mscale_all_dim: float | None = None
    low_freq_factor: float | None = None
    high_freq_factor: float | None = None
    truncate: bool = True
    attention_factor: float | None = None
    short_factor: tuple[float, ...] | None = None  # longrope
    long_factor: tuple[float, ...] | None = None
    short_mscale: float | None = None
    long_mscale: float | None = None
    alpha: float | None = None  # ntk_alpha: the base stretch theta · alpha^(dim/(dim−2))

    def __post_init__(self) -> None:
        for f in ("short_factor", "long_factor"):  # tuples, also when reloaded from YAML lists
            v = getattr(self, f)
            if v is not None:
                object.__setattr__(self, f, tuple(float(x) for x in v))


@dataclass(frozen=True)
class PositionsPlan:
    kind: Literal[POSITION_KINDS]
    theta: float
    scaling: RopeScalingPlan | None
    # partial rotary: the first rotary_dim dims of each GQA q/k head rotate, the rest pass through; None: all
    rotary_dim: int | None = None
    # multimodal RoPE's [t, h, w] frequency sections (None: plain RoPE); on text positions it is plain RoPE
    mrope_sections: tuple[int, ...] | None = None
    mrope_interleaved: bool = False

    def __post_init__(self) -> None:
        if self.mrope_sections is not None:  # a tuple, also when reloaded from a YAML list
            object.__setattr__(self, "mrope_sections", tuple(int(x) for x in self.mrope_sections))


@dataclass(frozen=True)
class AttentionPlan:
    kind: Literal[ATTENTION_KINDS]
    n_heads: int
    n_kv_heads: int  # MLA: = n_heads
    head_dim: int  # GQA head dim; MLA: qk_nope + qk_rope
    qk_norm: bool
    bias: bool
    out_bias: bool
    sinks: bool
    window: int | None  # sliding window in tokens; None = full context
    rope: bool  # whether this layer applies rotary positions
    q_lora_rank: int | None = None
    kv_lora_rank: int | None = None
    qk_nope_head_dim: int | None = None
    qk_rope_head_dim: int | None = None
    v_head_dim: int | None = None
    qk_norm_scope: Literal[QK_NORM_SCOPES] = "head"
    clip_qkv: float | None = None
    scale: float | None = None  # softmax scale; None: 1/sqrt(qk_dim) (and yarn's mscale for MLA)
    chunk: int | None = None  # chunked attention: query i sees keys [floor(i/chunk)·chunk, i]; None = off
    qk_norm_kind: Literal[QK_NORM_KINDS] = "model"  # l2: weightless x/rms(x) per head (Llama-4), 0 params
    qk_norm_after_rope: bool = False  # the learned per-head qk-norm after the rotation (Hunyuan-A13B)
    # query temperature 1 + temperature_scale·log1p(floor((pos+1)/temperature_floor_scale)); None = off
    temperature_floor_scale: float | None = None
    temperature_scale: float | None = None
    latent_norm_eps: float | None = None  # MLA's q/kv latent norms; None: the model's norm eps
    rope_theta: float | None = None  # this layer's RoPE base; None: positions.theta

    @property
    def qk_dim(self) -> int:
        """Per-head width of queries and keys."""
        return self.head_dim

    @property
    def v_dim(self) -> int:
        """Per-head width of values."""
        return self.v_head_dim if self.kind == "mla" else self.head_dim


@dataclass(frozen=True)
class DenseFFNPlan:
    d_ff: int
    activation: str
    bias: bool
    kind: Literal["dense"] = "dense"
    activation_alpha: float | None = None  # swiglu_clamped only
    activation_limit: float | None = None  # swiglu_clamped only

    @property
    def gated(self) -> bool:
        return self.activation in GATED


@dataclass(frozen=True)
class RouterPlan:
    top_k: int  # dense routing: = n_experts
    score: Literal[ROUTER_SCORES]
    softmax_after_topk: bool
    normalize_topk: bool
    scale: float
    selection_bias: bool
    bias: bool
    n_groups: int | None
    topk_groups: int | None
    group_score: Literal[GROUP_SCORES]
    dense: bool
    jitter: float
    kind: Literal[ROUTER_KINDS] = "topk"  # sparsemixer: Phi-3.5-MoE's top-2 (see moec.nn.router)
    sparsemixer_eps: float = 0.0
    apply_to: Literal[ROUTER_APPLY_TO] = "output"  # input: the gate scales each expert's input (Llama-4)
    selection_bias_parameter: bool = False  # the selection bias is a counted parameter (ERNIE-4.5), not a buffer


@dataclass(frozen=True)
class MoEPlan:
    n_experts: int  # after fine-grained segmentation
    d_ff: int  # per routed expert, after segmentation
    activation: str
    bias: bool
    n_shared_experts: int
    d_ff_shared: int
    shared_gate: bool
    granularity: int  # the m that produced n_experts and d_ff (informational)
    router: RouterPlan
    capacity_factor: float | None
    drop_policy: Literal[DROP_POLICIES]
    load_balance_coeff: float
    load_balance_granularity: Literal[BALANCE_GRANULARITIES]
    z_loss_coeff: float
    bias_update_rate: float | None
    expert_kind: Literal[EXPERT_KINDS]
    lora_rank: int | None
    lora_alpha: float | None
    kind: Literal["moe"] = "moe"
    activation_alpha: float | None = None  # swiglu_clamped only
    activation_limit: float | None = None  # swiglu_clamped only

    @property
    def gated(self) -> bool:
        return self.activation in GATED

    @property
    def top_k(self) -> int:
        return self.router.top_k


FFNPlan = DenseFFNPlan | MoEPlan


@dataclass(frozen=True)
class LayerPlan:
    index: int
    attention: AttentionPlan
    ffn: FFNPlan


@dataclass(frozen=True)
class ResolvedModel:
    name: str
    vocab_size: int
    d_model: int
    n_layers: int
    max_seq_len: int
    tie_embeddings: bool
    norm: NormPlan
    positions: PositionsPlan
    layers: tuple[LayerPlan, ...]
    mtp: tuple[LayerPlan, ...] = ()  # multi-token-prediction blocks, reported separately
    frozen: tuple[str, ...] = ()  # frozen components (besides LoRA base FFNs, always frozen)
    head_bias: bool = False
    embedding_multiplier: float = 1.0
    residual_multiplier: float = 1.0
    logits_scaling: float = 1.0
    logit_softcap: float | None = None  # logits → cap·tanh(logits/cap) after logits_scaling; None: off
    spec_hash: str = ""
    source_file: str = ""
    description: str = ""
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    def to_dict(self) -> dict[str, Any]:
        """Plain data (for spec.resolved.yaml and JSON output)."""
        d = dataclasses.asdict(self)
        d.pop("extra")
        return d

    @property
    def rope_dim(self) -> int:
        """Dims per q/k head that rotate (the width of the cos/sin tables): MLA's qk_rope_head_dim; for GQA
        positions.rotary_dim, or the whole head_dim without partial rotary."""
        a = self.layers[0].attention  # one attention kind and head shape per model
        if a.kind == "mla":
            assert a.qk_rope_head_dim is not None
            return a.qk_rope_head_dim
        return self.positions.rotary_dim or a.head_dim

    @property
    def moe_layers(self) -> list[int]:
        return [p.index for p in self.layers if isinstance(p.ffn, MoEPlan)]

    def replace(self, **kw: Any) -> ResolvedModel:
        return dataclasses.replace(self, **kw)


def plan_from_dict(d: dict[str, Any]) -> ResolvedModel:
    """Inverse of :meth:`ResolvedModel.to_dict` (used to reload spec.resolved.yaml)."""

    def attn(a: dict[str, Any]) -> AttentionPlan:
        return AttentionPlan(**a)

    def ffn(f: dict[str, Any]) -> FFNPlan:
        if f["kind"] == "moe":
            return MoEPlan(**{**f, "router": RouterPlan(**f["router"])})
        return DenseFFNPlan(**f)

    def layer(l: dict[str, Any]) -> LayerPlan:
        return LayerPlan(l["index"], attn(l["attention"]), ffn(l["ffn"]))

    pos = d["positions"]
    return ResolvedModel(
        name=d["name"],
        vocab_size=d["vocab_size"],
        d_model=d["d_model"],
        n_layers=d["n_layers"],
        max_seq_len=d["max_seq_len"],
        tie_embeddings=d["tie_embeddings"],
        norm=NormPlan(**d["norm"]),
        positions=PositionsPlan(
            pos["kind"],
            pos["theta"],
            RopeScalingPlan(**pos["scaling"]) if pos.get("scaling") else None,
            pos.get("rotary_dim"),
            pos.get("mrope_sections"),
            pos.get("mrope_interleaved", False),
        ),
        layers=tuple(layer(l) for l in d["layers"]),
        mtp=tuple(layer(l) for l in d.get("mtp", ())),
        frozen=tuple(d.get("frozen", ())),
        head_bias=d.get("head_bias", False),
        embedding_multiplier=d.get("embedding_multiplier", 1.0),
        residual_multiplier=d.get("residual_multiplier", 1.0),
        logits_scaling=d.get("logits_scaling", 1.0),
        logit_softcap=d.get("logit_softcap"),
        spec_hash=d.get("spec_hash", ""),
        source_file=d.get("source_file", ""),
        description=d.get("description", ""),
    )
