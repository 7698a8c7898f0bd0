"""The closed sets of names that a spec, a plan and the code reading them share: each defined here once.

Torch-free and import-free, so that the schema, the analyzer, the planner, the commands, the kernels, the
modules and the code generator all read the same tuples. Where a tuple's order is shown to users (the
analyzer's component table, a CLI choice list, a schema error), that order is the one below.
"""

from __future__ import annotations

# FFN activations. The gated ones multiply a gate column by an up column, so their first matrix is
# (d, 2f) [gate | up]; swiglu_clamped is gpt-oss's gated unit, (clamp(up, ±limit) + 1) · g·σ(alpha·g) with
# g = min(gate, limit). gelu and geglu are the exact GELU, x·Φ(x) with the erf (torch's nn.GELU(),
# transformers' "gelu"); gelu_tanh and geglu_tanh its tanh approximation (F.gelu(approximate="tanh"),
# transformers' "gelu_pytorch_tanh" and "gelu_new"). The two differ by up to about 5e-4 (docs/conventions.md).
# relu2 is the squared ReLU, relu(x)², ungated (Nemotron-H's "relu2"; So et al. 2021, Primer). swiglu_limit is
# DeepSeek-V4's and HY-V4's clamped SwiGLU, silu(min(gate, limit)) · clamp(up, ±limit): no alpha, no + 1.
# swiglu_limit_after is Step-3.7's, which clamps after the silu: min(silu(gate), limit) · clamp(up, ±limit)
ACTIVATIONS = (
    "swiglu", "geglu", "geglu_tanh", "gelu", "gelu_tanh", "relu", "silu", "swiglu_clamped", "relu2", "swiglu_limit",
    "swiglu_limit_after",
)  # fmt: skip
GATED = ("swiglu", "geglu", "geglu_tanh", "swiglu_clamped", "swiglu_limit", "swiglu_limit_after")
# the activations that take a clamp limit (activation_limit)
LIMITED = ("swiglu_clamped", "swiglu_limit", "swiglu_limit_after")
# swiglu_clamped's alpha and limit where a spec leaves them unset: gpt-oss's values
CLAMPED_ALPHA = 1.702
CLAMPED_LIMIT = 7.0

# the analyzer's parameter components, in the order its tables and JSON list them; mixers are the token mixers
# other than attention (docs/mixers.md); base_ffn is the frozen FFN under LoRA experts
COMPONENTS = (
    "embedding",
    "attention",
    "mixers",
    "norms",
    "hyper_connections",
    "router",
    "routed_experts",
    "shared_experts",
    "dense_ffn",
    "base_ffn",
    "head",
)
# the components a spec's ``frozen:`` may name (a LoRA expert's base FFN is always frozen, so it is not one)
FREEZABLE_COMPONENTS = tuple(c for c in COMPONENTS if c != "base_ffn")

# bytes per element of each dtype name the analyzer and planner accept
DTYPE_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2, "fp8": 1}
DTYPES = tuple(DTYPE_BYTES)
# the dtypes moec computes in, as torch spells them (fp8 is a storage width the analyzer counts, not one)
TORCH_DTYPE_NAMES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
# the dtypes a built model is written in and smoke-run trains in
MODEL_DTYPES = ("fp32", "bf16")

# model-wide choices
NORM_KINDS = ("rmsnorm", "layernorm")
# pre: x + f(norm(x)) (Llama); post: norm(x + f(x)) (the original Transformer); after_sublayer: x + norm(f(x))
# (OLMo 2, FlexOlmo: each sublayer's output is normalised before it joins the residual)
# normed_residual (MiniMax-Text-01): h = norm(x); x = alpha·h + beta·f(h), the residual carrying the normed input;
# sandwich (Kolibri, AFMoE, Gemma): x + post_norm(f(pre_norm(x))), two norms per sublayer; parallel (Cohere2-MoE):
# h = norm(x); x + attn(h) + ffn(h), one norm per layer
NORM_PLACEMENTS = ("pre", "post", "after_sublayer", "normed_residual", "sandwich", "parallel")
POSITION_KINDS = ("rope", "learned", "none")
ROPE_SCALINGS = ("linear", "dynamic", "yarn", "llama3", "longrope", "ntk_alpha")

# attention
ATTENTION_KINDS = ("gqa", "mla", "moa")  # moa: mixture of attention heads (JetMoE, moec/spec/moa.py)
# a layer's shape: mixer then FFN, or LongCat-Flash's two (attention, dense FFN) pairs with a shortcut MoE
BLOCK_KINDS = ("standard", "shortcut_moe_pair")
# head: one norm of head_dim shared by all heads (Qwen3); projection: one norm over the whole q (h·head_dim)
# and k (kv·head_dim) projections (OLMoE)
QK_NORM_SCOPES = ("head", "projection")
# model: the model's norm kind, with a learned weight; l2: weightless x / rms(x) over head_dim (Llama-4)
QK_NORM_KINDS = ("model", "l2")

# token mixers (docs/mixers.md): attention, or a linear-attention, state-space or short-convolution layer
# (moec.mixers has one module per kind), or none (a layer with an FFN only: Nemotron-H)
LINEAR_MIXERS = ("gated_deltanet", "kda", "lightning", "mamba", "mamba2", "short_conv")
MIXER_KINDS = ("attention", *LINEAR_MIXERS, "none")
# the attention output gate (Qwen3-Next): none, one sigmoid per head, or one per element of each head
OUTPUT_GATES = ("none", "head", "element")
OUTPUT_GATE_FNS = ("sigmoid", "softplus")  # the attention output gate's function (softplus: Laguna)
# the output gate's own bias: as q/k/v have one (attention.bias), none, or one per head over its elements (Beam)
OUTPUT_GATE_BIASES = ("qkv", "none", "head")
# the query temperature on NoPE layers: 1 + s·log1p(floor((pos+1)/F)) (Llama-4) or (1 + (pos+1)/F)^s (Beam)
TEMPERATURE_FORMS = ("floor_log", "power")

# feed-forward layers and routing; none: a layer with a token mixer only (Nemotron-H)
FFN_KINDS = ("dense", "moe", "none")
MTP_FFN_KINDS = ("dense", "moe")
EXPERT_KINDS = ("ffn", "lora")
# sqrt_softplus: sqrt(softplus(logit)) (DeepSeek-V4; docs/routing.md)
ROUTER_SCORES = ("softmax", "sigmoid", "sqrt_softplus")
# the scores `moec upcycle` initialises a router for (docs/upcycling.md)
UPCYCLE_ROUTERS = ("softmax", "sigmoid")
# topk: the k best scores; sparsemixer: Phi-3.5-MoE's SparseMixer top-2; the routing algorithms of
# docs/routing.md: gshard (GShard's top-2, the second expert dispatched with probability 2·g2), expert_choice
# (each expert takes its top-capacity tokens, Zhou et al. 2022), hash (a fixed token-id hash, Roller et al. 2021)
ROUTER_KINDS = ("topk", "sparsemixer", "gshard", "expert_choice", "hash")
GROUP_SCORES = ("max", "top2_sum")
# where the selection bias is added before the top-k: to the scores (DeepSeek-V3) or to the raw logits (Kolibri)
SELECTION_BIAS_ON = ("scores", "logits")
# output: y = Σ g_j·Expert_j(x); input: y = Σ Expert_j(g_j·x) (Llama-4 scales each expert's input)
ROUTER_APPLY_TO = ("output", "input")
DROP_POLICIES = ("probs", "position")
BALANCE_GRANULARITIES = ("batch", "sequence")
