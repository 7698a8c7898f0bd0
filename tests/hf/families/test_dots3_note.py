"""dots3-note (model_type dots3_note): the release config counts as transformers' model on meta, its 33 sliding-window
layers each an MLA of their own geometry without the indexer; a tiny random checkpoint saved by transformers (DSA
layers: MLA with latent scales, a normed rotary key, a per-head output gate and GLM-5's indexer; sliding layers of
their own sizes, base and window; DeepSeek-V3's MoE) loads with moec.from_hf to transformers' logits and router
choices; the config as save_pretrained nests it imports to the same plan; what moec cannot express is refused by
name."""

from __future__ import annotations

import json
import re

import pytest

from moec.analyze import analyze
from moec.hf import hf_to_model, import_hf_config

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import moec  # noqa: E402
from moec.hf.config import plan_differences  # noqa: E402
from tests.hf.families._harness import hf_counts, refused_fields, saved_checkpoint, tiny_hf  # noqa: E402
from tests.hf.test_weights import TOKENS, assert_same  # noqa: E402

# rednote's dots3-note release as the vmlx engine's dots3_note config module reads its config.json (text fields at
# the top level; the constants the file omits are Dots3NoteConfig's defaults, which transformers' class shares):
# 46 layers of 5120, vocab 152064, eps 1e-5, one dense layer of 13824, then 256 experts of 1536 (top-8, sigmoid,
# noaux_tc, one group, scale 1) + 1 shared of 1536; DSA layers: MLA with 128 heads (q latent 1024, kv latent 512, nope
# 128, rope 64, v 128), rope base 8e7, an indexer of 64 heads of 128 keeping 2048 keys; 33 of the 46 layers slide
# (a window of 513, MLA of 64 heads with a kv latent of 1024 and nope 192, rope base 5e4).
RELEASE = {
    "architectures": ["Dots3NoteForCausalLM"],
    "model_type": "dots3_note",
    "torch_dtype": "bfloat16",
    "hidden_size": 5120,
    "num_hidden_layers": 46,
    "vocab_size": 152064,
    "rms_norm_eps": 1e-5,
    "intermediate_size": 13824,
    "first_k_dense_replace": 1,
    "n_routed_experts": 256,
    "num_experts_per_tok": 8,
    "moe_intermediate_size": 1536,
    "n_shared_experts": 1,
    "norm_topk_prob": True,
    "routed_scaling_factor": 1.0,
    "scoring_func": "sigmoid",
    "topk_method": "noaux_tc",
    "max_position_embeddings": 524288,
    "num_attention_heads": 128,
    "q_lora_rank": 1024,
    "kv_lora_rank": 512,
    "qk_nope_head_dim": 128,
    "qk_rope_head_dim": 64,
    "v_head_dim": 128,
    "rope_theta": 80_000_000.0,
    "swa_num_attention_heads": 64,
    "swa_q_lora_rank": 1024,
    "swa_kv_lora_rank": 1024,
    "swa_qk_nope_head_dim": 192,
    "swa_qk_rope_head_dim": 64,
    "swa_v_head_dim": 128,
    "swa_rope_theta": 50000.0,
    "sliding_window_size": 513,
    "index_n_heads": 64,
    "index_head_dim": 128,
    "index_topk": 2048,
    "tie_word_embeddings": False,
}
# the release's DSA geometry on every layer (transformers' use_sliding_window false): what moec imports
DSA_EVERYWHERE = {**RELEASE, "use_sliding_window": False}

# 4 layers (one dense): DSA on 0, 1 (MLA of 4 heads, an indexer of 4 heads keeping 4 keys of the 12-token test
# sequence) and sliding windows of 5 on 2, 3 (MLA of 2 heads with a kv latent of 10, nope 6, v 4, rope base 5000, no
# indexer); 2 shared experts of 24 beside 8 routed of 16; head widths 16 and 10 so that transformers rotates
# int(16 · 4/16) = int(10 · 4/10) = 4 dims, as MLA does
TINY = {
    "vocab_size": 128, "hidden_size": 32, "intermediate_size": 48, "moe_intermediate_size": 16,
    "shared_experts_intermediate_size": 24, "num_hidden_layers": 4, "num_attention_heads": 4,
    "num_key_value_heads": 4, "n_routed_experts": 8, "n_shared_experts": 2, "num_experts_per_tok": 2,
    "routed_scaling_factor": 2.0, "q_lora_rank": 16, "kv_lora_rank": 12, "qk_nope_head_dim": 8,
    "qk_rope_head_dim": 4, "v_head_dim": 8, "head_dim": 16, "index_n_heads": 4, "index_head_dim": 8,
    "index_topk": 4, "max_position_embeddings": 64, "rope_theta": 10000.0,
    "swa_num_attention_heads": 2, "swa_num_key_value_heads": 2, "swa_q_lora_rank": 16, "swa_kv_lora_rank": 10,
    "swa_head_dim": 10, "swa_qk_nope_head_dim": 6, "swa_v_head_dim": 4, "swa_rope_theta": 5000.0,
    "sliding_window_size": 5, "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2,
    "vision_config": {"adapter_out_dim": 32}, "audio_config": {"adapter_out_dim": 32},
}  # fmt: skip

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_release_counts_equal_transformers_model_on_meta():
    """279.6B total, 16.3B active (the head and the input embedding included)."""
    params = analyze(hf_to_model(RELEASE)).params
    assert (params.total, params.active) == hf_counts(RELEASE) == (279_551_718_016, 16_254_284_416)


def test_release_names_the_fields_its_rope_bases_come_from():
    text = import_hf_config(RELEASE)
    assert re.search(r"^    theta: 80000000\.0 +# rope_theta$", text, re.M)  # given: no "(transformers default)"


def test_release_imports_its_sliding_layers_with_their_own_geometry():
    plan = hf_to_model(RELEASE)
    sliding = [lp.attention for i, lp in enumerate(plan.layers) if not (i < 2 or i % 4 == 1)]
    dsa = [lp.attention for i, lp in enumerate(plan.layers) if i < 2 or i % 4 == 1]
    assert len(sliding) == 33 and len(dsa) == 13
    assert {
        (a.n_heads, a.kv_lora_rank, a.qk_nope_head_dim, a.window, a.rope_theta, a.has_indexer) for a in sliding
    } == {(64, 1024, 192, 513, 50000.0, False)}
    assert {(a.n_heads, a.kv_lora_rank, a.qk_nope_head_dim, a.window, a.rope_theta, a.indexer_top_k) for a in dsa} == {
        (128, 512, 128, None, None, 2048)
    }
    assert plan.positions.theta == 80_000_000.0


def test_dsa_geometry_counts_equal_transformers_model_on_meta():
    params = analyze(hf_to_model(DSA_EVERYWHERE)).params
    assert (params.total, params.active) == hf_counts(DSA_EVERYWHERE)
    assert {lp.attention.has_indexer for lp in hf_to_model(DSA_EVERYWHERE).layers} == {True}


@pytest.mark.parametrize(
    "change",
    [
        {},
        {"use_dsa": False},  # full_attention layers: no indexer
        {"use_sliding_window": False},
        # indexed and full layers side by side (per_layer_config given: use_dsa renames nothing), layer 2's sizes
        {"layer_types": ["indexed_attention", "full_attention", "sliding_attention", "full_attention"],
         "per_layer_config": {"2": {"num_attention_heads": 2, "num_key_value_heads": 2, "q_lora_rank": 16,
                                    "kv_lora_rank": 10, "head_dim": 10, "qk_nope_head_dim": 6, "v_head_dim": 4,
                                    "qk_rope_head_dim": 4}}},
    ],
    ids=["dsa and sliding", "full and sliding", "dsa only", "dsa, full and sliding"],
)  # fmt: skip
def test_tiny_counts_equal_transformers_model_on_meta(change):
    cfg = {**TINY, "model_type": "dots3_note", **change}
    params = analyze(hf_to_model(cfg)).params
    assert (params.total, params.active) == hf_counts(cfg)


def test_the_config_as_save_pretrained_nests_it_imports_to_the_same_plan():
    """save_pretrained writes text_config (per-type rope_parameters, per_layer_config, layer_types, ...) and the
    towers' configs in full."""
    flat = {**TINY, "model_type": "dots3_note"}
    saved = transformers.AutoConfig.for_model(**flat).to_dict()
    assert saved["text_config"]["per_layer_config"] and "sliding_attention" in saved["text_config"]["rope_parameters"]
    assert plan_differences(hf_to_model(saved), hf_to_model(flat), training=False) == []
    # it keeps the top-level copies too, which transformers does not read: one that disagrees is refused
    assert refused_fields({**saved, "hidden_size": 64}) == ["hidden_size"]
    # a size that is no integer, in the text config or in a layer's own sizes: one located error each, no crash
    text = saved["text_config"]
    refused = refused_fields({**saved, "text_config": {**text, "kv_lora_rank": []}})
    assert sorted(refused) == ["kv_lora_rank", "text_config.kv_lora_rank"]  # the top-level copy now disagrees too
    layer, sizes = next(iter(text["per_layer_config"].items()))
    own = {**text["per_layer_config"], layer: {**sizes, "v_head_dim": "x"}}
    refused = refused_fields({**saved, "text_config": {**text, "per_layer_config": own}})
    assert refused == [f"text_config.per_layer_config.{layer}.v_head_dim"]


@pytest.mark.parametrize(
    "change,field",
    [
        ({"swa_q_lora_rank": 8}, "per_layer_config"),  # a layer's own query latent
        ({"rope_parameters": {"rope_type": "yarn", "rope_theta": 1e4, "factor": 4.0}}, "rope_parameters"),
        ({"mlp_bias": True}, "mlp_bias"),
        ({"num_key_value_heads": 2}, "num_key_value_heads"),
        ({"swa_attention_gate_type": "elementwise"}, "swa_attention_gate_type"),
    ],
)
def test_what_moec_cannot_express_is_refused_by_name(change, field):
    assert field in refused_fields({**TINY, "model_type": "dots3_note", **change})


@pytest.mark.parametrize(
    "change,field",
    [
        ({"swa_head_dim": "x"}, "swa_head_dim"),  # a sliding layer's own width, which sets its rotated dims
        ({"swa_num_attention_heads": "x"}, "swa_num_attention_heads"),  # said once, at its own field
        ({"swa_num_key_value_heads": [2]}, "swa_num_key_value_heads"),
        ({"head_dim": 0}, "head_dim"),  # the rotary tables' width, which transformers divides by
    ],
)
def test_a_size_that_is_no_positive_integer_is_one_located_error(change, field):
    assert refused_fields({**TINY, "model_type": "dots3_note", **change}) == [field]


@pytest.mark.parametrize(
    "change,field",
    [
        ({"swa_head_dim": 0}, "swa_head_dim"),  # not also the rotary width derived from it
        ({"swa_head_dim": 6}, "swa_head_dim"),  # not above swa_qk_nope_head_dim: no rotary dims left
        ({"rope_theta": {"a": 1}}, "rope_theta"),  # read once, not again by the common rope reader
        ({"q_lora_rank": "x"}, "q_lora_rank"),  # not also the sliding layers' latent compared with it
    ],
)
def test_one_bad_field_is_one_problem_not_also_one_for_what_it_feeds(change, field):
    assert refused_fields({**TINY, "model_type": "dots3_note", **change}) == [field]


def test_a_layer_count_past_moecs_bound_is_refused_before_a_list_per_layer_is_built():
    """The layer types are derived from the count before the common reader bounds it: 10^12 hung the import."""
    assert refused_fields({**TINY, "model_type": "dots3_note", "num_hidden_layers": 10**12}) == ["num_hidden_layers"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """transformers' tiny model saved, its config.json then the release's form: the text fields at the top level of
    a dots3_note config (save_pretrained writes the text config alone, dots3_note_text: test_dots3_note_text.py)."""
    hf = tiny_hf("dots3_note", TINY)
    hf, folder = saved_checkpoint(hf, tmp_path_factory, "dots3_note")
    assert json.loads((folder / "config.json").read_text())["model_type"] == "dots3_note_text"
    (folder / "config.json").write_text(json.dumps({**TINY, "model_type": "dots3_note"}))
    return hf, folder


def test_tiny_checkpoint_gives_transformers_logits_and_router_choices(checkpoint):
    hf, folder = checkpoint
    model = moec.from_hf(folder)
    assert type(hf).__name__ == "Dots3NoteForCausalLM" and model.plan.layers[0].attention.rope_key_norm
    assert [lp.attention.has_indexer for lp in model.plan.layers] == [True, True, False, False]
    assert assert_same(hf, model) <= 1e-4
    with torch.no_grad():  # the rotary key's norm matters: without it, other logits
        want = hf(TOKENS).logits
        for layer in model.layers:
            layer.attn.k_rope_only_layernorm = torch.nn.Identity()
        assert not torch.allclose(model(TOKENS)[0], want, atol=1e-3)
