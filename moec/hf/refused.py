"""Hugging Face MoE families moec knows and refuses, each with the features it cannot express yet.

A config of one of these model_types gets one located error that names what is missing, instead of "not a
supported model_type": the user learns that the family was read and what stands in the way (docs/hf-families.md,
"Known but refused"). An entry leaves this table when its family module (moec/hf/families/) imports it exactly;
a model_type cannot be both refused and imported (tests/hf/test_refused.py).

Torch-free, like moec.hf.config, which reads it.
"""

from __future__ import annotations

REFUSED_FAMILIES: dict[str, str] = {
    # MuseSparkForConditionalGeneration (Meta's Muse Spark): its text model, MuseSparkTextModel
    "muse_spark": "residual gates (each sublayer joins as alpha·x + beta·f(x), alpha and beta from a learned "
    "per-channel gate through a temperature), a latent MoE (a pre-expert projection to moe_hidden_size and its norm, "
    "experts at that width with each expert's output normed, a post-expert projection back), weight-free norms "
    "after the attention (eps post_norm_eps) and on the embeddings, a post-FFN norm that scales before normalising, "
    "a weight-free norm of each attention head's output before its element gate, the router logits' "
    "output_multiplier, and a final norm without the unit offset of the other norms",
    # OpenAIPrivacyFilterForTokenClassification: a token classifier, not a language model
    "openai_privacy_filter": "a bidirectional encoder (attention within a two-sided sliding window) with a "
    "token-classification head instead of a causal LM head",
    # VitPoseBackbone (ViTPose+): VitPoseNaiveMoe picks an expert FFN by the caller's dataset_index
    "vitpose_backbone": "a vision backbone whose expert FFNs are chosen by a dataset index given with the input, "
    "not by a router over tokens",
    # DogeForCausalLM (SmallDoge)
    "doge": (
        "dynamic mask attention (a per-key bias exp(A·softplus(dt_proj(v))) added to the scores, only the "
        "keep_window_size highest keys kept), learned per-channel residual weights and, with is_moe, a cross-domain"
        " MoE (a gated MLP plus num_experts single-neuron experts chosen by product-key routing)"
    ),
    # ZayaForCausalLM (Zyphra's ZAYA1)
    "zaya": (
        "compressed convolutional attention (CCA: causal convolutions over the queries and keys, current and "
        "delayed value projections, a per-head key temperature), a learned scale and bias on each residual add, and"
        " an MLP router whose hidden state passes from layer to layer"
    ),
    # Ernie4_5_VLMoeForConditionalGeneration and its text model
    **dict.fromkeys(
        ("ernie4_5_vl_moe", "ernie4_5_vl_moe_text"),
        (
            "modality-isolated experts: each MoE layer holds a text expert set and a vision expert set of its own "
            "width (moe_intermediate_size [text, vision]), the token's modality choosing the set"
        ),
    ),
    # InklingForConditionalGeneration and its text model
    **dict.fromkeys(
        ("inkling_mm_model", "inkling_text"),
        (
            "short causal convolutions (conv_kernel_size) on the keys, the values and each sublayer's output, "
            "hidden-state-conditioned relative position logits (d_rel bias profiles over rel_extent distances) and "
            "a normed embedding"
        ),
    ),
    # Inkling2ForConditionalGeneration and its text model
    **dict.fromkeys(
        ("inkling2", "inkling2_text"),
        (
            "block attention residuals (every n_layers_per_attn_res_block layers a learned query attends over the "
            "earlier blocks' outputs), an L2-clipped hidden-state-conditioned relative position bias, dynamic short"
            " convolutions on the keys and values, per-token attention sinks from a projection, a gated output "
            "projection and softcapped SwiGLU experts"
        ),
    ),
    # Inkling2LoopForConditionalGeneration and its text model
    **dict.fromkeys(
        ("inkling2_loop", "inkling2_loop_text"),
        (
            "looped layers (layers loop_layer_index_start to loop_layer_index_end run loop_num_passes times, each "
            "pass mixed into the queries, keys, values and MLP input through tanh message gates of rank "
            "loop_gate_rank), besides Inkling2's block attention residuals, L2-clipped relative position bias, "
            "dynamic short convolutions, attention sinks, gated output projection and softcapped SwiGLU experts"
        ),
    ),
    # DiffusionGemmaForBlockDiffusion and its text model
    **dict.fromkeys(
        ("diffusion_gemma", "diffusion_gemma_text"),
        (
            "a block-diffusion encoder-decoder (a bidirectional encoder over the context and a decoder that "
            "denoises a canvas of canvas_length tokens, with self-conditioning on its previous step's logits)"
        ),
    ),
    # DeepseekV4ForCausalLM (DeepSeek-V4-Flash / -Pro): its mHC hyper-connections are expressible
    # (model.hyper_connections, residual sinkhorn), the rest is not yet
    "deepseek_v4": (
        "compressed sparse attention (per-layer KV compressors at compress_rates, 4 for CSA and 128 for HCA, with "
        "their own gates and position biases and a rotary base compress_rope_theta, beside a sliding_window branch "
        "over one shared KV head), a lightning indexer over the compressed entries, a grouped output projection "
        "(o_groups groups through o_lora_rank) and hash-routed MoE layers (mlp_layer_types hash_moe: a learned "
        "token-id-to-expert table, tid2eid)"
    ),
    # Glm5NextForConditionalGeneration and its text model: its mHC hyper-connections with a mean head, MLA with the
    # DSA indexer and swiglu_limit experts are expressible, the rest is not yet
    **dict.fromkeys(
        ("glm5_next", "glm5_next_text"),
        (
            "the indexer's KPool (it selects groups of index_kpool compressed tokens, the incomplete tail always "
            "selected), cross-layer sharing of the indexer's choice (indexer_types shared), and its linear-attention "
            "layers (Glm5NextTextLinearAttention: a forget gate with a lower bound, linear_lower_bound) not yet held "
            "against moec's KDA"
        ),
    ),
    # Qwen4ExpForConditionalGeneration and its text model
    **dict.fromkeys(
        ("qwen4_exp", "qwen4_exp_text"),
        (
            "a gated-residual form of hyper-connections (hc_count streams mixed through a low-rank projection, "
            "hc_lowrank, with per-stream injection weights: not model.hyper_connections' pre/post/comb form), hashed "
            "n-gram embeddings (ngram_size, heads_per_ngram) injected by per-layer PLE layers (ple_layer_ids) with "
            "their own convolutions, and a QSA indexer on GQA layers choosing compressed key blocks (indexer_budget, "
            "indexer_compress_ratio)"
        ),
    ),
    # MistralLarge4ForConditionalGeneration and its text model (DeepSeek-V3.2's indexer on MLA without a q latent)
    **dict.fromkeys(
        ("mistral_large4", "mistral_large4_text"),
        (
            "learned rope frequency scales (LeRoPE: inv_freq · exp(alpha)), a per-head query scaling by "
            "log(position + 1) with a learned scale and bias in the attention and in the indexer, indexer queries "
            "from the LayerNorm-ed hidden state instead of a query latent, layers that reuse an earlier layer's "
            "indexer choice (indexer_types shared) or latent KV cache (kv_source_layers), and NoPE layers whose MLA "
            "keys carry no rotary part"
        ),
    ),
    # MiniMaxM3SparseForConditionalGeneration and its text model, MiniMaxM3VLForCausalLM
    **dict.fromkeys(
        ("minimax_m3_vl", "minimax_m3_vl_text"),
        (
            "a block-sparse indexer on grouped-query attention (minimax_m3_sparse layers: each of index_n_heads "
            "heads, one per KV group, keeps the index_topk_blocks blocks of index_block_size keys whose max-pooled "
            "q·k scores are best, plus the index_local_blocks nearest blocks; no head weights, no ReLU), on the "
            "layers layer_types marks only"
        ),
    ),
    # Gemma4ForConditionalGeneration (its text model) and Gemma4ForCausalLM: the sandwich norms, the √d embedding
    # scale, the attention scale 1, the per-type windows and the logit soft-cap are expressible, the rest is not yet
    **dict.fromkeys(
        ("gemma4", "gemma4_text"),
        (
            "a weightless RMS norm on the values (v_norm), a per-layer output scale kept in the checkpoint "
            "(layer_scalar), full-attention layers with a head_dim and key/value head count of their own "
            "(global_head_dim, num_global_key_value_heads), keys reused as values on those layers "
            "(attention_k_eq_v), proportional RoPE (rope_type proportional: the first partial_rotary_factor of the "
            "frequency pairs rotate at the whole head_dim's frequencies, the others not at all), and, where the "
            "config enables them, an MoE block beside the dense MLP (enable_moe_block: its own pre and post norms, "
            "a router over a weightless norm times a learned scale vector, a learned per-expert scale on the top-k "
            "weights), per-layer input embeddings (hidden_size_per_layer_input), key/value sharing over the last "
            "num_kv_shared_layers layers with a double-wide MLP on them (use_double_wide_mlp) and bidirectional "
            "attention (use_bidirectional_attention: all)"
        ),
    ),
}
"""model_type (as transformers' config.json spells it) → the features moec lacks for it, named."""


def refusal(model_type: str) -> str | None:
    """The message for a known but refused ``model_type``; None when it is not one."""
    features = REFUSED_FAMILIES.get(model_type)
    if features is None:
        return None
    return f"model_type {model_type!r} is known but not imported yet: moec cannot express {features}"
