"""Unlimited-OCR (``model_type`` unlimited_ocr, UnlimitedOcrForConditionalGeneration; Baidu's): DeepSeek-OCR-2's
layout under another name, so moec imports its ``text_config`` with deepseek_ocr2's steps (Llama attention,
DeepSeek-V2's softmax router, fused shared experts, mlp_layer_types) and leaves out the vision side, not counted.
What differs: mlp_layer_types may be unset (the first first_k_dense_replace layers dense, 1 by default); the text
config may be spelt as the original release spells it (``language_config``, with ``sliding_window`` at the top
level); and layer_types, whose default is ``reference_sliding_attention`` on every layer.

Reference sliding-window attention (UnlimitedOcrTextModel's R-SWA) keeps every prompt token in the cache and slides
a window over the generated ones only: a token attends to the whole prompt and the last sliding_window generated
tokens. The window depends on where the prompt ends, which no moec spec says, so a layer of that type is refused
naming it; layer_types of full_attention only import (over a prompt, without a cache, the two compute the same).

Checkpoints name the text model and the vision side as DeepSeek-OCR-2's do (the same mapper).
"""

from __future__ import annotations

from typing import Any

from moec.hf.draft import Draft, Family, HFConfig, is_int, shown
from moec.hf.families._common import all_known, defaults
from moec.hf.families.deepseek_ocr2 import DeepseekOcr2Mapper, left_out, mlp_layers, text_config, text_model
from moec.hf.families.hy_v3 import ignored

# UnlimitedOcrConfig (the wrapper; its default_theta is unused) and UnlimitedOcrTextConfig
DEFAULTS = {"default_theta": 10000.0, "tie_word_embeddings": False, "text_config": None, "vision_config": None,
            "image_token_id": 128815}  # fmt: skip
# fmt: off
TEXT_DEFAULTS = defaults(10000.0, vocab_size=129280, hidden_size=1280, intermediate_size=6848, num_hidden_layers=12,
                         num_attention_heads=10, num_key_value_heads=10, head_dim=None, max_position_embeddings=32768,
                         rms_norm_eps=1e-6, attention_bias=False, mlp_bias=False, n_group=1, n_routed_experts=64,
                         n_shared_experts=2, routed_scaling_factor=1.0, topk_group=1, topk_method="greedy",
                         num_experts_per_tok=6, moe_intermediate_size=896, mlp_layer_types=None, layer_types=None,
                         sliding_window=128, norm_topk_prob=False, pretraining_tp=1)
# fmt: on
FIRST_K_DENSE_DEFAULT = 1  # UnlimitedOcrTextConfig.__post_init__ when mlp_layer_types is unset
_ATTENTION_KINDS = ("full_attention", "reference_sliding_attention")  # UnlimitedOcrTextModel's mask mapping


def translate(c: HFConfig, d: Draft) -> None:
    t = _text_config(c)
    text_model(c, t, d, "UnlimitedOcrText")
    _mlp_layers(t, d)
    _attention_types(t, d)
    left_out(c, d)


def _text_config(c: HFConfig) -> HFConfig:
    """text_config, or the original release's spelling (UnlimitedOcrConfig.__post_init__): the text config under
    ``language_config`` and ``sliding_window`` at the top level, read only when text_config is unset."""
    if c.value("text_config") is not None:
        for key in ("language_config", "sliding_window"):  # the original spelling's, read only without text_config
            if c.value(key) is not None:
                c.bad(key, "given beside text_config, which transformers reads instead: ambiguous")
        return text_config(c, dict(c.mapping("text_config")), TEXT_DEFAULTS, "unlimited_ocr")
    raw = dict(c.mapping("language_config"))
    if c.given("sliding_window"):
        raw["sliding_window"] = c.value("sliding_window")
    prefix = "language_config." if c.given("language_config") else "text_config."
    return text_config(c, raw, TEXT_DEFAULTS, "unlimited_ocr", prefix=prefix)


def _mlp_layers(t: HFConfig, d: Draft) -> None:
    """mlp_layer_types, or (unset) dense below first_k_dense_replace, which transformers reads only then."""
    if t.value("mlp_layer_types") is not None:
        types = t.str_list("mlp_layer_types")
        mlp_layers(t, d, types, "mlp_layer_types")
        if types is not None and not t.failed("mlp_layer_types"):
            # transformers reads it only without mlp_layer_types: it must say the same layers
            ignored(t, d, "UnlimitedOcrText", "first_k_dense_replace", lambda k: types == _first_k(k, d), "layers")
        return
    k = t.int("first_k_dense_replace", minimum=0) if t.given("first_k_dense_replace") else FIRST_K_DENSE_DEFAULT
    src = t.src("first_k_dense_replace") if t.given("first_k_dense_replace") else "first_k_dense_replace unset: 1"
    mlp_layers(t, d, _first_k(k, d), f"mlp_layer_types unset: dense below {src}")


def _first_k(k: Any, d: Draft) -> list[str] | None:
    """The mlp_layer_types first_k_dense_replace ``k`` stands for (None for a k that is not an integer)."""
    return ["dense" if i < k else "sparse" for i in range(d.n_layers)] if is_int(k) else None


def _attention_types(t: HFConfig, d: Draft) -> None:
    """layer_types: full_attention imports; reference_sliding_attention (the default while sliding_window is set)
    is refused by name."""
    window = t.value("sliding_window")
    given = t.value("layer_types") is not None
    if given:
        types = t.str_list("layer_types")
        if not (d.fits_layers(t, "layer_types", types) and all_known(t, "layer_types", types, _ATTENTION_KINDS)):
            return
    else:
        types = ["full_attention" if window is None else "reference_sliding_attention"] * d.n_layers
    reference = [i for i, x in enumerate(types) if x == "reference_sliding_attention"]
    if reference:
        why = "" if given else f" (layer_types unset: every layer's type while sliding_window is {shown(window)})"
        d.gap(
            t.prefix + "layer_types",
            "reference_sliding_attention",
            f"on {len(reference)} of {d.n_layers} layers{why}, it keeps every prompt token and slides a window of "
            "sliding_window over the generated ones: a window that depends on where the prompt ends, which a moec "
            "spec cannot say",
            "attention.window_keeps_prompt: bool (a window over generated tokens only). No count change; the KV "
            "cache holds the prompt plus the window",
        )
        return
    note = "layer_types: full_attention on every layer (UnlimitedOcrTextAttention, causal)"
    if window is not None:
        note += f"; sliding_window {shown(window)} unused ({t.src('sliding_window')})"
    d.put("attention.kind", "gqa", note)


FAMILY = Family("unlimited_ocr", "UnlimitedOcrForConditionalGeneration", DEFAULTS, translate, mapper=DeepseekOcr2Mapper)
