"""ERNIE-4.5 MoE (model_type ernie4_5_moe): the release's counts equal transformers' model on meta; which layers
are MoE follows transformers' modules; the shipped spec is the release; a tiny random checkpoint saved by
transformers loads with moec.from_hf to transformers' logits and router choices (interleaved rotary pairs, the
selection bias, biases); the generated model.py gives moec.nn's logits; Baidu's own fields are named where they
agree with what transformers builds and refused where they do not."""

from __future__ import annotations

import pytest

from moec.analyze import analyze
from moec.errors import SpecError
from moec.hf import hf_to_model, import_hf_config
from moec.hf.config import plan_differences, render_yaml, translate
from moec.spec import load_model, load_spec, resolve
from tests.hf.configs import hf_model_on_meta

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import moec  # noqa: E402
import tests.hf.test_weights as weights  # noqa: E402
from tests.hf.families._harness import (  # noqa: E402
    assert_generated_source_matches_the_library,
    refused_fields,  # noqa: E402
    saved_tiny,
)

# baidu/ERNIE-4.5-21B-A3B-PT config.json, recalled (the Hub is out of reach and no public copy of the file was
# found). Its architectural numbers agree with the copies public test suites hold (MindIE's ERNIE-MoE fixture and
# an LLM memory calculator's ERNIE-4.5-21B-A3B fixture: d 2560, 28 layers, 20 / 4 heads of 128, 64 experts of
# 1536 top-6, 2 shared, dense width 12288, vocabulary 103424, moe_layer_start_index 1, end 27, tied embeddings)
# and with the published totals (21B total, 3B active). The Baidu fields transformers ignores are spelt as in
# FastDeploy's ERNIE-4.5 MoE fixture (use_rmsnorm, moe_capacity, moe_gate, moe_use_aux_free,
# num_nextn_predict_layers); multi_token_pred_lambda is recalled only.
ERNIE_45_21B_A3B_PT = {
    "architectures": ["Ernie4_5_MoeForCausalLM"],
    "bos_token_id": 1,
    "eos_token_id": 2,
    "hidden_act": "silu",
    "hidden_size": 2560,
    "intermediate_size": 12288,
    "max_position_embeddings": 131072,
    "model_type": "ernie4_5_moe",
    "num_attention_heads": 20,
    "num_key_value_heads": 4,
    "num_hidden_layers": 28,
    "pad_token_id": 0,
    "rms_norm_eps": 1e-05,
    "use_cache": False,
    "vocab_size": 103424,
    "rope_theta": 500000,
    "use_rmsnorm": True,
    "tie_word_embeddings": True,
    "use_bias": False,
    "moe_num_experts": 64,
    "moe_num_shared_experts": 2,
    "moe_layer_start_index": 1,
    "moe_intermediate_size": 1536,
    "moe_capacity": [64, 64, 64],
    "moe_gate": "topk",
    "moe_k": 6,
    "moe_layer_interval": 1,
    "moe_use_aux_free": True,
    "num_nextn_predict_layers": 1,
    "multi_token_pred_lambda": 0.3,
    "torch_dtype": "bfloat16",
}

# A dense first layer, 8 experts top-2 with a selection bias that moves choices, two shared experts fused into
# one MLP, interleaved rotary pairs (a base of 1e4: every pair turns within 12 tokens).
TINY = {
    **weights.TINY,
    "num_hidden_layers": 3,
    "intermediate_size": 96,
    "moe_num_experts": 8,
    "moe_k": 2,
    "moe_intermediate_size": 32,
    "moe_num_shared_experts": 2,
    "moe_layer_start_index": 1,
    "rope_theta": 1e4,
}
# use_bias on attention, the dense MLP and the (tied) lm_head; no shared experts, so the routed experts, which
# never have biases, are the whole MoE block
BIASED = {**TINY, "use_bias": True, "moe_num_shared_experts": 0, "tie_word_embeddings": True}  # fmt: skip

from tests.hf.families._harness import hf_counts  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_release_counts_equal_transformers_model_on_meta():
    """The correction bias counts, as transformers' frozen nn.Parameter does: 27 MoE layers × 64 in the router."""
    params = analyze(hf_to_model(ERNIE_45_21B_A3B_PT)).params
    assert (params.total, params.active) == hf_counts(ERNIE_45_21B_A3B_PT)
    frozen = {n: p.numel() for n, p in hf_model_on_meta(ERNIE_45_21B_A3B_PT).named_parameters() if not p.requires_grad}
    assert all(n.endswith("moe_statics.e_score_correction_bias") for n in frozen) and sum(frozen.values()) == 27 * 64
    assert round(params.total / 1e8) == 218 and round(params.active / 1e8) == 34  # 21.8B, 3.4B with embeddings


def test_release_config_as_transformers_saves_it_imports_to_the_same_plan():
    """save_pretrained writes rope_parameters, moe_layer_end_index 27 (for -1) and moe_norm_min."""
    saved = hf_model_on_meta(ERNIE_45_21B_A3B_PT).config.to_dict()
    assert saved["moe_layer_end_index"] == 27
    assert plan_differences(hf_to_model(saved), hf_to_model(ERNIE_45_21B_A3B_PT)) == []


def test_shipped_spec_is_the_release():
    assert plan_differences(load_model("ernie-4.5-21b-a3b"), hf_to_model(ERNIE_45_21B_A3B_PT)) == []


def test_baidu_fields_transformers_ignores_are_named_where_they_agree():
    lines = import_hf_config(ERNIE_45_21B_A3B_PT).splitlines()

    def comment(prefix: str) -> str:
        return next(line for line in lines if line.strip().startswith(prefix)).split("#", 1)[1]

    assert "use_rmsnorm true: agrees (transformers ignores it)" in comment("kind: rmsnorm")
    assert "moe_gate 'topk': agrees" in comment("top_k:")
    assert "moe_capacity [64, 64, 64]: agrees" in comment("n_experts:")
    assert "moe_use_aux_free true: agrees" in comment("selection_bias:")
    assert "num_nextn_predict_layers 1, multi_token_pred_lambda 0.3: ERNIE's MTP head" in comment("n_layers:")
    assert "moe_norm_min 1e-12" in comment("normalize_topk:")


@pytest.mark.parametrize(
    "change,field",
    [
        ({"use_rmsnorm": False}, "use_rmsnorm"),  # LayerNorm in ERNIE's own code
        ({"moe_gate": "top2"}, "moe_gate"),
        ({"moe_capacity": [2.0, 64, 64]}, "moe_capacity"),  # a factor that drops tokens
        ({"moe_use_aux_free": False}, "moe_use_aux_free"),
        ({"moe_norm_min": 1e-3}, "moe_norm_min"),  # a floor ordinary tokens reach
        ({"foo_lambda": 0.1}, "foo_lambda"),  # an unknown field: it may change the model
    ],
)
def test_fields_that_disagree_with_what_transformers_runs_are_refused(change, field):
    assert refused_fields({**ERNIE_45_21B_A3B_PT, **change}) == [field]


def test_biases_on_shared_but_not_routed_experts_are_refused_by_exactly_their_count():
    cfg = {**ERNIE_45_21B_A3B_PT, "use_bias": True}
    with pytest.raises(SpecError) as e:
        hf_to_model(cfg)
    assert [p.path for p in e.value.problems] == ["use_bias"]
    t = translate(cfg)
    nearest = analyze(resolve(load_spec("draft", text=render_yaml(t)))).params.total
    assert nearest + sum(g.param_delta for g in t.gaps) == hf_counts(cfg)[0]


@pytest.mark.parametrize(
    "change",
    [
        {},  # the release: dense layer 0, MoE 1..27
        {"moe_layer_start_index": 3, "moe_layer_end_index": 20, "moe_layer_interval": 2},
        {"moe_layer_start_index": 0, "moe_layer_end_index": -1, "moe_layer_interval": 4},
        {"moe_layer_start_index": 30},  # no MoE layer
    ],
)
def test_moe_layers_follow_transformers_modules(change):
    cfg = {**ERNIE_45_21B_A3B_PT, **change}
    want = [hasattr(layer.mlp, "experts") for layer in hf_model_on_meta(cfg).model.layers]
    assert [lp.ffn.kind == "moe" for lp in hf_to_model(cfg).layers] == want


CASES = {"shared experts": TINY, "biases": BIASED}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """case name → (transformers model, the folder save_pretrained wrote), each built once."""
    made = {}

    def get(name: str):
        if name not in made:
            folder = tmp_path_factory.mktemp(name.replace(" ", "_"))
            made[name] = saved_tiny("ernie4_5_moe", CASES[name], folder), folder
        return made[name]

    return get


@pytest.mark.parametrize("name", list(CASES))
def test_tiny_checkpoint_gives_transformers_logits_and_router_choices(name, checkpoint):
    hf, folder = checkpoint(name)
    weights.assert_same(hf, moec.from_hf(folder))


def test_the_in_memory_layout_and_the_mtp_head_load(checkpoint, tmp_path):
    """transformers' in-memory names (stacked experts, mlp.gate.moe_statics) load to the same logits, and the
    release's MTP tensors, which transformers lets go on load, are let go; any other extra tensor is refused."""
    hf, _ = checkpoint("shared experts")
    state = {k: v for k, v in hf.state_dict().items() if k != "lm_head.weight" or not hf.config.tie_word_embeddings}
    assert "model.layers.1.mlp.gate.moe_statics.e_score_correction_bias" in state
    mtp = {"model.mtp_linear_proj.0.weight": torch.zeros(64, 128), "model.mtp_emb_norm.0.weight": torch.ones(64)}
    weights.assert_same(hf, moec.from_hf(weights._write_state_dict(hf, tmp_path / "a", {**state, **mtp})))
    with pytest.raises(weights.CheckpointError) as e:
        moec.from_hf(weights._write_state_dict(hf, tmp_path / "b", {**state, "model.extra.weight": torch.ones(4)}))
    assert e.value.unexpected == ["model.extra.weight"]


def test_the_selection_bias_is_loaded_and_moves_choices(checkpoint):
    """Zeroed, moec's routers choose differently from transformers': the parity test above would catch a bias
    that failed to load."""
    hf, folder = checkpoint("shared experts")
    model = moec.from_hf(folder)
    _, hf_choices = weights.run_hf(hf)
    biases = [b for n, b in model.state_dict(keep_vars=True).items() if n.endswith("expert_bias")]
    assert len(biases) == 2 and all(b.abs().max() > 0 for b in biases)
    with torch.no_grad():
        for b in biases:
            b.zero_()
    _, ours = weights.run_moec(model)
    assert any(not torch.equal(ours[i][0].sort(-1)[0], hf_choices[i][0].sort(-1)[0]) for i in hf_choices)


def test_generated_model_gives_the_library_logits(tmp_path):
    assert_generated_source_matches_the_library({**TINY, "model_type": "ernie4_5_moe"}, tmp_path)
