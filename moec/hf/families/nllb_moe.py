"""NLLB-MoE (``model_type`` nllb-moe, NllbMoeForConditionalGeneration; Costa-jussà et al., arXiv 2207.04672): a
pre-norm Transformer encoder-decoder (moec/spec/encdec.py) whose every ``sparse_step``-th layer of each stack
(layer i when (i + 1) % step == 0) is a top-2 MoE. Each sublayer sits behind an nn.LayerNorm with bias (eps 1e-5,
no config field), every Linear has a bias (q, k, v, out_proj, fc1, fc2, each expert's), each stack ends in a
LayerNorm; the token embedding, scaled by √d_model when scale_embedding, is shared by both stacks and the head;
fairseq's fixed sinusoidal table (no parameters) adds position pad_token_id + 1 + i to the i-th token.

The router (NllbMoeTop2Router): a linear layer in float32, softmax over all experts, the best expert and the best
of the rest, the two weights renormalised to sum to 1. At inference every expert takes every token routed to it
(moe_eval_capacity_token_fraction 1: capacity = all tokens), and each expert's output is multiplied by
1 − moe_token_dropout (moe.router.scale); in training the expert's output goes through dropout instead, each
expert takes at most expert_capacity of the batch's tokens (first choices before second) and the weights are
renormalised after dropping: training-only, named in the written spec's header.

transformers 5.24's NllbMoeExperts.forward one-hot encodes the top-1 mask (values 0 and 1) instead of the chosen
expert indices, so it runs ``expert_1`` on every token's first choice and ``expert_0`` on its second, whichever
experts the router chose (tests/hf/families/test_nllb_moe.py shows it). That is a transformers bug: the
architecture (fairseq's MoE layer, the paper) runs the two chosen experts, and moec counts those (k = 2 of E
active); the parameters are the same either way.

Imported for counting: moec does not build this encoder-decoder (its sinusoidal positions), so there is no exporter
and no weight mapping (moec.from_hf refuses the model by name).
"""

from __future__ import annotations

from typing import Any

from moec.hf.draft import Draft, Family, HFConfig
from moec.hf.families._common import dropout
from moec.hf.families._encdec_common import non_gated_activation, put_stacks, untied_embeddings_gap
from moec.spec.encdec import SINUSOIDAL
from moec.strict import MAX_LAYERS, MAX_SEQ

# transformers 5.24 NllbMoeConfig class defaults of the fields the translator reads
DEFAULTS: dict[str, Any] = dict(
    default_theta=10000.0,  # PreTrainedConfig's; fairseq's sinusoid base is 10000 too (positions.theta)
    vocab_size=128112,
    max_position_embeddings=1024,
    encoder_layers=12,
    encoder_ffn_dim=4096,
    encoder_attention_heads=16,
    decoder_layers=12,
    decoder_ffn_dim=4096,
    decoder_attention_heads=16,
    encoder_layerdrop=0.05,
    decoder_layerdrop=0.05,
    activation_function="relu",
    d_model=1024,
    dropout=0.1,
    attention_dropout=0.1,
    activation_dropout=0.0,
    init_std=0.02,
    scale_embedding=True,
    router_bias=False,
    router_dtype="float32",
    router_ignore_padding_tokens=False,
    num_experts=128,
    expert_capacity=64,
    encoder_sparse_step=4,
    decoder_sparse_step=4,
    router_z_loss_coef=0.001,
    router_aux_loss_coef=0.001,
    second_expert_policy="all",
    normalize_router_prob_before_dropping=False,
    batch_prioritized_routing=False,
    moe_eval_capacity_token_fraction=1.0,
    moe_token_dropout=0.2,
    pad_token_id=1,
    tie_word_embeddings=True,
)
NORM_EPS = 1e-5  # nn.LayerNorm's default: NllbMoe passes none


def sparse_layers(n_layers: int, step: int) -> list[bool]:
    """Which of a stack's layers transformers builds sparse (NllbMoeEncoder / NllbMoeDecoder): (i + 1) % step == 0,
    none with a step ≤ 0."""
    return [step > 0 and (i + 1) % step == 0 for i in range(n_layers)]


def _stack(c: HFConfig, layers_key: str, step_key: str) -> list[str] | None:
    """One stack's FFN kinds, or None when its layer count was refused (reported)."""
    n = c.int(layers_key, maximum=MAX_LAYERS)
    step = c.int(step_key, minimum=-(2**31))
    if c.failed(layers_key) or c.failed(step_key):
        return None
    return ["moe" if s else "dense" for s in sparse_layers(n, step)]


def translate(c: HFConfig, d: Draft) -> None:
    _model(c, d)
    _attention(c, d)
    put_stacks(
        c,
        d,
        (_stack(c, "encoder_layers", "encoder_sparse_step"), _stack(c, "decoder_layers", "decoder_sparse_step")),
        ("encoder_layers", "decoder_layers"),
        "(i + 1) % {stack}_sparse_step == 0 is a sparse layer (NllbMoeEncoder / NllbMoeDecoder)",
    )
    _ffn(c, d)
    _router(c, d)
    _capacity(c, d)
    dropout(c, d, "dropout", "attention_dropout", "activation_dropout", "encoder_layerdrop", "decoder_layerdrop")
    c.value("init_std")  # the initialisation's spread: no effect on the architecture


def _model(c: HFConfig, d: Draft) -> None:
    d_model = c.int("d_model")
    d.put("model.vocab_size", c.int("vocab_size"), c.src("vocab_size"))
    d.put("model.d_model", d_model, c.src("d_model"))
    d.put(
        "model.max_seq_len",
        c.int("max_position_embeddings"),
        c.src("max_position_embeddings") + " (transformers grows the sinusoidal table past it)",
    )
    if c.bool("tie_word_embeddings"):
        d.put("model.tie_embeddings", True, c.src("tie_word_embeddings") + ": shared, both stacks' tables and lm_head")
    else:
        untied_embeddings_gap(c, d, d_model)
    if c.bool("scale_embedding"):
        d.put("model.embedding_multiplier", float(d_model) ** 0.5, c.src("scale_embedding") + ": embeddings × √d_model")
    d.put("model.norm.kind", "layernorm", "nn.LayerNorm with bias before every sublayer and after each stack")
    d.put("model.norm.eps", NORM_EPS, "nn.LayerNorm's default (NllbMoe sets none)")
    d.put("model.positions.kind", SINUSOIDAL, "NllbMoeSinusoidalPositionalEmbedding: fixed, no parameters")
    if c.value("pad_token_id") is not None:  # the table row of the first token is padding_idx + 1
        pad = c.int("pad_token_id", minimum=0, maximum=MAX_SEQ - 1)
        d.put("model.positions.offset", pad + 1, c.src("pad_token_id") + " + 1: positions count from padding_idx + 1")
    else:
        d.gap(
            "pad_token_id",
            None,
            "NllbMoe's positions count from padding_idx + 1 and need a padding index (transformers fails without one)",
            "none: a pad_token_id of 0 or more",
        )


def _attention(c: HFConfig, d: Draft) -> None:
    heads = c.int("decoder_attention_heads")
    d_model = c.int("d_model")
    if c.int("encoder_attention_heads") != heads:
        d.gap(
            "encoder_attention_heads",
            c.value("encoder_attention_heads"),
            f"an encoder with other heads than the decoder's {heads}",
            "encoder.attention (the encoder's own head count). Count: none for the projections (d × d each)",
        )
    if d_model % heads:
        c.bad("d_model", f"transformers' NllbMoeAttention needs d_model divisible by the {heads} heads")
    d.put("attention.kind", "gqa", "NllbMoeAttention: multi-head")
    d.put("attention.n_heads", heads, c.src("decoder_attention_heads") + ", the encoder's too")
    d.put("attention.head_dim", max(d_model // heads, 1), "d_model / heads")
    d.put("attention.bias", True, "q_proj, k_proj, v_proj with biases")
    d.put("attention.out_bias", True, "out_proj with a bias")


def _ffn(c: HFConfig, d: Draft) -> None:
    activation = non_gated_activation(c, d, "activation_function")
    width = c.int("decoder_ffn_dim")
    if c.int("encoder_ffn_dim") != width:
        d.gap(
            "encoder_ffn_dim",
            c.value("encoder_ffn_dim"),
            f"an encoder FFN of another width than the decoder's {width}",
            "encoder.ffn / encoder.moe (the encoder's own widths)",
        )
    note = c.src("activation_function") + ": fc1, act, fc2, with biases"
    d.section("ffn", d_ff=(width, c.src("decoder_ffn_dim")), activation=(activation, note), bias=(True, "fc1, fc2"))
    d.section(
        "moe",
        n_experts=(c.int("num_experts", minimum=2), c.src("num_experts") + " (top-2: at least 2)"),
        d_ff=(width, c.src("decoder_ffn_dim") + ": every expert an NllbMoeDenseActDense"),
        activation=(activation, note),
        bias=(True, "each expert's fc1, fc2"),
    )


def _router(c: HFConfig, d: Draft) -> None:
    d.put("moe.router.top_k", 2, "NllbMoeTop2Router: the best expert and the best of the rest")
    d.put("moe.router.score", "softmax", "softmax over all experts, in router_dtype")
    d.put("moe.router.normalize_topk", True, "the two weights ÷ their sum")
    d.put("moe.router.bias", c.bool("router_bias"), c.src("router_bias"))
    policy = c.str("second_expert_policy")
    if policy is not None and policy != "all":
        d.gap(
            "second_expert_policy",
            policy,
            "a second expert chosen at random (Gumbel noise on the logits, or kept with probability 2·p2), at "
            "inference too",
            "moe.router.kind: gshard with NLLB's sampling. No count change",
        )
    if c.str("router_dtype") not in (None, "float32"):
        d.gap("router_dtype", c.value("router_dtype"), "moec routes in float32", "none: router_dtype float32")
    token_dropout = c.float("moe_token_dropout")
    if token_dropout is not None and not 0 <= token_dropout < 1:
        c.bad("moe_token_dropout", "a rate from 0 to below 1")
    elif token_dropout:  # eval: expert output × (1 − p); training: dropout on it, never both
        d.put("moe.router.scale", 1 - token_dropout, c.src("moe_token_dropout") + ": each expert's output × (1 − p)")
        d.training_only.append(f"moe_token_dropout {token_dropout!r} (training: dropout on each expert's output)")
    # false: padding tokens (by the attention mask) take no expert; true: they are routed too. moec's inputs carry
    # no padding, so every token is routed either way
    c.bool("router_ignore_padding_tokens")
    d.put("moe.balance.load_balance_coeff", c.float("router_aux_loss_coef"), c.src("router_aux_loss_coef"))
    c.value("router_z_loss_coef")  # NllbMoeForConditionalGeneration adds no z-loss: read and let go


def _capacity(c: HFConfig, d: Draft) -> None:
    """Dropless at inference when moe_eval_capacity_token_fraction ≥ 1 (capacity ⌈f·T⌉ ≥ every token's slot);
    what only training drops is named in the header."""
    fraction = c.float("moe_eval_capacity_token_fraction")
    if fraction is not None and fraction < 1:
        d.gap(
            "moe_eval_capacity_token_fraction",
            fraction,
            "an inference capacity of ⌈f·T⌉ tokens per expert over the batch's T tokens (f ≤ 0: expert_capacity), "
            "first choices before second",
            "moe.capacity_tokens_fraction (a capacity per batch, top-1 slots first). No count change",
        )
    capacity = c.int("expert_capacity")
    drops = [f"expert_capacity {capacity} (training: at most that many of a batch's tokens per expert)"]
    if c.bool("normalize_router_prob_before_dropping"):
        drops.append("normalize_router_prob_before_dropping (training: weights renormalised before the drop)")
    if c.bool("batch_prioritized_routing"):
        drops.append("batch_prioritized_routing (training: the most confident tokens keep their slots)")
    d.training_only.extend(drops)


FAMILY = Family(
    "nllb-moe",
    "NllbMoeForConditionalGeneration",
    DEFAULTS,
    translate,
    aliases={
        "num_attention_heads": "encoder_attention_heads",
        "hidden_size": "d_model",
        "num_hidden_layers": "encoder_layers",
    },
)
