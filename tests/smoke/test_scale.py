"""Fitting a model to a device keeps its MoE structure (plan arithmetic; one check counts parameters on meta)."""

from __future__ import annotations

import pytest

from moec.analyze import analyze
from moec.smoke.scale import compress_layers, fit
from moec.spec import load_model
from moec.spec.plan import MoEPlan
from tests.conftest import SPECS


def pattern(plan) -> str:
    return "".join("M" if l.ffn.kind == "moe" else "D" for l in plan.layers)


@pytest.mark.parametrize(
    "name, expect",
    [("deepseek-v3", "DDMM"), ("switch-base-8", "DMDM"), ("mixtral-8x7b", "MM"), ("deepseek-moe-16b", "DMM")],
)
def test_tiny_keeps_the_layer_pattern(name: str, expect: str):
    f = fit(load_model(str(SPECS / f"{name}.yaml")), scale="tiny", budget_bytes=None, batch=4, seq=32)
    assert pattern(f.plan) == expect


@pytest.mark.parametrize(
    "name", ["deepseek-v3", "qwen3-30b-a3b", "mixtral-8x7b", "switch-base-8", "lora-moe", "glam-style"]
)
def test_tiny_keeps_experts_topk_shared_router_and_attention_kind(name: str):
    plan = load_model(str(SPECS / f"{name}.yaml"))
    small = fit(plan, scale="tiny", budget_bytes=None, batch=4, seq=32).plan
    big_moe = next(l.ffn for l in plan.layers if isinstance(l.ffn, MoEPlan))
    small_moe = next(l.ffn for l in small.layers if isinstance(l.ffn, MoEPlan))
    for f in ("n_experts", "n_shared_experts", "router", "expert_kind", "activation", "capacity_factor"):
        assert getattr(small_moe, f) == getattr(big_moe, f), f
    assert small.layers[0].attention.kind == plan.layers[0].attention.kind
    big_a, small_a = plan.layers[0].attention, small.layers[0].attention
    # GQA keeps its group shape (MHA stays MHA, MQA stays MQA)
    assert (big_a.n_heads // big_a.n_kv_heads == 1) == (small_a.n_heads // small_a.n_kv_heads == 1)
    assert len(small.mtp) == min(1, len(plan.mtp))
    assert analyze(small).params.total < 50_000_000


def test_auto_shrinks_until_the_analyzer_says_it_fits():
    plan = load_model(str(SPECS / "deepseek-v3.yaml"))
    budget = 8 << 30
    f = fit(plan, scale="auto", budget_bytes=budget, batch=4, seq=1024)
    assert f.bytes_needed <= budget
    assert any("d_model" in c for c in f.changes)
    # the training state is 16 bytes (AdamW, mixed precision) per parameter of the model actually built,
    # counted on meta by torch rather than by the analyzer (the MTP module is left out, as the analyzer's
    # headline leaves it out); the activation estimate is the analyzer's own
    from moec.nn import build_model

    model = build_model(f.plan, device="meta")
    n = sum(p.numel() for name, p in model.named_parameters() if not name.startswith("mtp."))
    activations = analyze(f.plan, seq=1024, batch=4).memory.activation_bytes_estimate
    assert f.bytes_needed == 16 * n + activations
    # a power-of-two width, chosen by the budget: a larger budget fits a wider model
    d = f.plan.d_model
    assert d & (d - 1) == 0
    wider = fit(plan, scale="auto", budget_bytes=budget * 64, batch=4, seq=1024)
    assert wider.plan.d_model > d


def test_full_scale_that_does_not_fit_is_refused():
    plan = load_model(str(SPECS / "mixtral-8x7b.yaml"))
    with pytest.raises(ValueError, match="use --scale auto"):
        fit(plan, scale="full", budget_bytes=80 << 30, batch=1, seq=128)


def test_compress_layers_caps_runs_and_keeps_an_moe_layer():
    plan = load_model(str(SPECS / "deepseek-v3.yaml"))
    kept = compress_layers(plan.layers, 2)
    assert [l.ffn.kind for l in kept] == ["dense", "moe"]


def test_llama4_chunks_shrink_like_windows_and_nope_layers_survive():
    from moec.hf import hf_to_model
    from tests.hf.configs import RELEASES

    plan = hf_to_model(RELEASES["llama4_text"])
    small = fit(plan, scale="tiny", budget_bytes=None, batch=4, seq=32).plan
    attns = [lp.attention for lp in small.layers]
    assert any(not a.rope for a in attns) and any(a.rope for a in attns)  # rope and NoPE layers both kept
    for a in attns:
        assert (a.chunk is not None) == a.rope == a.qk_norm  # chunked, l2-normed rope layers
        assert (a.temperature_floor_scale is not None) == (not a.rope)  # tuned NoPE layers
        assert a.chunk is None or a.chunk <= 16  # capped below the run's sequence, so it still bites
    assert small.layers[0].ffn.router.apply_to == "input"


PER_LAYER_FEATURES = """
moec: 1
name: per-layer-features
model: {vocab_size: 64, d_model: 32, n_layers: 8, max_seq_len: 32}
attention: {kind: mla, n_heads: 4, q_lora_rank: 16, kv_lora_rank: 8, qk_nope_head_dim: 8, qk_rope_head_dim: 4,
  v_head_dim: 6, indexer: {n_heads: 2, head_dim: 8, top_k: 4}}
moe: {n_experts: 4, d_ff: 16, router: {top_k: 2}}
layers:
  default: {ffn: moe}
  overrides:
    - {select: [2, 3], attention: {indexer: shared}}
    - {select: [5, 6, 7], moe: {activation: swiglu_limit_after, activation_limit: 7.0}}
"""


def test_the_scaled_copy_keeps_a_layer_of_each_per_layer_feature(write_spec):
    """Layers 0–1 are alike: a copy of the first layers alone would lose the shared-indexer layers (2–3) and the
    clamped experts (5–7); one of each takes the place of a repeated layer."""
    plan = load_model(str(write_spec(PER_LAYER_FEATURES)))
    kept = compress_layers(plan.layers, 4)
    assert [(lp.index, lp.attention.indexer_shared, lp.ffn.activation) for lp in kept] == [
        (0, False, "swiglu"),
        (1, False, "swiglu"),
        (2, True, "swiglu"),
        (5, False, "swiglu_limit_after"),
    ]


@pytest.mark.parametrize("name", ["glm-5", "deepseek-v3.2-exp"])
def test_the_sparse_attentions_top_k_shrinks_below_the_run_so_the_indexer_still_chooses(name: str):
    """Like a window or a chunk: a top_k of 2048 over a 16-token run would attend every key, and the smoke run would
    never take the sparse path; half the sequence it is, said in the scaling notes."""
    from moec.smoke.scale import describe_changes

    plan = load_model(str(SPECS / f"{name}.yaml"))
    assert {lp.attention.indexer_top_k for lp in plan.layers} == {2048}
    small = fit(plan, scale="tiny", budget_bytes=None, batch=2, seq=16).plan
    assert {lp.attention.indexer_top_k for lp in small.layers} == {8}
    assert all(lp.attention.sparse for lp in small.layers)
    assert "indexer top_k: 2048 → 8 (below the run's sequence, so that the indexer still chooses)" in describe_changes(
        plan, small
    )
