"""Mistral 4 (model_type mistral4): its defaults (Mistral-Small-4-119B's text model) are refused naming the
query scaling moec lacks, and without it they count as transformers' model on meta; a tiny random checkpoint
(MLA with YaRN's mscale, a dense first layer, softmax routing limited to the best groups by their top-2 sums,
renormalised and scaled, a shared expert) loads with moec.from_hf to transformers' logits and router choices; the
generated model.py gives moec.nn's logits; what transformers cannot build or moec cannot say is refused."""

from __future__ import annotations

import copy

import pytest

from moec.analyze import analyze
from moec.errors import SpecError
from moec.hf import hf_to_model
from moec.hf.config import plan_differences

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import moec  # noqa: E402
from tests.hf.test_weights import TOKENS, assert_same  # noqa: E402

Mistral4Config = transformers.Mistral4Config
from transformers.models.mistral4.modeling_mistral4 import Mistral4ForCausalLM  # noqa: E402

from tests.hf.families._harness import (  # noqa: E402
    assert_generated_model_gives_the_library_logits,
    away_from_init,
    model_counts,
    refused_fields,
    saved_checkpoint,
)

# Mistral4Config's class defaults, which its docstring ties to mistralai/Mistral-Small-4-119B-2603 (the release
# is a multimodal wrapper holding this text model as text_config; its config.json is out of reach here): 36
# layers, d 4096, MLA (q rank 1024, kv rank 256), 128 experts of 2048, top-4, one shared expert, YaRN ×128 with
# the Llama-4 query scaling β 0.1. Built on meta, transformers' model has 118,972,826,624 parameters ("119B").
RELEASE = Mistral4Config().to_dict()
# the same without the query scaling (β 0 scales nothing): what moec expresses; it changes no count
NEAREST = {**RELEASE, "rope_parameters": {**RELEASE["rope_parameters"], "llama_4_scaling_beta": 0.0}}

ROPE = {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0, "original_max_position_embeddings": 16,
        "beta_fast": 32.0, "beta_slow": 1.0, "mscale": 1.0, "mscale_all_dim": 1.0, "llama_4_scaling_beta": 0.0}  # fmt: skip
TINY = {
    "vocab_size": 128, "hidden_size": 64, "num_attention_heads": 4, "num_key_value_heads": 4,
    "max_position_embeddings": 64, "rms_norm_eps": 1e-6, "num_hidden_layers": 3, "intermediate_size": 96,
    "first_k_dense_replace": 1, "n_routed_experts": 8, "n_group": 4, "topk_group": 2, "num_experts_per_tok": 2,
    "n_shared_experts": 1, "moe_intermediate_size": 16, "routed_scaling_factor": 2.5, "norm_topk_prob": True,
    "q_lora_rank": 32, "kv_lora_rank": 16, "qk_nope_head_dim": 8, "qk_rope_head_dim": 8, "v_head_dim": 8,
    "rope_parameters": ROPE, "pad_token_id": None,
}  # fmt: skip

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def hf_counts(cfg: dict) -> tuple[int, int]:
    """(total, active) of transformers' model on meta; active = total − (E−k)/E of the routed experts.
    Mistral4ForCausalLM is built directly: transformers' AutoModelForCausalLM does not map mistral4."""
    kw = {k: v for k, v in copy.deepcopy(cfg).items() if k != "model_type"}
    with torch.device("meta"):
        model = Mistral4ForCausalLM(Mistral4Config(**kw))
    return model_counts(model, model.config.n_routed_experts, model.config.num_experts_per_tok)


def test_release_is_refused_naming_the_query_scaling():
    for cfg in (RELEASE, {"model_type": "mistral4"}):
        with pytest.raises(SpecError) as e:
            hf_to_model(cfg)
        (problem,) = e.value.problems
        assert problem.path == "rope_parameters.llama_4_scaling_beta"
        assert "attention.query_log_scaling" in problem.message


def test_nearest_release_counts_equal_transformers_model_on_meta():
    params = analyze(hf_to_model(NEAREST)).params
    assert (params.total, params.active) == hf_counts(NEAREST) == hf_counts(RELEASE)
    assert params.total == 118_972_826_624 and round(params.active / 1e9, 2) == 6.63


def test_config_json_spellings_import_to_the_same_plan():
    """save_pretrained's dict (type and rope_type, partial_rotary_factor, head_dim, qk_head_dim written out) and a
    hand-written config of the same fields."""
    short = {"model_type": "mistral4", "rope_parameters": {k: v for k, v in NEAREST["rope_parameters"].items()
                                                           if k not in ("type", "partial_rotary_factor")}}  # fmt: skip
    assert plan_differences(hf_to_model(short), hf_to_model(NEAREST)) == []


def test_default_rope_with_the_query_scaling_length_imports():
    """Without YaRN, original_max_position_embeddings is read by the query scaling only (here β 0: none)."""
    rope = {"rope_type": "default", "rope_theta": 1e6, "original_max_position_embeddings": 8192,
            "llama_4_scaling_beta": 0.0}  # fmt: skip
    model = hf_to_model({**NEAREST, "rope_parameters": rope})
    assert model.positions.theta == 1e6 and model.positions.scaling is None
    params = analyze(model).params
    assert (params.total, params.active) == hf_counts({**NEAREST, "rope_parameters": rope})


@pytest.mark.parametrize(
    "change,field",
    [
        ({"rope_interleave": False}, "rope_interleave"),  # halves, not adjacent pairs, on MLA
        ({"rope_parameters": {**ROPE, "partial_rotary_factor": 0.25}}, "rope_parameters.partial_rotary_factor"),
        ({"rope_parameters": {k: v for k, v in ROPE.items() if k != "llama_4_scaling_beta"}}, "rope_parameters"),
        ({"n_group": None}, "n_group"),  # Mistral4TopkRouter cannot split experts into None groups
        ({"first_k_dense_replace": None}, "first_k_dense_replace"),
    ],
)
def test_what_moec_or_transformers_cannot_build_is_refused_located(change, field):
    assert refused_fields({**NEAREST, **change}) == [field]


def tiny_hf(cfg: dict):
    """transformers' tiny model with every weight random and away from its init (norms around 1, routers with
    logits of order 1)."""
    c = Mistral4Config(**copy.deepcopy(cfg))
    c._attn_implementation = "eager"
    torch.manual_seed(0)
    model = Mistral4ForCausalLM(c).eval()
    away_from_init(model)
    return model


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    hf = tiny_hf(TINY)
    return saved_checkpoint(hf, tmp_path_factory, "mistral4")


def test_tiny_checkpoint_gives_transformers_logits_and_router_choices(checkpoint):
    hf, folder = checkpoint
    model = moec.from_hf(folder)
    assert [lp.ffn.kind for lp in model.plan.layers] == ["dense", "moe", "moe"]
    assert assert_same(hf, model) <= 1e-4


def test_generated_model_py_gives_the_library_logits(checkpoint, tmp_path):
    model = moec.from_hf(checkpoint[1])
    assert_generated_model_gives_the_library_logits(model, TOKENS, tmp_path)
