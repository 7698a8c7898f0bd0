"""How each Hugging Face ``model_type`` spells its architecture, read off transformers 5.23.

One translator per ``model_type`` turns a config.json (wrapped in :class:`HFConfig`, which supplies the
transformers class defaults and records every field read) into spec fields on a :class:`Draft`.
The semantics come from ``transformers/models/<family>/configuration_*.py`` and ``modeling_*.py``:
which layers are MoE, which width applies where, how the router scores and renormalises, where the
biases are. Anything the moec schema cannot express becomes a gap (``draft.py``); the importer refuses a
config with gaps, naming the field and the schema addition that would carry it, and never
approximates. (The draft still holds the nearest spec, and ``param_delta`` says by how much
transformers' parameter count differs from it; the parity tests use that to pin each gap down.)

Exporters (``export.py``) go the other way for the families a resolved plan can map onto exactly.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Mapping
from typing import Any

from moec.hf.draft import Draft, Family, HFConfig, is_number, shown
from moec.hf.rope import read_rope
from moec.spec.schema import MAX_LAYERS

# ---------------------------------------------------------------------------------------------
# shared pieces


def _base(c: HFConfig, d: Draft, family: str, *, norm: str = "rmsnorm") -> None:
    d.put("model.vocab_size", c.int("vocab_size"), c.src("vocab_size"))
    d.put("model.d_model", c.int("hidden_size"), c.src("hidden_size"))
    _layer_count(c, d, "num_hidden_layers")
    d.put("model.max_seq_len", c.int("max_position_embeddings"), c.src("max_position_embeddings"))
    d.put("model.tie_embeddings", c.bool("tie_word_embeddings"), c.src("tie_word_embeddings"))
    kind_note = "nn.LayerNorm with bias in every" if norm == "layernorm" else "RMSNorm in every"
    d.put("model.norm.kind", norm, f"{kind_note} {family} layer, pre-norm, plus a final norm")
    d.put("model.norm.eps", c.float("rms_norm_eps"), c.src("rms_norm_eps"))
    d.put("model.positions.kind", "rope", f"{family} uses rotary positions")
    read_rope(c, d)
    _dropout(c, d, "attention_dropout")
    d.ffn = ["moe"] * d.n_layers
    d.window = [None] * d.n_layers
    d.rope = [True] * d.n_layers


_ACTIVATIONS = {"silu": "swiglu", "swish": "swiglu", "gelu_pytorch_tanh": "geglu", "gelu_new": "geglu"}


def _layer_count(c: HFConfig, d: Draft, key: str) -> None:
    """Bounded before any per-layer list is built: a config asking for 10^8 layers is refused at once."""
    d.n_layers = c.int(key, maximum=MAX_LAYERS)
    d.layers_known = not c.failed(key)
    d.put("model.n_layers", d.n_layers, c.src(key))


def _activation(c: HFConfig, d: Draft, key: str = "hidden_act") -> str:
    act = c.str(key)
    if act is None:
        return "swiglu"  # refused and reported
    if act not in _ACTIVATIONS:
        d.gap(
            c.prefix + key,
            act,
            f"hidden_act {act!r} in a gated MLP: moec maps silu → swiglu and the tanh GELUs "
            "(gelu_pytorch_tanh, gelu_new) → geglu; exact-erf 'gelu' and others have no moec activation",
            "activation",
        )
        return "swiglu"
    return _ACTIVATIONS[act]


def _dropout(c: HFConfig, d: Draft, *keys: str) -> None:
    """Dropout is identity at inference and changes no parameter count; a moec spec has no field for it, so
    a non-zero rate is named in the written spec's header (training only) instead of refusing the model."""
    for k in keys:
        p = c.float(k, optional=True)
        if p:
            d.training_only.append(f"{c.prefix}{k} {p!r}")


def _gqa(c: HFConfig, d: Draft, *, bias: bool, out_bias: bool, bias_src: str, qk_norm: bool = False) -> None:
    h = c.int("num_attention_heads")
    kv = c.int("num_key_value_heads", optional=True)
    hd = c.int("head_dim", optional=True)
    d_model = d.get("model.d_model")
    d.put("attention.kind", "gqa", "")
    d.put("attention.n_heads", h, c.src("num_attention_heads"))
    d.put("attention.n_kv_heads", kv or h, c.src("num_key_value_heads") if kv else "num_key_value_heads unset: = heads")
    d.put("attention.head_dim", hd or d_model // h, c.src("head_dim") if hd else "hidden_size / num_attention_heads")
    d.put("attention.qk_norm", qk_norm, "")
    d.put("attention.bias", bias, bias_src)
    d.put("attention.out_bias", out_bias, bias_src)


def _uniform_window(c: HFConfig, d: Draft, key: str = "sliding_window", enabled: bool = True) -> None:
    w = c.int(key, optional=True) if enabled else None
    d.window = [w] * d.n_layers
    d.window_note = f"{c.src(key)} on every layer" if w else ""


def _typed_windows(c: HFConfig, d: Draft, window: int | None, default_types: list[str], why: str) -> None:
    """layer_types (given, or the family's default list) decide which layers slide."""
    given = c.value("layer_types") is not None  # null: the family's default, as transformers computes it
    types = c.str_list("layer_types") if given else default_types
    if types is None or not d.layers_known:
        return
    if len(types) != d.n_layers:
        c.bad("layer_types", f"{len(types)} entries for {d.n_layers} layers")
        return
    types = ["full_attention" if t == "attention" else t for t in types]
    if not _all_known(c, "layer_types", types, ("full_attention", "sliding_attention")):
        return
    d.window = [window if t == "sliding_attention" else None for t in types]
    src = "layer_types" if given else f"layer_types unset: {why}"
    d.window_note = f"{src}; sliding layers use {c.src('sliding_window')}" if any(d.window) else ""


def _all_known(c: HFConfig, key: str, values: list[str], known: tuple[str, ...]) -> bool:
    """Each unknown value of a per-layer list reported once, with the layers that hold it."""
    layers: dict[str, list[int]] = {}
    for i, v in enumerate(values):
        if v not in known:
            layers.setdefault(v, []).append(i)
    for v, idx in layers.items():
        more = f" (and {len(idx) - 5} more)" if len(idx) > 5 else ""
        c.bad(key, f"{shown(v)} on layers {idx[:5]}{more} is not one of {', '.join(known)}")
    return not layers


def _moe_core(
    c: HFConfig, d: Draft, *, experts_key: str, width_key: str, top_k_key: str = "num_experts_per_tok"
) -> None:
    d.section(
        "moe",
        n_experts=(c.int(experts_key, minimum=0), c.src(experts_key)),  # 0: no MoE layer (Qwen), else checked
        d_ff=(c.int(width_key), c.src(width_key)),
        activation=(_activation(c, d), c.src("hidden_act") + " (gated)"),
    )
    d.put("moe.router.top_k", c.int(top_k_key), c.src(top_k_key))


def _router(d: Draft, note: str, **values: Any) -> None:
    """Router fields a family fixes in code (not in config.json); ``note`` names the modeling class."""
    for k, v in values.items():
        d.put(f"moe.router.{k}", v, note)
        note = ""


def _aux(c: HFConfig, d: Draft, key: str = "router_aux_loss_coef", granularity: str = "batch") -> None:
    coeff = c.float(key, optional=True)
    if coeff is not None:
        d.put("moe.balance.load_balance_coeff", coeff, c.src(key) + " (training only)")
        d.put("moe.balance.load_balance_granularity", granularity, "")


def _dense_ffn(c: HFConfig, d: Draft, key: str = "intermediate_size", bias: bool = False, bias_src: str = "") -> None:
    d.section(
        "ffn",
        d_ff=(c.int(key), c.src(key)),
        activation=(_activation(c, d), c.src("hidden_act") + " (gated)"),
        bias=(bias, bias_src),
    )


# ---------------------------------------------------------------------------------------------
# dense families


def _llama(c: HFConfig, d: Draft) -> None:
    _base(c, d, "Llama")
    b = c.bool("attention_bias")
    _gqa(c, d, bias=b, out_bias=b, bias_src=c.src("attention_bias") + " (q, k, v and o)")
    _dense_ffn(c, d, bias=c.bool("mlp_bias"), bias_src=c.src("mlp_bias"))
    d.ffn = ["dense"] * d.n_layers


def _mistral(c: HFConfig, d: Draft) -> None:
    _base(c, d, "Mistral")
    _gqa(c, d, bias=False, out_bias=False, bias_src="MistralAttention has no biases")
    _dense_ffn(c, d, bias_src="MistralMLP has no biases")
    d.ffn = ["dense"] * d.n_layers
    _uniform_window(c, d)
    if c.given("layer_types"):
        d.gap(
            "layer_types",
            "…",
            "transformers 5.23 ignores layer_types for model_type mistral (Ministral "
            "checkpoints need model_type ministral)",
            "use model_type ministral (not supported yet)",
        )


def _qwen_windows(c: HFConfig, d: Draft) -> None:
    """Qwen2/Qwen3 dense: sliding only with use_sliding_window, on layers ≥ max_window_layers by default."""
    on = c.bool("use_sliding_window")
    w = c.int("sliding_window", optional=True) if on else None
    c.value("sliding_window")
    mwl = c.int("max_window_layers", minimum=0)
    default = ["sliding_attention" if w is not None and i >= mwl else "full_attention" for i in range(d.n_layers)]
    _typed_windows(c, d, w, default, f"use_sliding_window {on}, max_window_layers {mwl}")


def _qwen2(c: HFConfig, d: Draft) -> None:
    _base(c, d, "Qwen2")
    _gqa(c, d, bias=True, out_bias=False, bias_src="Qwen2Attention: bias on q, k, v, none on o")
    _dense_ffn(c, d, bias_src="Qwen2MLP has no biases")
    d.ffn = ["dense"] * d.n_layers
    _qwen_windows(c, d)


def _qwen3(c: HFConfig, d: Draft) -> None:
    _base(c, d, "Qwen3")
    b = c.bool("attention_bias")
    _gqa(c, d, bias=b, out_bias=b, bias_src=c.src("attention_bias"), qk_norm=True)
    d.put("attention.qk_norm", True, "Qwen3Attention: RMSNorm(head_dim) on q and k")
    _dense_ffn(c, d, bias_src="Qwen3MLP has no biases")
    d.ffn = ["dense"] * d.n_layers
    _qwen_windows(c, d)


# ---------------------------------------------------------------------------------------------
# MoE families


def _mixtral(c: HFConfig, d: Draft) -> None:
    _base(c, d, "Mixtral")
    _gqa(c, d, bias=False, out_bias=False, bias_src="MixtralAttention has no biases")
    _uniform_window(c, d)
    _moe_core(c, d, experts_key="num_local_experts", width_key="intermediate_size")
    _router(
        d,
        "MixtralTopKRouter: softmax over all experts, top-k, renormalise",
        score="softmax",
        softmax_after_topk=False,
        normalize_topk=True,
    )
    _jitter_on_hidden(c, d, "router_jitter_noise")
    _aux(c, d)
    d.ffn_note = "every Mixtral layer is MoE"


def _jitter_on_hidden(c: HFConfig, d: Draft, key: str) -> None:
    j = c.float(key, optional=True)
    if j:
        d.gap(
            key,
            j,
            "this family multiplies the hidden state fed to router and experts by U(1±j); moec's "
            "router.jitter perturbs the router input only",
            "moe_jitter",
        )


def _qwen_moe_layers(c: HFConfig, d: Draft, experts_key: str) -> None:
    step = c.int("decoder_sparse_step")
    dense_only = set(c.int_list("mlp_only_layers"))
    E = c.value(experts_key)
    d.ffn = [
        "moe" if i not in dense_only and isinstance(E, int) and E > 0 and (i + 1) % step == 0 else "dense"
        for i in range(d.n_layers)
    ]
    d.ffn_note = f"MoE where (i+1) % decoder_sparse_step ({step}) == 0 and i not in mlp_only_layers"


def _qwen2_moe(c: HFConfig, d: Draft) -> None:
    _base(c, d, "Qwen2-MoE")
    b = c.bool("qkv_bias")
    _gqa(c, d, bias=b, out_bias=False, bias_src=c.src("qkv_bias") + " (q, k, v; o has none)")
    on = c.bool("use_sliding_window")
    w = c.int("sliding_window", optional=True) if on else None
    c.value("sliding_window")
    mwl = c.int("max_window_layers", minimum=0)
    # Qwen2MoeConfig's default differs from Qwen2's: sliding on even layers below max_window_layers
    default = ["sliding_attention" if (i + 1) % 2 and i < mwl and on else "full_attention" for i in range(d.n_layers)]
    _typed_windows(c, d, w, default, f"use_sliding_window {on}; even layers < max_window_layers {mwl}")
    _moe_core(c, d, experts_key="num_experts", width_key="moe_intermediate_size")
    _router(d, "Qwen2MoeTopKRouter: softmax over all experts, top-k", score="softmax", softmax_after_topk=False)
    d.put("moe.router.normalize_topk", c.bool("norm_topk_prob"), c.src("norm_topk_prob"))
    d.section(
        "moe",
        n_shared_experts=(1, "Qwen2MoeSparseMoeBlock.shared_expert"),
        d_ff_shared=(c.int("shared_expert_intermediate_size"), c.src("shared_expert_intermediate_size")),
        shared_gate=(True, "shared_expert_gate: sigmoid(Linear(d, 1)) scales the shared expert"),
    )
    _aux(c, d)
    _qwen_moe_layers(c, d, "num_experts")
    if "dense" in d.ffn:
        _dense_ffn(c, d, bias_src="Qwen2MoeMLP has no biases")
    c.value("intermediate_size")  # the dense layers' width, unused without them


def _qwen3_moe(c: HFConfig, d: Draft) -> None:
    _base(c, d, "Qwen3-MoE")
    b = c.bool("attention_bias")
    _gqa(c, d, bias=b, out_bias=b, bias_src=c.src("attention_bias"), qk_norm=True)
    d.put("attention.qk_norm", True, "Qwen3MoeAttention: RMSNorm(head_dim) on q and k")
    _uniform_window(c, d, enabled=c.bool("use_sliding_window"))
    c.value("sliding_window")
    c.value("max_window_layers")  # read by Qwen3MoeConfig, unused by its model
    _moe_core(c, d, experts_key="num_experts", width_key="moe_intermediate_size")
    _router(d, "Qwen3MoeTopKRouter: softmax over all experts, top-k", score="softmax", softmax_after_topk=False)
    d.put("moe.router.normalize_topk", c.bool("norm_topk_prob"), c.src("norm_topk_prob"))
    _aux(c, d)
    _qwen_moe_layers(c, d, "num_experts")
    if "dense" in d.ffn:
        _dense_ffn(c, d, bias_src="Qwen3MoeMLP has no biases")
    c.value("intermediate_size")  # the dense layers' width, unused without them


def _olmoe(c: HFConfig, d: Draft) -> None:
    _base(c, d, "OLMoE")
    b = c.bool("attention_bias")
    _gqa(c, d, bias=b, out_bias=b, bias_src=c.src("attention_bias"), qk_norm=True)
    d.put("attention.qk_norm", True, "OlmoeAttention: q_norm, k_norm")
    d.put("attention.qk_norm_scope", "projection", "RMSNorm(hidden_size) on q, RMSNorm(kv·head_dim) on k, whole")
    _clip_qkv(c, d, "clip_qkv")
    # OlmoeModel builds one full causal mask and its attention passes no window: a window in the config
    # does nothing in transformers, and would in a model that honours it, so it is refused as ambiguous
    w = c.value("sliding_window")
    if w is not None:
        d.gap(
            "sliding_window",
            w,
            "transformers' OLMoE ignores sliding_window (full causal attention)",
            "none: remove sliding_window (what transformers runs), or name the window in the moec spec",
        )
    _moe_core(c, d, experts_key="num_experts", width_key="intermediate_size")
    _router(d, "OlmoeTopKRouter: softmax over all experts, top-k", score="softmax", softmax_after_topk=False)
    d.put("moe.router.normalize_topk", c.bool("norm_topk_prob"), c.src("norm_topk_prob"))
    _aux(c, d)
    d.ffn_note = "every OLMoE layer is MoE"


def _clip_qkv(c: HFConfig, d: Draft, key: str) -> None:
    clip = c.float(key, optional=True)
    if clip is not None:
        d.put("attention.clip_qkv", clip, c.src(key) + " (q, k, v clamped after the projection)")


def _gpt_oss(c: HFConfig, d: Draft) -> None:
    _base(c, d, "gpt-oss")
    b = c.bool("attention_bias")
    _gqa(c, d, bias=b, out_bias=b, bias_src=c.src("attention_bias") + " (q, k, v and o)")
    d.put("attention.sinks", True, "GptOssAttention.sinks: one learned logit per head")
    w = c.int("sliding_window", optional=True)
    default = ["sliding_attention" if (i + 1) % 2 else "full_attention" for i in range(d.n_layers)]
    _typed_windows(c, d, w, default, "sliding on even layers")
    _moe_core(c, d, experts_key="num_local_experts", width_key="intermediate_size")
    if c.given("experts_per_token") and c.value("experts_per_token") != d.get("moe.router.top_k"):
        c.bad("experts_per_token", "disagrees with num_experts_per_tok")
    c.value("initial_context_length")  # gpt-oss's own name for yarn's original length
    c.value("hidden_act")  # GptOssExperts ignores it: the activation is fixed in code
    d.put("moe.activation", "swiglu_clamped", "GptOssExperts._apply_gate: (clamp(up) + 1)·g·sigmoid(alpha·g)")
    d.put("moe.activation_alpha", c.float("swiglu_alpha"), c.src("swiglu_alpha"))
    d.put("moe.activation_limit", c.float("swiglu_limit"), c.src("swiglu_limit"))
    d.put("moe.bias", True, "GptOssExperts: gate_up_proj_bias and down_proj_bias")
    _router(
        d,
        "GptOssTopKRouter: top-k of the logits, softmax over the k",
        score="softmax",
        softmax_after_topk=True,
        normalize_topk=False,
        bias=True,
    )
    _aux(c, d)
    d.ffn_note = "every gpt-oss layer is MoE"


def _phimoe(c: HFConfig, d: Draft) -> None:
    _base(c, d, "Phi-MoE", norm="layernorm")
    b = c.bool("attention_bias")
    _gqa(c, d, bias=b, out_bias=b, bias_src=c.src("attention_bias") + " (q, k, v and o)")
    _uniform_window(c, d)
    _dropout(c, d, "hidden_dropout")
    _moe_core(c, d, experts_key="num_local_experts", width_key="intermediate_size")
    _router(
        d,
        "PhimoeTopKRouter: sparsemixer top-2",
        kind="sparsemixer",
        score="softmax",
        softmax_after_topk=False,
        normalize_topk=False,
    )
    d.put("moe.router.sparsemixer_eps", c.float("router_jitter_noise"), c.src("router_jitter_noise") + " (its eps)")
    if c.value("num_experts_per_tok") != 2:
        c.bad("num_experts_per_tok", "PhimoeTopKRouter's sparsemixer always picks 2 experts")
    # multiplicative U(1±j) noise on the hidden state, in training only; SparseMixer's own training path
    # (Gumbel sampling, Heun's gradient estimator) is not implemented: moec trains with the inference routing
    j = c.float("input_jitter_noise", optional=True)
    if j:
        d.training_only.append(f"input_jitter_noise {j!r}")
    d.training_only.append("SparseMixer's training-time sampling (moec routes as at inference)")
    d.put("model.head_bias", c.bool("lm_head_bias"), c.src("lm_head_bias"))
    _aux(c, d)
    d.ffn_note = "every Phi-MoE layer is MoE"


def _granitemoe(c: HFConfig, d: Draft) -> None:
    _base(c, d, "Granite-MoE")
    b = c.bool("attention_bias")
    _gqa(c, d, bias=b, out_bias=b, bias_src=c.src("attention_bias") + " (q, k, v and o)")
    for k in ("embedding_multiplier", "residual_multiplier", "logits_scaling"):
        v = c.float(k)
        if v != 1.0:  # GraniteMoeModel / DecoderLayer / ForCausalLM (μP scalars)
            d.put(f"model.{k}", v, c.src(k))
    am = c.float("attention_multiplier")
    hd = d.get("attention.head_dim")
    # GraniteMoeAttention.scaling = attention_multiplier; the standard 1/sqrt(head_dim) stays implicit
    if hd < 1 or not math.isclose(am, hd**-0.5, rel_tol=1e-12):  # hd 0: d_model < heads, refused later
        d.put("attention.scale", am, c.src("attention_multiplier") + " (softmax scale)")
    _moe_core(c, d, experts_key="num_local_experts", width_key="intermediate_size")
    _router(
        d,
        "GraniteMoeTopKRouter: top-k of the logits, softmax over the k",
        score="softmax",
        softmax_after_topk=True,
        normalize_topk=False,
    )
    _aux(c, d)
    d.ffn_note = "every Granite-MoE layer is MoE"


def _dbrx(c: HFConfig, d: Draft) -> None:
    attn = HFConfig(_dict(c, "attn_config"), _DBRX_ATTN, "attn_config.")
    ffn = HFConfig(_dict(c, "ffn_config"), _DBRX_FFN, "ffn_config.")
    c.children += [attn, ffn]
    ffn.value("hidden_size")  # DbrxConfig overwrites it with d_model
    d.put("model.vocab_size", c.int("vocab_size"), c.src("vocab_size"))
    d_model = c.int("d_model")
    d.put("model.d_model", d_model, c.src("d_model"))
    _layer_count(c, d, "n_layers")
    d.put("model.max_seq_len", c.int("max_seq_len"), c.src("max_seq_len"))
    if c.bool("tie_word_embeddings"):
        c.bad("tie_word_embeddings", "DBRX does not support tied embeddings (DbrxConfig.validate_architecture)")
    d.put("model.tie_embeddings", False, c.src("tie_word_embeddings"))
    d.put("model.norm.kind", "layernorm", "DbrxBlock: nn.LayerNorm(d_model, bias=False)")
    d.put("model.norm.eps", 1e-5, "nn.LayerNorm default eps (DBRX has no eps field)")
    d.put("model.norm.bias", False, "DbrxBlock norm_1, norm_2 and norm_f: LayerNorm(bias=False)")
    d.put("model.positions.kind", "rope", "DBRX uses rotary positions")
    read_rope(c, d, theta_fallback=attn.value("rope_theta"))
    _dropout(c, d, "resid_pdrop", "emb_pdrop")
    _dropout(attn, d, "attn_pdrop")
    h = c.int("n_heads")
    d.section(
        "attention",
        kind=("gqa", ""),
        n_heads=(h, c.src("n_heads")),
        n_kv_heads=(attn.int("kv_n_heads"), attn.src("kv_n_heads")),
        head_dim=(d_model // h, "d_model / n_heads"),
        qk_norm=(False, ""),
        bias=(False, "DbrxAttention: Wqkv and out_proj have no bias"),
        out_bias=(False, ""),
    )
    _derived(c, "num_key_value_heads", d.get("attention.n_kv_heads"))
    _clip_qkv(attn, d, "clip_qkv")
    d.section(
        "moe",
        n_experts=(ffn.int("moe_num_experts"), ffn.src("moe_num_experts")),
        d_ff=(ffn.int("ffn_hidden_size"), ffn.src("ffn_hidden_size")),
        activation=(_dbrx_activation(ffn, d), ffn.src("ffn_act_fn") + " (gated: w1, v1, w2)"),
    )
    d.put("moe.router.top_k", ffn.int("moe_top_k"), ffn.src("moe_top_k"))
    p = ffn.float("moe_normalize_expert_weights", optional=True)
    if p not in (None, 1.0):
        d.gap(
            "ffn_config.moe_normalize_expert_weights",
            p,
            "top-k weights divided by their p-norm, p ≠ 1",
            "moe.router.normalize_topk_p: float (p-norm of the renormalisation)",
        )
    _router(
        d, "DbrxFFN.route_tokens_to_experts: softmax over all experts, top-k", score="softmax", softmax_after_topk=False
    )
    d.put("moe.router.normalize_topk", p == 1.0, ffn.src("moe_normalize_expert_weights") + " (p = 1: sum)")
    d.put(
        "moe.router.jitter",
        ffn.float("moe_jitter_eps", optional=True) or 0.0,
        ffn.src("moe_jitter_eps") + " (DbrxRouter: router input only)",
    )
    coeff = ffn.float("moe_loss_weight", optional=True)
    d.put("moe.balance.load_balance_coeff", coeff or 0.0, ffn.src("moe_loss_weight") + " (training only)")
    c.value("router_aux_loss_coef")
    d.ffn = ["moe"] * d.n_layers
    d.ffn_note = "every DBRX layer is MoE"
    d.window = [None] * d.n_layers
    d.rope = [True] * d.n_layers


def _dbrx_activation(ffn: HFConfig, d: Draft) -> str:
    """ffn_act_fn: {"name": <a transformers activation>} (DbrxFFNConfig); absent means silu."""
    act = ffn.value("ffn_act_fn") or {"name": "silu"}
    name = act.get("name") if isinstance(act, dict) and set(act) <= {"name"} else None
    if not isinstance(name, str) or name not in _ACTIVATIONS:
        d.gap("ffn_config.ffn_act_fn", act, "an expert activation moec does not map", "activation")
        return "swiglu"
    return _ACTIVATIONS[name]


def _derived(c: HFConfig, key: str, expected: Any) -> None:
    """A field transformers derives from others and save_pretrained writes out: it must agree."""
    if c.given(key) and c.value(key) != expected:
        c.bad(key, f"{shown(c.value(key))}: transformers derives it as {expected!r} from the other fields")
    c.value(key)


def _dict(c: HFConfig, key: str) -> dict[str, Any]:
    return {k: x for k, x in c.mapping(key).items() if k != "model_type"}


def _deepseek(c: HFConfig, d: Draft, v3: bool) -> None:
    name = "DeepseekV3" if v3 else "DeepseekV2"
    _base(c, d, name)
    _mla(c, d, name)
    if v3:
        c.bool("rope_interleave")  # a rotary weight layout, not an architecture (the loader permutes)
    n_shared = c.int("n_shared_experts", minimum=0)
    f = c.int("moe_intermediate_size")
    mlp_bias = not v3 and c.bool("mlp_bias")
    _dense_ffn(c, d, bias=mlp_bias, bias_src=c.src("mlp_bias") if not v3 else f"{name}MLP has no biases")
    _moe_core(c, d, experts_key="n_routed_experts", width_key="moe_intermediate_size")
    if n_shared:
        d.section(
            "moe",
            n_shared_experts=(n_shared, c.src("n_shared_experts") + " (HF fuses them into one MLP of n·width)"),
            d_ff_shared=(f, c.src("moe_intermediate_size")),
        )
    k_dense = c.int("first_k_dense_replace", minimum=0)
    if mlp_bias and n_shared:
        n_moe = max(d.n_layers - k_dense, 0)
        d.gap(
            "mlp_bias",
            True,
            "DeepseekV2MLP biases reach the shared experts but not the routed ones",
            "moe.shared_bias: bool — biases on the shared experts only",
            param_delta=n_moe * (2 * n_shared * f + d.get("model.d_model")),
        )
    freq = c.value("moe_layer_freq", 1)
    if freq != 1:
        d.gap(
            "moe_layer_freq",
            freq,
            "transformers ignores moe_layer_freq (every layer ≥ first_k_dense_replace is "
            "MoE) while DeepSeek's own code uses layer % moe_layer_freq == 0: ambiguous",
            "layers.overrides",
        )
    d.ffn = ["dense" if i < k_dense else "moe" for i in range(d.n_layers)]
    d.ffn_note = f"MoE from layer first_k_dense_replace ({k_dense}) on"
    d.put("moe.router.scale", c.float("routed_scaling_factor"), c.src("routed_scaling_factor"))
    if v3:
        _deepseek_v3_router(c, d, k_dense)
    else:
        _deepseek_v2_router(c, d)
    alpha = c.float("aux_loss_alpha", optional=True)
    if alpha is not None:
        seq = c.bool("seq_aux", default=True)
        d.put("moe.balance.load_balance_coeff", alpha, c.src("aux_loss_alpha") + " (training only)")
        d.put("moe.balance.load_balance_granularity", "sequence" if seq else "batch", c.src("seq_aux"))
    c.value("ep_size")  # expert-parallel degree of DeepSeek's own code: a deployment choice


def _mla(c: HFConfig, d: Draft, name: str) -> None:
    """Multi-head latent attention: one KV latent for all heads, the ranks and per-part head dims."""
    h = c.int("num_attention_heads")
    kv = c.int("num_key_value_heads", optional=True)
    if kv not in (None, h):
        c.bad("num_key_value_heads", f"{kv}: MLA has one KV latent shared by all {h} heads")
    q_rank = c.int("q_lora_rank", optional=True)
    d.section(
        "attention",
        kind=("mla", f"{name}Attention (multi-head latent attention)"),
        n_heads=(h, c.src("num_attention_heads")),
        q_lora_rank=(q_rank, c.src("q_lora_rank") + " (null: a plain q_proj)"),
        kv_lora_rank=(c.int("kv_lora_rank"), c.src("kv_lora_rank")),
        qk_nope_head_dim=(c.int("qk_nope_head_dim"), c.src("qk_nope_head_dim")),
        qk_rope_head_dim=(c.int("qk_rope_head_dim"), c.src("qk_rope_head_dim")),
        v_head_dim=(c.int("v_head_dim"), c.src("v_head_dim")),
    )
    if c.bool("attention_bias"):
        latent = (q_rank or 0) + d.get("attention.kv_lora_rank") + d.get("attention.qk_rope_head_dim")
        d.gap("attention_bias", True, "MLA with biases", "mla_bias", d.n_layers * (latent + d.get("model.d_model")))
    c.value("head_dim")  # derived in __post_init__ (= qk_rope_head_dim)
    eps = d.get("model.norm.eps")
    if eps != 1e-6 and not c.failed(
        "rms_norm_eps"
    ):  # q_a_layernorm and kv_a_layernorm are built without eps: RMSNorm's default 1e-6
        d.gap(
            "rms_norm_eps",
            eps,
            f"{name}Attention's latent norms (q_a_layernorm, kv_a_layernorm) use eps 1e-6 whatever rms_norm_eps "
            "says, and a moec spec has one norm eps",
            "attention.latent_norm_eps: float | None — eps of MLA's q_a/kv_a norms (None: model.norm.eps). "
            "No count change",
        )
    _derived(c, "qk_head_dim", d.get("attention.qk_nope_head_dim") + d.get("attention.qk_rope_head_dim"))


def _deepseek_v3_router(c: HFConfig, d: Draft, k_dense: int) -> None:
    score = c.str("scoring_func", default="sigmoid")
    method = c.str("topk_method", default="noaux_tc")
    if score not in (None, "sigmoid"):
        d.gap("scoring_func", score, "DeepseekV3TopkRouter always scores with sigmoid", "moe.router.score")
    if method not in (None, "noaux_tc"):
        d.gap("topk_method", method, "DeepseekV3TopkRouter always routes noaux_tc", "moe.router")
    _router(
        d,
        "DeepseekV3TopkRouter: sigmoid, + e_score_correction_bias for selection, groups by top-2 sum",
        score="sigmoid",
        softmax_after_topk=False,
        selection_bias=True,
        group_score="top2_sum",
    )
    d.put("moe.router.normalize_topk", c.bool("norm_topk_prob"), c.src("norm_topk_prob"))
    d.put("moe.router.n_groups", c.int("n_group"), c.src("n_group"))
    d.put("moe.router.topk_groups", c.int("topk_group"), c.src("topk_group"))
    n_mtp = c.int("num_nextn_predict_layers", minimum=0)
    if n_mtp:
        mtp_kind = "moe" if d.n_layers >= k_dense else "dense"
        d.section(
            "mtp",
            n_layers=(n_mtp, c.src("num_nextn_predict_layers") + " (transformers builds none)"),
            ffn=(mtp_kind, "an MTP block is a layer past the last, so MoE"),
        )


def _deepseek_v2_router(c: HFConfig, d: Draft) -> None:
    score = c.str("scoring_func", default="softmax")
    method = c.str("topk_method")
    if score not in (None, "softmax"):
        d.gap("scoring_func", score, "DeepseekV2TopkRouter always scores with softmax", "moe.router.score")
    if method is not None and method not in ("greedy", "group_limited_greedy"):
        c.bad("topk_method", f"{shown(method)}: DeepseekV2TopkRouter knows greedy and group_limited_greedy")
    if c.bool("norm_topk_prob"):
        d.gap(
            "norm_topk_prob",
            True,
            "transformers' DeepseekV2TopkRouter ignores it while DeepSeek's own code renormalises: ambiguous",
            "moe.router.normalize_topk",
        )
    _router(
        d,
        "DeepseekV2TopkRouter: softmax over all experts, top-k, no renormalisation",
        score="softmax",
        softmax_after_topk=False,
        normalize_topk=False,
    )
    if method == "group_limited_greedy":
        d.put("moe.router.n_groups", c.int("n_group"), c.src("n_group"))
        d.put("moe.router.topk_groups", c.int("topk_group"), c.src("topk_group"))
        d.put("moe.router.group_score", "max", "group_limited_greedy: a group scores its best expert")
    else:
        c.value("n_group")
        c.value("topk_group")
    n_mtp = c.value("num_nextn_predict_layers")
    if n_mtp:
        d.gap("num_nextn_predict_layers", n_mtp, "MTP on deepseek_v2 (only deepseek_v3 maps it)", "mtp")


def _deepseek_v2(c: HFConfig, d: Draft) -> None:
    _deepseek(c, d, v3=False)


def _deepseek_v3(c: HFConfig, d: Draft) -> None:
    _deepseek(c, d, v3=True)


def _llama4_text(c: HFConfig, d: Draft) -> None:
    _base(c, d, "Llama-4")
    b = c.bool("attention_bias")
    _gqa(c, d, bias=b, out_bias=b, bias_src=c.src("attention_bias") + " (q, k, v and o)")
    _llama4_rope_layers(c, d)
    d.layer_attention["chunk"] = (
        _llama4_chunks(c, d),
        "attention_chunk_size on the layer_types 'chunked_attention' layers",
    )
    qk_norm = c.bool("use_qk_norm")
    if qk_norm:
        d.put("attention.qk_norm_kind", "l2", "use_qk_norm: Llama4TextL2Norm (weightless, eps rms_norm_eps)")
    d.layer_attention["qk_norm"] = (
        [qk_norm and r for r in d.rope],
        "use_qk_norm: Llama4TextAttention builds its qk_norm on the rope layers only",
    )
    tuning = c.bool("attn_temperature_tuning")
    tuned = [tuning and not r for r in d.rope]
    if any(tuned):
        floor_scale, attn_scale = c.value("floor_scale"), c.value("attn_scale")
        if not is_number(floor_scale) or floor_scale <= 0:
            c.bad("floor_scale", f"{shown(floor_scale)}: expected a positive number")
        elif not is_number(attn_scale) or attn_scale < 0:
            c.bad("attn_scale", f"{shown(attn_scale)}: expected a non-negative number")
        else:
            d.put("attention.temperature_tuning.floor_scale", float(floor_scale), c.src("floor_scale"))
            d.put("attention.temperature_tuning.scale", float(attn_scale), c.src("attn_scale"))
    d.layer_attention["temperature_tuning"] = (tuned, "attn_temperature_tuning: on the NoPE layers only")
    _moe_core(c, d, experts_key="num_local_experts", width_key="intermediate_size")
    _router(
        d,
        "Llama4Router: top-k of the logits, sigmoid of the chosen; Llama4TextMoe scales the expert input",
        score="sigmoid",
        softmax_after_topk=False,
        normalize_topk=False,
        apply_to="input",
    )
    _jitter_on_hidden(c, d, "router_jitter_noise")
    d.section(
        "moe",
        n_shared_experts=(1, "Llama4TextMoe.shared_expert (always on, no gate)"),
        d_ff_shared=(c.int("intermediate_size"), c.src("intermediate_size")),
    )
    _aux(c, d)
    _llama4_moe_layers(c, d)


def _llama4_rope_layers(c: HFConfig, d: Draft) -> None:
    """no_rope_layers (1 = rope), else NoPE on every no_rope_layer_interval-th layer."""
    n = d.n_layers
    interval = c.int("no_rope_layer_interval")
    use_rope = c.int_list("no_rope_layers") or [int((i + 1) % interval != 0) for i in range(n)]
    if len(use_rope) != n:
        if d.layers_known:
            c.bad("no_rope_layers", f"{len(use_rope)} entries for {n} layers (1 = this layer uses rope)")
        use_rope = [1] * n
    d.rope = [bool(u) for u in use_rope]
    d.rope_note = (
        "no_rope_layers (1 = rope)"
        if c.given("no_rope_layers") and c.value("no_rope_layers")
        else f"NoPE where (i+1) % no_rope_layer_interval ({interval}) == 0"
    )


def _llama4_chunks(c: HFConfig, d: Draft) -> list[int | None]:
    """Per layer: attention_chunk_size on the layer_types 'chunked_attention' layers (default: the rope ones)."""
    n = d.n_layers
    chunk = c.int("attention_chunk_size", optional=True)
    default = ["chunked_attention" if r else "full_attention" for r in d.rope]
    types = c.str_list("layer_types") if c.value("layer_types") else default
    if types is not None and len(types) != n and d.layers_known:
        c.bad("layer_types", f"{len(types)} entries for {n} layers")
    if types is None or len(types) != n or not _all_known(c, "layer_types", types, _LLAMA4_LAYER_TYPES):
        return [None] * n
    return [chunk if t == "chunked_attention" else None for t in types]


_LLAMA4_LAYER_TYPES = ("chunked_attention", "full_attention")


def _llama4_moe_layers(c: HFConfig, d: Draft) -> None:
    """moe_layers, else every interleave_moe_layer_step-th layer; the others are dense MLPs."""
    step = c.int("interleave_moe_layer_step")
    if c.value("moe_layers") is not None:
        moe_layers = set(c.int_list("moe_layers"))
        d.ffn_note = "moe_layers"
    else:
        moe_layers = set(range(step - 1, d.n_layers, step))
        d.ffn_note = f"MoE on layers range(interleave_moe_layer_step - 1, n, {step}) (HF: (i+1) % step == 0)"
    d.ffn = ["moe" if i in moe_layers else "dense" for i in range(d.n_layers)]
    if "dense" in d.ffn:
        _dense_ffn(c, d, key="intermediate_size_mlp", bias_src="Llama4TextMLP has no biases")
    else:
        c.value("intermediate_size_mlp")


# ---------------------------------------------------------------------------------------------
# transformers 5.23 class defaults of every field the translators read (tests hold them to the classes)

# fmt: off
_COMMON = {
    "hidden_act": "silu",
    "tie_word_embeddings": False,
    "rope_parameters": None,
    "attention_dropout": 0.0,
    "num_experts_per_tok": None,
}


def _defaults(default_theta: float, **kw: Any) -> dict[str, Any]:
    return {**_COMMON, "default_theta": default_theta, **kw}


_LLAMA = _defaults(10000.0, vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                   num_attention_heads=32, num_key_value_heads=None, max_position_embeddings=2048,
                   rms_norm_eps=1e-6, attention_bias=False, mlp_bias=False, head_dim=None)
_MISTRAL = _defaults(10000.0, vocab_size=32000, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                     num_attention_heads=32, num_key_value_heads=8, head_dim=None, max_position_embeddings=131072,
                     rms_norm_eps=1e-6, sliding_window=4096)
_QWEN2 = _defaults(10000.0, vocab_size=151936, hidden_size=4096, intermediate_size=22016, num_hidden_layers=32,
                   num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=32768, rms_norm_eps=1e-6,
                   use_sliding_window=False, sliding_window=4096, max_window_layers=28, layer_types=None)
_QWEN3 = {**_QWEN2, "head_dim": 128, "attention_bias": False}
_MIXTRAL = _defaults(1e6, vocab_size=32000, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                     num_attention_heads=32, num_key_value_heads=8, head_dim=None, max_position_embeddings=131072,
                     rms_norm_eps=1e-5, sliding_window=None, num_experts_per_tok=2, num_local_experts=8,
                     router_aux_loss_coef=0.001, router_jitter_noise=0.0)
_QWEN2_MOE = _defaults(10000.0, vocab_size=151936, hidden_size=2048, intermediate_size=5632, num_hidden_layers=24,
                       num_attention_heads=16, num_key_value_heads=16, max_position_embeddings=32768,
                       rms_norm_eps=1e-6, use_sliding_window=False, sliding_window=4096, max_window_layers=28,
                       decoder_sparse_step=1, moe_intermediate_size=1408, shared_expert_intermediate_size=5632,
                       num_experts_per_tok=4, num_experts=60, norm_topk_prob=False, router_aux_loss_coef=0.001,
                       mlp_only_layers=None, qkv_bias=True, layer_types=None)
_QWEN3_MOE = _defaults(10000.0, vocab_size=151936, hidden_size=2048, intermediate_size=6144, num_hidden_layers=24,
                       num_attention_heads=32, num_key_value_heads=4, max_position_embeddings=32768,
                       rms_norm_eps=1e-6, attention_bias=False, use_sliding_window=False, sliding_window=4096,
                       decoder_sparse_step=1, moe_intermediate_size=768, num_experts_per_tok=8, num_experts=128,
                       norm_topk_prob=False, router_aux_loss_coef=0.001, mlp_only_layers=None)
_OLMOE = _defaults(10000.0, vocab_size=50304, hidden_size=2048, intermediate_size=2048, num_hidden_layers=16,
                   num_attention_heads=16, num_key_value_heads=None, max_position_embeddings=4096, rms_norm_eps=1e-5,
                   attention_bias=False, clip_qkv=None, num_experts_per_tok=8, num_experts=64,
                   router_aux_loss_coef=0.01, norm_topk_prob=False)
_GPT_OSS = _defaults(150000.0, num_hidden_layers=36, num_local_experts=128, vocab_size=201088, hidden_size=2880,
                     intermediate_size=2880, head_dim=64, num_attention_heads=64, num_key_value_heads=8,
                     sliding_window=128, max_position_embeddings=131072, rms_norm_eps=1e-5, num_experts_per_tok=4,
                     swiglu_alpha=1.702, swiglu_limit=7.0, router_aux_loss_coef=0.001, layer_types=None,
                     attention_bias=True,
                     # GptOssConfig.__post_init__ when the config gives no rope parameters
                     default_rope_parameters={"rope_type": "yarn", "factor": 32.0, "beta_fast": 32.0,
                                              "beta_slow": 1.0, "truncate": False,
                                              "original_max_position_embeddings": 4096})
_PHIMOE = _defaults(1e6, vocab_size=32064, hidden_size=4096, intermediate_size=6400, num_hidden_layers=32,
                    num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=131072, rms_norm_eps=1e-5,
                    sliding_window=None, num_experts_per_tok=2, num_local_experts=16, router_aux_loss_coef=0.001,
                    router_jitter_noise=0.01, input_jitter_noise=0.0, attention_bias=False, lm_head_bias=False)
_GRANITEMOE = _defaults(10000.0, vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                        num_attention_heads=32, num_key_value_heads=None, max_position_embeddings=2048,
                        rms_norm_eps=1e-6, attention_bias=False, embedding_multiplier=1.0, logits_scaling=1.0,
                        residual_multiplier=1.0, attention_multiplier=1.0, num_local_experts=8,
                        num_experts_per_tok=2, router_aux_loss_coef=0.001)
_DBRX = _defaults(10000.0, d_model=2048, n_heads=16, n_layers=24, max_seq_len=2048, vocab_size=32000,
                  resid_pdrop=0.0, emb_pdrop=0.0, attn_config=None, ffn_config=None, router_aux_loss_coef=None)
_DBRX_ATTN = {"attn_pdrop": 0.0, "clip_qkv": None, "kv_n_heads": 1, "rope_theta": None}
_DBRX_FFN = {"ffn_act_fn": None, "ffn_hidden_size": 3584, "moe_num_experts": 4, "moe_top_k": 1, "moe_jitter_eps": None,
             "moe_loss_weight": 0.01, "moe_normalize_expert_weights": 1.0, "hidden_size": None}
_DEEPSEEK_V2 = _defaults(10000.0, vocab_size=102400, hidden_size=4096, intermediate_size=11008,
                         num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=None,
                         max_position_embeddings=2048, rms_norm_eps=1e-6, attention_bias=False, mlp_bias=False,
                         head_dim=None, first_k_dense_replace=0, kv_lora_rank=512, q_lora_rank=1536, n_group=None,
                         n_routed_experts=64, n_shared_experts=2, qk_nope_head_dim=128, qk_rope_head_dim=64,
                         routed_scaling_factor=1.0, topk_group=None, topk_method="greedy", norm_topk_prob=False,
                         v_head_dim=128, moe_intermediate_size=1407)
_DEEPSEEK_V3 = _defaults(10000.0, vocab_size=129280, hidden_size=7168, intermediate_size=18432,
                         moe_intermediate_size=2048, num_hidden_layers=61, num_attention_heads=128,
                         num_key_value_heads=128, n_shared_experts=1, n_routed_experts=256,
                         routed_scaling_factor=2.5, kv_lora_rank=512, q_lora_rank=1536, qk_rope_head_dim=64,
                         v_head_dim=128, qk_nope_head_dim=128, n_group=8, topk_group=4, num_experts_per_tok=8,
                         first_k_dense_replace=3, norm_topk_prob=True, max_position_embeddings=4096,
                         rms_norm_eps=1e-6, rope_interleave=True, attention_bias=False, num_nextn_predict_layers=1,
                         head_dim=None)
_LLAMA4_TEXT = _defaults(500000.0, vocab_size=202048, hidden_size=5120, intermediate_size=8192,
                         intermediate_size_mlp=16384, num_hidden_layers=48, num_attention_heads=40,
                         num_key_value_heads=8, head_dim=128, max_position_embeddings=131072, rms_norm_eps=1e-5,
                         num_experts_per_tok=1, num_local_experts=16, moe_layers=None, interleave_moe_layer_step=1,
                         use_qk_norm=True, router_aux_loss_coef=0.001, router_jitter_noise=0.0, no_rope_layers=None,
                         no_rope_layer_interval=4, attention_chunk_size=8192, layer_types=None,
                         attn_temperature_tuning=True, floor_scale=8192, attn_scale=0.1, attention_bias=False)


# fmt: on


def _family(
    model_type: str,
    arch: str,
    defaults: dict[str, Any],
    translate: Callable[[HFConfig, Draft], None],
    aliases: Mapping[str, str] | None = None,
) -> Family:
    return Family(model_type, arch, defaults, translate, aliases or {})


FAMILIES: dict[str, Family] = {
    f.model_type: f
    for f in (
        _family("mixtral", "MixtralForCausalLM", _MIXTRAL, _mixtral, {"num_experts": "num_local_experts"}),
        _family("qwen2_moe", "Qwen2MoeForCausalLM", _QWEN2_MOE, _qwen2_moe),
        _family("qwen3_moe", "Qwen3MoeForCausalLM", _QWEN3_MOE, _qwen3_moe, {"num_local_experts": "num_experts"}),
        _family(
            "deepseek_v2", "DeepseekV2ForCausalLM", _DEEPSEEK_V2, _deepseek_v2, {"num_experts": "n_routed_experts"}
        ),
        _family(
            "deepseek_v3",
            "DeepseekV3ForCausalLM",
            _DEEPSEEK_V3,
            _deepseek_v3,
            {"num_local_experts": "n_routed_experts", "num_mtp_layers": "num_nextn_predict_layers"},
        ),
        _family("olmoe", "OlmoeForCausalLM", _OLMOE, _olmoe, {"num_local_experts": "num_experts"}),
        _family("gpt_oss", "GptOssForCausalLM", _GPT_OSS, _gpt_oss, {"num_experts": "num_local_experts"}),
        _family("phimoe", "PhimoeForCausalLM", _PHIMOE, _phimoe),
        _family("granitemoe", "GraniteMoeForCausalLM", _GRANITEMOE, _granitemoe),
        _family(
            "dbrx",
            "DbrxForCausalLM",
            _DBRX,
            _dbrx,
            {
                "num_attention_heads": "n_heads",
                "hidden_size": "d_model",
                "num_hidden_layers": "n_layers",
                "max_position_embeddings": "max_seq_len",
            },
        ),
        _family("llama4_text", "Llama4ForCausalLM", _LLAMA4_TEXT, _llama4_text),
        _family("llama", "LlamaForCausalLM", _LLAMA, _llama),
        _family("mistral", "MistralForCausalLM", _MISTRAL, _mistral),
        _family("qwen2", "Qwen2ForCausalLM", _QWEN2, _qwen2),
        _family("qwen3", "Qwen3ForCausalLM", _QWEN3, _qwen3),
    )
}
SUPPORTED_MODEL_TYPES = tuple(FAMILIES)


def layer_pattern(values: list[Any]) -> tuple[Any, list[tuple[dict[str, Any], Any]]]:
    """A per-layer list as (default, [(select, value), ...]): the commonest value is the default and
    each other value gets the most readable selector (a range, every N from a start, or a list)."""
    counts = Counter(values)
    default = max(counts, key=lambda v: (counts[v], -values.index(v)))
    out = []
    for v in sorted({v for v in values if v != default}, key=values.index):
        idx = [i for i, x in enumerate(values) if x == v]
        out.append((_selector(idx, len(values)), v))
    return default, out


def _selector(idx: list[int], n: int) -> dict[str, Any]:
    if len(idx) == 1:
        return {"layers": idx}
    step = idx[1] - idx[0]
    if all(b - a == step for a, b in zip(idx, idx[1:], strict=False)):
        if step == 1:
            return {"first": idx[0], "last": idx[-1]}
        sel: dict[str, Any] = {"every": step, "start": idx[0]}
        if idx[-1] + step <= n - 1:
            sel["last"] = idx[-1]
        return sel
    return {"layers": idx}
