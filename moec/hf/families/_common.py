"""The translator steps families share: each reads a few config.json fields (through :class:`HFConfig`, which
supplies the family's transformers defaults) and puts spec fields on the :class:`Draft`, with a note naming
the field behind each value. A family module composes its translator from these and its own steps; what
only one family does stays in its module.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from moec.hf.draft import Draft, HFConfig, shown
from moec.hf.rope import read_rope
from moec.spec.schema import MAX_LAYERS


def base(
    c: HFConfig,
    d: Draft,
    family: str,
    *,
    norm: str = "rmsnorm",
    eps_key: str = "rms_norm_eps",
    layers_key: str = "num_hidden_layers",
) -> None:
    d.put("model.vocab_size", c.int("vocab_size"), c.src("vocab_size"))
    d.put("model.d_model", c.int("hidden_size"), c.src("hidden_size"))
    layer_count(c, d, layers_key)  # LongCat-Flash: num_layers (its num_hidden_layers counts sublayers)
    d.put("model.max_seq_len", c.int("max_position_embeddings"), c.src("max_position_embeddings"))
    d.put("model.tie_embeddings", c.bool("tie_word_embeddings"), c.src("tie_word_embeddings"))
    kind_note = "nn.LayerNorm with bias in every" if norm == "layernorm" else "RMSNorm in every"
    d.put("model.norm.kind", norm, f"{kind_note} {family} layer, pre-norm, plus a final norm")
    d.put("model.norm.eps", c.float(eps_key), c.src(eps_key))
    d.put("model.positions.kind", "rope", f"{family} uses rotary positions")
    read_rope(c, d)
    dropout(c, d, "attention_dropout")
    d.ffn = ["moe"] * d.n_layers
    d.mixer = ["attention"] * d.n_layers
    d.window = [None] * d.n_layers
    d.rope = [True] * d.n_layers


# config.json's hidden_act on a gated MLP → moec's activation: transformers' "gelu" is the exact erf GELU,
# "gelu_pytorch_tanh" and "gelu_new" the tanh approximation (moec.vocab)
ACTIVATIONS = {
    "silu": "swiglu",
    "swish": "swiglu",
    "gelu": "geglu",
    "gelu_pytorch_tanh": "geglu_tanh",
    "gelu_new": "geglu_tanh",
}


# the same names where no gate multiplies: moec's plain activation (an encoder-decoder's FFN, MiniMax's lightning
# q, k and v); swish is transformers' other name of SiLU
PLAIN_ACTIVATIONS = {
    "relu": "relu",
    "gelu": "gelu",
    "gelu_new": "gelu_tanh",
    "gelu_pytorch_tanh": "gelu_tanh",
    "silu": "silu",
    "swish": "silu",
}


def layer_count(c: HFConfig, d: Draft, key: str) -> None:
    """Bounded before any per-layer list is built: a config asking for 10^8 layers is refused at once."""
    d.n_layers = c.int(key, maximum=MAX_LAYERS)
    d.layers_known = not c.failed(key)
    d.put("model.n_layers", d.n_layers, c.src(key))


def activation(c: HFConfig, d: Draft, key: str = "hidden_act") -> str:
    act = c.str(key)
    if act is None:
        return "swiglu"  # refused and reported
    if act not in ACTIVATIONS:
        d.gap(
            c.prefix + key,
            act,
            f"hidden_act {act!r} in a gated MLP: moec maps silu and swish → swiglu, the exact-erf gelu → "
            "geglu and the tanh GELUs (gelu_pytorch_tanh, gelu_new) → geglu_tanh; others have no moec activation",
            "activation",
        )
        return "swiglu"
    return ACTIVATIONS[act]


def dropout(c: HFConfig, d: Draft, *keys: str) -> None:
    """Dropout is identity at inference and changes no parameter count; a moec spec has no field for it, so
    a non-zero rate is named in the written spec's header (training only) instead of refusing the model."""
    for k in keys:
        p = c.float(k, optional=True)
        if p:
            d.training_only.append(f"{c.prefix}{k} {p!r}")


def gqa(c: HFConfig, d: Draft, *, bias: bool, out_bias: bool, bias_src: str, qk_norm: bool = False) -> None:
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


def uniform_window(c: HFConfig, d: Draft, key: str = "sliding_window", enabled: bool = True) -> None:
    w = c.int(key, optional=True) if enabled else None
    d.window = [w] * d.n_layers
    d.window_note = f"{c.src(key)} on every layer" if w else ""


def typed_windows(
    c: HFConfig, d: Draft, window: int | None, default_types: list[str], why: str, *, null_refused: bool = False
) -> None:
    """layer_types (given, or the family's default list) decide which layers slide. ``null_refused``: the family's
    transformers code cannot build a null window, so a null sliding_window while layers slide is refused (else they
    would be read as full attention, silently)."""
    given = c.value("layer_types") is not None  # null: the family's default, as transformers computes it
    types = c.str_list("layer_types") if given else default_types
    if not d.fits_layers(c, "layer_types", types):
        return
    types = ["full_attention" if t == "attention" else t for t in types]
    if not all_known(c, "layer_types", types, ("full_attention", "sliding_attention")):
        return
    if null_refused and window is None and "sliding_attention" in types:
        c.bad("sliding_window", "null while layers slide (transformers cannot build their window)")
    d.window = [window if t == "sliding_attention" else None for t in types]
    src = "layer_types" if given else f"layer_types unset: {why}"
    d.window_note = f"{src}; sliding layers use {c.src('sliding_window')}" if any(d.window) else ""


def all_known(c: HFConfig, key: str, values: list[str], known: tuple[str, ...]) -> bool:
    """Each unknown value of a per-layer list reported once, with the layers that hold it."""
    layers: dict[str, list[int]] = {}
    for i, v in enumerate(values):
        if v not in known:
            layers.setdefault(v, []).append(i)
    for v, idx in layers.items():
        more = f" (and {len(idx) - 5} more)" if len(idx) > 5 else ""
        c.bad(key, f"{shown(v)} on layers {idx[:5]}{more} is not one of {', '.join(known)}")
    return not layers


def moe_core(
    c: HFConfig, d: Draft, *, experts_key: str, width_key: str, top_k_key: str = "num_experts_per_tok"
) -> None:
    d.section(
        "moe",
        n_experts=(c.int(experts_key, minimum=0), c.src(experts_key)),  # 0: no MoE layer (Qwen), else checked
        d_ff=(c.int(width_key), c.src(width_key)),
        activation=(activation(c, d), c.src("hidden_act") + " (gated)"),
    )
    d.put("moe.router.top_k", c.int(top_k_key), c.src(top_k_key))


def router(d: Draft, note: str, **values: Any) -> None:
    """Router fields a family fixes in code (not in config.json); ``note`` names the modeling class."""
    for k, v in values.items():
        d.put(f"moe.router.{k}", v, note)
        note = ""


def aux(c: HFConfig, d: Draft, key: str = "router_aux_loss_coef", granularity: str = "batch") -> None:
    coeff = c.float(key, optional=True)
    if coeff is not None:
        d.put("moe.balance.load_balance_coeff", coeff, c.src(key) + " (training only)")
        d.put("moe.balance.load_balance_granularity", granularity, "")


def dense_ffn(c: HFConfig, d: Draft, key: str = "intermediate_size", bias: bool = False, bias_src: str = "") -> None:
    d.section(
        "ffn",
        d_ff=(c.int(key), c.src(key)),
        activation=(activation(c, d), c.src("hidden_act") + " (gated)"),
        bias=(bias, bias_src),
    )


def dense_layers_ffn(c: HFConfig, d: Draft, bias: bool = False, bias_src: str = "") -> None:
    """The FFN of the dense layers, where the draft has any; ``intermediate_size`` is their width, read
    (so never reported unknown) whether or not a layer uses it."""
    if "dense" in d.ffn:
        dense_ffn(c, d, bias=bias, bias_src=bias_src)
    c.value("intermediate_size")


MLP_LAYER_TYPES = ("dense", "sparse")


def mlp_layer_kinds(c: HFConfig, d: Draft, types: list[str] | None, note: str = "mlp_layer_types") -> None:
    """A given mlp_layer_types, one 'dense' (the dense MLP) or 'sparse' (MoE) per layer, as the draft's FFN kinds
    noted ``note``; left as they are once refused (another count than the layers', an unknown kind: reported)."""
    if d.fits_layers(c, "mlp_layer_types", types) and all_known(c, "mlp_layer_types", types, MLP_LAYER_TYPES):
        d.ffn = ["moe" if t == "sparse" else "dense" for t in types]
        d.ffn_note = note


def mlp_layer_types(c: HFConfig, d: Draft, unset: list[str], unset_note: str) -> bool:
    """mlp_layer_types as given (:func:`mlp_layer_kinds`) or, unset, ``unset``: what the family's config class
    fills in, ``unset_note`` saying so. False when refused (reported) or the layer count is unknown."""
    given = c.value("mlp_layer_types") is not None
    types = c.str_list("mlp_layer_types") if given else unset
    mlp_layer_kinds(c, d, types, "mlp_layer_types" if given else unset_note)
    return d.layers_known and types is not None and not c.failed("mlp_layer_types")


def jitter_on_hidden(c: HFConfig, d: Draft, key: str) -> None:
    j = c.float(key, optional=True)
    if j:
        d.gap(
            key,
            j,
            "this family multiplies the hidden state fed to router and experts by U(1±j); moec's "
            "router.jitter perturbs the router input only",
            "moe_jitter",
        )


def qwen_moe_layers(c: HFConfig, d: Draft, experts_key: str, unset_dense: tuple[int, ...] = ()) -> None:
    """MoE where (i+1) % decoder_sparse_step == 0 and i is not in mlp_only_layers; ``unset_dense``: the layers
    a family's config makes dense when mlp_only_layers is unset (Flint's first two)."""
    step = c.int("decoder_sparse_step")
    dense_only = set(c.int_list("mlp_only_layers"))
    E = c.value(experts_key)
    d.ffn = [
        "moe" if i not in dense_only and isinstance(E, int) and E > 0 and (i + 1) % step == 0 else "dense"
        for i in range(d.n_layers)
    ]
    d.ffn_note = f"MoE where (i+1) % decoder_sparse_step ({step}) == 0 and i not in mlp_only_layers"
    if unset_dense and c.value("mlp_only_layers") is None:
        for i in unset_dense[: d.n_layers]:
            d.ffn[i] = "dense"
        d.ffn_note += f" (mlp_only_layers unset: {list(unset_dense)})"


def qwen_moe_ffn(c: HFConfig, d: Draft, experts_key: str, bias_src: str, unset_dense: tuple[int, ...] = ()) -> None:
    """Qwen-MoE's FFN fields, shared by its descendants: the aux loss, MoE layers by decoder_sparse_step and
    mlp_only_layers (see :func:`qwen_moe_layers`), and the dense layers' FFN (``bias_src`` says it has no biases)."""
    aux(c, d)
    qwen_moe_layers(c, d, experts_key, unset_dense)
    dense_layers_ffn(c, d, bias_src=bias_src)


def mla(c: HFConfig, d: Draft, name: str) -> None:
    """Multi-head latent attention (DeepSeek-V2/V3's, and the families that copy it: GLM-4.7-Flash, Mistral 4):
    one KV latent for all heads, the ranks and per-part head dims; ``name`` is the modeling class prefix."""
    h = c.int("num_attention_heads")
    kv = c.int("num_key_value_heads", optional=True)
    if kv not in (None, h) and not c.failed("num_key_value_heads") and not c.failed("num_attention_heads"):
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
        d.gap(
            c.prefix + "attention_bias",
            True,
            "MLA with biases",
            "mla_bias",
            d.n_layers * (latent + d.get("model.d_model")),
        )
    c.value("head_dim")  # derived in __post_init__ (= qk_rope_head_dim)
    if d.get("model.norm.eps") != 1e-6 and not c.failed("rms_norm_eps"):
        # q_a_layernorm and kv_a_layernorm are built without an eps: RMSNorm's default 1e-6, whatever
        # rms_norm_eps says (Moonlight and GLM-4.7-Flash-like releases use 1e-5)
        d.put("attention.latent_norm_eps", 1e-6, f"{name}Attention's q_a/kv_a norms: RMSNorm's default eps")
    derived(c, "qk_head_dim", d.get("attention.qk_nope_head_dim") + d.get("attention.qk_rope_head_dim"))


def mla_rope_interleave(c: HFConfig, d: Draft) -> None:
    """rope_interleave (DeepSeek-V3's and GLM-4.7-Flash's field): true pairs MLA's rotary dims adjacently, as moec's
    MLA does; false (rotate_half pairs (i, i + dim/2)) would need the loader to permute the rotary rows of q_b_proj
    and kv_a_proj_with_mqa, which it does not: refused, never approximated."""
    if c.bool("rope_interleave"):
        return
    d.gap(
        c.prefix + "rope_interleave",
        False,
        "rotate_half pairs (i, i + dim/2) on MLA's rotary dims: moec's MLA rotates DeepSeek's adjacent pairs",
        "attention.rope_interleave: bool for kind mla (or the loader permuting q_b_proj's and kv_a_proj's "
        "rotary rows). No count change",
    )


def clip_qkv(c: HFConfig, d: Draft, key: str) -> None:
    clip = c.float(key, optional=True)
    if clip is not None:
        d.put("attention.clip_qkv", clip, c.src(key) + " (q, k, v clamped after the projection)")


def derived(c: HFConfig, key: str, expected: Any) -> None:
    """A field transformers derives from others and save_pretrained writes out: it must agree."""
    if c.given(key) and c.value(key) != expected:
        c.bad(key, f"{shown(c.value(key))}: transformers derives it as {expected!r} from the other fields")
    c.value(key)


# transformers 5.23 class defaults every family shares; a family module adds its own with :func:`defaults`
# (the tests hold each family's table to its configuration class)


# fmt: off
COMMON_DEFAULTS = {
    "hidden_act": "silu",
    "tie_word_embeddings": False,
    "rope_parameters": None,
    "attention_dropout": 0.0,
    "num_experts_per_tok": None,
}



def defaults(default_theta: float, **kw: Any) -> dict[str, Any]:
    return {**COMMON_DEFAULTS, "default_theta": default_theta, **kw}


def ignored_field_agrees(c: HFConfig, d: Draft, key: str, want: Any, ambiguity: str) -> bool:
    """A release config's field that transformers ignores, building what ``want`` says: True when it is given
    and equal to ``want`` (and of its JSON type: true is not 1); a gap with the reason ``ambiguity`` when it
    is given and differs; False when absent."""
    v = c.value(key)
    if v is None:
        return False
    if v == want and type(v) is type(want):
        return True
    d.gap(key, v, ambiguity, f"none: remove {key} (what transformers runs) or set it to {shown(want)}")
    return False


def shared_experts(c: HFConfig, d: Draft, key: str, note: str, width_key: str = "moe_intermediate_size") -> int | None:
    """``key`` shared experts, each as wide as a routed one (``width_key``), which the family runs as one MLP of
    n·width; ``note`` (its words for that) follows the count's source. Returns the count (0 or None: none)."""
    n = c.int(key, minimum=0)
    if n:
        d.section(
            "moe",
            n_shared_experts=(n, c.src(key) + note),
            d_ff_shared=(d.get("moe.d_ff"), c.src(width_key)),
        )
    return n


def window_ignored(c: HFConfig, d: Draft, family: str) -> None:
    """A sliding_window in the config of a family whose model builds one full causal mask: it does nothing in
    transformers' ``family`` and would in a model that honours it, so it is refused as ambiguous."""
    w = c.value("sliding_window")
    if w is not None:
        d.gap(
            "sliding_window",
            w,
            f"transformers' {family} ignores sliding_window (full causal attention)",
            "none: remove sliding_window (what transformers runs), or name the window in the moec spec",
        )


# the two layer_types of the linear-attention hybrids, linear first: ``_LINEAR, _FULL = LINEAR_FULL_TYPES``
LINEAR_FULL_TYPES = ("linear_attention", "full_attention")


def linear_full_layer_types(c: HFConfig, d: Draft) -> tuple[list[str] | None, str]:
    """A given layer_types of full_attention and linear_attention layers (Kimi-Linear, MiniMax, Ling), one per
    layer, and its source; (None, "") once refused."""
    types = c.str_list("layer_types")
    if d.fits_layers(c, "layer_types", types) and all_known(c, "layer_types", types, LINEAR_FULL_TYPES):
        return types, "layer_types"
    return None, ""


def text_config(
    c: HFConfig,
    defaults: Mapping[str, Any],
    text_type: str,
    *,
    aliases: Mapping[str, str] | None = None,
    key: str = "text_config",
) -> HFConfig:
    """A wrapper's nested text config (the mapping at ``key``), read with its class's ``defaults`` and ``aliases``
    (folded by HFConfig: a conflict refused at the alias, a problem located at the name written), located under
    ``key.`` as one of ``c``'s children; a model_type other than ``text_type`` is refused."""
    t = HFConfig(c.mapping(key), defaults, prefix=key + ".", aliases=aliases)
    c.children.append(t)
    given = t.raw.get("model_type")
    if given not in (None, text_type):
        t.bad("model_type", f"{shown(given)}: the text model of {c.raw.get('model_type')} is {text_type}")
    return t


def text_tie_note(c: HFConfig, t: HFConfig) -> str:
    """A wrapper's text config's own tie_word_embeddings (``t``), which transformers does not read (the wrapper's
    decides): named where it agrees with the wrapper's (``c``), refused where not, or where it is not a bool."""
    if not t.given("tie_word_embeddings"):
        return ""
    if not isinstance(t.value("tie_word_embeddings"), bool):
        t.bool("tie_word_embeddings")  # refused as the text config's base refuses it: one problem
        return ""
    tie = t.value("tie_word_embeddings")
    if tie != c.value("tie_word_embeddings"):
        t.bad("tie_word_embeddings", f"{shown(tie)}: disagrees with the wrapper's tie_word_embeddings: ambiguous")
        return ""
    return f" ({t.prefix}tie_word_embeddings {str(tie).lower()}: agrees)"
