"""Flint (model_type flint): the counts equal transformers' model on meta; which layers are MoE, which slide and
which rotate follow transformers' modules; a tiny random checkpoint saved by transformers (sinks written as
softmax_offset) loads with moec.from_hf to transformers' logits and router choices; the generated model.py
gives moec.nn's logits; the Qwen2-MoE fields FlintConfig deletes are named, not refused."""

from __future__ import annotations

import pytest

from moec.analyze import analyze
from moec.hf import hf_to_model, import_hf_config
from moec.hf.config import plan_differences
from tests.hf.configs import hf_model_on_meta

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import moec  # noqa: E402
import tests.hf.test_weights as weights  # noqa: E402
from tests.hf.families._harness import assert_generated_source_matches_the_library, saved_tiny  # noqa: E402

# No release config could be obtained (RecursiveSI/flint is on the Hub only, out of reach here, and no public
# copy of its config.json was found): the transformers class defaults, which FlintConfig documents as that
# checkpoint's (49 layers of d 2048, 256 experts of 512 top-6, a shared expert of 1024, a window of 513).
CLASS_DEFAULTS = {"model_type": "flint"}

# Dense layers 0 and 1 (mlp_only_layers unset), sliding layers 2 and 3 with a window of 4 (< the 12 test
# tokens) and rotary positions, full-attention NoPE layers 0, 1 and 4 (the last), sinks, q/k norms, sigmoid
# routing renormalised over the top 2 of 8, the ungated shared expert.
TINY = {**weights.TINY, "num_hidden_layers": 5, "head_dim": 16, "intermediate_size": 96, "num_experts": 8,
        "num_experts_per_tok": 2, "moe_intermediate_size": 32, "shared_expert_intermediate_size": 48,
        "sliding_window": 4}  # fmt: skip

from tests.hf.families._harness import hf_counts  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_class_default_counts_equal_transformers_model_on_meta():
    params = analyze(hf_to_model(CLASS_DEFAULTS)).params
    assert (params.total, params.active) == hf_counts(CLASS_DEFAULTS)


def test_config_as_transformers_saves_it_imports_to_the_same_plan():
    saved = hf_model_on_meta(CLASS_DEFAULTS).config.to_dict()
    assert plan_differences(hf_to_model(saved), hf_to_model(CLASS_DEFAULTS)) == []


def _hf_layers(cfg: dict) -> list[tuple[bool, int | None, bool]]:
    """Per layer of transformers' model: (MoE, window, rotates); FlintAttention rotates where it slides."""
    hf = hf_model_on_meta(cfg)
    out = []
    for layer in hf.model.layers:
        window = layer.self_attn.sliding_window
        out.append((hasattr(layer.mlp, "experts"), window, window is not None))
    return out


@pytest.mark.parametrize(
    "change",
    [
        {"num_hidden_layers": 11},  # the defaults: dense 0 and 1; full on 0, 1, i % 4 == 1 and the last
        {"num_hidden_layers": 6, "mlp_only_layers": [3], "decoder_sparse_step": 2},
        {"num_hidden_layers": 4, "layer_types": ["sliding_attention"] * 3 + ["full_attention"]},
        {"num_hidden_layers": 3, "num_experts": 0},  # no experts: every layer dense
    ],
)
def test_moe_windows_and_rotation_per_layer_follow_transformers_modules(change):
    cfg = {**TINY, "model_type": "flint", **change}
    plan = hf_to_model(cfg)
    ours = [(lp.ffn.kind == "moe", lp.attention.window, lp.attention.rope) for lp in plan.layers]
    assert ours == _hf_layers(cfg)


def test_qwen2_moe_fields_flint_deletes_are_named_and_change_nothing():
    """use_sliding_window, max_window_layers and qkv_bias: FlintConfig deletes them; transformers builds the same
    model with them as without (same parameters, same windows), and so does moec, naming them."""
    cfg = {**TINY, "model_type": "flint", "num_hidden_layers": 7}
    extra = {**cfg, "use_sliding_window": False, "max_window_layers": 1, "qkv_bias": True}
    assert _hf_layers(extra) == _hf_layers(cfg) and hf_counts(extra) == hf_counts(cfg)
    assert plan_differences(hf_to_model(extra), hf_to_model(cfg)) == []
    kind = next(line for line in import_hf_config(extra).splitlines() if line.strip().startswith("kind: gqa"))
    assert "use_sliding_window false, max_window_layers 1, qkv_bias true: FlintConfig deletes them" in kind


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    folder = tmp_path_factory.mktemp("flint")
    return saved_tiny("flint", TINY, folder), folder


def test_tiny_checkpoint_gives_transformers_logits_and_router_choices(checkpoint):
    hf, folder = checkpoint
    from safetensors import safe_open

    with safe_open(folder / "model.safetensors", "pt") as f:
        assert "model.layers.0.self_attn.softmax_offset" in set(f.keys())  # transformers' name on disk
    model = moec.from_hf(folder)
    layers = [(lp.ffn.kind, lp.attention.window, lp.attention.rope) for lp in model.plan.layers]
    assert layers == [("dense", None, False), ("dense", None, False), ("moe", 4, True), ("moe", 4, True),
                      ("moe", None, False)]  # fmt: skip
    weights.assert_same(hf, model)


def test_the_in_memory_layout_loads_to_the_same_logits(checkpoint, tmp_path):
    """transformers' names in memory (self_attn.sinks, stacked mlp.experts.gate_up_proj), not the ones save_pretrained writes."""
    hf, _ = checkpoint
    weights.assert_same(hf, moec.from_hf(weights._write_state_dict(hf, tmp_path / "in_memory")))


def test_generated_model_gives_the_library_logits(tmp_path):
    assert_generated_source_matches_the_library({**TINY, "model_type": "flint"}, tmp_path)
