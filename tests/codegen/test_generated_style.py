"""The generated model.py reads like a hand-written one: every codegen test case passes ruff (the shipped specs are
checked in test_codegen.py), one factory builds the layers from a table that says which layer is which, and the
two models the line targets were set for stay within them."""

from __future__ import annotations

import random
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from moec.codegen import render_model_source
from moec.codegen.features import float_text
from moec.codegen.layout import table_lines
from moec.spec import load_model
from moec.spec.paths import shipped_spec_path
from tests.codegen import test_features_13, test_features_2026, test_hybrid
from tests.codegen.test_codegen import CASES, CLAMPED_MOE, assert_ruff_clean, layer_table, plan_of

ALL_CASES = {
    **{f"codegen-{k}": v for k, v in CASES.items()},
    **{f"clamped-{k}": v for k, v in CLAMPED_MOE.items()},
    **{f"features-{k}": v for k, v in test_features_2026.CASES.items()},
    **{f"hybrid-{k}": v for k, v in test_hybrid.CASES.items()},
    **{f"issue13-{k}": v for k, v in test_features_13.CASES.items()},
}


def test_every_codegen_case_renders_ruff_clean_source(tmp_path):
    for name, text in ALL_CASES.items():
        folder = tmp_path / re.sub(r"[^a-z0-9]+", "_", name)
        folder.mkdir()
        (folder / "model.py").write_text(render_model_source(plan_of(text)))
    assert_ruff_clean(tmp_path)


# issue 16's targets (the unrolled layers made these 1,415 and 623 lines long); the aux records and the KV cache the
# files share with moec.nn are imported from moec.kernels.runtime, not copied in
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


# the per-layer table: written as repeats, it still lists every layer, and ruff leaves it as it is
ITEMS = ['"dense"', '"moe"', "(4, True)", "(None, False)", '("moe", 4096, True, 1000000.0)']


@settings(deadline=None)  # a pure function; on a loaded 2-core machine one example can pass the default 200 ms
@given(st.lists(st.sampled_from(ITEMS), min_size=1, max_size=90))
def test_the_layer_table_evaluates_to_every_layer_in_order(items):
    lines = table_lines("LAYERS", items)
    namespace: dict = {}
    exec("\n".join(lines), namespace)
    assert namespace["LAYERS"] == [eval(item) for item in items]
    assert all(len(line) <= 120 for line in lines)


def test_tables_are_written_as_their_repeats():
    assert table_lines("LAYERS", ['"dense"'] * 3 + ['"moe"'] * 58) == ['LAYERS = 3 * ["dense"] + 58 * ["moe"]']
    assert table_lines("LAYERS", ['"dense"', '"moe"'] * 16) == ['LAYERS = 16 * ["dense", "moe"]']  # GLaM
    assert table_lines("LAYERS", ["1", "2", "3", "3"]) == ["LAYERS = [1, 2, 3, 3]"]  # too short to be worth it
    assert table_lines("LAYERS", ["1", "2", "3", "3", "3", "3"]) == ["LAYERS = [1, 2] + 4 * [3]"]


def test_long_tables_are_laid_out_as_ruff_lays_them_out(tmp_path):
    rng = random.Random(0)
    tables = []
    for i in range(40):
        items = [rng.choice(ITEMS) for _ in range(rng.randint(1, 90))]
        if i % 2:  # long runs of one kind, as real models have
            items.sort()
        tables += table_lines(f"LAYERS_{i}", items)
    assert any(line.startswith("    + [") for line in tables)  # some are long enough to take a line per list
    (tmp_path / "tables.py").write_text("\n".join(tables) + "\n")
    assert_ruff_clean(tmp_path)


def test_numbers_are_written_as_ruff_writes_them():
    assert float_text(1e20, "theta") == "1e20" and float(float_text(1e20, "theta")) == 1e20  # not 1e+20
    assert float_text(1e-05, "eps") == "1e-05" and float_text(500000, "theta") == "500000.0"
