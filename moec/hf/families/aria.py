"""Aria (``model_type`` aria, AriaForConditionalGeneration): the multimodal wrapper; moec imports its
``text_config``, Aria's text model as ``aria_text`` imports it, and leaves out the vision tower (an Idefics3
vision transformer) and the projector (AriaProjector: learned queries, cross-attention and an MLP), which act on
image inputs only. moec does not count them: their modules are not part of any family moec maps.

Checkpoints (Aria's, and what save_pretrained writes) hold the text model and its head under ``language_model.``
and the tower and projector under ``vision_tower.`` and ``multi_modal_projector.``, which are let go.
"""

from __future__ import annotations

from moec.hf.draft import Draft, Family, HFConfig, shown
from moec.hf.families import aria_text
from moec.hf.mapper import WrappedCausalLMMapper

# AriaConfig (its default_theta is unused: the text config holds the rope)
DEFAULTS = {"default_theta": 10000.0, "tie_word_embeddings": False, "text_config": None, "vision_config": None,
            "vision_feature_layer": -1, "projector_patch_to_query_dict": None, "image_token_index": 9}  # fmt: skip


def translate(c: HFConfig, d: Draft) -> None:
    raw = c.mapping("text_config")
    t = HFConfig(raw, aria_text.DEFAULTS, prefix="text_config.")
    c.children.append(t)
    if raw.get("model_type") not in (None, "aria_text"):
        t.bad("model_type", f"{shown(raw['model_type'])}: the text model of aria is aria_text")
    aria_text.translate(t, d)
    tie = c.bool("tie_word_embeddings")
    text_tie = t.value("tie_word_embeddings")
    if t.given("tie_word_embeddings") and text_tie != tie:
        t.bad("tie_word_embeddings", f"{shown(text_tie)}: disagrees with the wrapper's tie_word_embeddings: ambiguous")
    d.put("model.tie_embeddings", tie, c.src("tie_word_embeddings") + " (AriaForConditionalGeneration's lm_head)")
    for key in (
        "vision_config",
        "vision_feature_layer",
        "projector_patch_to_query_dict",
        "image_token_index",
        "max_value_projector_patch_to_query_dict",
    ):  # the last: derived by AriaConfig, saved with it
        c.value(key)  # the image path moec leaves out
    note = d.fields["model.n_layers"][1]
    d.put("model.n_layers", d.n_layers, f"{note}; left out, not counted: the vision tower (vision_config) and "
          "multi_modal_projector, which act on image inputs only")  # fmt: skip


class AriaMapper(WrappedCausalLMMapper, aria_text.AriaTextMapper):
    """The text model under ``language_model.`` (its head too), as Aria's checkpoints and save_pretrained name
    it; the tower's and the projector's tensors are let go."""

    dropped = ("vision_tower.", "multi_modal_projector.")


FAMILY = Family(
    "aria",
    "AriaForConditionalGeneration",
    DEFAULTS,
    translate,
    aliases={"image_token_id": "image_token_index"},
    mapper=AriaMapper,
)
