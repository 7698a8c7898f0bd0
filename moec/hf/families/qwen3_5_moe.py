"""Qwen3.5-MoE (``model_type`` qwen3_5_moe, Qwen3_5MoeForConditionalGeneration): the multimodal wrapper; moec
imports its ``text_config`` (Qwen3_5MoeTextModel and the LM head) and leaves out the vision tower, whose parameters
the spec's notes count.

The text model is Qwen3-Next's (moec/hf/families/qwen3_next.py): Gated DeltaNet on the linear_attention layers
(``layer_types``, or every ``full_attention_interval``-th layer full attention), gated GQA with RMSNorm(head_dim)
on q and k, zero-centred norms, rotary positions on the first partial_rotary_factor of each head (0.25 unless
said otherwise), every layer MoE with a sigmoid-gated shared expert and its top-k always renormalised
(Qwen3_5MoeTopKRouter has no switch), and multimodal RoPE with interleaved T/H/W sections
(``model.positions.mrope_sections``, [11, 11, 10] unless said otherwise; text positions rotate as plain RoPE).
The wrapper's tie_word_embeddings decides the tying of Qwen3_5MoeForConditionalGeneration; a text config that
says otherwise (AutoModelForCausalLM would follow it) is refused as ambiguous.

Checkpoints hold the text model under ``model.language_model.`` with Qwen3.5's own delta-net names (``in_proj_qkv``,
``in_proj_z``, ``in_proj_b``, ``in_proj_a``: moec's), the fused q_proj of the gated attention (split by the
mapper), the vision tower under ``model.visual.`` and the release's MTP layer under ``mtp.``, both let go.
"""

from __future__ import annotations

from typing import Any

from moec.hf.draft import Draft, Family, HFConfig, shown, spelt
from moec.hf.families._common import aux, base, defaults
from moec.hf.families.glm4_moe import take_partial_rotary
from moec.hf.families.hy_v3 import equals, ignored
from moec.hf.families.qwen3_next import (
    DEFAULT_PARTIAL_ROTARY,
    GatedAttentionMapper,
    deltanet_section,
    gated_attention,
    layer_mixers,
    shared_expert_moe,
)
from moec.hf.families.qwen3_vl_moe import put_mrope_sections, rope_view, vision_tower_params
from moec.hf.mapper import LanguageModelMapper

# Qwen3_5MoeConfig (the wrapper; its default_theta is unused: the text config holds the rope)
DEFAULTS = {"default_theta": 10000.0, "text_config": None, "vision_config": None, "image_token_id": 248056,
            "video_token_id": 248057, "vision_start_token_id": 248053, "vision_end_token_id": 248054,
            "tie_word_embeddings": False}  # fmt: skip
# Qwen3_5MoeTextConfig; full_attention_interval is read by its __post_init__ when layer_types is unset
# fmt: off
TEXT_DEFAULTS = defaults(10000.0, vocab_size=248320, hidden_size=2048, num_hidden_layers=40, num_attention_heads=16,
                         num_key_value_heads=2, max_position_embeddings=32768, rms_norm_eps=1e-6,
                         tie_word_embeddings=False, attention_bias=False, head_dim=256, linear_conv_kernel_dim=4,
                         linear_key_head_dim=128, linear_value_head_dim=128, linear_num_key_heads=16,
                         linear_num_value_heads=32, moe_intermediate_size=512, shared_expert_intermediate_size=512,
                         num_experts_per_tok=8, num_experts=256, router_aux_loss_coef=0.001, layer_types=None,
                         full_attention_interval=4)
# fmt: on
MROPE_DEFAULT = [11, 11, 10]  # Qwen3_5MoeTextRotaryEmbedding when the rope parameters give no mrope_section
_MROPE_KEYS = ("mrope_section", "mrope_interleaved")  # Qwen3_5MoeTextConfig's rope-validation skips
_CLS = "Qwen3_5MoeText"


def translate(c: HFConfig, d: Draft) -> None:
    t = _text_config(c)
    rope_key, rope_given = rope_view(t, _MROPE_KEYS)
    factor, factor_src = take_partial_rotary(
        t, DEFAULT_PARTIAL_ROTARY, f"partial_rotary_factor unset: {DEFAULT_PARTIAL_ROTARY} (Qwen3_5MoeTextConfig's)"
    )
    base(t, d, "Qwen3.5-MoE text")
    if factor is not None:
        d.put("model.positions.partial_rotary_factor", factor, factor_src)
    _tie(c, t, d)
    _mrope(t, d, rope_key, rope_given)
    gated_attention(t, d, "Qwen3_5Moe")
    layer_mixers(t, d, "Qwen3_5MoeGatedDeltaNet")
    deltanet_section(t, d)
    shared_expert_moe(t, d, "Qwen3_5Moe", gated=True)
    d.put("moe.router.normalize_topk", True, "Qwen3_5MoeTopKRouter always renormalises the top-k")
    aux(t, d)
    d.ffn_note = "Qwen3_5MoeDecoderLayer: every layer is MoE"
    for key in ("image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id"):
        c.value(key)  # token ids of the image and video inputs moec leaves out
    d.put("model.n_layers", d.n_layers, f"{t.src('num_hidden_layers')}; left out: {_tower(c, d)}")
    _release_fields(t, d)


def _text_config(c: HFConfig) -> HFConfig:
    """text_config as a nested config located under ``text_config.``, checked with the top one."""
    raw = dict(c.mapping("text_config"))
    t = HFConfig(raw, TEXT_DEFAULTS, prefix="text_config.")
    c.children.append(t)
    if raw.get("model_type") not in (None, "qwen3_5_moe_text"):
        t.bad("model_type", f"{shown(raw['model_type'])}: the text model of qwen3_5_moe is qwen3_5_moe_text")
    return t


def _tie(c: HFConfig, t: HFConfig, d: Draft) -> None:
    tie = c.bool("tie_word_embeddings")
    note = c.src("tie_word_embeddings") + " (Qwen3_5MoeForConditionalGeneration reads the wrapper's)"
    if t.given("tie_word_embeddings"):
        text_tie = t.value("tie_word_embeddings")
        if text_tie != tie:
            d.gap(
                "text_config.tie_word_embeddings",
                text_tie,
                f"the wrapper says {spelt(tie)}: Qwen3_5MoeForConditionalGeneration follows the wrapper, "
                "AutoModelForCausalLM the text config: ambiguous",
                "none: make the two agree",
            )
        else:
            note += f"; text_config.tie_word_embeddings {spelt(text_tie)} agrees"
    d.put("model.tie_embeddings", tie, note)


def _mrope(t: HFConfig, d: Draft, key: str, given: dict[str, Any]) -> None:
    if not put_mrope_sections(t, d, key, given, MROPE_DEFAULT):
        return
    note = "Qwen3_5MoeTextRotaryEmbedding interleaves T, H, W always"
    flag = given.get("mrope_interleaved")
    where = f"{t.prefix}{key}.mrope_interleaved"
    if flag is True:
        note += f" ({where} true: agrees; transformers ignores it)"
    elif flag is not None:
        d.gap(
            where,
            flag,
            "transformers' Qwen3.5-MoE ignores it and interleaves the sections: ambiguous",
            f"none: remove {where} (what transformers runs) or set it true",
        )
    d.put("model.positions.mrope_interleaved", True, note)


def _release_fields(t: HFConfig, d: Draft) -> None:
    """Fields of Qwen's release configs that Qwen3_5MoeTextConfig does not declare and its model does not read:
    named where they agree with what transformers builds, refused as ambiguous where they do not."""
    ignored(t, d, _CLS, "attn_output_gate", equals(True), "attention.output_gate")
    ignored(t, d, _CLS, "norm_topk_prob", equals(True), "moe.router.normalize_topk")
    ignored(t, d, _CLS, "decoder_sparse_step", equals(1), "layers")
    ignored(t, d, _CLS, "mlp_only_layers", equals([]), "layers")
    ignored(t, d, _CLS, "mamba_ssm_dtype", equals("float32"), "model.n_layers")  # moec keeps it in float32 too
    mtp = t.int("mtp_num_hidden_layers", minimum=0, optional=True)
    t.value("mtp_use_dedicated_embeddings")  # how an MTP layer would embed: moot, none is built
    if mtp:
        value, note = d.fields["model.n_layers"]
        d.put("model.n_layers", value, f"{note}; mtp_num_hidden_layers {mtp}: transformers builds none (ignored)")
    if t.given("intermediate_size"):
        d.ffn_note += f" ({t.prefix}intermediate_size {shown(t.value('intermediate_size'))}: no dense MLP uses it)"


def _tower(c: HFConfig, d: Draft) -> str:
    """The vision tower left out, with its parameter count: Qwen3-VL-MoE's tower without DeepStack's mergers."""
    raw = {**c.mapping("vision_config"), "deepstack_visual_indexes": []}
    n = vision_tower_params(HFConfig({"vision_config": raw}, {}), d.get("model.d_model"))
    count = f": {n:,} parameters" if n is not None else ": not counted, a size is not a positive integer"
    return f"the vision tower (vision_config{count})"


class Qwen3_5MoeMapper(LanguageModelMapper, GatedAttentionMapper):
    """The text model under ``model.language_model.`` with the gated attention's fused q_proj split; the vision
    tower and the MTP layer let go."""

    dropped = ("model.visual.", "mtp.")


FAMILY = Family("qwen3_5_moe", "Qwen3_5MoeForConditionalGeneration", DEFAULTS, translate, mapper=Qwen3_5MoeMapper)
