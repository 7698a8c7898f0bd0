"""Muse Spark (``model_type`` muse_spark, MuseSparkForConditionalGeneration) is known but refused
(moec/hf/refused.py): its text model needs features moec does not have. The refusal is held to transformers' own
text model, built on the meta device from a tiny config: every module the refusal names is one it builds, with the
parameters said (none for the weight-free norms)."""

from __future__ import annotations

import pytest

from moec.errors import SpecError
from moec.hf import hf_to_model
from moec.hf.refused import REFUSED_FAMILIES

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

TINY_TEXT = {"vocab_size": 64, "hidden_size": 32, "intermediate_size": 48, "num_hidden_layers": 2,
             "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 8, "moe_hidden_size": 16,
             "moe_intermediate_size": 12, "num_local_experts": 4, "num_experts_per_tok": 2,
             "mlp_layer_types": ["dense", "sparse"]}  # fmt: skip

# what the refusal names → transformers' module of layer 1 (the sparse one) or of the model, and its parameters
NAMED = {
    "residual gates": ("layers.1.post_attention_residual_gate", 32),
    "a pre-expert projection": ("layers.1.mlp.pre_expert_proj", 32 * 16),
    "a post-expert projection": ("layers.1.mlp.post_expert_proj", 16 * 32),
    "each expert's output normed": ("layers.1.mlp.experts.post_expert_norm", 16),
    "weight-free norms after the attention": ("layers.1.post_attention_layernorm", 0),
    "on the embeddings": ("embed_tokens.embed_norm", 0),
    "a post-FFN norm that scales before normalising": ("layers.1.post_feedforward_layernorm", 32),
    "a weight-free norm of each attention head's output": ("layers.1.self_attn.o_norm", 0),
}


def test_the_refusal_names_what_transformers_builds():
    with torch.device("meta"):
        model = transformers.MuseSparkTextModel(transformers.MuseSparkTextConfig(**TINY_TEXT))
    modules = dict(model.named_modules())
    features = REFUSED_FAMILIES["muse_spark"]
    for said, (name, params) in NAMED.items():
        assert said in features
        assert sum(p.numel() for p in modules[name].parameters()) == params, name
    assert "output_multiplier" in features and model.config.output_multiplier != 1.0


def test_a_muse_spark_config_is_refused_at_its_model_type():
    with pytest.raises(SpecError) as e:
        hf_to_model({"model_type": "muse_spark", "text_config": TINY_TEXT})
    assert [p.path for p in e.value.problems] == ["model_type"]
    assert "residual gates" in e.value.problems[0].message
