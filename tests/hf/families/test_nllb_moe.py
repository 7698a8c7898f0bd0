"""nllb-moe (NllbMoeForConditionalGeneration): the import counts exactly what transformers builds on meta (total,
and active as total less (E−2)/E of the experts) on NLLB-MoE 54B and on small variants of the layer pattern, the
embedding scale, the router bias and the token dropout; what moec cannot say is refused by field; what only
training does is named in the written spec's header; moec.from_hf refuses the model (moec does not build it).

The release config: no copy of facebook/nllb-moe-54b's config.json was found in the sources this project can
reach, so NLLB_MOE_54B is transformers' NllbMoeConfig class defaults plus the 54B sizes of the NLLB paper
(arXiv 2207.04672: d_model 2048, 24 + 24 layers, FFN 8192, 16 heads, 128 experts on every 4th layer, the
256,206-token NLLB-200 vocabulary). Built on meta it holds 54,500,569,088 parameters: the paper's "54.5B".

transformers 5.24's NllbMoeExperts runs ``expert_1`` on each token's first choice and ``expert_0`` on its second,
whatever the router chose (it one-hot encodes the 0/1 top-1 mask instead of the expert indices):
test_transformers_runs_experts_0_and_1_whatever_the_router_chose shows it against a hand-written top-2 layer. That
is a transformers bug, not the architecture (fairseq's MoE layer runs the two chosen experts); moec counts the
architecture's two chosen experts of E, with the same parameters either way."""

from __future__ import annotations

import functools

import pytest

pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import torch  # noqa: E402

import moec  # noqa: E402
from moec.analyze import analyze  # noqa: E402
from moec.errors import CommandError, SpecError  # noqa: E402
from moec.hf import hf_to_model  # noqa: E402
from moec.hf.config import import_hf_config, plan_differences  # noqa: E402
from moec.hf.families.nllb_moe import DEFAULTS  # noqa: E402
from moec.spec.plan import MoEPlan  # noqa: E402
from tests.hf.families._harness import assert_table_holds_class_defaults, model_counts, refused_fields  # noqa: E402

NLLB_MOE_54B = {
    "model_type": "nllb-moe",
    "vocab_size": 256206,
    "d_model": 2048,
    "encoder_layers": 24,
    "decoder_layers": 24,
    "encoder_ffn_dim": 8192,
    "decoder_ffn_dim": 8192,
    "encoder_attention_heads": 16,
    "decoder_attention_heads": 16,
    "num_experts": 128,
}
TINY = {
    "model_type": "nllb-moe", "vocab_size": 96, "d_model": 16, "encoder_layers": 4, "decoder_layers": 3,
    "encoder_ffn_dim": 24, "decoder_ffn_dim": 24, "encoder_attention_heads": 2, "decoder_attention_heads": 2,
    "num_experts": 4, "encoder_sparse_step": 2, "decoder_sparse_step": 3, "max_position_embeddings": 64,
}  # fmt: skip


@functools.cache
def meta_54b():
    """transformers' NLLB-MoE 54B on meta, built once (a few seconds: 12 layers of 128 experts)."""
    return hf_model(NLLB_MOE_54B)


def hf_model(cfg: dict):
    config = transformers.NllbMoeConfig(**{k: v for k, v in cfg.items() if k != "model_type"})
    with torch.device("meta"):
        return transformers.NllbMoeForConditionalGeneration(config)


def hf_counts(cfg: dict) -> tuple[int, int]:
    model = meta_54b() if cfg == NLLB_MOE_54B else hf_model(cfg)
    return model_counts(model, model.config.num_experts, 2, experts=".ffn.experts.")


def counts(cfg: dict) -> tuple[int, int]:
    p = analyze(hf_to_model(cfg)).params
    return p.total, p.active


def test_nllb_moe_54b_counts_equal_transformers_model_on_meta():
    assert counts(NLLB_MOE_54B) == hf_counts(NLLB_MOE_54B) == (54_500_569_088, 3_750_785_024)


def test_the_config_as_transformers_saves_it_imports_to_the_same_plan():
    saved = meta_54b().config.to_dict()
    assert plan_differences(hf_to_model(saved), hf_to_model(NLLB_MOE_54B)) == []


def test_class_defaults_plan_sparse_layers_where_transformers_builds_them():
    plan = hf_to_model({"model_type": "nllb-moe"})  # 12 + 12 layers, sparse step 4: (i + 1) % 4 == 0
    assert [lp.index for lp in plan.encoder if isinstance(lp.ffn, MoEPlan)] == [3, 7, 11]
    assert [lp.index for lp in plan.layers if isinstance(lp.ffn, MoEPlan)] == [3, 7, 11]


@pytest.mark.parametrize(
    "change",
    [
        {},  # 4 encoder layers (sparse 1, 3), 3 decoder layers (sparse 2)
        {"router_bias": True},  # router biases
        {"encoder_sparse_step": 1, "decoder_sparse_step": 0},  # every layer sparse; none
        {"encoder_sparse_step": -2},  # a step below 1: no sparse layer
        {"scale_embedding": False, "moe_token_dropout": 0.0},  # no embedding scale, no expert-output scale
        {"tie_word_embeddings": True, "pad_token_id": 0},  # positions from row 1
    ],
)
def test_tiny_variants_count_as_transformers_builds_them(change):
    cfg = {**TINY, **change}
    assert counts(cfg) == hf_counts(cfg)


def test_the_stacks_their_sparse_layers_and_what_each_token_sees():
    plan = hf_to_model(TINY)
    assert [isinstance(lp.ffn, MoEPlan) for lp in plan.encoder] == [False, True, False, True]
    assert [isinstance(lp.ffn, MoEPlan) for lp in plan.layers] == [False, False, True]
    assert all(lp.cross_attention is not None and lp.cross_attention.bias for lp in plan.layers)
    assert (plan.positions.kind, plan.positions.offset) == ("sinusoidal", 2)  # pad_token_id 1, plus 1
    assert plan.embedding_multiplier == 4.0  # √16
    moe = plan.layers[2].ffn
    assert isinstance(moe, MoEPlan) and moe.top_k == 2 and moe.router.normalize_topk
    assert moe.router.scale == pytest.approx(0.8)  # the expert outputs × (1 − moe_token_dropout) at inference
    assert moe.capacity_factor is None  # dropless at inference (moe_eval_capacity_token_fraction 1)
    assert (plan.norm.kind, plan.norm.bias, plan.norm.eps) == ("layernorm", True, 1e-5)


def test_what_only_training_does_is_named_in_the_header():
    text = import_hf_config({**TINY, "normalize_router_prob_before_dropping": True, "batch_prioritized_routing": True})
    header = next(line for line in text.splitlines() if line.startswith("# Not represented"))
    for name in (
        "expert_capacity 64",
        "moe_token_dropout 0.2",
        "normalize_router_prob_before_dropping",
        "batch_prioritized_routing",
        "encoder_layerdrop 0.05",
        "decoder_layerdrop 0.05",
    ):
        assert name in header


@pytest.mark.parametrize(
    "change,field",
    [
        ({"second_expert_policy": "sampling"}, "second_expert_policy"),  # Gumbel noise, at inference too
        ({"second_expert_policy": "random"}, "second_expert_policy"),  # a random second expert, at inference too
        ({"router_dtype": "bfloat16"}, "router_dtype"),
        ({"moe_eval_capacity_token_fraction": 0.5}, "moe_eval_capacity_token_fraction"),  # drops at inference
        ({"moe_eval_capacity_token_fraction": -1.0}, "moe_eval_capacity_token_fraction"),  # expert_capacity then
        ({"encoder_attention_heads": 4}, "encoder_attention_heads"),
        ({"encoder_ffn_dim": 32}, "encoder_ffn_dim"),
        ({"activation_function": "gelu_fast"}, "activation_function"),
        ({"tie_word_embeddings": False}, "tie_word_embeddings"),  # transformers then unties the stacks' tables too
        ({"pad_token_id": None}, "pad_token_id"),  # positions count from padding_idx + 1
        ({"pad_token_id": -1}, "pad_token_id"),
        ({"moe_token_dropout": 1.0}, "moe_token_dropout"),
        ({"d_model": 15}, "d_model"),  # not divisible by the heads
        ({"decoder_layers": 0}, "decoder_layers"),
        ({"num_experts": 1}, "num_experts"),  # a top-2 router needs two experts
    ],
)
def test_what_moec_cannot_say_is_refused(change, field):
    assert field in refused_fields({**TINY, **change})


def test_from_hf_refuses_it_by_name(tmp_path):
    """A real tiny checkpoint: moec.from_hf refuses the model, naming what it does not build (the encoder-decoder,
    or its sinusoidal positions), before reading a weight."""
    config = transformers.NllbMoeConfig(**{k: v for k, v in TINY.items() if k != "model_type"})
    transformers.NllbMoeForConditionalGeneration(config).save_pretrained(tmp_path)
    with pytest.raises((CommandError, SpecError), match="encoder-decoder|sinusoidal"):
        moec.from_hf(tmp_path)


def test_transformers_runs_experts_0_and_1_whatever_the_router_chose():
    """transformers 5.24's sparse layer against a hand-written top-2 layer: it equals expert_1 on the first choice
    plus expert_0 on the second, not the chosen experts (see the module docstring)."""
    from transformers.models.nllb_moe.modeling_nllb_moe import NllbMoeSparseMLP

    torch.manual_seed(0)
    config = transformers.NllbMoeConfig(d_model=8, num_experts=4, moe_token_dropout=0.0)
    layer = NllbMoeSparseMLP(config, ffn_dim=6).eval()
    x = torch.randn(6, 8)
    with torch.no_grad():
        got = layer(x[None])[0]
        weights, chosen = torch.softmax(layer.router.classifier(x), -1).topk(2, -1)
        weights = weights / weights.sum(-1, keepdim=True)
        expert = layer.experts
        chosen_experts = torch.stack(
            [sum(weights[t, j] * expert[f"expert_{int(chosen[t, j])}"](x[t]) for j in range(2)) for t in range(6)]
        )
        first_two = torch.stack(
            [weights[t, 0] * expert.expert_1(x[t]) + weights[t, 1] * expert.expert_0(x[t]) for t in range(6)]
        )
    assert not set(chosen.flatten().tolist()) <= {0, 1}  # the router chose other experts too
    assert torch.allclose(got, first_two, atol=1e-6)
    assert not torch.allclose(got, chosen_experts, atol=1e-3)


def test_defaults_table_holds_transformers_class_defaults():
    assert_table_holds_class_defaults(DEFAULTS, transformers.NllbMoeConfig, at_least=30)
