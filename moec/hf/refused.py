"""Hugging Face MoE families moec knows and refuses, each with the features it cannot express yet.

A config of one of these model_types gets one located error that names what is missing, instead of "not a
supported model_type": the user learns that the family was read and what stands in the way (docs/hf-families.md,
"Known but refused"). An entry leaves this table when its family module (moec/hf/families/) imports it exactly;
a model_type cannot be both refused and imported (tests/hf/test_refused.py).

Torch-free, like moec.hf.config, which reads it.
"""

from __future__ import annotations

REFUSED_FAMILIES: dict[str, str] = {
    # MuseSparkForConditionalGeneration (Meta's Muse Spark): its text model, MuseSparkTextModel
    "muse_spark": "residual gates (each sublayer joins as alpha·x + beta·f(x), alpha and beta from a learned "
    "per-channel gate through a temperature), a latent MoE (a pre-expert projection to moe_hidden_size and its norm, "
    "experts at that width with each expert's output normed, a post-expert projection back), weight-free norms "
    "after the attention (eps post_norm_eps) and on the embeddings, a post-FFN norm that scales before normalising, "
    "a weight-free norm of each attention head's output before its element gate, the router logits' "
    "output_multiplier, and a final norm without the unit offset of the other norms",
    # OpenAIPrivacyFilterForTokenClassification: a token classifier, not a language model
    "openai_privacy_filter": "a bidirectional encoder (attention within a two-sided sliding window) with a "
    "token-classification head instead of a causal LM head",
    # VitPoseBackbone (ViTPose+): VitPoseNaiveMoe picks an expert FFN by the caller's dataset_index
    "vitpose_backbone": "a vision backbone whose expert FFNs are chosen by a dataset index given with the input, "
    "not by a router over tokens",
}
"""model_type (as transformers' config.json spells it) → the features moec lacks for it, named."""


def refusal(model_type: str) -> str | None:
    """The message for a known but refused ``model_type``; None when it is not one."""
    features = REFUSED_FAMILIES.get(model_type)
    if features is None:
        return None
    return f"model_type {model_type!r} is known but not imported yet: moec cannot express {features}"
