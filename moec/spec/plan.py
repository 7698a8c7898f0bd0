"""The resolved model: one explicit plan per layer, which every consumer reads.

Nothing downstream (analyzer, modules, codegen, HF bridge, smoke-run) looks at YAML or re-derives a
default: fine-grained segmentation is already multiplied out, MHA/MQA are GQA with explicit KV heads,
head dims are filled in, and each layer says exactly which attention window and FFN it has.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel
from pydantic.fields import FieldInfo

from moec.spec.hyper import HyperConnectionsPlan
from moec.spec.norm_gate import NormGatePlan
from moec.spec.schema import FFN, Balance, Lora, MoE, RopeScaling, Router
from moec.vocab import (
    ATTENTION_KINDS,
    GATED,
    LIMITED,
    NORM_KINDS,
    NORM_PLACEMENTS,
    OUTPUT_GATE_FNS,
    OUTPUT_GATES,
    POSITION_KINDS,
    QK_NORM_KINDS,
    QK_NORM_SCOPES,
)


@dataclass(frozen=True)
class NormPlan:
    kind: Literal[NORM_KINDS]
    eps: float
    placement: Literal[NORM_PLACEMENTS]
    bias: bool = True  # layernorm only
    unit_offset: bool = False  # weights stored as w, applied as 1 + w (Gemma, Qwen3-Next)

    @property
    def params_per_dim(self) -> int:
        return 2 if self.kind == "layernorm" and self.bias else 1  # layernorm: weight and bias

    @property
    def final_norm(self) -> bool:
        """Whether the stack ends with a norm before the head: a post-norm stack's last output is normalised
        already; pre and after_sublayer leave the residual stream unnormalised."""
        return self.placement != "post"


def _mirrored_plan(
    name: str,
    schema: type[BaseModel],
    *,
    doc: str,
    base: type,
    resolved: dict[str, Any] | None = None,
    flatten: dict[str, tuple[type[BaseModel], str]] | None = None,
    only_with: dict[str, tuple[str, ...]] | None = None,
    kind: str | None = None,
    positional: bool = False,
) -> type:
    """A frozen plan dataclass with the schema model's fields: same names, order, types and defaults, so that a
    field added to the schema reaches the plan (and :func:`schema_values`) without a second declaration.

    ``resolved``: fields the resolver computes, with their plan type (required, no default). ``flatten``: a
    sub-model field whose fields join the plan at its place, each named prefix + field (optional: None when
    the sub-model is absent). ``only_with``: fields that hold a value only with some activations (else None).
    ``kind``: a constant ``kind`` field last, telling dense and MoE plans apart in plain data. Fields are
    keyword-only unless ``positional``."""
    resolved, flatten, only_with = resolved or {}, flatten or {}, only_with or {}
    fields: list[tuple[str, Any, Any]] = []
    paths: dict[str, tuple[str, ...]] = {}
    for f, info in schema.model_fields.items():
        if info.exclude:  # resolved into other fields by the schema itself (MoE.segmentation)
            continue
        if f in flatten:
            sub, prefix = flatten[f]
            sub_default = schema.model_fields[f].default
            for g, sub_info in sub.model_fields.items():
                plain = sub_default is not None and not sub_info.is_required()
                default = sub_info.default if plain else None
                fields.append((prefix + g, sub_info.annotation if plain else Any, dataclasses.field(default=default)))
                paths[prefix + g] = (f, g)
            continue
        if f in resolved:
            fields.append((f, resolved[f], dataclasses.field()))
        elif f in only_with:
            fields.append((f, info.annotation | None, dataclasses.field(default=None)))
        else:
            fields.append((f, info.annotation, _default(info)))
        paths[f] = (f,)
    if kind is not None:
        fields.append(("kind", Literal[kind], dataclasses.field(default=kind)))
    cls = dataclasses.make_dataclass(
        name,
        fields,
        bases=(base,),
        frozen=True,
        kw_only=not positional,
        namespace={"__doc__": doc, "__module__": __name__},
    )
    cls.schema_paths = paths  # plan field → attribute path in the schema object
    cls.only_with = only_with  # plan field → the activations it holds a value with
    return cls


def _default(info: FieldInfo) -> Any:
    return dataclasses.field() if info.is_required() else dataclasses.field(default=info.default)


def schema_values(plan_cls: type, obj: BaseModel) -> dict[str, Any]:
    """The plan fields ``plan_cls`` copies from the schema object ``obj`` (see :func:`_mirrored_plan`), by their
    schema path; a field of an absent sub-model, or one that holds a value only with another activation, is
    None."""
    values: dict[str, Any] = {}
    for f, path in plan_cls.schema_paths.items():
        v: Any = obj
        for step in path:
            v = getattr(v, step) if v is not None else None
        activation = plan_cls.only_with.get(f)
        values[f] = v if activation is None or obj.activation in activation else None  # type: ignore[attr-defined]
    return values


class _RopeScalingBase:
    def __post_init__(self) -> None:
        for f in ("short_factor", "long_factor"):  # tuples, also when reloaded from YAML lists
            v = getattr(self, f)
            if v is not None:
                object.__setattr__(self, f, tuple(float(x) for x in v))


RopeScalingPlan = _mirrored_plan(
    "RopeScalingPlan",
    RopeScaling,
    doc="RoPE scaling: schema.RopeScaling's fields (longrope's factors as tuples).",
    base=_RopeScalingBase,
    positional=True,
)


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
    # relative_bucket (T5): the buckets and the distance from which they saturate; None for every other kind
    n_buckets: int | None = None
    max_distance: int | None = None
    offset: int | None = None  # sinusoidal (fairseq): the table row of a sequence's first token; None otherwise

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
    temperature_form: str = "floor_log"  # power: (1 + (pos+1)/temperature_floor_scale)^temperature_scale (Beam)
    latent_norm_eps: float | None = None  # MLA's q/kv latent norms; None: the model's norm eps
    latent_scales: bool = False  # MLA: q · sqrt(d/q_lora_rank), normed kv latent · sqrt(d/kv_lora_rank) (LongCat)
    rope_key_norm: bool = False  # MLA: a norm of qk_rope_head_dim on the rotary key before the rotation (Dots3)
    query_gate: bool = False  # MLA: q_gate_proj of [norm(c_q) | c_q] → queries and a gate of the values (A.X-K2)
    rope_theta: float | None = None  # this layer's RoPE base; None: positions.theta
    output_gate: Literal[OUTPUT_GATES] = "none"  # sigmoid gate on the output per head or element (Qwen3-Next)
    output_gate_fn: Literal[OUTPUT_GATE_FNS] = "sigmoid"  # the gate's function: sigmoid, or softplus (Laguna)
    output_gate_bias: str = "qkv"  # the gate's bias: qkv (as attention.bias), none, or head (one per head, Beam)
    rotary_dim: int | None = None  # this layer's rotated dims per q/k head (Laguna); None: the model's rope_dim
    value_scale: float | None = None  # GQA values × this after v_proj (MiMo-V2-Flash); None: off
    # this layer scales RoPE its own way (rope_scaling; None: not at all) instead of positions.scaling (Laguna)
    own_rope_scaling: bool = False
    rope_scaling: RopeScalingPlan | None = None
    # the sparse-attention indexer (moec/spec/indexer.py, DeepSeek-V3.2); indexer_n_heads None: dense attention
    indexer_n_heads: int | None = None
    indexer_head_dim: int | None = None
    indexer_top_k: int | None = None
    indexer_rope_layout: str = "halves"  # halves | interleaved: the rotary pairs of its first qk_rope_head_dim dims
    indexer_key_norm_eps: float = 1e-6  # its key's LayerNorm (weight and bias)
    indexer_rope_dims: str = "first"  # first | last: which qk_rope_head_dim dims of its heads rotate (HY-V4: last)
    indexer_shared: bool = False  # no indexer of its own: the top-k the last indexer before it chose (GLM-5.2, HY-V4)
    # kind moa, a mixture of attention heads (moec/spec/moa.py, JetMoE): n_heads are one expert's query heads
    moa_n_experts: int | None = None
    moa_top_k: int | None = None
    moa_score: str = "softmax"  # softmax | sigmoid
    moa_softmax_after_topk: bool = False
    moa_normalize_topk: bool = False

    @property
    def attending_heads(self) -> int:
        """Query heads that attend per token: n_heads, or with attention experts top_k · n_heads."""
        return self.n_heads * (self.moa_top_k or 1)

    @property
    def has_indexer(self) -> bool:
        """Whether this layer attends only the top-k keys its indexer chooses."""
        return self.indexer_n_heads is not None

    @property
    def sparse(self) -> bool:
        """Whether it attends at most indexer_top_k keys: its own indexer's choice, or the last one's before it."""
        return self.has_indexer or self.indexer_shared

    @property
    def qk_dim(self) -> int:
        """Per-head width of queries and keys."""
        return self.head_dim

    @property
    def v_dim(self) -> int:
        """Per-head width of values: MLA's v_head_dim; GQA's v_head_dim where given, else head_dim."""
        return self.v_head_dim if self.v_head_dim is not None else self.head_dim

    @property
    def gate_width(self) -> int:
        """Outputs of the output gate's projection: one per element of each head's values, one per head, or 0."""
        return {"none": 0, "element": self.n_heads * self.v_dim, "head": self.n_heads}[self.output_gate]

    @property
    def gate_bias_width(self) -> int:
        """Parameters of a GQA output gate's bias: the gate's width when it is biased like q/k/v (``qkv``), one per
        head (``head``: broadcast over the head's gates, Beam), or 0."""
        if not self.gate_width or self.output_gate_bias == "none":
            return 0
        if self.output_gate_bias == "head":
            return self.n_heads
        return self.gate_width if self.bias else 0


class _FFNBase:
    activation: str

    @property
    def gated(self) -> bool:
        """Whether the first matrix is [gate | up] (moec.vocab.GATED)."""
        return self.activation in GATED


class _MoEBase(_FFNBase):
    router: RouterPlan

    @property
    def top_k(self) -> int:
        return self.router.top_k


_CLAMPED = {"activation_alpha": ("swiglu_clamped",), "activation_limit": LIMITED}

DenseFFNPlan = _mirrored_plan(
    "DenseFFNPlan", FFN, doc="A dense FFN layer: schema.FFN's fields.", base=_FFNBase, only_with=_CLAMPED, kind="dense"
)
RouterPlan = _mirrored_plan(
    "RouterPlan",
    Router,
    doc="A MoE layer's router: schema.Router's fields, top_k resolved (multiplied by the granularity; = "
    "n_experts for dense routing).",
    base=object,
    resolved={"top_k": int},
)
MoEPlan = _mirrored_plan(
    "MoEPlan",
    MoE,
    doc="A MoE layer: schema.MoE's fields with balance's flattened in and lora's as lora_rank and lora_alpha; "
    "n_experts and d_ff after fine-grained segmentation (granularity, informational, is the m that produced "
    "them), d_ff_shared resolved, the router planned.",
    base=_MoEBase,
    resolved={"n_experts": int, "d_ff": int, "d_ff_shared": int, "router": RouterPlan},
    flatten={"balance": (Balance, ""), "lora": (Lora, "lora_")},
    only_with=_CLAMPED,
    kind="moe",
)


@dataclass(frozen=True)
class AbsentPlan:
    """A sublayer the layer does not have: Nemotron-H's layers hold a token mixer or an FFN, not both."""

    kind: Literal["none"] = "none"


FFNPlan = DenseFFNPlan | MoEPlan


@dataclass(frozen=True)
class LayerPlan:
    index: int
    attention: AttentionPlan  # the attention section as planned for this layer (used where mixer is None)
    ffn: FFNPlan | AbsentPlan
    # the token mixer: None for attention, AbsentPlan for none, else the Plan of a moec.mixers kind
    mixer: Any = None
    # model.block shortcut_moe_pair (LongCat-Flash): the dense FFN of both (attention, FFN) pairs, ffn their shortcut
    # MoE; None: a standard layer (docs/conventions.md, "Shortcut-MoE pair layers")
    pair_ffn: DenseFFNPlan | None = None
    # an encoder-decoder model's decoder layer: its attention over the encoder's output; None elsewhere
    cross_attention: AttentionPlan | None = None

    @property
    def mixer_kind(self) -> str:
        """attention, a moec.mixers kind, or none (moec.vocab.MIXER_KINDS)."""
        return "attention" if self.mixer is None else self.mixer.kind

    @property
    def has_attention(self) -> bool:
        return self.mixer is None

    @property
    def has_ffn(self) -> bool:
        return not isinstance(self.ffn, AbsentPlan)


@dataclass(frozen=True)
class ResidualScalesPlan:
    """normed_residual's (alpha, beta) per sublayer kind: x = alpha·norm(x) + beta·f(norm(x))."""

    attention: tuple[float, float] = (1.0, 1.0)
    mixer: tuple[float, float] = (1.0, 1.0)
    ffn: tuple[float, float] = (1.0, 1.0)

    def __post_init__(self) -> None:
        for f in ("attention", "mixer", "ffn"):  # tuples, also when reloaded from YAML lists
            object.__setattr__(self, f, tuple(float(x) for x in getattr(self, f)))


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
    residual_scales: ResidualScalesPlan | None = None  # normed_residual placement only
    depth_scaled_residual: bool = False  # the n-th residual add is x·sqrt((n−1)/n) + f/sqrt(n) (Beam)
    # an encoder-decoder model (moec/spec/encdec.py): its encoder stack, layers being the decoder's; () else
    encoder: tuple[LayerPlan, ...] = ()
    expert_capacity: int | None = None  # both stacks: tokens an expert takes per sequence, earliest first
    hyper_connections: HyperConnectionsPlan | None = None  # n residual streams (moec/spec/hyper.py); None: one
    norm_gate: NormGatePlan | None = None  # a low-rank sigmoid gate on chosen norms (moec/spec/norm_gate.py, A.X-K2)
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
        a = self.layers[0].attention  # one attention kind and head shape per model (planned on every layer)
        if a.kind == "mla":
            assert a.qk_rope_head_dim is not None
            return a.qk_rope_head_dim
        return self.positions.rotary_dim or a.head_dim

    @property
    def hybrid(self) -> bool:
        """Whether some layer's token mixer is not attention, or some layer lacks its mixer or its FFN."""
        return any(lp.mixer is not None or not lp.has_ffn for lp in (*self.layers, *self.mtp))

    @property
    def moe_layers(self) -> list[int]:
        return [p.index for p in self.layers if isinstance(p.ffn, MoEPlan)]

    def replace(self, **kw: Any) -> ResolvedModel:
        return dataclasses.replace(self, **kw)


def plan_from_dict(d: dict[str, Any]) -> ResolvedModel:
    """Inverse of :meth:`ResolvedModel.to_dict` (used to reload spec.resolved.yaml)."""

    def attn(a: dict[str, Any]) -> AttentionPlan:
        sc = a.get("rope_scaling")
        return AttentionPlan(**{**a, "rope_scaling": RopeScalingPlan(**sc) if sc else None})

    def ffn(f: dict[str, Any]) -> FFNPlan | AbsentPlan:
        if f["kind"] == "moe":
            return MoEPlan(**{**f, "router": RouterPlan(**f["router"])})
        if f["kind"] == "none":
            return AbsentPlan()
        return DenseFFNPlan(**f)

    def layer(l: dict[str, Any]) -> LayerPlan:
        pair = DenseFFNPlan(**l["pair_ffn"]) if l.get("pair_ffn") else None
        cross = attn(l["cross_attention"]) if l.get("cross_attention") else None
        return LayerPlan(l["index"], attn(l["attention"]), ffn(l["ffn"]), mixer_from_dict(l.get("mixer")), pair, cross)

    pos = d["positions"]
    hc, gate, scales = d.get("hyper_connections"), d.get("norm_gate"), d.get("residual_scales")
    planned = {  # the fields that hold plans, rebuilt; the rest are plain values, taken as written (absent: defaults)
        "norm": NormPlan(**d["norm"]),
        "positions": PositionsPlan(
            **{**pos, "scaling": RopeScalingPlan(**pos["scaling"]) if pos.get("scaling") else None}
        ),
        "layers": tuple(layer(l) for l in d["layers"]),
        "encoder": tuple(layer(l) for l in d.get("encoder", ())),
        "mtp": tuple(layer(l) for l in d.get("mtp", ())),
        "frozen": tuple(d.get("frozen", ())),
        "hyper_connections": HyperConnectionsPlan(**hc) if hc else None,
        "norm_gate": NormGatePlan(gate["rank"], tuple(gate["sites"])) if gate else None,
        "residual_scales": ResidualScalesPlan(**scales) if scales else None,
    }
    plain = {f.name: d[f.name] for f in dataclasses.fields(ResolvedModel) if f.name in d.keys() - planned - {"extra"}}
    return ResolvedModel(**plain, **planned)


def mixer_from_dict(m: dict[str, Any] | None) -> Any:
    """A layer's mixer plan from plain data: None (attention), AbsentPlan, or a moec.mixers kind's Plan."""
    from moec.mixers import KINDS  # the kinds' modules import the schema's base, not this module

    if m is None:
        return None
    if m["kind"] == "none":
        return AbsentPlan()
    fields = {k: tuple(v) if isinstance(v, list) else v for k, v in m.items()}
    return KINDS[m["kind"]].Plan(**fields)
