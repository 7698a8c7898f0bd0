"""moec/hf/families/_typed_rope.py locates what it refuses at the field that holds it: a type's own mapping
(``rope_parameters.<type>``), the release's ``rope_scaling`` where Step folds it into the full-attention type's
mapping, and under a multimodal wrapper's ``text_config.`` prefix (step3p7). The expected paths are written by hand
from the config.json each case builds."""

from __future__ import annotations

import copy

import pytest

pytest.importorskip("transformers")

from tests.hf.families._harness import refused_fields  # noqa: E402
from tests.hf.families.test_step3p7 import STEP_37_FLASH  # noqa: E402

LLAMA3 = {"rope_type": "llama3", "factor": 2.0, "original_max_position_embeddings": 131072, "low_freq_factor": 1.0,
          "high_freq_factor": 32.0}  # fmt: skip


def step_saved(full: dict, sliding: dict) -> dict:
    """Step-3.7-Flash as transformers saves it: the release's rope fields become one mapping per layer type."""
    cfg = copy.deepcopy(STEP_37_FLASH)
    text = cfg["text_config"]
    for key in ("rope_theta", "rope_scaling", "partial_rotary_factors"):
        del text[key]
    text["rope_parameters"] = {
        "full_attention": {**LLAMA3, "rope_theta": 5e6, "partial_rotary_factor": 0.5, **full},
        "sliding_attention": {"rope_type": "default", "rope_theta": 1e4, "partial_rotary_factor": 1.0, **sliding},
    }
    return cfg


@pytest.mark.parametrize(
    "full,sliding,field",
    [
        ({}, {"rope_type": "dynamic", "factor": 2.0}, "text_config.rope_parameters.sliding_attention"),
        ({}, {"rope_type": "linear", "factor": 2.0, "beta": 1}, "text_config.rope_parameters.sliding_attention.beta"),
        ({}, {"rope_type": "linear", "factor": "x"}, "text_config.rope_parameters.sliding_attention.factor"),
        ({"beta": 1}, {}, "text_config.rope_parameters.full_attention.beta"),
        ({"factor": "x"}, {}, "text_config.rope_parameters.full_attention.factor"),
        ({"partial_rotary_factor": 1.5}, {}, "text_config.rope_parameters.full_attention.partial_rotary_factor"),
        ({}, {"rope_theta": "x"}, "text_config.rope_parameters.sliding_attention.rope_theta"),  # was a TypeError
        ({"rope_theta": -1}, {}, "text_config.rope_parameters.full_attention.rope_theta"),  # was put at another field
    ],
)  # fmt: skip
def test_a_wrapped_types_mapping_is_refused_at_its_field(full, sliding, field):
    assert refused_fields(step_saved(full, sliding)) == [field]


@pytest.mark.parametrize("change,field", [({"factor": "x"}, "factor"), ({"beta": 1}, "beta")])
def test_the_releases_scaling_is_refused_at_rope_scaling(change, field):
    cfg = copy.deepcopy(STEP_37_FLASH)
    cfg["text_config"]["rope_scaling"].update(change)
    assert refused_fields(cfg) == [f"text_config.rope_scaling.{field}"]


def test_an_unwrapped_types_mapping_is_refused_at_its_field():
    """Laguna's rope_parameters at the top level: the reference type's stray key under its own type's name."""
    rope = {"full_attention": {"rope_type": "default", "rope_theta": 5e5, "partial_rotary_factor": 0.5, "beta": 1},
            "sliding_attention": {"rope_type": "default", "rope_theta": 1e4, "partial_rotary_factor": 1.0}}  # fmt: skip
    cfg = {"model_type": "laguna", "architectures": ["LagunaForCausalLM"], "rope_parameters": rope}
    assert refused_fields(cfg) == ["rope_parameters.full_attention.beta"]
