"""Qwen3-Omni-MoE (``model_type`` qwen3_omni_moe, Qwen3OmniMoeForConditionalGeneration): the thinker-talker
wrapper; moec imports the thinker's text decoder (``thinker_config.text_config``: Qwen3OmniMoeThinkerTextModel and
the thinker's LM head) and leaves out the thinker's audio tower and vision tower, whose parameters the spec's
notes count, and the talker and code2wav (the speech output, built when enable_audio_output is true), which are
named and not counted.

The text decoder is Qwen3-MoE's: GQA with RMSNorm(head_dim) on q and k before the rotation, softmax top-k routing
renormalised when norm_topk_prob says so, dense layers where mlp_only_layers or decoder_sparse_step say, and
multimodal RoPE with interleaved T/H/W sections (``model.positions.mrope_sections``; text positions rotate as plain
RoPE). Qwen3OmniMoeThinkerTextAttention never slides (its sliding_window is None whatever the config says) and reads
head_dim from the config when given (the text config class does not declare it). The thinker's
tie_word_embeddings decides the tying (the text config's is ignored).

Checkpoints, as released and as save_pretrained writes the whole model, hold the text decoder under
``thinker.model.`` and its head as ``thinker.lm_head.weight``; the towers (``thinker.audio_tower.``,
``thinker.visual.``), the talker (``talker.``) and code2wav (``code2wav.``) are let go.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from moec.hf.draft import Draft, Family, HFConfig, is_int, shown, spelt
from moec.hf.families._common import base, defaults, gqa, moe_core, qwen_moe_ffn, router
from moec.hf.families.hy_v3 import equals, ignored
from moec.hf.families.qwen3_vl_moe import put_mrope_sections, rope_view, vision_tower_params
from moec.hf.mapper import Mapper

if TYPE_CHECKING:
    import torch

    from moec.hf.checkpoint import Checkpoint
    from moec.spec.plan import ResolvedModel

# Qwen3OmniMoeConfig (the wrapper) and Qwen3OmniMoeThinkerConfig; their default_theta is unused
DEFAULTS = {"default_theta": 10000.0, "thinker_config": None, "talker_config": None, "code2wav_config": None,
            "enable_audio_output": True, "im_start_token_id": 151644, "im_end_token_id": 151645,
            "tts_pad_token_id": 151671, "tts_bos_token_id": 151672, "tts_eos_token_id": 151673,
            "system_token_id": 8948, "user_token_id": 872, "assistant_token_id": 77091,
            "initializer_range": None}  # fmt: skip
THINKER_DEFAULTS = {"audio_config": None, "vision_config": None, "text_config": None, "position_id_per_seconds": 25,
                    "audio_start_token_id": 151647, "user_token_id": 872, "initializer_range": 0.02,
                    "tie_word_embeddings": False, "audio_token_id": 151646, "image_token_id": 151655,
                    "video_token_id": 151656}  # fmt: skip
# the thinker's settings of its audio and video inputs (token ids, timing), which moec leaves out with the towers;
# the last four are the release's, which Qwen3OmniMoeThinkerConfig does not declare
_INPUT_KEYS = ("position_id_per_seconds", "audio_start_token_id", "user_token_id", "audio_token_id", "image_token_id",
               "video_token_id", "audio_end_token_id", "vision_start_token_id", "vision_end_token_id",
               "seconds_per_chunk")  # fmt: skip
_WRAPPER_KEYS = ("im_start_token_id", "im_end_token_id", "tts_pad_token_id", "tts_bos_token_id", "tts_eos_token_id",
                 "system_token_id", "user_token_id", "assistant_token_id")  # fmt: skip
# Qwen3OmniMoeTextConfig; head_dim is not a field of it (the attention falls back to hidden_size / heads)
# fmt: off
TEXT_DEFAULTS = defaults(1000000.0, vocab_size=3584, hidden_size=2048, intermediate_size=18944, num_hidden_layers=28,
                         num_attention_heads=28, num_key_value_heads=4, max_position_embeddings=32768,
                         rms_norm_eps=1e-6, attention_bias=False, sliding_window=None, decoder_sparse_step=1,
                         moe_intermediate_size=768, num_experts_per_tok=8, num_experts=128, norm_topk_prob=True,
                         router_aux_loss_coef=0.001, mlp_only_layers=None, head_dim=None)
# Qwen3OmniMoeAudioEncoderConfig: the fields its parameter count needs (attribute_map: the alias → the field)
AUDIO_DEFAULTS = {"num_mel_bins": 128, "encoder_layers": 32, "encoder_ffn_dim": 5120, "d_model": 1280,
                  "output_dim": 3584, "downsample_hidden_size": 480}
AUDIO_ALIASES = {"num_hidden_layers": "encoder_layers", "hidden_size": "d_model", "intermediate_size": "encoder_ffn_dim"}
# fmt: on
MROPE_DEFAULT = [24, 20, 20]  # Qwen3OmniMoeThinkerTextRotaryEmbedding when the rope parameters give no mrope_section
_MROPE_KEYS = ("mrope_section", "mrope_interleaved", "interleaved")  # Qwen3OmniMoeTextConfig's rope-validation skips


def translate(c: HFConfig, d: Draft) -> None:
    th = _sub(c, c, "thinker_config", THINKER_DEFAULTS, "qwen3_omni_moe_thinker")
    t = _sub(c, th, "text_config", TEXT_DEFAULTS, "qwen3_omni_moe_text")
    rope_key, rope_given = rope_view(t, _MROPE_KEYS)
    base(t, d, "Qwen3-Omni-MoE thinker text")
    tie_note = th.src("tie_word_embeddings") + _text_tie_note(t)
    d.put("model.tie_embeddings", th.bool("tie_word_embeddings"), tie_note)
    _mrope(t, d, rope_key, rope_given)
    b = t.bool("attention_bias")
    gqa(t, d, bias=b, out_bias=b, bias_src=t.src("attention_bias") + " (q, k, v and o)", qk_norm=True)
    d.put(
        "attention.qk_norm", True, "Qwen3OmniMoeThinkerTextAttention: RMSNorm(head_dim) on q and k, before the rotation"
    )
    _never_slides(t, d)
    moe_core(t, d, experts_key="num_experts", width_key="moe_intermediate_size")
    router(d, "Qwen3OmniMoeThinkerTextTopKRouter: softmax over all experts, top-k", score="softmax",
           softmax_after_topk=False)  # fmt: skip
    d.put("moe.router.normalize_topk", t.bool("norm_topk_prob"), t.src("norm_topk_prob"))
    qwen_moe_ffn(t, d, "num_experts", bias_src="Qwen3OmniMoeThinkerTextMLP has no biases")
    # Qwen's own release fields (the thinker's text config carries them) that no transformers code reads
    ignored(t, d, "Qwen3OmniMoeThinkerText", "use_qk_norm", equals(True), "attention.qk_norm")
    ignored(t, d, "Qwen3OmniMoeThinkerText", "shared_expert_intermediate_size", equals(0), "moe.n_experts")
    d.put("model.n_layers", d.n_layers, f"{t.src('num_hidden_layers')}; left out: {_left_out(c, th, d)}")


def _sub(c: HFConfig, parent: HFConfig, key: str, table: dict[str, Any], model_type: str) -> HFConfig:
    """``parent``'s nested config ``key``, located under its prefix; checked by the import with the others (a child
    of the top config: the import reads children one level deep)."""
    raw = dict(parent.mapping(key))
    sub = HFConfig(raw, table, prefix=f"{parent.prefix}{key}.")
    c.children.append(sub)
    if raw.get("model_type") not in (None, model_type):
        sub.bad("model_type", f"{shown(raw['model_type'])}: the {key} of qwen3_omni_moe is {model_type}")
    return sub


def _mrope(t: HFConfig, d: Draft, key: str, given: dict[str, Any]) -> None:
    if not put_mrope_sections(t, d, key, given, MROPE_DEFAULT):
        return
    where = t.prefix + key
    notes = ["Qwen3OmniMoeThinkerTextRotaryEmbedding interleaves T, H, W always"]
    for flag in ("mrope_interleaved", "interleaved"):
        v = given.get(flag)
        if v is True:
            notes.append(f"{where}.{flag} true: agrees; transformers ignores it")
        elif v is not None:
            d.gap(
                f"{where}.{flag}",
                v,
                "transformers' Qwen3-Omni-MoE ignores it and interleaves the sections, while Qwen2-VL-style code "
                "keeps them contiguous: ambiguous",
                f"none: remove {where}.{flag} (what transformers runs) or set it true",
            )
    d.put("model.positions.mrope_interleaved", True, "; ".join(notes))


def _text_tie_note(t: HFConfig) -> str:
    if not t.given("tie_word_embeddings"):
        return ""
    return f"; {t.src('tie_word_embeddings')} {spelt(t.value('tie_word_embeddings'))}: transformers ignores it"


def _never_slides(t: HFConfig, d: Draft) -> None:
    """Qwen3OmniMoeThinkerTextAttention sets sliding_window None on every layer: a sliding_window is named as
    ignored; use_sliding_window (Qwen's own field) true is refused as ambiguous."""
    named = []
    w = t.value("sliding_window")
    if w is not None:
        named.append(
            f"sliding_window {shown(w)}: Qwen3OmniMoeThinkerTextAttention never slides (transformers ignores it)"
        )
    d.put("attention.kind", "gqa", "; ".join(named))
    ignored(t, d, "Qwen3OmniMoeThinkerText", "use_sliding_window", equals(False), "attention.kind")


def _left_out(c: HFConfig, th: HFConfig, d: Draft) -> str:
    """What the import leaves out, with the towers' parameter counts where their configs give every size."""
    for key in _INPUT_KEYS:
        th.value(key)  # the audio and video inputs' settings, left out with the towers
    for key in _WRAPPER_KEYS:
        c.value(key)  # chat and speech token ids
    th.value("initializer_range")
    c.value("initializer_range")
    audio = audio_tower_params(th.mapping("audio_config"))
    vision_raw = th.mapping("vision_config")
    vision = vision_tower_params(HFConfig({"vision_config": vision_raw}, {}), d.get("model.d_model"))
    parts = [f"the audio tower ({th.prefix}audio_config{_count(audio)})",
             f"the vision tower ({th.prefix}vision_config{_count(vision)}) and DeepStack's visual features (image "
             "and video inputs only)"]  # fmt: skip
    c.mapping("talker_config")
    c.mapping("code2wav_config")
    speech = "the talker (talker_config) and code2wav (code2wav_config): the speech output"
    if c.bool("enable_audio_output"):
        parts.append(f"{speech}, built as {c.src('enable_audio_output')} is true, not counted")
    else:
        parts.append(f"{speech}, not built (enable_audio_output false)")
    return "; ".join(parts)


def _count(n: int | None) -> str:
    return f": {n:,} parameters" if n is not None else ": not counted, a size is not a positive integer"


def audio_tower_params(raw: dict[str, Any]) -> int | None:
    """Parameters of Qwen3OmniMoeAudioEncoder for audio_config (None if a size is not a positive integer or an
    alias disagrees with its field): three 3×3 Conv2d with biases (1 → c → c → c channels), conv_out (c · the mel
    bins thrice halved → d, no bias), encoder_layers Whisper-style blocks (q, k, v, out with biases, two LayerNorms,
    fc1/fc2 with biases), ln_post, proj1 (d → d) and proj2 (d → output_dim) with biases. The sinusoidal positions are
    a buffer."""
    n = dict(AUDIO_DEFAULTS)
    for alias, field in AUDIO_ALIASES.items():
        if alias in raw and field in raw and raw[alias] != raw[field]:
            return None
        n[field] = raw.get(field, raw.get(alias, n[field]))
    n.update({k: raw[k] for k in AUDIO_DEFAULTS if k in raw})
    if not all(is_int(v) and v > 0 for v in n.values()):
        return None
    d, f, ch, out = n["d_model"], n["encoder_ffn_dim"], n["downsample_hidden_size"], n["output_dim"]
    mels = (((n["num_mel_bins"] + 1) // 2 + 1) // 2 + 1) // 2  # after three stride-2 convolutions
    convs = (9 * ch + ch) + 2 * (9 * ch * ch + ch)
    block = 4 * (d * d + d) + 2 * 2 * d + (d * f + f) + (f * d + d)
    return convs + ch * mels * d + n["encoder_layers"] * block + 2 * d + (d * d + d) + (d * out + out)


class Qwen3OmniMoeMapper(Mapper):
    """The thinker's text decoder under ``thinker.model.``, its head ``thinker.lm_head.weight``; the towers', the
    talker's and code2wav's tensors are let go."""

    layer_fmt = "thinker.model.layers.{i}."
    embed = "thinker.model.embed_tokens.weight"
    final_norm = "thinker.model.norm."
    head = "thinker.lm_head.weight"
    dropped = ("thinker.audio_tower.", "thinker.visual.", "talker.", "code2wav.")

    def __init__(self, ck: Checkpoint, plan: ResolvedModel):
        super().__init__(ck, plan)
        if plan.tie_embeddings and self.head in ck.file_of:
            ck.used.add(self.head)  # a tied head saved as well: transformers uses the embedding

    def load(self, name: str) -> torch.Tensor:
        if name.startswith("lm_head."):
            return self.ck.get(self.head)
        return super().load(name)


FAMILY = Family(
    "qwen3_omni_moe",
    "Qwen3OmniMoeForConditionalGeneration",
    DEFAULTS,
    translate,
    mapper=Qwen3OmniMoeMapper,
)
