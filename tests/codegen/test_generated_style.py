"""The generated model.py reads like a hand-written one: every codegen test case passes ruff (the shipped specs are
checked in test_codegen.py), one factory builds the layers from a table that says which layer is which, and the
two models the line targets were set for stay within them."""

from __future__ import annotations

import re

import pytest

from moec.codegen import render_model_source
from moec.spec import load_model
from moec.spec.paths import shipped_spec_path
from tests.codegen import test_features_2026
from tests.codegen.test_codegen import CASES, CLAMPED_MOE, assert_ruff_clean, layer_table, plan_of

ALL_CASES = {
    **{f"codegen-{k}": v for k, v in CASES.items()},
    **{f"clamped-{k}": v for k, v in CLAMPED_MOE.items()},
    **{f"features-{k}": v for k, v in test_features_2026.CASES.items()},
}


def test_every_codegen_case_renders_ruff_clean_source(tmp_path):
    for name, text in ALL_CASES.items():
        folder = tmp_path / re.sub(r"[^a-z0-9]+", "_", name)
        folder.mkdir()
        (folder / "model.py").write_text(render_model_source(plan_of(text)))
    assert_ruff_clean(tmp_path)


# issue 16's targets: the unrolled layers made these 1,415 and 623 lines long
@pytest.mark.parametrize("name,most", [("deepseek-v3", 650), ("mixtral-8x7b", 400)])
def test_generated_files_meet_the_line_targets(name, most):
    src = render_model_source(load_model(str(shipped_spec_path(name))))
    assert len(src.splitlines()) <= most


def test_the_layer_table_names_each_layers_window_and_rotation():
    """Layers that differ only in window and rotation share the factory and take them as arguments."""
    plan = plan_of(CASES["sinks-window-mqa-nope-layer"])
    src = render_model_source(plan)
    assert "def make_block(window: int | None, rope: bool, backend: str) -> Block:" in src
    assert layer_table(src) == [(lp.attention.window, lp.attention.rope) for lp in plan.layers]
    assert layer_table(src) == [(4, True), (None, True), (4, False)]  # the overrides of the case, by hand


def test_layers_that_differ_in_ffn_and_rope_base_are_told_apart():
    plan = plan_of(test_features_2026.CASES["per-layer rope theta, yarn, mla, mtp"])
    src = render_model_source(plan)
    assert layer_table(src) == [("dense", 10000.0), ("moe", 50000.0), ("moe", 10000.0)]
    assert 'self.mtp = nn.ModuleList(MTPModule(make_block("moe", ROPE_THETA, backend)) for _ in range(1))' in src


def test_alike_layers_are_counted_not_listed():
    src = render_model_source(load_model(str(shipped_spec_path("mixtral-8x7b"))))
    assert "N_LAYERS = 32" in src and "nn.ModuleList(make_block(backend) for _ in range(N_LAYERS))" in src
