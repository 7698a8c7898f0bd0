"""Memory: weights, KV cache, training state, and a labelled activation estimate."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from moec.analyze.counts import attention_sublayers
from moec.errors import CommandError
from moec.mixers import KINDS
from moec.spec.plan import AbsentPlan, AttentionPlan, DenseFFNPlan, MoEPlan, ResolvedModel
from moec.vocab import DTYPE_BYTES

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
    state_bytes_per_sequence: int = 0  # the other mixers' decode state, all layers: constant in S (docs/mixers.md)
    state_bytes: int = 0  # × batch

    @property
    def cache_and_state_bytes(self) -> int:
        """What decoding keeps at seq × batch: the attention layers' KV cache and the other mixers' state."""
        return self.kv_cache_bytes + self.state_bytes


def kv_bytes_per_token(a: AttentionPlan, nbytes: int) -> int:
    """MLA caches the compressed latent and the shared rope key, and with a sparse-attention indexer its one key of
    d_I per token; GQA caches K and V per KV head."""
    if a.kind == "mla":
        assert a.kv_lora_rank is not None and a.qk_rope_head_dim is not None
        return (a.kv_lora_rank + a.qk_rope_head_dim + (a.indexer_head_dim or 0)) * nbytes
    return a.n_kv_heads * (a.head_dim + a.v_dim) * nbytes


def activation_bytes_per_token(model: ResolvedModel) -> int:
    """bf16 tensors saved for backward per token, no recompute, flash attention (no S² scores)."""
    b = 2
    d = model.d_model
    total = 0
    for lp in (*model.encoder, *model.layers):  # an encoder-decoder model's encoder layers first
        a, f = lp.attention, lp.ffn
        if lp.has_attention:
            total += b * (2 * d)  # residual input and normed input of attention
            total += b * (a.n_heads * a.qk_dim + a.n_kv_heads * (a.qk_dim + a.v_dim))  # q, k, v
            total += b * a.n_heads * a.v_dim + 4 * a.n_heads  # attention output + fp32 logsumexp
        elif not isinstance(lp.mixer, AbsentPlan):
            # the inputs, and the projections' outputs (their weights over d: the widths they write)
            total += b * (2 * d + KINDS[lp.mixer.kind].matmul_weights(lp.mixer, d) // d)
        if lp.pair_ffn is not None:  # its second attention, and both dense FFNs with their inputs
            total += b * (2 * d + a.n_heads * a.qk_dim + a.n_kv_heads * (a.qk_dim + a.v_dim) + a.n_heads * a.v_dim)
            total += 4 * a.n_heads + 2 * b * (2 * d + lp.pair_ffn.d_ff * (3 if lp.pair_ffn.gated else 2))
        if lp.has_ffn:
            total += b * (2 * d)  # residual input and normed input of the FFN
        if isinstance(f, DenseFFNPlan):
            total += b * f.d_ff * (3 if f.gated else 2)  # (a layer without an FFN adds nothing here)
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
    if model.hyper_connections is not None:  # the streams and their coefficients (moec/analyze/hyper.py)
        from moec.analyze.hyper import activation_bytes_per_token as streams_bytes

        total += streams_bytes(model, b)
    return total


def memory(
    model: ResolvedModel, total: int, trainable: int, frozen: int, *, seq: int, batch: int, dtype: str
) -> Memory:
    if dtype not in DTYPE_BYTES:
        raise ValueError(f"unknown dtype {dtype!r}; choose from {', '.join(DTYPE_BYTES)}")
    nb = DTYPE_BYTES[dtype]
    # a shortcut-MoE pair layer (LongCat-Flash) caches keys for each of its two attentions
    attention = [lp.attention for lp in model.layers for _ in range(attention_sublayers(lp))]
    # an encoder-decoder model's decoder also keeps each layer's cross-attention K/V of the S source tokens
    attention += [lp.cross_attention for lp in model.layers if lp.cross_attention is not None]
    per_token = sum(kv_bytes_per_token(a, nb) for a in attention)
    # a sliding-window or chunked layer keeps at most W (or C) tokens of cache
    at_seq = sum(kv_bytes_per_token(a, nb) * min(seq, a.window or seq, a.chunk or seq) for a in attention)
    state = state_bytes_per_sequence(model, nb)
    return Memory(
        dtype=dtype,
        weights_bytes=total * nb,
        weights_bytes_by_dtype={k: total * v for k, v in DTYPE_BYTES.items()},
        kv_cache_bytes_per_token=per_token,
        kv_cache_bytes=at_seq * batch,
        training_state_bytes=ADAMW_BYTES_TRAINABLE * trainable + ADAMW_BYTES_FROZEN * frozen,
        activation_bytes_estimate=activation_bytes_per_token(model) * seq * batch,
        state_bytes_per_sequence=state,
        state_bytes=state * batch,
    )


def state_bytes_per_sequence(model: ResolvedModel, nbytes: int) -> int:
    """The decode state of every non-attention mixer layer for one sequence: each kind's convolution and
    recurrent state (docs/mixers.md), whatever the context; ``nbytes`` per element, at least 4 for the parts
    a kind keeps in float32 (its ``FP32_STATE``)."""
    total = 0
    for lp in model.layers:
        if lp.mixer is None or isinstance(lp.mixer, AbsentPlan):
            continue
        kind = KINDS[lp.mixer.kind]
        wide = getattr(kind, "FP32_STATE", ())  # parts kept in float32 at least, whatever the model's dtype
        for part, n in kind.state_elements(lp.mixer, model.d_model).items():
            total += n * (max(nbytes, 4) if part in wide else nbytes)
    return total


# --- What a command that runs a model will allocate (smoke-run, analyze --verify, build) --------------
# The analyzer's activation figure above describes an ideal bf16 step (flash attention, no temporaries).
# A real run also holds the gradients flowing back through the saved tensors, the implementation's own
# copies (gathered expert rows, fp32 router temporaries) and allocator slack, so the saved tensors are
# counted four times. So counted, the whole estimate was 1.3 to 3.6 times the measured peak-RSS growth
# of CPU smoke-runs of every shipped spec family, LoRA experts, attention sinks, windows and a 32k
# vocabulary (tests/cli/test_run_limits.py holds four of them to it). Not yet measured on a GPU.
RUN_ACTIVATION_FACTOR = 4
RUNTIME_BYTES = 64 << 20  # allocator caches, thread pools, kernel workspaces: ~25 MiB measured on CPU
ADAMW_STATE_COPIES = 4  # two moments, and the step's and the backward's full-size temporaries
LOSS_FP32_COPIES = 3  # cross-entropy in fp32: the upcast logits, log-softmax, its gradient


def gib(n: int) -> str:
    return f"{n / 2**30:,.1f} GiB"


@dataclass(frozen=True)
class RunMemory:
    """An upper estimate of what a run allocates, by part, in print order (parts of 0 bytes are left out
    of the description). ``at`` says at what shape the activations were counted."""

    dtype: str
    parts: tuple[tuple[str, int], ...]
    at: str = ""

    @property
    def total(self) -> int:
        return sum(n for _, n in self.parts)

    def describe(self) -> str:
        """``about 41.2 GiB in fp32 (weights 2.10 GiB, ..., activations 30.70 GiB at batch 8 × seq 64)``."""
        from moec.analyze.render import human  # imported here: render → report → this module at import time

        head = f"about {gib(self.total)} in {self.dtype}"
        shown = [(name, n) for name, n in self.parts if n]
        if len(shown) <= 1 and not self.at:
            return head
        listed = ", ".join(
            f"{name} {human(n, 'B')}" + (f" {self.at}" if name == "activations" and self.at else "")
            for name, n in shown
        )
        return f"{head} ({listed})"


class DoesNotFitError(CommandError):
    """A run or an allocation asked for more memory than the device has free; raised before allocating."""


def refuse_unless_fits(need: RunMemory, available: int | None, *, lead: str, where: str, hint: str = "") -> None:
    """Raise :class:`DoesNotFitError` ``"{lead} {need} but {where} has N GiB free{hint}"`` when ``need``
    exceeds ``available`` (None: unknown, nothing is refused)."""
    if available is not None and need.total > available:
        raise DoesNotFitError(f"{lead} {need.describe()} but {where} has {gib(available)} free{hint}")


def _with_mtp(model: ResolvedModel) -> ResolvedModel:
    """The main layers and the MTP blocks in one list: the run computes and saves both."""
    return dataclasses.replace(model, layers=model.layers + model.mtp) if model.mtp else model


def _materialised_scores_bytes(a: AttentionPlan, *, batch: int, seq: int, nbytes: int) -> int:
    """Attention scores a layer keeps in memory. With sinks moec computes them explicitly (fp32 softmax
    and its cast, per head); a window or chunk shorter than the sequence adds an (S, S) mask."""
    if a.sinks:
        return batch * a.n_heads * seq * (seq + 1) * (4 + nbytes)
    if (a.window is not None and a.window < seq) or (a.chunk is not None and a.chunk < seq):
        return seq * seq * (1 + nbytes)
    return 0


def _lora_rows_per_token(model: ResolvedModel) -> int:
    """Elements a LoRA-MoE layer adds per token over the analyzer's count: each adapted matrix gathers its
    k input rows, and keeps their rank-r products and k output rows (moec.kernels' ``lora_mix``)."""
    total = 0
    for lp in model.layers:
        f = lp.ffn
        if isinstance(f, MoEPlan) and f.expert_kind == "lora":
            d, r = model.d_model, f.lora_rank or 0
            matrices = 3 if f.gated else 2
            total += f.top_k * matrices * (d + r + f.d_ff)
    return total


def run_activation_bytes(model: ResolvedModel, *, batch: int, seq: int, dtype: str) -> int:
    """An upper estimate of the activation memory of one step of moec's own modules at ``batch × seq``
    in ``dtype``: the analyzer's saved tensors of every layer and MTP block (scaled from bf16) and the
    materialised scores, times :data:`RUN_ACTIVATION_FACTOR`; plus, per output head, the logits and their
    gradient in ``dtype`` and the loss's fp32 copies. A forward pass without gradients holds less."""
    nb = DTYPE_BYTES[dtype]
    layers = dataclasses.replace(_with_mtp(model), vocab_size=0)  # the heads are counted below
    per_token = -(-activation_bytes_per_token(layers) * max(nb, 2) // 2) + nb * _lora_rows_per_token(layers)
    scores = sum(
        _materialised_scores_bytes(lp.attention, batch=batch, seq=seq, nbytes=nb)
        for lp in layers.layers
        if lp.has_attention
    )
    heads = (1 + len(model.mtp)) * model.vocab_size * (2 * nb + 4 * LOSS_FP32_COPIES)
    return RUN_ACTIVATION_FACTOR * (per_token * batch * seq + scores) + heads * batch * seq


def training_run_memory(
    model: ResolvedModel,
    *,
    params: int,
    trainable: int,
    batch: int,
    seq: int,
    dtype: str,
    data_bytes: int = 0,
) -> RunMemory:
    """Training with AdamW in ``dtype`` (weights, gradients and moments all in it, as torch keeps them):
    ``params`` and ``trainable`` count the MTP blocks too."""
    nb = DTYPE_BYTES[dtype]
    return RunMemory(
        dtype,
        (
            ("weights", params * nb),
            ("gradients", trainable * nb),
            ("optimizer", ADAMW_STATE_COPIES * trainable * nb),
            ("activations", run_activation_bytes(model, batch=batch, seq=seq, dtype=dtype)),
            ("data", data_bytes),
            ("runtime", RUNTIME_BYTES),
        ),
        at=f"at batch {batch} × seq {seq}",
    )


def forward_run_memory(model: ResolvedModel, *, params: int, batch: int, seq: int, dtype: str) -> RunMemory:
    """A forward pass without gradients: the weights, and the activations bound of a training step."""
    nb = DTYPE_BYTES[dtype]
    return RunMemory(
        dtype,
        (
            ("weights", params * nb),
            ("activations", run_activation_bytes(model, batch=batch, seq=seq, dtype=dtype)),
            ("runtime", RUNTIME_BYTES),
        ),
        at=f"at batch {batch} × seq {seq}",
    )
