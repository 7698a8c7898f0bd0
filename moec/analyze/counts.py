"""Parameters and forward FLOPs per component, per layer: pure arithmetic over layer plans.

Conventions (docs/conventions.md): 1 multiply-add = 2 FLOPs; linear FLOPs per token = 2 × active matmul
weights; elementwise work (norms, activations, softmax, RoPE, biases) = 0; the embedding lookup = 0;
the lm_head = 2·d·V also when tied. Attention-score FLOPs (QKᵀ and AV) depend on the context length and
are computed separately in :func:`attention_score_flops`.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from moec.mixers import KINDS
from moec.spec.plan import AbsentPlan, AttentionPlan, DenseFFNPlan, LayerPlan, MoEPlan, ResolvedModel


@dataclass(frozen=True)
class Part:
    """One component's share of one layer."""

    params: int
    active: int  # parameters a single token touches
    flops: int  # forward linear FLOPs per token
    frozen: bool = False


def ffn_matrices(d: int, f: int, gated: bool) -> list[tuple[int, int]]:
    """(in, out) of each matrix of an FFN: gate, up, down for gated units; up, down otherwise."""
    return [(d, f), (d, f), (f, d)] if gated else [(d, f), (f, d)]


def ffn_weights(d: int, f: int, gated: bool) -> int:
    return sum(i * o for i, o in ffn_matrices(d, f, gated))


def ffn_biases(d: int, f: int, gated: bool) -> int:
    return sum(o for _, o in ffn_matrices(d, f, gated))


def moa_part(a: AttentionPlan, d: int) -> Part:
    """A mixture of attention heads (docs/conventions.md, "Mixture of attention heads"): E experts' query
    (d·h·hd) and output (h·hd·d) projections, the shared key and value projections (2·d·kv·hd), the router (d·E)
    and the output bias (d); a token touches top_k experts, the shared projections and the router."""
    assert a.moa_n_experts and a.moa_top_k
    expert = 2 * d * a.n_heads * a.head_dim
    shared = 2 * d * a.n_kv_heads * a.head_dim + d * a.moa_n_experts
    bias = d if a.out_bias else 0
    active_mm = a.moa_top_k * expert + shared
    return Part(a.moa_n_experts * expert + shared + bias, active_mm + bias, 2 * active_mm)


def attention_part(a: AttentionPlan, d: int, norm_dim_params: int) -> Part:
    if a.kind == "moa":
        return moa_part(a, d)
    if a.kind == "mla":
        assert a.kv_lora_rank and a.qk_rope_head_dim is not None and a.qk_nope_head_dim and a.v_head_dim
        h, qk, r = a.n_heads, a.qk_nope_head_dim + a.qk_rope_head_dim, a.qk_rope_head_dim
        if a.q_lora_rank:  # A.X-K2's query_gate: one projection of 2·q_lora_rank to each head's query and value gate
            q_up = 2 * a.q_lora_rank * h * (qk + a.v_head_dim) if a.query_gate else a.q_lora_rank * h * qk
            q_mm = d * a.q_lora_rank + q_up
            norms = a.q_lora_rank * norm_dim_params
        else:
            q_mm, norms = d * h * qk, 0
        kv_mm = d * (a.kv_lora_rank + r) + a.kv_lora_rank * h * (a.qk_nope_head_dim + a.v_head_dim)
        norms += (a.kv_lora_rank + (r if a.rope_key_norm else 0)) * norm_dim_params  # Dots3 norms the rotary key
        o_mm = h * a.v_head_dim * d
        mm = q_mm + kv_mm + o_mm + d * a.gate_width + indexer_matrices(a, d)  # the gate has no bias in MLA
        extra = norms + (2 * a.indexer_head_dim if a.indexer_head_dim else 0)  # its key's LayerNorm: weight, bias
    else:
        h, kv, hd, vd = a.n_heads, a.n_kv_heads, a.head_dim, a.v_dim
        mm = d * (hd * (h + kv) + vd * kv) + h * vd * d  # q, k (head_dim wide), v (v_dim wide); o from h·v_dim
        extra = (hd * (h + kv) + vd * kv if a.bias else 0) + (d if a.out_bias else 0)
        if a.qk_norm and a.qk_norm_kind == "model":  # l2 (Llama-4) is weightless: 0 parameters
            # per-head norms share one head_dim weight; OLMoE normalises whole projections
            extra += (hd * (h + kv) if a.qk_norm_scope == "projection" else 2 * hd) * norm_dim_params
        mm += d * a.gate_width  # the output gate's own projection of the layer input; its bias: gate_bias_width
        extra += a.gate_bias_width
    extra += a.n_heads if a.sinks else 0
    return Part(mm + extra, mm + extra, 2 * mm)


def indexer_matrices(a: AttentionPlan, d: int) -> int:
    """The sparse-attention indexer's matrix weights (docs/conventions.md, "Sparse attention indexer"): wq_b from
    the query latent (q_lora_rank·H_I·d_I), wk (d·d_I) and the head weights' weights_proj (d·H_I); 0 without one."""
    if not a.has_indexer:
        return 0
    assert a.q_lora_rank and a.indexer_head_dim and a.indexer_n_heads
    H, D = a.indexer_n_heads, a.indexer_head_dim
    return a.q_lora_rank * H * D + d * D + d * H


def indexer_score_flops(a: AttentionPlan, kv_len: Fraction) -> Fraction:
    """The indexer's scores per token over the kv_len keys it ranks: q·k for each of H_I heads (2·H_I·d_I per key)
    and the head-weighted sum (2·H_I per key); the ReLU and the top-k selection are elementwise (0)."""
    if not a.has_indexer:
        return Fraction(0)
    assert a.indexer_n_heads and a.indexer_head_dim
    return 2 * a.indexer_n_heads * kv_len * (a.indexer_head_dim + 1)


def attended_keys(a: AttentionPlan, seq: int, mode: str) -> Fraction:
    """The keys a query's scores and values run over on average: every key it may see (capped by the window and
    the chunk), and with an indexer at most its top_k of them (a cap that acts as a window does: min(i+1, k))."""
    cap = a.window
    if a.sparse:  # its own indexer's choice, or an earlier layer's (indexer_shared)
        assert a.indexer_top_k is not None
        cap = min(a.indexer_top_k, a.window or a.indexer_top_k)
    return kv_len(seq, cap, mode, a.chunk)


def attention_sequence_flops(a: AttentionPlan, seq: int, mode: str) -> dict[str, Fraction]:
    """An attention layer's FLOPs per token beyond its linear layers at context ``seq``, in the training form
    (``mode``) and for one decode step after ``seq`` tokens: ``sparse`` (what the layer computes: the indexer over
    every visible key, the attention over at most top_k of them; the headline) and ``dense`` (the dense-equivalent:
    the attention over every visible key, no indexer). Equal without an indexer."""
    out: dict[str, Fraction] = {}
    for form, m in (("train", mode), ("step", "full")):
        visible = kv_len(seq, a.window, m, a.chunk)
        out[f"dense_{form}"] = attention_score_flops(a, visible)
        out[f"sparse_{form}"] = attention_score_flops(a, attended_keys(a, seq, m)) + indexer_score_flops(a, visible)
    return out


def attention_score_flops(a: AttentionPlan, kv_len: Fraction) -> Fraction:
    """QKᵀ and AV per token: 2·h·S_kv·(d_qk + d_v), h the heads that attend (attention experts: top_k · n_heads).
    GQA does not reduce it."""
    return 2 * a.attending_heads * kv_len * (a.qk_dim + a.v_dim)


def kv_len(seq: int, window: int | None, mode: str, chunk: int | None = None) -> Fraction:
    """Average number of keys a query attends to. full: S, capped at the window and the chunk; causal:
    the mean over positions i = 0..S-1 of min(i + 1, W, (i mod C) + 1)."""
    caps = [c for c in (window, chunk) if c]
    if mode == "full":
        return Fraction(min([seq, *caps]))

    def keys(n: int) -> int:  # Σ_{j=1..n} min(j, W): the keys of the first n queries of one chunk
        if window is None or window >= n:
            return n * (n + 1) // 2
        return window * (window + 1) // 2 + (n - window) * window

    c = min(chunk, seq) if chunk else seq
    full_chunks, rest = divmod(seq, c)
    return Fraction(full_chunks * keys(c) + keys(rest), seq)


def ffn_parts(f: DenseFFNPlan | MoEPlan, d: int) -> dict[str, Part]:
    if isinstance(f, DenseFFNPlan):
        mm = ffn_weights(d, f.d_ff, f.gated)
        p = mm + (ffn_biases(d, f.d_ff, f.gated) if f.bias else 0)
        return {"dense_ffn": Part(p, p, 2 * mm)}
    r = f.router
    E, k = f.n_experts, r.top_k
    scored = E + f.n_zero_experts  # zero experts take router rows and bias entries, no expert weights
    # a learned logit bias (gpt-oss) and a selection bias stored as a parameter (ERNIE-4.5) count; DeepSeek-V3's
    # selection bias is a buffer and does not
    router_mm = router_matrices(f, d)
    router_p = (
        router_mm + (scored if r.bias else 0) + (scored if r.selection_bias and r.selection_bias_parameter else 0)
    )
    parts = {"router": Part(router_p, router_p, 2 * router_mm)}
    if f.expert_kind == "lora":
        assert f.lora_rank is not None
        base_mm = ffn_weights(d, f.d_ff, f.gated)
        base = base_mm + (ffn_biases(d, f.d_ff, f.gated) if f.bias else 0)
        parts["base_ffn"] = Part(base, base, 2 * base_mm, frozen=True)
        per_expert = sum(f.lora_rank * (i + o) for i, o in ffn_matrices(d, f.d_ff, f.gated))
        parts["routed_experts"] = Part(E * per_expert, k * per_expert, 2 * k * per_expert)
        return parts
    mm = ffn_weights(d, f.d_ff, f.gated)
    per_expert = mm + (ffn_biases(d, f.d_ff, f.gated) if f.bias else 0)
    # with zero experts k·per_expert is the upper bound: a slot on a zero expert touches nothing (ZERO_EXPERTS)
    out_bias = d if f.output_bias else 0  # one bias on the combined output (JetMoE): counted with the experts
    parts["routed_experts"] = Part(E * per_expert + out_bias, k * per_expert + out_bias, 2 * k * mm)
    if f.n_shared_experts:
        # s shared experts of width f_s are one FFN of width s·f_s (every token passes all of them and
        # their outputs add); that is how DeepSeek and Hugging Face build them, so with biases there is
        # one down-projection bias, not s
        width = f.n_shared_experts * f.d_ff_shared
        s_mm = ffn_weights(d, width, f.gated)
        s_p = s_mm + (ffn_biases(d, width, f.gated) if f.bias else 0)
        gate = d if f.shared_gate else 0
        parts["shared_experts"] = Part(s_p + gate, s_p + gate, 2 * (s_mm + gate))
    return parts


# how each routing algorithm of docs/routing.md is counted; printed under "routing" in analyze's conventions
ROUTING_CONVENTIONS = {
    "gshard": "top-2 with the second expert dispatched with probability 2·g2: counted as k = 2, the upper bound "
    "(the expected count is 1 + mean 2·g2, which depends on the weights)",
    "expert_choice": "each expert takes ceil(k·T/E) of a call's T tokens; active parameters and FLOPs per token "
    "are the average over tokens, (k/E)·routed experts, exact when E divides k·T (a token may get 0 to E "
    "experts)",
    "hash": "a fixed token-id hash picks k experts: no router parameters, 0 router FLOPs",
    "router_mlp": "mlp_hidden h: d·h + h·E router parameters, 2·(d·h + h·E) FLOPs per token (the activation: 0)",
    "sqrt_softplus": "elementwise: 0 FLOPs, 0 parameters",
}

# how moe.n_zero_experts is counted; printed under "zero_experts" in analyze's conventions
ZERO_EXPERTS = (
    "Z zero experts (LongCat-Flash): d·(E+Z) router parameters, 0 expert parameters, 0 FLOPs (a slot on one adds "
    "its weight × the input: elementwise); active and FLOPs count all k slots on FFN experts, the upper bound "
    "(how many land on zero experts depends on the tokens)"
)


def router_matrices(f: MoEPlan, d: int) -> int:
    """The router's matrix parameters: d·E for one linear layer, d·h + h·E for a router MLP, 0 for hash
    routing (ROUTING_CONVENTIONS); E counts the zero experts too, which the router scores."""
    r, E = f.router, f.n_experts + f.n_zero_experts
    if r.kind == "hash":
        return 0
    if r.mlp_hidden:
        return d * r.mlp_hidden + r.mlp_hidden * E
    return d * E


def expert_choice_capacity(n_tokens: int, top_k: int, n_experts: int) -> int:
    """Tokens each expert takes under expert choice: ceil(k·T/E), k the average experts per token (Zhou et
    al. 2022's capacity factor c), so that E·capacity ≥ k·T."""
    return min(n_tokens, -(-top_k * n_tokens // n_experts))


def expert_choice_flops_per_token(f: MoEPlan, d: int, tokens: int) -> Fraction:
    """Expert choice's routed-expert FLOPs per token for a call of ``tokens`` tokens, from the capacity:
    E experts × ceil(k·T/E) tokens × 2·(expert matrices), over T (= k·2·matrices when E divides k·T)."""
    E = f.n_experts
    capacity = expert_choice_capacity(tokens, f.router.top_k, E)
    return Fraction(E * capacity * 2 * ffn_weights(d, f.d_ff, f.gated), tokens)


def mixer_part(plan: Any, d: int) -> Part:
    """A linear-attention, state-space or convolution mixer (docs/mixers.md): its kind's exact count."""
    kind = KINDS[plan.kind]
    p = kind.params(plan, d)
    return Part(p, p, 2 * kind.matmul_weights(plan, d))


def layer_parts(layer: LayerPlan, model: ResolvedModel) -> dict[str, Part]:
    """One layer's parts: its token mixer (attention or another kind), one norm per sublayer it has, its FFN."""
    d = model.d_model
    npd = model.norm.params_per_dim
    if layer.pair_ffn is not None:
        return _apply_frozen(pair_layer_parts(layer, d, npd), model.frozen)
    parts: dict[str, Part] = {}
    if layer.has_attention:
        parts["attention"] = attention_part(layer.attention, d, npd)
    elif not isinstance(layer.mixer, AbsentPlan):
        parts["mixers"] = mixer_part(layer.mixer, d)
    sublayers = (not isinstance(layer.mixer, AbsentPlan)) + layer.has_ffn
    norms = {"sandwich": 2 * sublayers, "parallel": 1}.get(model.norm.placement, sublayers)  # of d each
    if isinstance(layer.ffn, MoEPlan) and layer.ffn.output_norm and model.norm.placement != "sandwich":
        norms += 1  # the MoE block's own output norm (A.X-K1)
    gated = len(model.norm_gate.gates(layer)) * 2 * d * model.norm_gate.rank if model.norm_gate else 0  # A.X-K2
    parts["norms"] = Part(norms * d * npd + gated, norms * d * npd + gated, 2 * gated)
    if model.hyper_connections is not None:  # one connection per sublayer (moec/analyze/hyper.py)
        from moec.analyze.hyper import layer_part

        parts.update(layer_part(layer, model))
    if layer.has_ffn:
        parts.update(ffn_parts(layer.ffn, d))  # type: ignore[arg-type]
    if model.encoder:  # an encoder-decoder model's cross-attention and relative-bias tables (moec/analyze/encdec.py)
        from moec.analyze.encdec import encdec_parts, merged

        parts = merged(parts, encdec_parts(layer, model))
    return _apply_frozen(parts, model.frozen)


def attention_sublayers(layer: LayerPlan) -> int:
    """The attentions a layer runs, each with its own KV cache: two in a shortcut-MoE pair layer (LongCat-Flash),
    one in another attention layer, none in a layer with another token mixer or none."""
    return (2 if layer.pair_ffn is not None else 1) if layer.has_attention else 0


def pair_layer_parts(layer: LayerPlan, d: int, npd: int) -> dict[str, Part]:
    """A shortcut-MoE pair layer (LongCat-Flash): two attentions and two dense FFNs of the same plans, four norms
    of d (one before each sublayer), and the MoE (docs/conventions.md, "Shortcut-MoE pair layers")."""
    assert layer.pair_ffn is not None and isinstance(layer.ffn, MoEPlan)
    attn = attention_part(layer.attention, d, npd)
    dense = ffn_parts(layer.pair_ffn, d)["dense_ffn"]
    parts = {
        "attention": Part(2 * attn.params, 2 * attn.active, 2 * attn.flops),
        "norms": Part(4 * d * npd, 4 * d * npd, 0),
        "dense_ffn": Part(2 * dense.params, 2 * dense.active, 2 * dense.flops),
    }
    parts.update(ffn_parts(layer.ffn, d))
    return parts


def sequence_flops(layer: LayerPlan, d: int, seq: int, mode: str) -> tuple[Fraction, Fraction]:
    """A layer's FLOPs per token beyond its linear layers at context ``seq``: (the training and prefill form,
    one decode step after ``seq`` tokens). Attention: the scores (QKᵀ and AV) over the keys a query sees, its
    average under ``mode`` for training, ``seq`` keys (capped by window and chunk) for the step; another
    mixer: its kind's chunked and recurrent forms (docs/mixers.md); none: 0."""
    if layer.has_attention:  # with an indexer: the sparse form (attention_sequence_flops)
        forms = attention_sequence_flops(layer.attention, seq, mode)
        n = attention_sublayers(layer)  # a shortcut-MoE pair layer attends twice
        return n * forms["sparse_train"], n * forms["sparse_step"]
    if isinstance(layer.mixer, AbsentPlan):
        return Fraction(0), Fraction(0)
    forms = KINDS[layer.mixer.kind].mixing_flops(layer.mixer, d, seq)
    return Fraction(forms["chunked"]), Fraction(forms["recurrent"])


def model_edge_parts(model: ResolvedModel) -> dict[str, Part]:
    """Embedding, final norm and head: the parts outside the layers."""
    d, V = model.d_model, model.vocab_size
    emb = V * d + (model.max_seq_len * d if model.positions.kind == "learned" else 0)
    final_norm = d * model.norm.params_per_dim if model.norm.final_norm else 0
    final_norm *= 2 if model.encoder else 1  # an encoder-decoder model: each stack ends with its own
    head = (0 if model.tie_embeddings else V * d) + (V if model.head_bias else 0)
    parts = {
        "embedding": Part(emb, emb, 0),
        "norms": Part(final_norm, final_norm, 0),
        "head": Part(head, head, 2 * d * V),
    }
    if model.hyper_connections is not None:  # the streams merge before the final norm (moec/analyze/hyper.py)
        from moec.analyze.hyper import head_part

        parts.update(head_part(model))
    return _apply_frozen(parts, model.frozen)


def mtp_parts(layer: LayerPlan, model: ResolvedModel) -> dict[str, Part]:
    """A DeepSeek-V3 MTP module: two input norms, a 2d→d projection, a block, and a final norm.
    It shares the embedding and the head with the main model (their matmul is counted again)."""
    d = model.d_model
    npd = model.norm.params_per_dim
    parts = layer_parts(layer, model)
    parts["norms"] = Part(parts["norms"].params + 3 * d * npd, parts["norms"].active + 3 * d * npd, 0)
    parts["projection"] = Part(2 * d * d, 2 * d * d, 4 * d * d)
    parts["head"] = Part(0, 0, 2 * d * model.vocab_size)
    return parts


def _apply_frozen(parts: dict[str, Part], frozen: tuple[str, ...]) -> dict[str, Part]:
    if not frozen:
        return parts
    return {k: Part(p.params, p.active, p.flops, p.frozen or k in frozen) for k, p in parts.items()}
