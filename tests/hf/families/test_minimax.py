"""MiniMax-Text-01 (model_type minimax): the release config's counts equal transformers' model on meta, and the
shipped spec is its import but for the rotated dims (transformers rotates whole heads, MiniMax's code 64 of 128);
a tiny random checkpoint saved by transformers (Lightning attention and softmax attention layers, normed residuals
with factors, Mixtral's router) loads with moec.from_hf to transformers' logits and router choices; the generated
model.py gives moec.nn's logits; MiniMax's own fields that transformers does not read are accepted when they agree
with what it builds and refused when they do not."""

from __future__ import annotations

import pytest

from moec.analyze import analyze
from moec.hf import hf_to_model, import_hf_config
from moec.hf.config import export_hf_config, plan_differences
from moec.spec import load_model

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import moec  # noqa: E402
from moec.errors import SpecError  # noqa: E402
from moec.hf.checkpoint import CheckpointError  # noqa: E402
from moec.hf.families.minimax import DEFAULTS, MiniMaxMapper  # noqa: E402
from tests.hf.families._harness import (  # noqa: E402
    assert_generated_model_gives_the_library_logits,
    assert_table_holds_class_defaults,
    hf_counts,
    refused_fields,
    saved_checkpoint,
    tiny_hf,
)
from tests.hf.test_weights import TOKENS, assert_same  # noqa: E402

# MiniMaxAI/MiniMax-Text-01-hf config.json, as a public copy of it holds it (an mlx-lm port's development notes:
# transformers' field names, layer_types, the *_factor residual weights, plus MiniMax's own postnorm, rotary_dim,
# shared_intermediate_size and shared_moe_mode). Published: 456B total, 45.9B activated (arXiv 2501.08313).
LAYER_TYPES = ["full_attention" if i % 8 == 7 else "linear_attention" for i in range(80)]
DEEPNORM = 3.5565588200778455  # (2·80)^(1/4)
RELEASE = {
    "architectures": ["MiniMaxForCausalLM"],
    "model_type": "minimax",
    "layer_types": LAYER_TYPES,
    "head_dim": 128,
    "hidden_size": 6144,
    "intermediate_size": 9216,
    "full_attn_alpha_factor": DEEPNORM,
    "full_attn_beta_factor": 1.0,
    "linear_attn_alpha_factor": DEEPNORM,
    "linear_attn_beta_factor": 1.0,
    "mlp_alpha_factor": DEEPNORM,
    "mlp_beta_factor": 1.0,
    "max_position_embeddings": 10240000,
    "num_attention_heads": 64,
    "num_experts_per_tok": 2,
    "num_hidden_layers": 80,
    "num_key_value_heads": 8,
    "num_local_experts": 32,
    "postnorm": True,
    "rms_norm_eps": 1e-05,
    "rope_theta": 10000000,
    "rotary_dim": 64,
    "shared_intermediate_size": 0,
    "shared_moe_mode": "sigmoid",
    "sliding_window": None,
    "tie_word_embeddings": False,
    "vocab_size": 200064,
}
# what transformers runs: every dim of each head rotates (it reads no rotary_dim)
AS_TRANSFORMERS_RUNS = {k: v for k, v in RELEASE.items() if k != "rotary_dim"}

# Lightning attention on layers 0, 2 and 3 (blocks of 5, so the 12 test tokens end in a ragged block), softmax
# attention on layer 1; residual factors away from 1, different per sublayer kind; 8 experts top-2.
TINY = {
    "vocab_size": 128, "hidden_size": 64, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16,
    "max_position_embeddings": 64, "rms_norm_eps": 1e-5, "num_hidden_layers": 4, "intermediate_size": 16,
    "num_local_experts": 8, "num_experts_per_tok": 2, "rope_theta": 1e4, "block_size": 5,
    "layer_types": ["linear_attention", "full_attention", "linear_attention", "linear_attention"],
    "full_attn_alpha_factor": 1.5, "full_attn_beta_factor": 0.8, "linear_attn_alpha_factor": 1.3,
    "linear_attn_beta_factor": 0.9, "mlp_alpha_factor": 1.2, "mlp_beta_factor": 0.7,
    "bos_token_id": 1, "eos_token_id": 2,
}  # fmt: skip

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_release_counts_equal_transformers_model_on_meta():
    params = analyze(hf_to_model(AS_TRANSFORMERS_RUNS)).params
    assert (params.total, params.active) == hf_counts(AS_TRANSFORMERS_RUNS)
    # 456.1B total; 45.9B active without the input embedding and the head, as MiniMax counts
    assert params.total == 456_089_655_296
    assert round((params.active - 2 * 200064 * 6144) / 1e8) == 459


def test_shipped_spec_is_the_import_but_for_the_rotated_dims():
    shipped = load_model("minimax-text-01")
    assert plan_differences(shipped, hf_to_model(AS_TRANSFORMERS_RUNS)) == ["positions.rotary_dim: 64 vs None"]
    assert (analyze(shipped).params.total, analyze(shipped).params.active) == hf_counts(AS_TRANSFORMERS_RUNS)


def test_layer_types_choose_the_mixer_and_the_decays_follow_the_depth():
    plan = hf_to_model(AS_TRANSFORMERS_RUNS)
    assert [lp.mixer_kind for lp in plan.layers] == ["attention" if i % 8 == 7 else "lightning" for i in range(80)]
    lightning = plan.layers[0].mixer
    assert (lightning.n_heads, lightning.head_dim, lightning.chunk, lightning.norm_eps) == (64, 128, 256, 1e-6)
    # transformers' slopes shrink linearly with depth: 1 − l/(L − 1 + 1e-5) + 1e-5 at layer l of L
    assert [plan.layers[i].mixer.decay_scale for i in (0, 40)] == [1 + 1e-5, 1 - 40 / (79 + 1e-5) + 1e-5]
    assert plan.residual_scales is not None and plan.residual_scales.mixer == (DEEPNORM, 1.0)
    # unset layer_types: MiniMaxConfig puts full attention on the even layers
    unset = hf_to_model({k: v for k, v in AS_TRANSFORMERS_RUNS.items() if k != "layer_types"})
    assert [lp.mixer_kind for lp in unset.layers][:4] == ["attention", "lightning", "attention", "lightning"]


def test_fields_transformers_ignores_are_named_where_they_agree():
    text = import_hf_config({**AS_TRANSFORMERS_RUNS, "rotary_dim": 128, "attn_type_list": ([0] * 7 + [1]) * 10})
    assert "postnorm true: agrees" in text
    assert "attn_type_list: agrees" in text
    assert "rotary_dim 128: agrees" in text


@pytest.mark.parametrize(
    "change,field",
    [
        ({"rotary_dim": 64}, "rotary_dim"),  # MiniMax's code rotates 64 of 128 dims, transformers all of them
        (
            {"rope_parameters": {"rope_theta": 1e7, "partial_rotary_factor": 0.5}},
            "rope_parameters.partial_rotary_factor",
        ),
        ({"postnorm": False}, "postnorm"),
        ({"shared_intermediate_size": 512}, "shared_intermediate_size"),
        ({"attn_type_list": [0] * 80}, "attn_type_list"),
        ({"layernorm_mlp_alpha": 1.0}, "layernorm_mlp_alpha"),
        ({"layer_types": ["sliding_attention"] * 80}, "layer_types"),
        ({"hidden_act": "tanh"}, "hidden_act"),
        ({"router_jitter_noise": 0.1}, "router_jitter_noise"),  # jitter on the experts' input too
    ],
)
def test_fields_that_disagree_with_what_transformers_runs_are_refused(change, field):
    cfg = {**AS_TRANSFORMERS_RUNS, **change}
    if "rope_parameters" in change:
        del cfg["rope_theta"]
    if "attn_type_list" in change:
        cfg["attn_type_list"] = [0] * 80
    assert field in refused_fields(cfg)


@pytest.mark.parametrize("cfg", [AS_TRANSFORMERS_RUNS, {**TINY, "model_type": "minimax"}], ids=["release", "tiny"])
def test_export_writes_a_config_that_imports_to_the_same_plan(cfg):
    plan = hf_to_model(cfg)
    exported = export_hf_config(plan)
    assert exported["model_type"] == "minimax" and exported["layer_types"] == cfg["layer_types"]
    assert exported["block_size"] == cfg.get("block_size", 256)
    assert plan_differences(hf_to_model(exported), plan) == []


def test_the_shipped_spec_is_not_exported_because_transformers_would_rotate_whole_heads():
    with pytest.raises(SpecError) as e:
        export_hf_config("minimax-text-01")
    assert "minimax: cannot express (spec vs family) positions.rotary_dim: 64 vs None" in str(e.value)


def test_a_shared_expert_is_the_one_problem_not_the_mode_that_would_gate_it():
    cfg = {**TINY, "model_type": "minimax", "shared_intermediate_size": 8, "shared_moe_mode": "sigmoid"}
    assert refused_fields(cfg) == ["shared_intermediate_size"]


def test_defaults_table_holds_transformers_class_defaults():
    assert_table_holds_class_defaults(DEFAULTS, transformers.MiniMaxConfig, at_least=20)
    assert DEFAULTS["default_theta"] == transformers.MiniMaxConfig.default_theta


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    hf = tiny_hf("minimax", TINY)
    return saved_checkpoint(hf, tmp_path_factory, "minimax")


def test_tiny_checkpoint_gives_transformers_logits_and_router_choices(checkpoint):
    hf, folder = checkpoint
    model = moec.from_hf(folder)
    assert [lp.mixer_kind for lp in model.plan.layers] == ["lightning", "attention", "lightning", "lightning"]
    assert assert_same(hf, model) <= 1e-4


def test_tiny_counts_equal_transformers_model_on_meta():
    params = analyze(hf_to_model({**TINY, "model_type": "minimax"})).params
    assert (params.total, params.active) == hf_counts({**TINY, "model_type": "minimax"})


def test_generated_model_py_gives_the_library_logits(checkpoint, tmp_path):
    model = moec.from_hf(checkpoint[1])
    assert_generated_model_gives_the_library_logits(model, TOKENS, tmp_path)


def test_tiny_checkpoint_decodes_token_by_token_as_transformers_does(checkpoint):
    """The lightning memories and the attention's KV cache carried through a prefill and one-token steps: equal to
    moec's full forward, and to transformers' cached decode (its MiniMaxCache: a block-wise prefill, then its
    token-by-token recurrence)."""
    from transformers.models.minimax.modeling_minimax import MiniMaxCache

    hf, folder = checkpoint
    model = moec.from_hf(folder)
    cache, hf_cache, outs, hf_outs, start = model.new_cache(2, TOKENS.shape[1]), MiniMaxCache(), [], [], 0
    with torch.no_grad():
        for n in [7] + [1] * (TOKENS.shape[1] - 7):
            outs.append(model(TOKENS[:, start : start + n], cache=cache, start=start)[0])
            # positions given: left to itself, transformers counts them from layer 0's KV cache, which a lightning
            # layer 0 leaves empty, and rotates the attention layer's later tokens from position 0 again
            positions = torch.arange(start, start + n)[None]
            step = hf(TOKENS[:, start : start + n], cache=hf_cache, use_cache=True, position_ids=positions)
            hf_outs.append(step.logits)
            start += n
        full = model(TOKENS)[0]
    assert (torch.cat(outs, dim=1) - full).abs().max() <= 1e-4
    assert (torch.cat(outs, dim=1) - torch.cat(hf_outs, dim=1)).abs().max() <= 1e-4


def test_a_checkpoint_whose_decays_are_not_minimaxs_is_refused_naming_them(checkpoint, tmp_path):
    """moec computes the decays from the plan; transformers loads the saved buffers. They must agree."""
    from safetensors.torch import load_file, save_file

    _, folder = checkpoint
    tensors = load_file(folder / "model.safetensors")
    tensors["model.layers.2.self_attn.slope_rate"] = tensors["model.layers.2.self_attn.slope_rate"] * 2
    save_file(tensors, tmp_path / "model.safetensors", metadata={"format": "pt"})
    (tmp_path / "config.json").write_text((folder / "config.json").read_text())
    with pytest.raises(CheckpointError) as e:
        moec.from_hf(tmp_path)
    assert [p.path for p in e.value.problems] == ["layers.2.mixer.qkv_proj.weight"]
    assert "model.layers.2.self_attn.slope_rate holds decays" in e.value.problems[0].message


def test_the_decay_buffers_an_export_writes_are_transformers(checkpoint):
    """MiniMaxMapper.derived: what transformers saves beside each lightning layer's weights, from the plan alone."""
    from safetensors.torch import load_file

    from moec.hf.checkpoint import MemoryCheckpoint

    hf, folder = checkpoint
    saved = load_file(folder / "model.safetensors")
    model = moec.from_hf(folder)
    derived = MiniMaxMapper(MemoryCheckpoint(saved, folder), model.plan).derived()
    assert sorted(derived) == sorted(n for n in saved if n.endswith(MiniMaxMapper.decay_buffers))
    for name, t in derived.items():
        assert t.dtype == torch.float32 and t.shape == saved[name].shape
        torch.testing.assert_close(t, saved[name], rtol=0, atol=1e-7)


@pytest.mark.parametrize("kind", ["full_attention", "linear_attention"])
def test_a_config_of_one_layer_kind_imports_without_the_other_kinds_fields(kind):
    """transformers builds a MiniMax whose layers are all softmax attention, or all lightning; the import writes
    no lightning section (or no attention factors) for a kind no layer has, and counts as transformers."""
    cfg = {**TINY, "model_type": "minimax", "layer_types": [kind] * 4}
    plan = hf_to_model(cfg)
    assert {lp.mixer_kind for lp in plan.layers} == {"attention" if kind == "full_attention" else "lightning"}
    params = analyze(plan).params
    assert (params.total, params.active) == hf_counts(cfg)
