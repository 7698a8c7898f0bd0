"""The spec schema's feed-forward sections: the dense FFN, the MoE layer and its router, balancing and LoRA
experts (re-exported by :mod:`moec.spec.schema`, which holds the rest of the schema)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, model_validator

from moec.spec.segmentation import Segmentation, segmented_moe
from moec.strict import MAX_D, MAX_EXPERTS, MAX_FF, MAX_SEQ, Strict
from moec.vocab import (
    ACTIVATIONS,
    BALANCE_GRANULARITIES,
    CLAMPED_ALPHA,
    CLAMPED_LIMIT,
    DROP_POLICIES,
    EXPERT_KINDS,
    GROUP_SCORES,
    ROUTER_APPLY_TO,
    ROUTER_KINDS,
    ROUTER_SCORES,
    SELECTION_BIAS_ON,
)

Activation = Literal[ACTIVATIONS]  # swiglu_clamped: gpt-oss's gated unit (moec.vocab)


class FFN(Strict):
    d_ff: Annotated[int, Field(gt=0, le=MAX_FF)]
    """The dense FFN's hidden width F."""
    activation: Activation = "swiglu"
    """swiglu, geglu (exact GELU gate), geglu_tanh, gelu (exact erf), gelu_tanh, relu, silu, swiglu_clamped, swiglu_limit."""
    bias: bool = False
    """Biases on the FFN's projections."""
    activation_alpha: Annotated[float, Field(gt=0, le=100)] = CLAMPED_ALPHA
    """swiglu_clamped only: the sigmoid's slope alpha (gpt-oss: 1.702)."""
    activation_limit: Annotated[float, Field(gt=0, le=1e4)] = CLAMPED_LIMIT
    """swiglu_clamped and swiglu_limit only: the clamp limit on gate and up (gpt-oss: 7; DeepSeek-V4: 10)."""


class Router(Strict):
    top_k: Annotated[int, Field(gt=0, le=MAX_EXPERTS)] | None = None
    """Experts per token k (multiplied by moe.granularity); omit only with dense routing."""
    score: Literal[ROUTER_SCORES] = "softmax"
    """How logits become scores: softmax, sigmoid (DeepSeek-V3) or sqrt_softplus (DeepSeek-V4)."""
    softmax_after_topk: bool = False
    """Softmax over the k chosen logits instead of over all experts (Mixtral)."""
    normalize_topk: bool = False
    """Renormalise the k weights to sum to 1."""
    normalize_eps: Annotated[float, Field(ge=0, le=1)] | None = None
    """The epsilon added to the k weights' sum when renormalising (LFM2: 1e-6); null: 1e-20 for sigmoid scores, 0 else."""
    scale: Annotated[float, Field(gt=0, le=1e4)] = 1.0
    """A constant multiplier on the k weights (DeepSeek-V3's routed_scaling_factor)."""
    selection_bias: bool = False
    """A non-gradient bias added to the scores for choosing only (DeepSeek-V3's aux-loss-free balancing)."""
    selection_bias_on: Literal[SELECTION_BIAS_ON] = "scores"
    """The selection bias joins the scores (DeepSeek-V3) or the raw logits before the score (Kolibri) to choose."""
    logit_softcap: Annotated[float, Field(gt=0, le=1e4)] | None = None
    """Cap the router logits at cap·tanh(logits/cap) before the score (Laguna's moe_router_logit_softcapping); null: off."""
    selection_bias_parameter: bool = False
    """Store the selection bias as a parameter, counted, not a buffer (ERNIE-4.5); it gets no gradient."""
    bias: bool = False
    """A learned bias on the router logits (gpt-oss)."""
    n_groups: Annotated[int, Field(gt=0, le=MAX_EXPERTS)] | None = None
    """Group-limited routing (DeepSeek-V3): the experts form this many groups."""
    topk_groups: Annotated[int, Field(gt=0, le=MAX_EXPERTS)] | None = None
    """Group-limited routing: experts are chosen only within this many best groups."""
    group_score: Literal[GROUP_SCORES] = "max"
    """How a group is ranked: its best score (max) or the sum of its best two (top2_sum)."""
    dense: bool = False
    """Soft MoE: every expert gets a weight (active = total); top_k is omitted."""
    jitter: Annotated[float, Field(ge=0, lt=1)] = 0.0
    """Multiplicative uniform noise 1 ± jitter on the router input in training (Switch)."""
    kind: Literal[ROUTER_KINDS] = "topk"
    """topk, sparsemixer (Phi-3.5-MoE), gshard (random second expert), expert_choice or hash routing."""
    sparsemixer_eps: Annotated[float, Field(ge=0, lt=1)] = 0.0
    """sparsemixer: the logit distance within which the masked softmax weighs experts."""
    apply_to: Literal[ROUTER_APPLY_TO] = "output"
    """output: y = Σ g·Expert(x); input: y = Σ Expert(g·x) (Llama-4 scales each expert's input)."""
    mlp_hidden: Annotated[int, Field(gt=0, le=MAX_FF)] | None = None
    """A router MLP W_out·gelu(W_in·x) of this hidden width instead of one linear layer; null: linear."""


class Balance(Strict):
    load_balance_coeff: Annotated[float, Field(ge=0, le=1e3)] = 0.0
    """Weight of the auxiliary load-balancing loss (Switch's); 0 by default: write it to say so."""
    load_balance_granularity: Literal[BALANCE_GRANULARITIES] = "batch"
    """Balance the load over the whole batch or per sequence (DeepSeek-V3's sequence loss)."""
    z_loss_coeff: Annotated[float, Field(ge=0, le=1e3)] = 0.0
    """Weight of the router z-loss on the logits' log-sum-exp (ST-MoE)."""
    bias_update_rate: Annotated[float, Field(gt=0, le=1)] | None = None
    """Aux-loss-free balancing: the selection bias moves by this per step (needs router.selection_bias)."""


class Lora(Strict):
    rank: Annotated[int, Field(gt=0, le=MAX_D)]
    """Rank r of each LoRA expert's low-rank matrices."""
    alpha: Annotated[float, Field(gt=0, le=1e6)] = 16.0
    """LoRA's alpha: the low-rank update is scaled by alpha / rank."""


class MoE(Strict):
    n_experts: Annotated[int, Field(gt=0, le=MAX_EXPERTS)]
    """Routed experts E before segmentation (resolved: n_experts · granularity)."""
    d_ff: Annotated[int, Field(gt=0, le=MAX_FF)]
    """Width of one routed expert before segmentation (resolved: d_ff / granularity)."""
    activation: Activation = "swiglu"
    """The experts' activation (as ffn.activation); unset: the ffn section's, or swiglu without one."""
    bias: bool = False
    """Biases on the experts' projections."""
    activation_alpha: Annotated[float, Field(gt=0, le=100)] = CLAMPED_ALPHA
    """swiglu_clamped only: the sigmoid's slope alpha (gpt-oss: 1.702)."""
    activation_limit: Annotated[float, Field(gt=0, le=1e4)] = CLAMPED_LIMIT
    """swiglu_clamped and swiglu_limit only: the clamp limit on gate and up (gpt-oss: 7; DeepSeek-V4: 10)."""
    n_shared_experts: Annotated[int, Field(ge=0, le=1024)] = 0
    """Shared experts every token passes, beside the routed ones (DeepSeek, Qwen2-MoE)."""
    d_ff_shared: Annotated[int, Field(gt=0, le=MAX_FF)] | None = None
    """Width of one shared expert; null: the resolved (segmented) d_ff."""
    shared_activation: Activation | None = None
    """The shared experts' activation, gated exactly when activation is (HY-V4: swiglu); null: activation."""
    shared_activation_limit: Annotated[float, Field(gt=0, le=1e4)] | None = None
    """The shared experts' clamp limit where their activation takes one (Step-3.7: 16); null: activation_limit."""
    n_zero_experts: Annotated[int, Field(ge=0, le=MAX_EXPERTS)] = 0
    """Zero-computation experts scored after the E routed ones: a slot on one adds its weight × the input (LongCat-Flash)."""
    output_norm: bool = False
    """A norm of d on the MoE block's output before the residual add, on MoE layers only (A.X-K1)."""
    output_bias: bool = False
    """One learned bias of d added to the MoE block's combined output, not per expert (JetMoE)."""
    shared_gate: bool = False
    """A sigmoid gate on the shared experts' output (Qwen2-MoE)."""
    granularity: Annotated[int, Field(gt=0, le=1024)] = 1
    """Fine-grained segmentation m: each expert splits into m of width d_ff/m and top_k becomes k·m."""
    router: Router
    """How tokens choose experts."""
    capacity_factor: Annotated[float, Field(gt=0, le=1024)] | None = None
    """Slots per expert ceil(cf·T·k/E); tokens past it are dropped. null: dropless."""
    drop_policy: Literal[DROP_POLICIES] = "probs"
    """Which slots a full expert keeps: probs, its highest-weight ones (Megatron); position, the earliest, first choices before second (Switch, GShard)."""
    capacity_group_size: Annotated[int, Field(gt=0, le=MAX_SEQ)] | None = None
    """GShard: capacity enforced per group of this many tokens (in order); null: one group per call."""
    balance: Balance = Balance()
    """Load-balancing losses and aux-loss-free bias updates."""
    expert_kind: Literal[EXPERT_KINDS] = "ffn"
    """ffn: independent FFN experts; lora: LoRA adapters over one frozen base FFN."""
    lora: Lora | None = None
    """The LoRA experts' rank and alpha (expert_kind lora only)."""
    segmentation: Segmentation | None = Field(default=None, exclude=True)  # left out of dumps and hashes
    """DeepSeekMoE's rule written the paper's way: N, K, m and K_s, resolved into the fields above."""

    @model_validator(mode="before")
    @classmethod
    def _segmentation(cls, data: Any) -> Any:
        return segmented_moe(data)
