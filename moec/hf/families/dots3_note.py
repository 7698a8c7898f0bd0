"""dots3-note (``model_type`` dots3_note, and dots3_note_text, the text config alone that
Dots3NoteForCausalLM.save_pretrained writes; transformers builds Dots3NoteForCausalLM, the text model, for both): the
text model of rednote's Dots3-Note, DeepSeek-V3.2's sparse attention with Dots' changes to MLA. Its config.json either
holds the text model's fields at the top level (the release) or under ``text_config`` (what save_pretrained writes);
``vision_config`` and ``audio_config`` configure towers that act on image, video and audio inputs only and are left
out, named in the note of ``model.n_layers``.

The text model, from transformers' Dots3NoteText classes:

- MLA with a query bottleneck (Dots3NoteTextAttention): the q and kv latents' RMSNorms take rms_norm_eps (not
  DeepSeek's fixed 1e-6), the normed q latent × sqrt(hidden_size / q_lora_rank) and the normed kv latent ×
  sqrt(hidden_size / kv_lora_rank) (``attention.latent_scales``), an RMSNorm on the shared rotary key before its
  rotation (``k_rope_only_layernorm``: ``attention.rope_key_norm``), MLA's adjacent rotary pairs, a softmax scale of
  1/sqrt(qk head width) whatever the rope type, and a sigmoid gate per head from its own projection of the layer
  input before o_proj (``g_proj``: ``attention.output_gate: head``).
- On ``indexed_attention`` layers, GLM-5's lightning indexer (interleaved rotary pairs) reading the scaled q latent:
  a positive constant on the latent scales every index score alike and leaves the top-k as it is, so moec's indexer
  reads the normed latent. ``full_attention`` layers (the legacy ``use_dsa: false``) attend every key.
- DeepSeek-V3's MoE (sigmoid router, a selection-only bias, top-2-sum groups, renormalised and scaled weights) with
  n_shared_experts shared experts of shared_experts_intermediate_size as one MLP, on mlp_layer_types' sparse layers.
- ``sliding_attention`` layers (the release's 33 of 46: not 0, 1 or every 4th from 1) run MLA of their own sizes
  (swa_*, or per_layer_config by layer: heads, kv latent, nope and value widths; ``layers.*.attention``), their own
  rope base (swa_rope_theta, or the layer type's rope_parameters) and a window (sliding_window_size), without the
  indexer (``layers.*.attention.indexer: false``).

Refused by name: a layer's own query latent or rotary width (moec's MLA layers share them) and rope scaling (Dots'
softmax scale ignores YaRN's mscale, moec's MLA applies it). Checkpoints use transformers' names but ``g_proj``
(moec's ``gate_proj``); the release's MTP weights (``model.layers.46.*``, ``model.mtp.*``), which transformers lets
go, are let go.
"""

from __future__ import annotations

from typing import Any

from moec.hf.draft import INERT, Draft, Family, HFConfig, is_int, is_number, shown
from moec.hf.families._common import (
    all_known,
    base,
    defaults,
    dense_layers_ffn,
    ignored_field_agrees,
    mla,
    mlp_layer_types,
    moe_core,
)
from moec.hf.families.deepseek_v32 import DsaMapper, indexer
from moec.hf.families.dots1 import deepseek_v3_router
from moec.hf.families.glm4_moe import mtp_not_built
from moec.hf.families.laguna import GProjGateMapper
from moec.spec.schema import MAX_LAYERS

CLS = "Dots3NoteText"
# Dots3NoteTextConfig's fields (and default_theta, its DSA layers' rope base)
# fmt: off
TEXT_DEFAULTS = defaults(80_000_000.0, vocab_size=152064, hidden_size=5120, intermediate_size=13824,
                         moe_intermediate_size=1536, num_hidden_layers=46, num_attention_heads=128,
                         num_key_value_heads=128, n_shared_experts=1, n_routed_experts=256, routed_scaling_factor=1.0,
                         kv_lora_rank=512, q_lora_rank=1024, qk_rope_head_dim=64, v_head_dim=128, qk_nope_head_dim=128,
                         n_group=1, topk_group=1, num_experts_per_tok=8, norm_topk_prob=True, hidden_act="silu",
                         max_position_embeddings=524288, rms_norm_eps=1e-5, tie_word_embeddings=False,
                         rope_parameters=None, mlp_layer_types=None, attention_bias=False, index_topk=2048,
                         index_head_dim=128, index_n_heads=64, mlp_bias=False, head_dim=256, layer_types=None,
                         sliding_window=None, shared_experts_intermediate_size=1536)
# fmt: on
# Dots3NoteConfig's own fields; the release writes the text model's beside them (read with TEXT_DEFAULTS)
WRAPPER_DEFAULTS = {
    "default_theta": 10000.0,
    "text_config": None,
    "vision_config": None,
    "audio_config": None,
    "image_token_id": 151660,
    "video_token_id": 151680,
    "audio_token_id": 151720,
    "tie_word_embeddings": False,
}  # fmt: skip
DEFAULTS = {**TEXT_DEFAULTS, **WRAPPER_DEFAULTS}
# the sliding layers' MLA sizes when neither swa_* nor per_layer_config gives them (Dots3NoteTextConfig)
SWA_GEOMETRY = {"num_attention_heads": 64, "num_key_value_heads": 64, "q_lora_rank": 1024, "kv_lora_rank": 1024,
                "head_dim": 256, "qk_nope_head_dim": 192, "v_head_dim": 128}  # fmt: skip
SWA_ROPE_THETA = 50000.0
GEOMETRY = (*SWA_GEOMETRY, "qk_rope_head_dim")
# config key → the moec field a layer may set itself
PER_LAYER = {"num_attention_heads": "n_heads", "kv_lora_rank": "kv_lora_rank", "qk_nope_head_dim": "qk_nope_head_dim",
             "v_head_dim": "v_head_dim"}  # fmt: skip
SWA_FIELDS = ("swa_num_attention_heads", "swa_num_key_value_heads", "swa_q_lora_rank", "swa_kv_lora_rank",
              "swa_head_dim", "swa_qk_nope_head_dim", "swa_v_head_dim", "swa_qk_rope_head_dim", "swa_rope_theta",
              "swa_attention_gate_type", "sliding_window_size", "per_layer_config")  # fmt: skip
LAYER_TYPES = ("indexed_attention", "full_attention", "sliding_attention")


def translate(c: HFConfig, d: Draft) -> None:
    translate_text(_text_config(c), d)
    _left_out(c, d)


def translate_text(t: HFConfig, d: Draft) -> None:
    """Dots3NoteTextConfig's fields (``model_type`` dots3_note_text, what Dots3NoteForCausalLM.save_pretrained
    writes, or the text part of a dots3_note config)."""
    _shared_width_alias(t)
    types = _layer_types(t)
    thetas = _rope(t, types)
    base(t, d, CLS)
    mla(t, d, CLS)
    d.fields.pop("attention.latent_norm_eps", None)  # Dots3 builds its latent norms with rms_norm_eps
    t.int("head_dim")  # the rotary tables' reference width, not MLA's (see _same_everywhere)
    d.put("attention.latent_scales", True, f"{CLS}Attention: q_lora_scale and kv_lora_scale, always applied")
    d.put("attention.rope_key_norm", True, f"{CLS}Attention.k_rope_only_layernorm (rms_norm_eps)")
    d.put("attention.output_gate", "head", f"{CLS}Attention: o_proj(attn · sigmoid(g_proj(x))), per head")
    _attention_layers(t, d, types, thetas)
    _moe(t, d)
    _mlp_layers(t, d)
    dense_layers_ffn(t, d, bias_src=f"{CLS}MLP has no biases")
    if t.value("mlp_bias"):
        d.gap(
            t.prefix + "mlp_bias", True, f"{CLS}MLP is built without biases whatever mlp_bias says: ambiguous", "none"
        )
    mtp_not_built(t, d)
    for key in ("attention_gate_type", "swa_attention_gate_type"):  # the release's; transformers gates per head
        ignored_field_agrees(t, d, key, "headwise", f"{CLS}Attention always gates per head (g_proj): ambiguous")


def _text_config(c: HFConfig) -> HFConfig:
    """The text model's fields: ``text_config`` (located under it), else the top level's (the release), which the
    top config then no longer holds, so that each unread field is reported once, where the file has it."""
    if c.value("text_config") is not None:
        raw = dict(c.mapping("text_config"))
        t = HFConfig(raw, TEXT_DEFAULTS, prefix="text_config.")
        if raw.get("model_type") not in (None, "dots3_note_text"):
            t.bad("model_type", f"{shown(raw['model_type'])}: the text model of dots3_note is dots3_note_text")
        _copies_beside(c, t)
    else:  # Dots3NoteConfig builds the text config of these, handing it its own tie_word_embeddings
        text = {k: v for k, v in c.raw.items() if k not in WRAPPER_DEFAULTS or k == "tie_word_embeddings"}
        t = HFConfig(text, TEXT_DEFAULTS)
        c.raw = {k: v for k, v in c.raw.items() if k in WRAPPER_DEFAULTS or k == "model_type"}
    c.children.append(t)
    return t


def _shared_width_alias(t: HFConfig) -> None:
    """moe_shared_expert_intermediate_size, the release's name, which the config class renames (and prefers)."""
    if t.given("moe_shared_expert_intermediate_size"):
        alias = t.value("moe_shared_expert_intermediate_size")
        if t.given("shared_experts_intermediate_size") and t.raw["shared_experts_intermediate_size"] != alias:
            t.bad("moe_shared_expert_intermediate_size", "disagrees with shared_experts_intermediate_size: ambiguous")
        t.raw["shared_experts_intermediate_size"] = alias


def _copies_beside(c: HFConfig, t: HFConfig) -> None:
    """The text fields a config built from top-level fields also keeps at the top level, which save_pretrained then
    writes beside text_config: transformers reads text_config's, so the top-level copies are let go where they
    agree with it (or text_config lacks them: the legacy ones its class popped) and refused where they differ."""
    for key in [k for k in c.raw if k not in WRAPPER_DEFAULTS or k == "tie_word_embeddings"]:
        top = c.value(key)
        if key in t.raw and t.raw[key] != top and key not in INERT:
            c.bad(
                key, f"{shown(top)}: disagrees with text_config.{key} ({shown(t.raw[key])}), which transformers reads"
            )


def _layer_types(t: HFConfig) -> list[str] | None:
    """layer_types as Dots3NoteTextConfig derives them: given, else DSA on layers 0, 1 and every 4th from 1 and
    sliding windows elsewhere (none with use_sliding_window false); use_dsa (default true unless per_layer_config is
    given) renames full_attention to indexed_attention, false the other way round."""
    n = t.int("num_hidden_layers", maximum=MAX_LAYERS)  # bounded before the list of n types is built
    if t.failed("num_hidden_layers"):
        return None
    use_dsa = t.value("use_dsa", None if t.given("per_layer_config") else True)
    sliding = t.value("use_sliding_window", True)
    if not (use_dsa in (None, True, False) and isinstance(sliding, bool)):
        t.bad("use_dsa", f"{shown(use_dsa)} / use_sliding_window {shown(sliding)}: expected true or false")
        return None
    if t.value("layer_types") is None:
        full = "full_attention" if use_dsa is False else "indexed_attention"
        types = [full if not sliding or i < 2 or i % 4 == 1 else "sliding_attention" for i in range(n)]
    else:
        types = t.str_list("layer_types")
        if types is None or not all_known(t, "layer_types", types, LAYER_TYPES):
            return None
    if use_dsa is not None:
        old, new = ("full_attention", "indexed_attention") if use_dsa else ("indexed_attention", "full_attention")
        types = [new if x == old else x for x in types]
    return types


def _rope(t: HFConfig, types: list[str] | None) -> dict[str, tuple[float, str]] | None:
    """Each layer type's rope base, as Dots3NoteTextConfig.convert_rope_params_to_dict gives them: rope_parameters
    per layer type (or one mapping for all), else rope_theta (8e7) and, for sliding layers, swa_rope_theta (5e4).
    Every type rotates qk_rope_head_dim dims (the partial_rotary_factor it stores is recomputed on load as
    qk_rope_head_dim / head_dim). The base reader then sees no rope mapping."""
    key = "rope_scaling" if t.value("rope_scaling") else "rope_parameters"
    given = t.value(key)
    t.raw.pop("rope_parameters", None)
    t.raw.pop("rope_scaling", None)
    kinds = sorted(set(types or ["indexed_attention"]))
    t.value("swa_rope_theta")  # popped by the config class, read only without rope parameters (below)
    if given is None:
        theta, theta_src = t.float("rope_theta", default=TEXT_DEFAULTS["default_theta"]), t.src("rope_theta")
        t.raw.pop("rope_theta", None)  # read here, located: not again by the base reader
        swa = t.float("swa_rope_theta", default=SWA_ROPE_THETA)
        return {k: (swa, t.src("swa_rope_theta")) if k == "sliding_attention" else (theta, theta_src)
                for k in kinds}  # fmt: skip
    nested = isinstance(given, dict) and all(isinstance(given.get(k), dict) for k in kinds)
    out = {}
    for k in kinds:
        params, where = (given[k], f"{t.prefix}{key}.{k}") if nested else (given, t.prefix + key)
        if not isinstance(params, dict) or not is_number(params.get("rope_theta")):
            t.bad(key, f"{shown(given)}: expected rope_theta (per layer type or for all)")
            return None
        extra = {x: v for x, v in params.items() if x not in ("rope_theta", "rope_type", "partial_rotary_factor")}
        if params.get("rope_type", "default") != "default" or extra:
            t.bad(key, f"{shown(params)}: rope scaling; {CLS}Attention's softmax scale ignores YaRN's mscale, moec's "
                  "MLA applies it")  # fmt: skip
            return None
        out[k] = (float(params["rope_theta"]), f"{where}.rope_theta")
    return out


def _geometry(t: HFConfig, types: list[str]) -> list[dict[str, Any]]:
    """Each layer's MLA sizes where they differ from the top level's: per_layer_config (by layer index) when given,
    else the swa_* fields on the sliding layers (Dots3NoteTextConfig.__post_init__ builds the one from the other)."""
    if t.given("per_layer_config"):
        given = t.mapping("per_layer_config")
        own: dict[int, dict[str, Any]] = {}
        for k, v in given.items():
            if not (str(k).isdigit() and isinstance(v, dict) and set(v) <= set(GEOMETRY)):
                t.bad(
                    f"per_layer_config.{k}", f"{shown(v)}: expected a layer index and its sizes ({', '.join(GEOMETRY)})"
                )
                continue
            own[int(k)] = v
        for k in SWA_FIELDS:
            t.value(k)  # not read by transformers once per_layer_config is given
        return [own.get(i, {}) for i in range(len(types))]
    swa = {name: t.value(f"swa_{name}", default) for name, default in SWA_GEOMETRY.items()}
    head_dim, nope = swa["head_dim"], swa["qk_nope_head_dim"]
    if t.given("swa_qk_rope_head_dim"):
        swa["qk_rope_head_dim"] = t.value("swa_qk_rope_head_dim")
    elif is_int(head_dim) and is_int(nope) and head_dim > 0 and nope > 0:  # else said by _own_sizes_are_integers
        if head_dim > nope:
            swa["qk_rope_head_dim"] = head_dim - nope
        else:
            t.bad("swa_head_dim", f"{head_dim}: not above swa_qk_nope_head_dim ({nope}), which leaves no rotary dims")
    return [swa if x == "sliding_attention" else {} for x in types]


def _attention_layers(
    t: HFConfig, d: Draft, types: list[str] | None, thetas: dict[str, tuple[float, str]] | None
) -> None:
    """Per layer: the indexer (GLM-5's) on indexed_attention layers, a window on sliding ones, and each layer's own
    MLA sizes and rope base where they differ from the model's. Once the layer types or the rope are refused, their
    fields are only read: the refusal says what is wrong, not each field it left unjudged."""
    if types is None or thetas is None or not d.fits_layers(t, "layer_types", types):
        for key in (*SWA_FIELDS, "sliding_window", "index_n_heads", "index_head_dim", "index_topk"):
            t.value(key)
        return
    geometry = _geometry(t, types)
    if _own_sizes_are_integers(t, geometry):
        _same_everywhere(t, d, geometry)
        for key, field in PER_LAYER.items():
            own = [g.get(key, t.value(key)) for g in geometry]
            if all(is_int(v) for v in own) and len(set(own)) > 1:  # the model's own: said by its reader
                src = "per_layer_config" if t.given("per_layer_config") else f"swa_{key} on sliding layers"
                d.layer_attention[field] = (own, f"{t.prefix}{src} (a layer's own MLA size)")
    key = "sliding_window" if t.value("sliding_window") is not None else "sliding_window_size"
    window = t.int(key) if t.given(key) else 512  # Dots3NoteTextConfig: sliding_window_size, else 512
    t.value("sliding_window_size")  # beside sliding_window, which transformers then reads
    d.window = [window if x == "sliding_attention" else None for x in types]
    if any(d.window):
        src = t.src(key) if t.given(key) else "sliding_window unset: 512 (Dots3NoteTextConfig)"
        d.window_note = f"layer_types; sliding layers use {src}"
    ref = "indexed_attention" if "indexed_attention" in types else types[0]
    d.put("model.positions.theta", *thetas[ref])
    layer_theta = [thetas[x][0] if thetas[x][0] != thetas[ref][0] else None for x in types]
    if any(layer_theta):
        d.layer_attention["rope_theta"] = (layer_theta, "the layer type's rope_theta (a layer's own base)")
    if "indexed_attention" in types:
        indexer(t, d, CLS, "interleaved")
        if len(set(types)) > 1:
            on = [x == "indexed_attention" for x in types]
            d.layer_attention["indexer"] = (
                on,
                f"layer_types: {CLS}Attention builds its indexer on indexed_attention only",
            )
    else:
        for k in ("index_n_heads", "index_head_dim", "index_topk"):
            t.value(k)  # no layer builds an indexer


def _own_sizes_are_integers(t: HFConfig, geometry: list[dict[str, Any]]) -> bool:
    """Each size a layer has of its own (per_layer_config by layer, or the swa_ fields on sliding layers) a positive
    integer, else said at the field that gives it; none is compared or written then."""
    ok = True
    for i, g in enumerate(geometry):
        for key, v in g.items():
            if not (is_int(v) and v > 0):
                t.bad(f"per_layer_config.{i}.{key}" if t.given("per_layer_config") else f"swa_{key}",
                      f"{shown(v)}: expected a positive integer")  # fmt: skip
                ok = False
    return ok


def _same_everywhere(t: HFConfig, d: Draft, geometry: list[dict[str, Any]]) -> None:
    """The sizes a moec layer cannot change: the query latent and the rotary width (refused by name where a layer
    has its own); KV heads equal to the heads (Dots3NoteTextConfig's check); every layer's rotated dims
    int(head_dim · qk_rope/head_dim) equal to qk_rope_head_dim, as MLA rotates them."""
    for key in ("q_lora_rank", "qk_rope_head_dim"):
        if t.failed(key):  # refused by MLA's reader: no model value to compare a layer's with
            continue
        values = sorted({g[key] for g in geometry if key in g and g[key] != t.value(key)}, key=str)
        if values:
            d.gap(t.prefix + "per_layer_config", values, f"layers with their own {key}: moec's MLA layers share it",
                  f"layers.*.attention.{key}")  # fmt: skip
    for g in geometry:
        h, kv = g.get("num_attention_heads", t.value("num_attention_heads")), g.get("num_key_value_heads")
        if kv is not None and kv != h:
            t.bad("swa_num_key_value_heads", f"{shown(kv)}: MLA has one KV latent shared by all {h} heads")
        rope, head_dim = g.get("qk_rope_head_dim", t.value("qk_rope_head_dim")), g.get("head_dim", t.value("head_dim"))
        if is_int(rope) and is_int(head_dim) and head_dim > 0 and int(head_dim * (rope / head_dim)) != rope:
            t.bad(
                "head_dim", f"{head_dim}: {CLS}RotaryEmbedding rotates int(head_dim · qk_rope/head_dim) ≠ {rope} dims"
            )


def _moe(t: HFConfig, d: Draft) -> None:
    """Dots3NoteTextMoE: DeepSeek-V3's router and experts, the shared experts one MLP of n·shared width."""
    moe_core(t, d, experts_key="n_routed_experts", width_key="moe_intermediate_size")
    deepseek_v3_router(t, d, f"{CLS}TopkRouter")
    d.put("moe.router.n_groups", t.int("n_group"), t.src("n_group"))
    d.put("moe.router.topk_groups", t.int("topk_group"), t.src("topk_group"))
    n = t.int("n_shared_experts")  # Dots3NoteTextConfig requires at least one
    d.section(
        "moe",
        n_shared_experts=(n, t.src("n_shared_experts") + f" ({CLS}MoE runs them as one MLP of n·width)"),
        d_ff_shared=(t.int("shared_experts_intermediate_size"), t.src("shared_experts_intermediate_size")),
    )


def _mlp_layers(t: HFConfig, d: Draft) -> None:
    """mlp_layer_types, else sparse where i ≥ first_k_dense_replace and moe_layer_freq says so (an integer: every
    moe_layer_freq-th layer; a list: per layer)."""
    if not d.layers_known:
        return
    unset, note = [], ""
    if t.value("mlp_layer_types") is None:
        k, freq = t.value("first_k_dense_replace", 1), t.value("moe_layer_freq", 1)
        if not is_int(k) or not (is_int(freq) and freq > 0 or isinstance(freq, list) and len(freq) == d.n_layers):
            t.bad("moe_layer_freq", f"{shown(freq)} (first_k_dense_replace {shown(k)}): expected integers or a list")
            return
        on = [bool(freq[i]) if isinstance(freq, list) else i % freq == 0 for i in range(d.n_layers)]
        unset = ["sparse" if i >= k and on[i] else "dense" for i in range(d.n_layers)]
        note = f"mlp_layer_types unset: from first_k_dense_replace ({k}) and moe_layer_freq ({shown(freq)})"
    mlp_layer_types(t, d, unset, note)


def _left_out(c: HFConfig, d: Draft) -> None:
    """The towers and their token ids, read and let go: transformers' Dots3NoteForCausalLM builds neither."""
    for key in ("vision_config", "audio_config", "image_token_id", "video_token_id", "audio_token_id"):
        c.value(key)
    c.value("tie_word_embeddings")  # the text config's own decides (read by the base step)
    note = d.fields["model.n_layers"][1]
    d.put("model.n_layers", d.n_layers, f"{note}; left out: the vision and audio towers, which act on image, video "
          "and audio inputs only (Dots3NoteForCausalLM builds the text model)")  # fmt: skip


class Dots3NoteMapper(GProjGateMapper, DsaMapper):
    """transformers' names, but the output gate's ``g_proj``; the release's MTP layer (``model.layers.46.*``) and
    ``model.mtp.*`` let go, as Dots3NotePreTrainedModel._keys_to_ignore_on_load_unexpected does."""

    release_layers = 46
    dropped = ("model.mtp.",)


FAMILIES = (
    Family("dots3_note", "Dots3NoteForCausalLM", DEFAULTS, translate, mapper=Dots3NoteMapper),
    Family("dots3_note_text", "Dots3NoteForCausalLM", TEXT_DEFAULTS, translate_text, mapper=Dots3NoteMapper),
)
