"""The spec schema: pydantic models with every field named once, checked strictly.

Unknown keys are errors (``extra="forbid"``), values are not coerced across types (``strict``), and
every size has an upper bound so that a spec cannot ask the analyzer for 10^12 layers.
Cross-field rules (top_k ≤ n_experts, heads divisible by KV heads, ...) live in ``checks.py`` so they
can all be reported together with locations.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, model_validator

from moec.mixers import gated_deltanet as _gated_deltanet
from moec.mixers import kda as _kda
from moec.mixers import lightning as _lightning
from moec.mixers import mamba as _mamba
from moec.mixers import mamba2 as _mamba2
from moec.mixers import short_conv as _short_conv
from moec.spec.encdec import RELATIVE_BUCKET, SINUSOIDAL, EncoderSection
from moec.spec.ffn_schema import FFN, Activation, Balance, Lora, MoE, Router  # noqa: F401  (re-exported: part of the schema)
from moec.spec.hyper import HyperConnectionsSection
from moec.spec.indexer import IndexerSection
from moec.spec.layers import (  # noqa: F401  (re-exported: part of the schema)
    AttentionOverride,
    LayerDefault,
    LayerIndex,
    Layers,
    Override,
    Select,
)
from moec.spec.moa import AttentionExpertsSection
from moec.spec.norm_gate import NormGateSection
from moec.spec.rope_scaling import RopeScaling
from moec.strict import (  # noqa: F401  (re-exported: the bounds are part of the schema's vocabulary)
    MAX_D,
    MAX_EXPERTS,
    MAX_FF,
    MAX_HEAD_DIM,
    MAX_HEADS,
    MAX_LAYERS,
    MAX_OVERRIDES,
    MAX_SEQ,
    MAX_VOCAB,
    Strict,
)
from moec.vocab import (
    ACTIVATIONS,
    ATTENTION_KINDS,
    BLOCK_KINDS,
    FREEZABLE_COMPONENTS,
    MTP_FFN_KINDS,
    NORM_KINDS,
    NORM_PLACEMENTS,
    OUTPUT_GATE_BIASES,
    OUTPUT_GATE_FNS,
    OUTPUT_GATES,
    POSITION_KINDS,
    QK_NORM_KINDS,
    QK_NORM_SCOPES,
    TEMPERATURE_FORMS,
)


class Norm(Strict):
    kind: Literal[NORM_KINDS] = "rmsnorm"
    """rmsnorm or layernorm, for every norm of the model."""
    eps: Annotated[float, Field(gt=0, lt=1)] = 1e-5
    """The epsilon added inside every norm."""
    placement: Literal[NORM_PLACEMENTS] = "pre"
    """pre: x + f(norm(x)); post: norm(x + f(x)); after_sublayer: x + norm(f(x)) (OLMo 2)."""
    bias: bool = True
    """Whether a layernorm has a bias (DBRX's have none); rmsnorm never has one."""
    unit_offset: bool = False
    """Every model norm (q/k and latent norms too) stores w, initialised 0, and scales by 1 + w (Qwen3-Next)."""


class Positions(Strict):
    kind: Literal[(*POSITION_KINDS, RELATIVE_BUCKET, SINUSOIDAL)] = "rope"
    """rope, learned (a position table), none, or encoder-decoder only relative_bucket (T5) or sinusoidal (fairseq)."""
    theta: Annotated[float, Field(gt=0, le=1e12)] = 10000.0
    """The RoPE base."""
    scaling: RopeScaling | None = None
    """RoPE scaling for contexts past the training length; null: none."""
    rotary_dim: Annotated[int, Field(gt=0, le=MAX_HEAD_DIM)] | None = None
    """Partial rotary: only the first rotary_dim dims of each q/k head rotate (GQA; give this or the factor)."""
    partial_rotary_factor: Annotated[float, Field(gt=0, le=1)] | None = None
    """Partial rotary as a fraction: rotary_dim = int(head_dim · factor), as transformers truncates."""
    mrope_sections: (
        Annotated[list[Annotated[int, Field(ge=0, le=MAX_HEAD_DIM)]], Field(min_length=3, max_length=3)] | None
    ) = None
    """Multimodal RoPE (Qwen-VL): [t, h, w] shares of the rotary frequencies; on text it is plain RoPE."""
    mrope_interleaved: bool = False
    """Multimodal RoPE with the three sections interleaved (Qwen3-VL)."""
    n_buckets: Annotated[int, Field(ge=2, le=MAX_SEQ)] | None = None
    """relative_bucket: the buckets of relative distance, each with a learned bias per head (T5: 32)."""
    max_distance: Annotated[int, Field(gt=0, le=MAX_SEQ)] | None = None
    """relative_bucket: distances from this one on share the last bucket (T5: 128)."""
    offset: Annotated[int, Field(ge=0, le=MAX_SEQ)] | None = None
    """sinusoidal: the table row of a sequence's first token (fairseq, NLLB-MoE: padding_idx + 1 = 2)."""

    def rotary_width(self, head_dim: int) -> int:
        """How many of a head_dim-wide q or k head's dims rotate."""
        if self.rotary_dim is not None:
            return self.rotary_dim
        if self.partial_rotary_factor is not None:
            return int(head_dim * self.partial_rotary_factor)
        return head_dim


class ResidualScale(Strict):
    alpha: Annotated[float, Field(gt=0, le=1e4)] = 1.0
    """The factor on the normed input that the residual carries on."""
    beta: Annotated[float, Field(gt=0, le=1e4)] = 1.0
    """The factor on the sublayer's output."""


class ResidualScales(Strict):
    """normed_residual's factors per sublayer kind (MiniMax-Text-01's layernorm_*_alpha / _beta)."""

    attention: ResidualScale = ResidualScale()
    """Around an attention sublayer."""
    mixer: ResidualScale = ResidualScale()
    """Around a linear-attention, state-space or convolution sublayer (docs/mixers.md)."""
    ffn: ResidualScale = ResidualScale()
    """Around a dense or MoE FFN."""


class Model(Strict):
    vocab_size: Annotated[int, Field(gt=0, le=MAX_VOCAB)]
    """Tokens in the vocabulary: rows of the embedding and of the output head."""
    d_model: Annotated[int, Field(gt=0, le=MAX_D)]
    """The model (residual stream) width d."""
    n_layers: Annotated[int, Field(gt=0, le=MAX_LAYERS)]
    """Transformer blocks L."""
    max_seq_len: Annotated[int, Field(gt=0, le=MAX_SEQ)]
    """The longest context the model is built for (position tables, windows, caches)."""
    tie_embeddings: bool = False
    """Whether the output head reuses the input embedding (counted once)."""
    head_bias: bool = False
    """A bias on the output head (Phi-3.5-MoE)."""
    norm: Norm = Norm()
    """The norm every block and the final norm use."""
    positions: Positions = Positions()
    """How positions enter: RoPE and its options, learned, or none."""
    embedding_multiplier: Annotated[float, Field(gt=0, le=1e4)] = 1.0
    """Granite: the embedding output is multiplied by this."""
    residual_multiplier: Annotated[float, Field(gt=0, le=1e4)] = 1.0
    """Granite: each sublayer's output is scaled by this before the residual add."""
    logits_scaling: Annotated[float, Field(gt=0, le=1e4)] = 1.0
    """Granite: the logits are divided by this."""
    logit_softcap: Annotated[float, Field(gt=0, le=1e4)] | None = None
    """Final logit soft-capping cap·tanh(logits/cap) after logits_scaling (Gemma, Grok); null: off."""
    residual_scales: ResidualScales | None = None
    """normed_residual placement only: each sublayer's x = alpha·norm(x) + beta·f(norm(x)) (MiniMax-Text-01)."""
    depth_scaled_residual: bool = False
    """The n-th residual add (embedding: 1; layer i's mixer 2i+2, FFN 2i+3) is x·sqrt((n−1)/n) + f/sqrt(n) (Beam)."""
    block: Literal[BLOCK_KINDS] = "standard"
    """standard: mixer then FFN; shortcut_moe_pair: two (attention, dense ffn) pairs and one MoE read after the first (LongCat-Flash)."""
    hyper_connections: HyperConnectionsSection | None = None
    """n residual streams around every sublayer (mHC: DeepSeek-V4, GLM-5-Next; HY-V4); null: one residual."""
    norm_gate: NormGateSection | None = None
    """A low-rank sigmoid gate on chosen pre-norms' outputs (A.X-K2, GatedNorm); null: none."""


class TemperatureTuning(Strict):
    """q · (1 + scale · log1p(floor((pos + 1) / floor_scale))) on the layers that use it."""

    floor_scale: Annotated[float, Field(gt=0, le=MAX_SEQ)]
    """Positions per step of the query temperature 1 + scale·log1p(floor((pos + 1)/floor_scale))."""
    scale: Annotated[float, Field(ge=0, le=100)]
    """The strength of the query temperature's log growth."""
    form: Literal[TEMPERATURE_FORMS] = "floor_log"
    """floor_log: as above (Llama-4); power: q · (1 + (pos + 1)/floor_scale)^scale (Beam's scalable softmax)."""


class Attention(Strict):
    kind: Literal[ATTENTION_KINDS] = "gqa"
    """gqa (multi-head, grouped-query or multi-query), mla (DeepSeek's latent attention) or moa (attention experts, JetMoE)."""
    n_heads: Annotated[int, Field(gt=0, le=MAX_HEADS)]
    """Query heads h."""
    n_kv_heads: Annotated[int, Field(gt=0, le=MAX_HEADS)] | None = None
    """Key/value heads for GQA (1: MQA); null: n_heads (MHA)."""
    head_dim: Annotated[int, Field(gt=0, le=MAX_HEAD_DIM)] | None = None
    """Width of one GQA head; null: d_model / n_heads. h·head_dim may differ from d_model."""
    qk_norm: bool = False
    """A norm on queries and keys before the rotation (Qwen3, OLMoE)."""
    qk_norm_scope: Literal[QK_NORM_SCOPES] = "head"
    """head: one norm of head_dim shared by all heads; projection: one over the whole q and k (OLMoE)."""
    qk_norm_kind: Literal[QK_NORM_KINDS] = "model"
    """model: the model's norm kind with a weight; l2: weightless x/rms(x) per head (Llama-4)."""
    qk_norm_after_rope: bool = False
    """Apply the learned per-head q/k norm after the rotation instead of before (Hunyuan-A13B)."""
    clip_qkv: Annotated[float, Field(gt=0, le=1e6)] | None = None
    """Clamp q, k and v to ±clip_qkv (DBRX, OLMoE); null: off."""
    scale: Annotated[float, Field(gt=0, le=1e3)] | None = None
    """The softmax scale; null: 1/sqrt(query-key width) (and yarn's mscale for MLA)."""
    bias: bool = False
    """Biases on the q, k and v projections."""
    out_bias: bool = False
    """A bias on the output projection."""
    sinks: bool = False
    """One learned attention-sink logit per head (gpt-oss); layers.*.attention.sinks turn it on or off per layer."""
    value_scale: Annotated[float, Field(gt=0, le=1e3)] | None = None
    """GQA: the values times this constant after v_proj (MiMo-V2-Flash's attention_value_scale); null: off."""
    window: Annotated[int, Field(gt=0, le=MAX_SEQ)] | None = None
    """Sliding-window attention over this many tokens on every layer; null: full context."""
    chunk: Annotated[int, Field(gt=0, le=MAX_SEQ)] | None = None
    """Chunked attention (Llama-4): query i attends keys [floor(i/chunk)·chunk, i] only; null: off."""
    temperature_tuning: TemperatureTuning | None = None
    """Query temperature on layers without rope (Llama-4); layers.*.attention turn it on per layer."""
    q_lora_rank: Annotated[int, Field(gt=0, le=MAX_D)] | None = None
    """MLA: the query's low-rank bottleneck; null: a plain query projection."""
    kv_lora_rank: Annotated[int, Field(gt=0, le=MAX_D)] | None = None
    """MLA: the compressed key/value latent width (what the KV cache holds)."""
    qk_nope_head_dim: Annotated[int, Field(gt=0, le=MAX_HEAD_DIM)] | None = None
    """MLA: the non-rotary part of each query/key head."""
    qk_rope_head_dim: Annotated[int, Field(ge=0, le=MAX_HEAD_DIM)] | None = None
    """MLA: the rotary part of each query/key head (one shared rotary key)."""
    v_head_dim: Annotated[int, Field(gt=0, le=MAX_HEAD_DIM)] | None = None
    """The width of each value head: MLA's; for GQA when it differs from head_dim (MiMo-V2-Flash), null: head_dim."""
    latent_norm_eps: Annotated[float, Field(gt=0, lt=1)] | None = None
    """MLA: eps of the q and kv latent norms; null: model.norm.eps (transformers uses 1e-6)."""
    latent_scales: bool = False
    """MLA: the query times sqrt(d_model/q_lora_rank), the normed kv latent times sqrt(d_model/kv_lora_rank) (LongCat-Flash)."""
    rope_key_norm: bool = False
    """MLA: a norm of qk_rope_head_dim (the latent norms' kind and eps) on the shared rotary key before its rotation (Dots3)."""
    query_gate: bool = False
    """MLA: one projection of [norm(q latent) | q latent] gives each head's query and a sigmoid gate of its values (A.X-K2)."""
    output_gate: Literal[OUTPUT_GATES] = "none"
    """A sigmoid gate from its own projection on the output before o_proj, per head or element (Qwen3-Next)."""
    output_gate_fn: Literal[OUTPUT_GATE_FNS] = "sigmoid"
    """The output gate's function of its projection: sigmoid (Qwen3-Next) or softplus (Laguna)."""
    output_gate_bias: Literal[OUTPUT_GATE_BIASES] = "qkv"
    """The gate projection's bias: qkv, as attention.bias; none; head, one per head over its elements (Beam)."""
    indexer: IndexerSection | None = None
    """MLA only: a sparse-attention indexer choosing top_k keys per query (DeepSeek-V3.2, GLM-5); null: dense."""
    experts: AttentionExpertsSection | None = None
    """kind moa only: the attention experts (own query and output projections, shared keys/values) and their router."""


class Mixers(Strict):
    """The sections of the token mixers besides attention (docs/mixers.md); a layer uses one through
    layers.*.mixer."""

    gated_deltanet: _gated_deltanet.Section | None = None
    """Gated DeltaNet (Qwen3-Next)."""
    kda: _kda.Section | None = None
    """Kimi Delta Attention (Kimi-Linear)."""
    lightning: _lightning.Section | None = None
    """Lightning attention (MiniMax-Text-01)."""
    mamba: _mamba.Section | None = None
    """Mamba's selective scan (Jamba)."""
    mamba2: _mamba2.Section | None = None
    """Mamba2's state-space duality (Granite-4.0-H, Nemotron-H)."""
    short_conv: _short_conv.Section | None = None
    """The gated short convolution (LFM2)."""


class MTP(Strict):
    n_layers: Annotated[int, Field(gt=0, le=64)]
    """Multi-token-prediction modules (DeepSeek-V3), reported apart from the main model."""
    ffn: Literal[MTP_FFN_KINDS] = "moe"
    """The FFN of each MTP block: dense or moe."""


Component = Literal[FREEZABLE_COMPONENTS]


class Spec(Strict):
    moec: Literal[1] = 1
    """The spec format's version: 1."""
    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")]
    """The model's name (letters, digits, '.', '_', '-')."""
    description: Annotated[str, Field(max_length=2000)] = ""
    """One line on what the model is."""
    source: Annotated[str, Field(max_length=2000)] = ""
    """Where the numbers come from: a paper, a config.json."""
    extends: str | None = None
    """A shipped spec name or a .yaml file in this folder whose fields this spec starts from."""
    model: Model
    """Model-wide sizes, norm and positions."""
    attention: Attention
    """The attention of every layer."""
    ffn: FFN | None = None
    """The dense FFN, for layers whose ffn is dense."""
    moe: MoE | None = None
    """The MoE layer, for layers whose ffn is moe."""
    mixers: Mixers = Mixers()
    """Token mixers besides attention that layers.*.mixer chooses (docs/mixers.md)."""
    layers: Layers = Layers()
    """Which layers are dense or MoE, which token mixer each has, and per-layer attention changes."""
    mtp: MTP | None = None
    """Multi-token-prediction modules (DeepSeek-V3)."""
    frozen: Annotated[list[Component], Field(max_length=64)] = []
    """Components whose weights are frozen (PEFT); a LoRA expert's base FFN always is."""
    encoder: EncoderSection | None = None
    """An encoder stack: the spec is then an encoder-decoder model, its layers the decoder's (moec/spec/encdec.py)."""

    @model_validator(mode="before")
    @classmethod
    def _moe_activation_from_ffn(cls, data: Any) -> Any:
        return inherit_moe_activation(data)


# what an MoE section without its own activation takes from the ffn section (docs/conventions.md, "Activations")
_INHERITED = ("activation", "activation_alpha", "activation_limit")


def inherit_moe_activation(data: Any) -> Any:
    """The spec's data with moe.activation (and swiglu_clamped's alpha and limit) taken from the ffn section
    when the moe section leaves it unset, so experts are never silently gated where the dense FFN is not.
    Without an ffn section (or with one that leaves its activation unset) the default, swiglu, stands."""
    if not isinstance(data, dict):
        return data
    moe, ffn = _written(data.get("moe")), _written(data.get("ffn"))
    if moe is None or ffn is None or "activation" in moe:
        return data
    if ffn.get("activation") not in ACTIVATIONS:  # unset, or wrong and reported at ffn.activation
        return data
    inherited = {k: ffn[k] for k in _INHERITED if k in ffn and k not in moe}
    if isinstance(data["moe"], MoE):  # built in Python: Spec(ffn=FFN(...), moe=MoE(...))
        return {**data, "moe": data["moe"].model_copy(update=inherited)}
    return {**data, "moe": {**moe, **inherited}}


def _written(section: Any) -> dict[str, Any] | None:
    """A section's written fields: the YAML mapping itself, or a built model's explicitly set fields."""
    if isinstance(section, BaseModel):
        return {k: getattr(section, k) for k in section.model_fields_set}
    return section if isinstance(section, dict) else None
