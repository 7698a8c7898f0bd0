"""HY-V4-VL (``model_type`` hy_v4_vl, HYV4VLForConditionalGeneration): the multimodal wrapper; moec imports its
``text_config`` (HYV4VLTextModel and the LM head), which is HY-V4's text model (moec/hf/families/hy_v4.py, whose
steps translate it), and leaves out the vision tower and its projector (HYV4VLVisionModel), which act on image and
video inputs only. Two differences from HY-V4's text model: every rotation (MLA's and the indexer's) pairs adjacent
dims (moec's MLA layout: nothing is re-laid on load), and MLA's latent norms take rms_norm_eps.
Its rotary embedding is multimodal: the rotated dimensions' frequencies are interleaved over
temporal, height and width positions (``mrope_section``, [12, 10, 10] unless given; ``model.positions.mrope_sections``
with ``mrope_interleaved``); text positions rotate as plain RoPE.

transformers holds the text model under ``model.language_model.`` and the tower under ``model.vision_tower.``;
save_pretrained writes the release's names, the text model under ``model.`` (its head's tensors as
``model.hc_head.hc_pre.hc_head_fn``, ...) and the tower under ``vit.``. Both load; the tower is let go.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from moec.hf.draft import Draft, Family, HFConfig
from moec.hf.families._common import defaults, text_config, text_tie_note
from moec.hf.families.glm4v_moe import take_mrope
from moec.hf.families.hy_v4 import HYV4Mapper, hy_v4_text

if TYPE_CHECKING:
    from moec.hf.checkpoint import Checkpoint
    from moec.spec.plan import ResolvedModel

# HYV4VLConfig (the wrapper) and HYV4VLTextConfig (its text part; num_key_value_heads and head_dim are overwritten
# by its __post_init__, as HY-V4's)
DEFAULTS = {"default_theta": 10000.0, "tie_word_embeddings": False, "text_config": None, "vision_config": None,
            "image_token_id": 120120, "video_token_id": 120124}  # fmt: skip
# fmt: off
TEXT_DEFAULTS = defaults(10000.0, vocab_size=120832, hidden_size=6144, intermediate_size=18432,
                         moe_intermediate_size=2048, num_hidden_layers=78, num_attention_heads=64,
                         num_key_value_heads=32, head_dim=256, hidden_act="silu", max_position_embeddings=262144,
                         rms_norm_eps=1e-5, tie_word_embeddings=False, attention_bias=False, attention_dropout=0.0,
                         n_routed_experts=256, n_shared_experts=1, num_experts_per_tok=8, routed_scaling_factor=2.827,
                         norm_topk_prob=True, n_group=1, topk_group=1, q_lora_rank=2048, kv_lora_rank=512,
                         qk_nope_head_dim=192, qk_rope_head_dim=64, v_head_dim=256, mlp_layer_types=None,
                         layer_types=None, index_topk=2048, index_head_dim=128, index_n_heads=32, indexer_types=None,
                         hc_mult=4, hc_magnitude=2.0, hc_eps=1e-6, learnable_sink_init=0.0, swiglu_limit=10.0)
# fmt: on
MROPE_DEFAULT = [12, 10, 10]  # HYV4VLTextConfig.convert_rope_params_to_dict's default mrope_section


def translate(c: HFConfig, d: Draft) -> None:
    t = text_config(c, TEXT_DEFAULTS, "hy_v4_vl_text", aliases={"num_local_experts": "n_routed_experts"})
    sections, sections_src = take_mrope(t, MROPE_DEFAULT)
    hy_v4_text(t, d, "HYV4VL", rotary="interleaved")
    d.put("model.tie_embeddings", c.bool("tie_word_embeddings"), c.src("tie_word_embeddings") + text_tie_note(c, t))
    if sections is not None:
        d.put("model.positions.mrope_sections", sections, sections_src + " (T, H, W)")
        d.put("model.positions.mrope_interleaved", True, "HYV4VLRotaryEmbedding: T, H, W frequencies interleaved")
    for key in ("image_token_id", "video_token_id"):
        c.value(key)
    c.mapping("vision_config")
    note = d.fields["model.n_layers"][1]
    d.put(
        "model.n_layers",
        d.n_layers,
        f"{note}; left out: the vision tower and its projector (vision_config), which act on image and video inputs "
        "only",
    )


class HYV4VLMapper(HYV4Mapper):
    """HY-V4's mapping under the wrapper's prefix: transformers' ``model.language_model.`` or the release's
    ``model.`` (whichever the checkpoint holds); the tower (``vit.``, ``model.vision_tower.``) let go."""

    dropped = ("vit.", "model.vision_tower.", "model.mtp_layers.", "model.language_model.mtp_layers.")
    mla_halves = False  # HYV4VL's rotary pairs are adjacent, as moec's MLA

    def __init__(self, ck: Checkpoint, plan: ResolvedModel):
        super().__init__(ck, plan)
        inner = "model.language_model." if "model.language_model.embed_tokens.weight" in ck else "model."
        self.layer_fmt, self.embed, self.final_norm = (
            inner + "layers.{i}.",
            inner + "embed_tokens.weight",
            inner + "norm.",
        )
        self.hc_head, self.release_hc_head = inner + "hc_head.", inner + "hc_head.hc_pre.hc_head_"


FAMILY = Family("hy_v4_vl", "HYV4VLForConditionalGeneration", DEFAULTS, translate, mapper=HYV4VLMapper)
