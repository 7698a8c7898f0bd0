"""Memory: weights, KV cache, training state, and a labelled activation estimate."""

from __future__ import annotations

from dataclasses import dataclass

from moec.spec.plan import AttentionPlan, DenseFFNPlan, MoEPlan, ResolvedModel

DTYPE_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2, "fp8": 1}
ADAMW_BYTES_TRAINABLE = 16  # bf16 weight + bf16 grad + fp32 master + 2 fp32 moments
ADAMW_BYTES_FROZEN = 2  # bf16 weight only


@dataclass(frozen=True)
class Memory:
    dtype: str
    weights_bytes: int
    weights_bytes_by_dtype: dict[str, int]
    kv_cache_bytes_per_token: int  # per token of context, all layers, uncapped by windows
    kv_cache_bytes: int  # at seq × batch, sliding-window and chunked layers capped
    training_state_bytes: int  # mixed-precision AdamW
    activation_bytes_estimate: int  # at seq × batch; an estimate, see conventions


def kv_bytes_per_token(a: AttentionPlan, nbytes: int) -> int:
    """MLA caches the compressed latent and the shared rope key; GQA caches K and V per KV head."""
    if a.kind == "mla":
        assert a.kv_lora_rank is not None and a.qk_rope_head_dim is not None
        return (a.kv_lora_rank + a.qk_rope_head_dim) * nbytes
    return 2 * a.n_kv_heads * a.head_dim * nbytes


def activation_bytes_per_token(model: ResolvedModel) -> int:
    """bf16 tensors saved for backward per token, no recompute, flash attention (no S² scores)."""
    b = 2
    d = model.d_model
    total = 0
    for lp in model.layers:
        a, f = lp.attention, lp.ffn
        total += b * (2 * d)  # residual input and normed input of attention
        total += b * (a.n_heads * a.qk_dim + a.n_kv_heads * (a.qk_dim + a.v_dim))  # q, k, v
        total += b * a.n_heads * a.v_dim + 4 * a.n_heads  # attention output + fp32 logsumexp
        total += b * (2 * d)  # residual input and normed input of the FFN
        if isinstance(f, DenseFFNPlan):
            total += b * f.d_ff * (3 if f.gated else 2)
        elif isinstance(f, MoEPlan):
            widths = (2 if f.gated else 1) * f.d_ff + f.d_ff
            total += 4 * f.n_experts  # fp32 router probabilities
            if f.expert_kind == "lora":
                total += b * widths + b * f.top_k * 3 * (f.lora_rank or 0)
            else:
                total += b * f.top_k * (d + widths)  # gathered input and expert intermediates
            if f.n_shared_experts:
                total += b * f.n_shared_experts * ((2 if f.gated else 1) * f.d_ff_shared + f.d_ff_shared)
    total += b * d + 4 * model.vocab_size  # final norm input, fp32 logits for the loss
    return total


def memory(
    model: ResolvedModel, total: int, trainable: int, frozen: int, *, seq: int, batch: int, dtype: str
) -> Memory:
    if dtype not in DTYPE_BYTES:
        raise ValueError(f"unknown dtype {dtype!r}; choose from {', '.join(DTYPE_BYTES)}")
    nb = DTYPE_BYTES[dtype]
    per_token = sum(kv_bytes_per_token(lp.attention, nb) for lp in model.layers)
    # a sliding-window or chunked layer keeps at most W (or C) tokens of cache
    at_seq = sum(
        kv_bytes_per_token(lp.attention, nb) * min(seq, lp.attention.window or seq, lp.attention.chunk or seq)
        for lp in model.layers
    )
    return Memory(
        dtype=dtype,
        weights_bytes=total * nb,
        weights_bytes_by_dtype={k: total * v for k, v in DTYPE_BYTES.items()},
        kv_cache_bytes_per_token=per_token,
        kv_cache_bytes=at_seq * batch,
        training_state_bytes=ADAMW_BYTES_TRAINABLE * trainable + ADAMW_BYTES_FROZEN * frozen,
        activation_bytes_estimate=activation_bytes_per_token(model) * seq * batch,
    )
