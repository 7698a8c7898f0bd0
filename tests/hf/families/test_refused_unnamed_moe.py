"""The MoE families of transformers 5.24 that moec knows and refuses (moec/hf/refused.py: doge, zaya, ERNIE-4.5-VL's
MoE, Inkling, Inkling2, Inkling2-Loop, DiffusionGemma): a config.json of each is refused through `moec import-hf`
(exit 2, at its model_type line) naming the features moec cannot express, and the config fields the refusal names
are ones transformers' own config class holds (so each named feature is one transformers sets up)."""

from __future__ import annotations

import dataclasses
import json

import pytest
from click.testing import CliRunner

transformers = pytest.importorskip("transformers")

from transformers import CONFIG_MAPPING  # noqa: E402

from moec.cli import cli  # noqa: E402

# model_type → (the feature the refusal must name, the config fields it names, which transformers' class holds)
REFUSED = {
    "doge": ("dynamic mask attention", ["keep_window_size", "is_moe", "num_experts"]),
    "zaya": ("compressed convolutional attention", []),
    "ernie4_5_vl_moe": ("modality-isolated experts", []),
    "ernie4_5_vl_moe_text": ("modality-isolated experts", ["moe_intermediate_size"]),
    "inkling_mm_model": ("short causal convolutions", []),
    "inkling_text": ("relative position logits", ["conv_kernel_size", "d_rel", "rel_extent"]),
    "inkling2": ("block attention residuals", []),
    "inkling2_text": ("block attention residuals", ["n_layers_per_attn_res_block"]),
    "inkling2_loop": ("looped layers", []),
    "inkling2_loop_text": (
        "looped layers",
        ["loop_layer_index_start", "loop_layer_index_end", "loop_num_passes", "loop_gate_rank"],
    ),
    "diffusion_gemma": ("block-diffusion encoder-decoder", ["canvas_length"]),
    "diffusion_gemma_text": ("block-diffusion encoder-decoder", []),
}


@pytest.mark.parametrize("model_type", sorted(REFUSED))
def test_import_hf_refuses_it_naming_the_features_transformers_sets_up(model_type, tmp_path):
    feature, fields = REFUSED[model_type]
    assert set(fields) <= {f.name for f in dataclasses.fields(CONFIG_MAPPING[model_type])}
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"model_type": model_type}, indent=1))
    res = CliRunner().invoke(cli, ["import-hf", str(path)])
    assert res.exit_code == 2 and "Traceback" not in res.output, res.output
    assert "config.json:2" in res.output  # the model_type line
    assert f"model_type {model_type!r} is known but not imported yet: moec cannot express" in res.output
    message = " ".join(res.output.split())  # the CLI wraps long lines
    assert feature in message
    for field in fields:
        assert field in message
