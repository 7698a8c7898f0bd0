"""The spec schema: pydantic models with every field named once, checked strictly.

Unknown keys are errors (``extra="forbid"``), values are not coerced across types (``strict``), and
every size has an upper bound so that a spec cannot ask the analyzer for 10^12 layers.
Cross-field rules (top_k ≤ n_experts, heads divisible by KV heads, ...) live in ``checks.py`` so they
can all be reported together with locations.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from moec.spec.segmentation import Segmentation, segmented_moe
from moec.vocab import (
    ACTIVATIONS,
    ATTENTION_KINDS,
    BALANCE_GRANULARITIES,
    CLAMPED_ALPHA,
    CLAMPED_LIMIT,
    DROP_POLICIES,
    EXPERT_KINDS,
    FFN_KINDS,
    FREEZABLE_COMPONENTS,
    GROUP_SCORES,
    NORM_KINDS,
    NORM_PLACEMENTS,
    POSITION_KINDS,
    QK_NORM_KINDS,
    QK_NORM_SCOPES,
    ROPE_SCALINGS,
    ROUTER_APPLY_TO,
    ROUTER_KINDS,
    ROUTER_SCORES,
)

# routing algorithms and score functions beyond moec.vocab's ROUTER_KINDS and ROUTER_SCORES (docs/routing.md):
# gshard: GShard's top-2 (the second expert dispatched with probability 2·g2); expert_choice: each expert takes
# its top-capacity tokens (Zhou et al. 2022); hash: a fixed token-id hash picks the experts (Roller et al. 2021).
# sqrt_softplus: sqrt(softplus(logit)) (DeepSeek-V4)
ROUTING_KINDS = (*ROUTER_KINDS, "gshard", "expert_choice", "hash")
SCORE_FUNCTIONS = (*ROUTER_SCORES, "sqrt_softplus")

# Sane upper bounds: far above any published model, far below anything that would hang.
MAX_VOCAB = 1 << 24  # 16.7M
MAX_D = 1 << 18  # 262,144
MAX_LAYERS = 4096
MAX_SEQ = 1 << 27  # 134M tokens
MAX_HEADS = 1 << 12
MAX_EXPERTS = 1 << 16
MAX_FF = 1 << 21
# list lengths: a layer index at most once per layer; overrides cost resolve O(overrides · layers)
MAX_OVERRIDES = 1024
MAX_HEAD_DIM = 4096

Pos = Annotated[int, Field(gt=0)]
Activation = Literal[ACTIVATIONS]  # swiglu_clamped: gpt-oss's gated unit (moec.vocab)


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class Norm(Strict):
    kind: Literal[NORM_KINDS] = "rmsnorm"
    eps: Annotated[float, Field(gt=0, lt=1)] = 1e-5
    placement: Literal[NORM_PLACEMENTS] = "pre"  # what each means: moec.vocab
    bias: bool = True  # layernorm only: DBRX's layernorms have no bias


class RopeScaling(Strict):
    kind: Literal[ROPE_SCALINGS]
    factor: Annotated[float, Field(gt=0, le=1e6)] | None = None  # every kind but ntk_alpha
    original_max_seq_len: Annotated[int, Field(gt=0, le=MAX_SEQ)] | None = None
    # yarn
    beta_fast: float | None = None
    beta_slow: float | None = None
    mscale: float | None = None
    mscale_all_dim: float | None = None
    # llama3
    low_freq_factor: float | None = None
    high_freq_factor: float | None = None
    # yarn: gpt-oss keeps the correction range unrounded (truncate false) and states the attention factor
    truncate: bool = True
    attention_factor: Annotated[float, Field(gt=0, le=100)] | None = None
    # longrope (Phi-3.5-MoE): per-frequency divisors (head_dim/2 each) and cos/sin multipliers, the short
    # ones up to original_max_seq_len tokens, the long ones beyond (chosen by the live sequence length)
    short_factor: Annotated[list[Annotated[float, Field(gt=0, le=1e6)]], Field(max_length=MAX_HEAD_DIM // 2)] | None = (
        None
    )
    long_factor: Annotated[list[Annotated[float, Field(gt=0, le=1e6)]], Field(max_length=MAX_HEAD_DIM // 2)] | None = (
        None
    )
    short_mscale: Annotated[float, Field(gt=0, le=100)] | None = None
    long_mscale: Annotated[float, Field(gt=0, le=100)] | None = None
    # ntk_alpha (Hunyuan-A13B, "dynamic" with an alpha in its config): the base becomes
    # theta · alpha^(dim/(dim−2)) at every length (dim: the rotated dims), unlike dynamic's growth with the length
    alpha: Annotated[float, Field(gt=0, le=1e6)] | None = None


class Positions(Strict):
    kind: Literal[POSITION_KINDS] = "rope"
    theta: Annotated[float, Field(gt=0, le=1e12)] = 10000.0
    scaling: RopeScaling | None = None
    # partial rotary (GLM-4.5, MiniMax-M2, MiMo-V2-Flash): only the first rotary_dim dims of each q and k head
    # rotate, paired (i, i + rotary_dim/2) as transformers' apply_rotary_pos_emb; the rest pass through. Give
    # one of the two: partial_rotary_factor resolves to int(head_dim · factor), transformers' truncation. GQA only
    rotary_dim: Annotated[int, Field(gt=0, le=MAX_HEAD_DIM)] | None = None
    partial_rotary_factor: Annotated[float, Field(gt=0, le=1)] | None = None
    # multimodal RoPE (Qwen2/2.5-VL; Qwen3-VL with mrope_interleaved): the rotated dims' frequencies are shared
    # among temporal, height and width position ids, [t, h, w] of them (summing to rotated dims / 2). moec runs
    # text, whose three ids are all the token's position: there it is plain RoPE, exactly
    mrope_sections: (
        Annotated[list[Annotated[int, Field(ge=0, le=MAX_HEAD_DIM)]], Field(min_length=3, max_length=3)] | None
    ) = None
    mrope_interleaved: bool = False

    def rotary_width(self, head_dim: int) -> int:
        """How many of a head_dim-wide q or k head's dims rotate."""
        if self.rotary_dim is not None:
            return self.rotary_dim
        if self.partial_rotary_factor is not None:
            return int(head_dim * self.partial_rotary_factor)
        return head_dim


class Model(Strict):
    vocab_size: Annotated[int, Field(gt=0, le=MAX_VOCAB)]
    d_model: Annotated[int, Field(gt=0, le=MAX_D)]
    n_layers: Annotated[int, Field(gt=0, le=MAX_LAYERS)]
    max_seq_len: Annotated[int, Field(gt=0, le=MAX_SEQ)]
    tie_embeddings: bool = False
    head_bias: bool = False  # a bias on the lm_head (Phi-3.5-MoE)
    norm: Norm = Norm()
    positions: Positions = Positions()
    # Granite's scalings: x = embed·embedding_multiplier; residual adds scaled by residual_multiplier;
    # logits divided by logits_scaling
    embedding_multiplier: Annotated[float, Field(gt=0, le=1e4)] = 1.0
    residual_multiplier: Annotated[float, Field(gt=0, le=1e4)] = 1.0
    logits_scaling: Annotated[float, Field(gt=0, le=1e4)] = 1.0
    # final logit soft-capping (Gemma 2-4, Grok): logits → cap·tanh(logits/cap), after logits_scaling; null: off
    logit_softcap: Annotated[float, Field(gt=0, le=1e4)] | None = None


class TemperatureTuning(Strict):
    """q · (1 + scale · log1p(floor((pos + 1) / floor_scale))) on the layers that use it."""

    floor_scale: Annotated[float, Field(gt=0, le=MAX_SEQ)]
    scale: Annotated[float, Field(ge=0, le=100)]


class Attention(Strict):
    kind: Literal[ATTENTION_KINDS] = "gqa"
    n_heads: Annotated[int, Field(gt=0, le=MAX_HEADS)]
    n_kv_heads: Annotated[int, Field(gt=0, le=MAX_HEADS)] | None = None  # None: = n_heads (MHA)
    head_dim: Annotated[int, Field(gt=0, le=MAX_HEAD_DIM)] | None = None  # None: d_model / n_heads
    qk_norm: bool = False
    qk_norm_scope: Literal[QK_NORM_SCOPES] = "head"  # what each means: moec.vocab
    # model: the model's norm kind, with a learned weight; l2: weightless x / rms(x) over head_dim, eps
    # model.norm.eps (Llama-4's L2Norm, 0 parameters; scope head only)
    qk_norm_kind: Literal[QK_NORM_KINDS] = "model"
    # a learned per-head qk-norm applied after the rotation instead of before it (Hunyuan-A13B); 0 parameters
    qk_norm_after_rope: bool = False
    clip_qkv: Annotated[float, Field(gt=0, le=1e6)] | None = None  # clamp q, k, v (DBRX, OLMoE)
    scale: Annotated[float, Field(gt=0, le=1e3)] | None = None  # softmax scale; None: 1/sqrt(d_qk)
    bias: bool = False  # bias on the q, k, v projections
    out_bias: bool = False  # bias on the output projection
    sinks: bool = False  # one learned attention-sink logit per head (gpt-oss)
    window: Annotated[int, Field(gt=0, le=MAX_SEQ)] | None = None  # sliding window, tokens
    # chunked attention (Llama-4): query i attends keys [floor(i/chunk)·chunk, i] only
    chunk: Annotated[int, Field(gt=0, le=MAX_SEQ)] | None = None
    # query temperature on layers without rope (Llama-4, arXiv 2501.19399); per layer in layers.*.attention
    temperature_tuning: TemperatureTuning | None = None
    # MLA (DeepSeek-V2/V3)
    q_lora_rank: Annotated[int, Field(gt=0, le=MAX_D)] | None = None
    kv_lora_rank: Annotated[int, Field(gt=0, le=MAX_D)] | None = None
    qk_nope_head_dim: Annotated[int, Field(gt=0, le=MAX_HEAD_DIM)] | None = None
    qk_rope_head_dim: Annotated[int, Field(ge=0, le=MAX_HEAD_DIM)] | None = None
    v_head_dim: Annotated[int, Field(gt=0, le=MAX_HEAD_DIM)] | None = None
    # eps of MLA's q and kv latent norms (q_a_layernorm, kv_a_layernorm); None: model.norm.eps. transformers
    # builds them with its RMSNorm default 1e-6 whatever rms_norm_eps says (DeepSeek-V2/V3, LongCat-Flash)
    latent_norm_eps: Annotated[float, Field(gt=0, lt=1)] | None = None


class FFN(Strict):
    d_ff: Annotated[int, Field(gt=0, le=MAX_FF)]
    activation: Activation = "swiglu"
    bias: bool = False
    activation_alpha: Annotated[float, Field(gt=0, le=100)] = CLAMPED_ALPHA  # swiglu_clamped only
    activation_limit: Annotated[float, Field(gt=0, le=1e4)] = CLAMPED_LIMIT  # swiglu_clamped only


class Router(Strict):
    top_k: Annotated[int, Field(gt=0, le=MAX_EXPERTS)] | None = None  # None only with dense
    score: Literal[SCORE_FUNCTIONS] = "softmax"
    softmax_after_topk: bool = False  # softmax over the k chosen logits (else over all E)
    normalize_topk: bool = False  # renormalise the k weights to sum to 1
    scale: Annotated[float, Field(gt=0, le=1e4)] = 1.0
    selection_bias: bool = False  # a non-gradient bias added for selection only (DeepSeek-V3)
    # the selection bias as a model parameter, not a buffer (ERNIE-4.5's e_score_correction_bias): counted in
    # total, active and trainable parameters; the loss still gives it no gradient (choosing is not
    # differentiable): it moves by balance.bias_update_rate or stays as loaded
    selection_bias_parameter: bool = False
    bias: bool = False  # a learned bias on the router logits (gpt-oss)
    n_groups: Annotated[int, Field(gt=0, le=MAX_EXPERTS)] | None = None
    topk_groups: Annotated[int, Field(gt=0, le=MAX_EXPERTS)] | None = None
    group_score: Literal[GROUP_SCORES] = "max"
    dense: bool = False  # soft MoE: every expert gets a weight
    jitter: Annotated[float, Field(ge=0, lt=1)] = 0.0
    # topk: the k best scores; sparsemixer: Phi-3.5-MoE's SparseMixer top-2 (inference path: the best logit,
    # then the best of the rest, each weighted by a softmax over the logits within sparsemixer_eps of it)
    kind: Literal[ROUTING_KINDS] = "topk"
    sparsemixer_eps: Annotated[float, Field(ge=0, lt=1)] = 0.0
    # output: y = Σ g_j·Expert_j(x); input: y = Σ Expert_j(g_j·x) (Llama-4 scales each expert's input)
    apply_to: Literal[ROUTER_APPLY_TO] = "output"
    # a router MLP instead of one linear layer: logits = W_out·gelu(W_in·x), W_in (mlp_hidden, d); None: linear
    mlp_hidden: Annotated[int, Field(gt=0, le=MAX_FF)] | None = None


class Balance(Strict):
    load_balance_coeff: Annotated[float, Field(ge=0, le=1e3)] = 0.0
    load_balance_granularity: Literal[BALANCE_GRANULARITIES] = "batch"
    z_loss_coeff: Annotated[float, Field(ge=0, le=1e3)] = 0.0
    bias_update_rate: Annotated[float, Field(gt=0, le=1)] | None = None  # aux-loss-free balancing


class Lora(Strict):
    rank: Annotated[int, Field(gt=0, le=MAX_D)]
    alpha: Annotated[float, Field(gt=0, le=1e6)] = 16.0


class MoE(Strict):
    n_experts: Annotated[int, Field(gt=0, le=MAX_EXPERTS)]
    d_ff: Annotated[int, Field(gt=0, le=MAX_FF)]
    activation: Activation = "swiglu"
    bias: bool = False
    activation_alpha: Annotated[float, Field(gt=0, le=100)] = CLAMPED_ALPHA  # swiglu_clamped only
    activation_limit: Annotated[float, Field(gt=0, le=1e4)] = CLAMPED_LIMIT  # swiglu_clamped only
    n_shared_experts: Annotated[int, Field(ge=0, le=1024)] = 0
    d_ff_shared: Annotated[int, Field(gt=0, le=MAX_FF)] | None = None  # None: = (resolved) d_ff
    shared_gate: bool = False  # sigmoid gate on the shared expert output (Qwen2-MoE)
    granularity: Annotated[int, Field(gt=0, le=1024)] = 1  # DeepSeekMoE fine-grained segmentation m
    router: Router
    capacity_factor: Annotated[float, Field(gt=0, le=1024)] | None = None  # None: dropless
    drop_policy: Literal[DROP_POLICIES] = "probs"
    # GShard: capacity enforced per local group of this many tokens (a call's tokens in order), each group's
    # capacity ceil(capacity_factor·group·k/E); None: the whole call is one group
    capacity_group_size: Annotated[int, Field(gt=0, le=MAX_SEQ)] | None = None
    balance: Balance = Balance()
    expert_kind: Literal[EXPERT_KINDS] = "ffn"
    lora: Lora | None = None
    # resolved into the fields above before they are checked, and left out of dumps and hashes
    segmentation: Segmentation | None = Field(default=None, exclude=True)

    @model_validator(mode="before")
    @classmethod
    def _segmentation(cls, data: Any) -> Any:
        return segmented_moe(data)


# an index past n_layers is reported by checks.py, which knows n_layers; this bound only keeps it finite
LayerIndex = Annotated[int, Field(ge=0, lt=MAX_LAYERS)]


def _selector_shorthand(v: Any) -> Any:
    # `select: [0, 5, 7]` is shorthand for `select: {layers: [0, 5, 7]}`
    return {"layers": v} if isinstance(v, list) else v


class Select(Strict):
    """Which layers an override applies to: a list, an inclusive range, or every N from a start."""

    layers: Annotated[list[LayerIndex], Field(max_length=MAX_LAYERS)] | None = None
    first: LayerIndex | None = None
    last: LayerIndex | None = None  # inclusive
    every: Annotated[int, Field(gt=0, le=MAX_LAYERS)] | None = None
    start: LayerIndex | None = None

    @model_validator(mode="after")
    def _one_form(self) -> Select:
        forms = [
            self.layers is not None,
            self.every is not None or self.start is not None,
            self.first is not None and self.every is None and self.start is None,
        ]
        if sum(forms) != 1:
            raise ValueError(
                "select must be one of: a list of layer indices, {first: A, last: B} (inclusive), "
                "or {every: N, start: S} (optionally with last)"
            )
        if self.every is not None and self.start is None:
            raise ValueError("every N needs an explicit start (Megatron and Hugging Face disagree on the default)")
        if self.start is not None and self.every is None:
            raise ValueError("start needs every")
        if self.layers is not None and (self.first is not None or self.last is not None):
            raise ValueError("a list of layers cannot be combined with first/last")
        if self.first is not None and self.last is None:
            raise ValueError("first needs last (inclusive)")
        return self


class AttentionOverride(Strict):
    # each applies only when written (an unwritten field keeps the attention section's value)
    window: Annotated[int, Field(gt=0, le=MAX_SEQ)] | None = None
    chunk: Annotated[int, Field(gt=0, le=MAX_SEQ)] | None = None
    rope: bool = True
    qk_norm: bool = False  # per-layer on/off of attention.qk_norm (Llama-4: rope layers only)
    temperature_tuning: bool = False  # per-layer on/off of attention.temperature_tuning (Llama-4: NoPE layers)
    # this layer's RoPE base instead of model.positions.theta (MiMo-V2-Flash, Mellum: 10^4 on sliding layers,
    # 5·10^6 on full ones); the model's scaling and rotary_dim apply to it alike
    rope_theta: Annotated[float, Field(gt=0, le=1e12)] | None = None


class LayerDefault(Strict):
    ffn: Literal[FFN_KINDS] = "dense"
    attention: AttentionOverride = AttentionOverride()


class Override(Strict):
    select: Annotated[Select, Field()]
    ffn: Literal[FFN_KINDS] | None = None
    attention: AttentionOverride | None = None

    @field_validator("select", mode="before")
    @classmethod
    def _short(cls, v: Any) -> Any:
        return _selector_shorthand(v)


class Layers(Strict):
    default: LayerDefault = LayerDefault()
    overrides: Annotated[list[Override], Field(max_length=MAX_OVERRIDES)] = []


class MTP(Strict):
    n_layers: Annotated[int, Field(gt=0, le=64)]
    ffn: Literal[FFN_KINDS] = "moe"


Component = Literal[FREEZABLE_COMPONENTS]


class Spec(Strict):
    moec: Literal[1] = 1  # schema version
    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")]
    description: Annotated[str, Field(max_length=2000)] = ""
    source: Annotated[str, Field(max_length=2000)] = ""
    extends: str | None = None
    model: Model
    attention: Attention
    ffn: FFN | None = None
    moe: MoE | None = None
    layers: Layers = Layers()
    mtp: MTP | None = None
    # components whose weights are frozen (PEFT); a LoRA expert's base FFN is always frozen
    frozen: Annotated[list[Component], Field(max_length=64)] = []

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
    moe, ffn = data.get("moe"), data.get("ffn")
    if not (isinstance(moe, dict) and isinstance(ffn, dict)) or "activation" in moe:
        return data
    if ffn.get("activation") not in ACTIVATIONS:  # unset, or wrong and reported at ffn.activation
        return data
    inherited = {k: ffn[k] for k in _INHERITED if k in ffn and k not in moe}
    return {**data, "moe": {**moe, **inherited}}
