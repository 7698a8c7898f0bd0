"""GLM-4.5V (``model_type`` glm4v_moe, Glm4vMoeForConditionalGeneration): the multimodal wrapper; moec imports its
``text_config`` (Glm4vMoeTextModel and the LM head) and leaves out the vision tower (Glm4vMoeVisionModel: patch
embedding, ViT blocks, downsampling and the patch merger), whose parameters the spec's notes count.

The text model is GLM-4.5-Air's (glm4_moe) without the optional qk-norm: GQA with biases on q, k and v (o_proj has
none), rotary positions on the first partial_rotary_factor of each head (0.5 unless the config says otherwise), and
DeepSeek-V3's MoE from first_k_dense_replace on. Its rotary embedding is multimodal: the rotated dimensions'
frequencies are split into contiguous temporal, height and width sections (``mrope_section``, [8, 12, 12] unless
given; ``model.positions.mrope_sections`` with ``mrope_interleaved`` false); text positions rotate as plain RoPE.

Checkpoints hold the text model under ``model.language_model.`` and the tower under ``model.visual.``, which is
let go; the head is ``lm_head.weight``.
"""

from __future__ import annotations

from typing import Any

from moec.hf.draft import Draft, Family, HFConfig, is_int, shown
from moec.hf.families._common import aux, base, defaults, dense_layers_ffn, gqa, text_config, text_tie_note
from moec.hf.families.glm4_moe import DEFAULT_PARTIAL_ROTARY, glm4_moe_block, take_partial_rotary
from moec.hf.mapper import LanguageModelMapper
from moec.hf.rope import rope_field

# Glm4vMoeConfig (the wrapper; its default_theta is unused: the text config holds the rope), Glm4vMoeTextConfig
# and Glm4vMoeVisionConfig (its parts)
DEFAULTS = {"default_theta": 10000.0, "tie_word_embeddings": False, "text_config": None, "vision_config": None,
            "image_token_id": 151363, "video_token_id": 151364, "image_start_token_id": 151339,
            "image_end_token_id": 151340, "video_start_token_id": 151341, "video_end_token_id": 151342}  # fmt: skip
# fmt: off
TEXT_DEFAULTS = defaults(10000.0, vocab_size=151424, hidden_size=4096, intermediate_size=10944, num_hidden_layers=46,
                         num_attention_heads=96, num_key_value_heads=8, max_position_embeddings=65536,
                         rms_norm_eps=1e-5, attention_bias=True, moe_intermediate_size=1408, num_experts_per_tok=8,
                         n_shared_experts=1, n_routed_experts=128, routed_scaling_factor=1.0, n_group=1, topk_group=1,
                         first_k_dense_replace=1, norm_topk_prob=True, router_aux_loss_coef=0.0001)
VISION_DEFAULTS = {"depth": 24, "hidden_size": 1536, "attention_bias": False, "in_channels": 3, "image_size": 336,
                   "patch_size": 14, "spatial_merge_size": 2, "temporal_patch_size": 2, "out_hidden_size": 4096,
                   "intermediate_size": 13696}
# fmt: on
TEXT_ALIASES = {"num_local_experts": "n_routed_experts"}  # Glm4vMoeTextConfig.attribute_map
MROPE_DEFAULT = [8, 12, 12]  # Glm4vMoeTextRotaryEmbedding when the rope parameters give no mrope_section
# token ids of the image and video inputs moec leaves out (the release repeats some inside text_config)
_TOKENS = ("image_token_id", "video_token_id", "image_start_token_id", "image_end_token_id", "video_start_token_id",
           "video_end_token_id")  # fmt: skip


def translate(c: HFConfig, d: Draft) -> None:
    t = text_config(c, TEXT_DEFAULTS, "glm4v_moe_text", aliases=TEXT_ALIASES)
    sections, sections_src = take_mrope(t)
    factor, factor_src = take_partial_rotary(
        t,
        DEFAULT_PARTIAL_ROTARY,
        f"partial_rotary_factor unset: {DEFAULT_PARTIAL_ROTARY} (Glm4vMoeTextConfig's default)",
    )
    base(t, d, "Glm4vMoeText")
    d.put("model.tie_embeddings", c.bool("tie_word_embeddings"), c.src("tie_word_embeddings") + text_tie_note(c, t))
    if factor is not None:
        d.put("model.positions.partial_rotary_factor", factor, factor_src)
    if sections is not None:
        d.put("model.positions.mrope_sections", sections, sections_src + " (T, H, W, contiguous)")
        d.put("model.positions.mrope_interleaved", False, "Glm4vMoeTextRotaryEmbedding: sections m[i % 3] in turn")
    b = t.bool("attention_bias")
    gqa(t, d, bias=b, out_bias=False, bias_src=t.src("attention_bias") + " (q, k and v; o_proj has none)")
    d.put("attention.qk_norm", False, "Glm4vMoeTextAttention has no qk-norm")
    _no_qk_norm(t, d)
    glm4_moe_block(t, d, "Glm4vMoeText")
    aux(t, d)  # Glm4vMoeForConditionalGeneration adds Qwen3-VL-MoE's balance loss when it returns router logits
    k_dense = t.int("first_k_dense_replace", minimum=0)
    d.ffn = ["dense" if i < k_dense else "moe" for i in range(d.n_layers)]
    d.ffn_note = f"Glm4vMoeTextDecoderLayer: MoE from layer first_k_dense_replace ({k_dense}) on"
    dense_layers_ffn(t, d, bias_src="Glm4vMoeTextMLP has no biases")
    for key in _TOKENS:
        c.value(key)
        t.value(key)
    vision = c.mapping("vision_config")
    _vision_sizes(c, vision)
    tower = vision_params(vision)
    left_out = "the vision tower (vision_config" + (f": {tower:,} parameters" if tower is not None else "") + ")"
    note = d.fields["model.n_layers"][1]
    d.put("model.n_layers", d.n_layers, f"{note}; left out: {left_out}, which acts on image and video inputs only")


def _no_qk_norm(t: HFConfig, d: Draft) -> None:
    """use_qk_norm, which Glm4vMoeTextConfig removes from GLM-4.5's fields and its attention never reads."""
    if not t.given("use_qk_norm"):
        return
    v = t.value("use_qk_norm")
    if v is not False:
        d.gap(
            t.prefix + "use_qk_norm",
            v,
            "transformers' Glm4vMoeText builds no qk-norm whatever it says: ambiguous",
            "none: remove use_qk_norm (what transformers runs) or set it false",
        )
        return
    d.put(
        "attention.qk_norm", False, "Glm4vMoeTextAttention has no qk-norm (use_qk_norm false: transformers ignores it)"
    )


def take_mrope(t: HFConfig, default: list[int] = MROPE_DEFAULT) -> tuple[list[int] | None, str]:
    """mrope_section out of the rope mapping (the common reader refuses keys it does not know) and checked;
    ``default`` (the family's rotary embedding's) when the mapping gives none. (None, "") once refused."""
    key = rope_field(t)
    given = t.raw.get(key)
    if not isinstance(given, dict) or "mrope_section" not in given:
        return default, f"mrope_section unset: {default}"
    t.raw[key] = {k: v for k, v in given.items() if k != "mrope_section"}  # a copy: the caller's stays
    sections = given["mrope_section"]
    if not (isinstance(sections, list) and len(sections) == 3 and all(is_int(s) and s >= 0 for s in sections)):
        t.bad(f"{key}.mrope_section", f"{shown(sections)}: expected three non-negative integers (T, H, W)")
        return None, ""
    return sections, f"{t.prefix}{key}.mrope_section"


def _vision_sizes(c: HFConfig, vision: dict[str, Any]) -> None:
    """The tower's sizes its count reads, where given: integers, ≥ 1 but for depth (a tower of no blocks builds), as
    Glm4vMoeVisionConfig, a typed config, and its modules take them; else the count would be dropped from the note
    and the config imported, silently (the tower itself is left out)."""
    for key, v in vision.items():
        least = int(key != "depth")
        if key in VISION_DEFAULTS and key != "attention_bias" and not (is_int(v) and v >= least):
            c.bad(f"vision_config.{key}", f"{shown(v)}: expected an integer ≥ {least}")


def vision_params(vision: dict[str, Any]) -> int | None:
    """Parameters of Glm4vMoeVisionModel (None where a size is not an integer, ≥ 1 but for depth): the learned position
    table, the Conv3d patch embedding (biased), depth blocks (two RMSNorms, qkv with attention_bias, proj, a
    bias-free SwiGLU MLP of width out_hidden_size), the post-conv RMSNorm, the Conv2d downsampling (biased), the
    post RMSNorm and the patch merger (proj, a LayerNorm with bias, a SwiGLU of width intermediate_size)."""
    v = {**VISION_DEFAULTS, **vision}
    sizes = [k for k in VISION_DEFAULTS if k != "attention_bias"]
    if not all(is_int(v[k]) and v[k] >= (k != "depth") for k in sizes):
        return None
    h, out, inner = v["hidden_size"], v["out_hidden_size"], v["intermediate_size"]
    positions = (v["image_size"] // v["patch_size"]) ** 2 * h
    patch = v["in_channels"] * v["temporal_patch_size"] * v["patch_size"] ** 2 * h + h
    block = 2 * h + 3 * h * h + (3 * h if v["attention_bias"] is True else 0) + h * h + 3 * h * out
    downsample = h * out * v["spatial_merge_size"] ** 2 + out
    merger = out * out + 2 * out + 3 * out * inner
    return positions + patch + v["depth"] * block + 2 * h + downsample + merger


FAMILY = Family("glm4v_moe", "Glm4vMoeForConditionalGeneration", DEFAULTS, translate, mapper=LanguageModelMapper)
