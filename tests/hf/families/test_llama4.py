"""Llama-4's multimodal wrapper (``model_type`` llama4, Llama4ForConditionalGeneration): moec imports its
language_model, Llama4ForCausalLM of text_config, and leaves out the vision model and the projector, naming
them with their parameter count. Oracles: transformers' models on the meta device (the text model for the
counts, the wrapper's vision_model and multi_modal_projector for the count left out), and a tiny wrapper
checkpoint saved with save_pretrained for the logits and router choices. The release config is
Llama-4-Scout-17B-16E's (tests/hf/test_release_configs.py, from a GitHub copy)."""

from __future__ import annotations

import copy
import json
import subprocess
import sys

import pytest

from moec.analyze import analyze
from moec.hf import hf_to_model, import_hf_config
from moec.hf.config import plan_differences
from tests.hf.configs import hf_model_on_meta
from tests.hf.test_release_configs import SCOUT, as_transformers_5_loads_it, counts, moec

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import moec as moec_lib  # noqa: E402
from tests.hf.families._harness import (  # noqa: E402
    assert_generated_model_gives_the_library_logits,
    refused_fields,
    saved_checkpoint,
)
from tests.hf.test_weights import CONFIGS, assert_same, make_hf  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# a vision tower as small as Llama4VisionModel allows (2×2 patches): the loader must let its tensors go
TINY_VISION = {"hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 32,
               "image_size": 28, "patch_size": 14, "vision_output_dim": 16, "projector_input_dim": 16,
               "projector_output_dim": 16}  # fmt: skip


def wrapper_on_meta(cfg: dict):
    kw = {k: v for k, v in copy.deepcopy(cfg).items() if k != "model_type"}
    with torch.device("meta"):
        return transformers.Llama4ForConditionalGeneration(transformers.Llama4Config(**kw))


def test_scout_release_counts_equal_transformers_model_on_meta():
    params = analyze(hf_to_model(SCOUT)).params
    text = hf_model_on_meta(
        as_transformers_5_loads_it(SCOUT["text_config"])
    )  # Llama4ForCausalLM: the wrapper's language_model
    assert (params.total, params.active) == counts(text, 16, 1)


def test_scout_wrapper_names_the_vision_tower_with_its_transformers_count():
    whole = wrapper_on_meta(as_transformers_5_loads_it(SCOUT))
    tower = sum(p.numel() for m in (whole.vision_model, whole.multi_modal_projector) for p in m.parameters())
    assert f"left out: the vision model and multi_modal_projector (vision_config: {tower:,} parameters" in (
        import_hf_config(SCOUT)
    )


def test_a_vision_config_the_count_cannot_use_still_imports_the_text_model_without_a_count():
    cfg = copy.deepcopy(SCOUT)
    cfg["vision_config"]["image_size"] = [336, 448]  # transformers' type allows a pair
    text = import_hf_config(cfg)
    assert "left out: the vision model and multi_modal_projector (vision_config), " in text


def test_scout_wrapper_is_its_text_config_imported_alone():
    assert plan_differences(hf_to_model(SCOUT), hf_to_model(SCOUT["text_config"])) == []


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"tie_word_embeddings": True}, "tie_word_embeddings"),
        ({"text_config": {**SCOUT["text_config"], "model_type": "llama"}}, "text_config.model_type"),
        ({"text_config": {**SCOUT["text_config"], "use_qk_norm": "yes"}}, "text_config.use_qk_norm"),
    ],
)
def test_wrapper_fields_that_would_change_the_model_are_refused(change, field):
    assert refused_fields({**SCOUT, **change}) == [field]


def test_scout_release_through_the_cli(tmp_path):
    config = tmp_path / "config.json"
    config.write_text(json.dumps(SCOUT, indent=2))
    result = moec("import-hf", config, "-o", tmp_path / "scout.yaml")
    assert result.exit_code == 0, result.output
    spec = (tmp_path / "scout.yaml").read_text()
    assert "for_llm_compressor false: transformers ignores it" in spec and "vision_config: " in spec
    config.write_text(json.dumps({**SCOUT, "tie_word_embeddings": True}, indent=2))
    result = moec("import-hf", config, "-o", tmp_path / "tied.yaml")
    assert result.exit_code == 2 and "tie_word_embeddings" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "tied.yaml").exists()


def test_analyze_of_the_wrapper_config_never_imports_torch(tmp_path):
    config = tmp_path / "config.json"
    config.write_text(json.dumps(SCOUT))
    code = (
        "import sys\nfrom moec.cli import cli\n"
        f"try:\n    cli(['analyze', {str(config)!r}])\nexcept SystemExit as e:\n    assert not e.code, e.code\n"
        "assert 'torch' not in sys.modules and 'transformers' not in sys.modules, 'torch imported'\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A tiny wrapper whose language_model holds test_weights' randomised llama4_text model (chunked
    attention, NoPE layers with temperature tuning, the L2 qk-norm, a shared expert, dense layers)."""
    text = make_hf("llama4_text")
    cfg = transformers.Llama4Config(text_config=copy.deepcopy(CONFIGS["llama4_text"]), vision_config=TINY_VISION)
    cfg.text_config._attn_implementation = "eager"
    torch.manual_seed(0)
    hf = transformers.Llama4ForConditionalGeneration(cfg).eval()
    hf.language_model.load_state_dict(text.state_dict())
    return saved_checkpoint(hf, tmp_path_factory, "llama4")


def test_tiny_wrapper_checkpoint_gives_transformers_logits_and_router_choices(checkpoint):
    hf, folder = checkpoint
    model = moec_lib.from_hf(folder)
    # the wrapper's forward on text alone is its language_model's (transformers 5.24's wrapper forward fails
    # without image outputs), so the oracle is the language_model with the weights the wrapper saved
    assert assert_same(hf.language_model, model) <= 1e-4
    assert {k for k in json.loads((folder / "config.json").read_text())} >= {"text_config", "vision_config"}


def test_the_generated_model_py_gives_the_library_logits(checkpoint, tmp_path):
    """moec build renders chunked attention, the NoPE layers' temperature tuning, the L2 qk-norm and the gated
    expert inputs: the generated model.py holding the imported weights gives moec.nn's logits and aux bit for bit."""
    model = moec_lib.from_hf(checkpoint[1])
    tokens = torch.randint(0, model.plan.vocab_size, (2, 12), generator=torch.Generator().manual_seed(0))
    assert_generated_model_gives_the_library_logits(model, tokens, tmp_path)
