"""switch_transformers (SwitchTransformersForConditionalGeneration): the import counts exactly what transformers
builds on meta (total, and active as total less (E−1)/E of the experts), on Switch-Base-8 and on small variants
of the layer pattern, the stack depths, the tying and the router bias; the shipped spec is the import; what moec
cannot say is refused by field; moec.from_hf refuses the model by name (moec does not build encoder-decoders)."""

from __future__ import annotations

import pytest

pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import torch  # noqa: E402

import moec  # noqa: E402
from moec.analyze import analyze  # noqa: E402
from moec.errors import CommandError  # noqa: E402
from moec.hf import hf_to_model  # noqa: E402
from moec.hf.config import plan_differences  # noqa: E402
from moec.hf.families.switch_transformers import DEFAULTS  # noqa: E402
from moec.spec import load_model  # noqa: E402
from moec.spec.plan import MoEPlan  # noqa: E402
from tests.hf.families._harness import assert_table_holds_class_defaults, model_counts, refused_fields  # noqa: E402

# google/switch-base-8 as transformers' class defaults plus what Switch-Base differs in (arXiv 2101.03961: d_ff 3072,
# every other layer sparse: 6 of 12 per stack) and the fields the release configs carry that transformers 5.24 no
# longer reads, at the values that say what transformers runs
BASE_8 = {
    "model_type": "switch_transformers",
    "d_ff": 3072,
    "num_sparse_encoder_layers": 6,
    "num_sparse_decoder_layers": 6,
    "encoder_sparse_step": 2,
    "decoder_sparse_step": 2,
    "num_selected_experts": 1,
    "is_gated_act": False,
    "router_type": "tokens_masked",
    "feed_forward_proj": "relu",
    "batch_prioritized_routing": False,
}
TINY = {
    "model_type": "switch_transformers", "vocab_size": 96, "d_model": 16, "d_kv": 4, "d_ff": 24, "num_heads": 2,
    "num_layers": 4, "num_decoder_layers": 3, "num_sparse_encoder_layers": 2, "num_sparse_decoder_layers": 1,
    "num_experts": 4, "relative_attention_num_buckets": 8, "relative_attention_max_distance": 16,
}  # fmt: skip


def hf_counts(cfg: dict) -> tuple[int, int]:
    kw = {k: v for k, v in cfg.items() if k != "model_type"}
    config = transformers.SwitchTransformersConfig(**kw)
    with torch.device("meta"):
        model = transformers.SwitchTransformersForConditionalGeneration(config)
    return model_counts(model, config.num_experts, 1, experts=".mlp.experts.")


def counts(cfg: dict) -> tuple[int, int]:
    p = analyze(hf_to_model(cfg)).params
    return p.total, p.active


def test_switch_base_8_counts_equal_transformers_model_on_meta():
    assert counts(BASE_8) == hf_counts(BASE_8) == (619_339_008, 222_977_280)


def test_class_defaults_count_as_transformers_builds_them():
    cfg = {"model_type": "switch_transformers"}  # d_ff 2048, 3 sparse layers of 12: step 4, layers 1, 5, 9
    assert counts(cfg) == hf_counts(cfg)
    plan = hf_to_model(cfg)
    assert [lp.index for lp in plan.encoder if isinstance(lp.ffn, MoEPlan)] == [1, 5, 9]
    assert [lp.index for lp in plan.layers if isinstance(lp.ffn, MoEPlan)] == [1, 5, 9]


@pytest.mark.parametrize(
    "change",
    [
        {},  # 4 encoder layers (2 sparse: step 2), 3 decoder layers (1 sparse: step 3, layer 1)
        {"router_bias": True},  # router biases
        {"num_sparse_encoder_layers": 0},  # step = num_layers: transformers still builds layer 1 sparse
        {"num_sparse_encoder_layers": 4, "num_sparse_decoder_layers": 5},  # step 1 (all), step 0 (none)
        {"encoder_sparse_step": 3},  # a written step is kept over the computed one
        {"num_decoder_layers": None},  # the decoder as deep as the encoder
    ],
)
def test_tiny_variants_count_as_transformers_builds_them(change):
    cfg = {**TINY, **change}
    assert counts(cfg) == hf_counts(cfg)


def test_the_stacks_and_their_sparse_layers():
    plan = hf_to_model({**TINY, "num_sparse_encoder_layers": 0})
    assert [isinstance(lp.ffn, MoEPlan) for lp in plan.encoder] == [False, True, False, False]
    assert [isinstance(lp.ffn, MoEPlan) for lp in plan.layers] == [False, True, False]
    assert all(lp.cross_attention is not None for lp in plan.layers)
    assert (plan.positions.kind, plan.positions.n_buckets, plan.positions.max_distance) == ("relative_bucket", 8, 16)
    assert plan.expert_capacity == 64 and plan.logits_scaling == 4.0  # √16: the tied output's d_model^-0.5


def test_shipped_spec_is_the_switch_base_8_import():
    shipped = load_model("switch-base-8-encdec")
    assert plan_differences(shipped, hf_to_model(BASE_8)) == []


@pytest.mark.parametrize(
    "change,field",
    [
        ({"router_ignore_padding_tokens": True}, "router_ignore_padding_tokens"),
        ({"router_dtype": "bfloat16"}, "router_dtype"),
        ({"dense_act_fn": "gated-gelu"}, "dense_act_fn"),
        ({"num_selected_experts": 2}, "num_selected_experts"),
        ({"is_gated_act": True}, "is_gated_act"),
        ({"router_type": "experts_choice"}, "router_type"),
        ({"num_layers": 0}, "num_layers"),
        ({"tie_word_embeddings": False}, "tie_word_embeddings"),  # transformers then unties the stacks' tables too
    ],
)
def test_what_moec_cannot_say_is_refused(change, field):
    assert field in refused_fields({**TINY, **change})


def test_from_hf_refuses_it_by_name(tmp_path):
    import json

    (tmp_path / "config.json").write_text(json.dumps(TINY))
    with pytest.raises(CommandError, match="moec.from_hf: .* is an encoder-decoder model .* not built yet"):
        moec.from_hf(tmp_path)


def test_defaults_table_holds_transformers_class_defaults():
    assert_table_holds_class_defaults(DEFAULTS, transformers.SwitchTransformersConfig, at_least=20)
