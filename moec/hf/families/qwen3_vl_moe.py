"""Qwen3-VL-MoE (``model_type`` qwen3_vl_moe, Qwen3VLMoeForConditionalGeneration): the multimodal wrapper; moec
imports its ``text_config`` (Qwen3VLMoeTextModel and the LM head) and leaves out the vision tower (ViT blocks,
patch merger, DeepStack mergers), whose parameters the spec's notes count, and DeepStack's injection of visual
features into the first decoder layers' hidden states, which acts on image and video tokens only.

The text model is Qwen3-MoE's: GQA with RMSNorm(head_dim) on q and k, softmax top-k routing always renormalised
(Qwen3VLMoeTextTopKRouter has no switch), dense layers where mlp_only_layers or decoder_sparse_step say, and
multimodal RoPE with interleaved T/H/W sections (``model.positions.mrope_sections``; text positions rotate as
plain RoPE). The wrapper's tie_word_embeddings decides the tying (the text config's is ignored).

Checkpoints hold the text model under ``model.language_model.`` and the tower under ``model.visual.``, which
is let go; stacked experts load in transformers' layout, (E, 2f, d) and (E, d, f), or in the release's, (E, d,
2f) and (E, f, d).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from moec.hf.draft import Draft, Family, HFConfig, is_int, shown, spelt
from moec.hf.families._common import base, defaults, gqa, moe_core, qwen_moe_ffn, router
from moec.hf.mapper import LanguageModelMapper, Missing
from moec.hf.rope import rope_field
from moec.spec.plan import MoEPlan

if TYPE_CHECKING:
    import torch


# Qwen3VLMoeConfig (the wrapper; its default_theta is unused: the text config holds the rope) and
# Qwen3VLMoeTextConfig / Qwen3VLMoeVisionConfig (its parts)
DEFAULTS = {"default_theta": 10000.0, "tie_word_embeddings": False, "text_config": None, "vision_config": None,
            "image_token_id": 151655, "video_token_id": 151656, "vision_start_token_id": 151652,
            "vision_end_token_id": 151653}  # fmt: skip
# fmt: off
TEXT_DEFAULTS = defaults(500000.0, vocab_size=151936, hidden_size=2048, intermediate_size=5632, num_hidden_layers=24,
                         num_attention_heads=16, num_key_value_heads=16, max_position_embeddings=128000,
                         rms_norm_eps=1e-6, tie_word_embeddings=True, attention_bias=False, decoder_sparse_step=1,
                         moe_intermediate_size=1408, num_experts_per_tok=4, num_local_experts=60,
                         router_aux_loss_coef=0.001, mlp_only_layers=None, head_dim=None, sliding_window=None)
VISION_DEFAULTS = {"depth": 27, "hidden_size": 1152, "hidden_act": "gelu_pytorch_tanh", "intermediate_size": 4304,
                   "num_heads": 16, "in_channels": 3, "patch_size": 16, "spatial_merge_size": 2,
                   "temporal_patch_size": 2, "out_hidden_size": 3584, "num_position_embeddings": 2304,
                   "deepstack_visual_indexes": [8, 16, 24], "rope_parameters": None}
# fmt: on
MROPE_DEFAULT = [24, 20, 20]  # Qwen3VLMoeTextRotaryEmbedding when rope parameters give no mrope_section
_MROPE_KEYS = ("mrope_section", "mrope_interleaved")  # what Qwen3VLMoeTextConfig's rope validation skips


def translate(c: HFConfig, d: Draft) -> None:
    t = _text_config(c)
    rope_key, rope_given = rope_view(t)
    base(t, d, "Qwen3-VL-MoE text")
    d.put("model.tie_embeddings", c.bool("tie_word_embeddings"), c.src("tie_word_embeddings") + _text_tie_note(t))
    _mrope(t, d, rope_key, rope_given)
    b = t.bool("attention_bias")
    gqa(t, d, bias=b, out_bias=b, bias_src=t.src("attention_bias") + " (q, k, v and o)", qk_norm=True)
    d.put("attention.qk_norm", True, "Qwen3VLMoeTextAttention: RMSNorm(head_dim) on q and k, before the rotation")
    _ignored_text_fields(t, d)
    moe_core(t, d, experts_key="num_local_experts", width_key="moe_intermediate_size")
    router(d, "Qwen3VLMoeTextTopKRouter: softmax over all experts, top-k", score="softmax", softmax_after_topk=False)
    d.put("moe.router.normalize_topk", True, "Qwen3VLMoeTextTopKRouter always renormalises" + _norm_note(t, d))
    qwen_moe_ffn(t, d, "num_local_experts", bias_src="Qwen3VLMoeTextMLP has no biases")
    for key in ("image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id"):
        c.value(key)  # token ids of the image and video inputs moec leaves out
    tower = vision_tower_params(c, d.get("model.d_model"))
    left_out = "the vision tower (vision_config" + (f": {tower:,} parameters" if tower is not None else "") + ")"
    d.put("model.n_layers", d.n_layers, f"{t.src('num_hidden_layers')}; left out: {left_out} and DeepStack's "
          "visual features (image and video inputs only)")  # fmt: skip


def _text_config(c: HFConfig) -> HFConfig:
    """text_config as a nested config located under ``text_config.``; num_experts is num_local_experts."""
    raw = dict(c.mapping("text_config"))
    conflict = "num_experts" in raw and "num_local_experts" in raw and raw["num_experts"] != raw["num_local_experts"]
    if "num_experts" in raw:
        raw.setdefault("num_local_experts", raw.pop("num_experts"))
    t = HFConfig(raw, TEXT_DEFAULTS, prefix="text_config.")
    c.children.append(t)
    if conflict:
        t.bad(
            "num_experts", f"disagrees with num_local_experts ({shown(raw['num_local_experts'])}); they name one field"
        )
    if raw.get("model_type") not in (None, "qwen3_vl_moe_text"):
        t.bad("model_type", f"{shown(raw['model_type'])}: the text model of qwen3_vl_moe is qwen3_vl_moe_text")
    return t


def rope_view(t: HFConfig, mrope_keys: tuple[str, ...] = _MROPE_KEYS) -> tuple[str, dict[str, Any]]:
    """The rope mapping without its multimodal keys ``mrope_keys`` (read by :func:`put_mrope_sections` and the
    family's interleave check) and with the legacy type 'mrope' read as transformers reads it, 'default'; the
    common reader then takes it. Returns (its key, as given)."""
    key = rope_field(t)
    given = t.raw.get(key)
    if not isinstance(given, dict):
        return key, {}  # absent, or refused by the common reader
    view = {k: v for k, v in given.items() if k not in mrope_keys}
    for k in ("type", "rope_type"):
        if view.get(k) == "mrope":
            view[k] = "default"
    t.raw[key] = view
    return key, given


def put_mrope_sections(t: HFConfig, d: Draft, key: str, given: dict[str, Any], default: list[int]) -> bool:
    """``mrope_section`` of the rope mapping ``given`` (``default`` when unset) as the spec's sections;
    False, with the problem reported, when it is not three non-negative integers."""
    sections = given.get("mrope_section", default)
    src = f"{t.prefix}{key}.mrope_section" if "mrope_section" in given else f"mrope_section unset: {default}"
    if not (isinstance(sections, list) and len(sections) == 3 and all(is_int(s) and s >= 0 for s in sections)):
        t.bad(f"{key}.mrope_section", f"{shown(sections)}: expected three non-negative integers (T, H, W)")
        return False
    d.put("model.positions.mrope_sections", sections, src + " (T, H, W)")
    return True


def _mrope(t: HFConfig, d: Draft, key: str, given: dict[str, Any]) -> None:
    if not put_mrope_sections(t, d, key, given, MROPE_DEFAULT):
        return
    flag = given.get("mrope_interleaved")
    note = "Qwen3VLMoeTextRotaryEmbedding interleaves T, H, W always"
    key = t.prefix + key
    if flag is not None and flag is not True:
        d.gap(
            f"{key}.mrope_interleaved",
            flag,
            "transformers' Qwen3-VL-MoE ignores it and interleaves the sections, while Qwen2-VL-style code keeps "
            "them contiguous: ambiguous",
            f"none: remove {key}.mrope_interleaved (what transformers runs) or set it true",
        )
    elif flag is True:
        note += f" ({key}.mrope_interleaved true: agrees; transformers ignores it)"
    d.put("model.positions.mrope_interleaved", True, note)


def _text_tie_note(t: HFConfig) -> str:
    tie = t.value("tie_word_embeddings")
    return (
        f"; text_config.tie_word_embeddings {spelt(tie)}: transformers ignores it"
        if t.given("tie_word_embeddings")
        else ""
    )


def _norm_note(t: HFConfig, d: Draft) -> str:
    """norm_topk_prob, which the release carries from Qwen3-MoE and Qwen3-VL-MoE does not read."""
    if not t.given("norm_topk_prob"):
        return ""
    v = t.value("norm_topk_prob")
    if v is not True:
        d.gap(
            "text_config.norm_topk_prob",
            v,
            "transformers' Qwen3-VL-MoE ignores it and always renormalises the top-k weights: ambiguous",
            "none: remove norm_topk_prob (what transformers runs) or set it true",
        )
        return ""
    return " (text_config.norm_topk_prob true: agrees; transformers ignores it)"


def _ignored_text_fields(t: HFConfig, d: Draft) -> None:
    """Fields Qwen3VLMoeTextConfig overwrites or never reads: a sliding_window (__post_init__ sets None) and
    layer_types of full attention only; named when they say what transformers builds, refused otherwise."""
    named = []
    w = t.value("sliding_window")
    if w is not None:
        named.append(f"sliding_window {shown(w)}: Qwen3VLMoeTextConfig sets it to null (transformers ignores it)")
    types = t.value("layer_types")
    if types is not None:
        if isinstance(types, list) and all(x == "full_attention" for x in types):
            named.append("layer_types all full_attention: agrees (transformers ignores it)")
        else:
            d.gap(
                "text_config.layer_types",
                types,
                "transformers' Qwen3-VL-MoE ignores layer_types and attends fully on every layer: ambiguous",
                "none: remove layer_types (what transformers runs)",
            )
    if named:
        d.put("attention.kind", "gqa", "; ".join(named))


def vision_tower_params(c: HFConfig, d_text: Any) -> int | None:
    """Parameters of Qwen3VLMoeVisionModel for vision_config (None if a size is not a positive integer): the
    Conv3d patch embedding, the learned position table, depth blocks (two LayerNorms, qkv and proj with biases,
    a two-layer MLP with biases), the patch merger (LayerNorm of d, d·m² → d·m² → out) and one DeepStack merger
    (LayerNorm of d·m², same linears) per deepstack_visual_indexes entry."""
    v = HFConfig(c.mapping("vision_config"), VISION_DEFAULTS, prefix="vision_config.")
    c.children.append(v)
    for k in ("model_type", "hidden_act", "rope_parameters", "initializer_range"):
        v.value(k)  # the tower's own settings: left out with it
    keys = ("depth", "hidden_size", "intermediate_size", "num_heads", "in_channels", "patch_size",
            "spatial_merge_size", "temporal_patch_size", "out_hidden_size", "num_position_embeddings")  # fmt: skip
    n = {k: v.value(k) for k in keys}
    stack = v.value("deepstack_visual_indexes")
    if not all(is_int(x) and x > 0 for x in n.values()) or not isinstance(stack, (list, tuple)):
        return None
    h, inner, out = n["hidden_size"], n["intermediate_size"], n["out_hidden_size"]
    merged = h * n["spatial_merge_size"] ** 2
    patch = h * n["in_channels"] * n["temporal_patch_size"] * n["patch_size"] ** 2 + h
    block = 4 * h + (3 * h * h + 3 * h) + (h * h + h) + (h * inner + inner) + (inner * h + h)
    linears = (merged * merged + merged) + (merged * out + out)
    return (
        patch
        + n["num_position_embeddings"] * h
        + n["depth"] * block
        + (2 * h + linears)
        + len(stack) * (2 * merged + linears)
    )


class Qwen3VLMoeMapper(LanguageModelMapper):
    """The text model under ``model.language_model.``; the vision tower and its mergers are let go."""

    def experts(self, blk: str, plan: MoEPlan, leaf: str) -> torch.Tensor:
        """Stacked experts in either layout, told apart by down_proj: (E, d, f) transformers', (E, f, d) the
        release's (whose gate_up_proj (E, d, 2f) is moec's own layout)."""
        e = f"{blk}experts."
        if leaf not in ("w_gate_up", "w_down") or e + "down_proj" not in self.ck:
            return super().experts(blk, plan, leaf)
        down = self.ck.get(e + "down_proj")
        d_model = self.plan.d_model
        released = down.shape[1] == plan.d_ff and down.shape[2] == d_model and plan.d_ff != d_model
        if plan.d_ff == d_model:  # down_proj is square per expert: gate_up_proj's shape tells
            released = self.ck.get(e + "gate_up_proj").shape[1] == d_model
        if not released:
            return super().experts(blk, plan, leaf)
        if leaf == "w_down":
            return down
        t = self.ck.get(e + "gate_up_proj")
        if t is None:
            raise Missing([e + "gate_up_proj"])
        return t


FAMILY = Family(
    "qwen3_vl_moe",
    "Qwen3VLMoeForConditionalGeneration",
    DEFAULTS,
    translate,
    mapper=Qwen3VLMoeMapper,
)
