"""dots3-note's text config alone (model_type dots3_note_text, what Dots3NoteForCausalLM.save_pretrained writes):
the release's text fields count as transformers' model on meta, and the checkpoint transformers saves with it loads
with moec.from_hf to transformers' logits and router choices. The family's other cases are in test_dots3_note.py."""

from __future__ import annotations

import json

import pytest

from moec.analyze import analyze
from moec.hf import hf_to_model

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import moec  # noqa: E402
from tests.hf.families._harness import hf_counts, saved_checkpoint, tiny_hf  # noqa: E402
from tests.hf.families.test_dots3_note import RELEASE  # noqa: E402
from tests.hf.families.test_dots3_note import TINY as DOTS3_TINY  # noqa: E402
from tests.hf.test_weights import assert_same  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# the text fields of test_dots3_note's tiny config, without the towers' configs (not the text config's fields)
TINY = {k: v for k, v in DOTS3_TINY.items() if k not in ("vision_config", "audio_config")}

# the release's text fields under the text model's own model_type; the towers' configs are the wrapper's
TEXT = {k: v for k, v in RELEASE.items() if k != "architectures"} | {"model_type": "dots3_note_text"}


def test_release_counts_equal_transformers_model_on_meta():
    params = analyze(hf_to_model(TEXT)).params
    assert (params.total, params.active) == hf_counts(TEXT)


def test_tiny_checkpoint_gives_transformers_logits_and_router_choices(tmp_path_factory):
    hf, folder = saved_checkpoint(tiny_hf("dots3_note_text", TINY), tmp_path_factory, "dots3_note_text")
    assert json.loads((folder / "config.json").read_text())["model_type"] == "dots3_note_text"
    model = moec.from_hf(folder)
    assert model.plan.layers[0].attention.has_indexer
    assert assert_same(hf, model) <= 1e-4
