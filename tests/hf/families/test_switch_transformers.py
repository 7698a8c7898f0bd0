"""switch_transformers (SwitchTransformersForConditionalGeneration): the import counts exactly what transformers
builds on meta (total, and active as total less (E−1)/E of the experts), on Switch-Base-8 and on small variants
of the layer pattern, the stack depths, the tying and the router bias; the shipped spec is the import; what moec
cannot say is refused by field; a tiny save_pretrained checkpoint through moec.from_hf gives transformers' logits
and router choices (eval, fp32), with an expert capacity that drops tokens too."""

from __future__ import annotations

import pytest

pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import torch  # noqa: E402

import moec  # noqa: E402
from moec.analyze import analyze  # noqa: E402
from moec.hf import hf_to_model  # noqa: E402
from moec.hf.checkpoint import CheckpointError  # noqa: E402
from moec.hf.config import plan_differences  # noqa: E402
from moec.hf.families.switch_transformers import DEFAULTS  # noqa: E402
from moec.spec import load_model  # noqa: E402
from moec.spec.plan import MoEPlan  # noqa: E402
from tests.hf.families._harness import (  # noqa: E402
    assert_table_holds_class_defaults,
    away_from_init,
    model_counts,
    refused_fields,
    saved_checkpoint,
)

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
        {"num_sparse_encoder_layers": 5, "num_sparse_decoder_layers": 4},  # more than the layers: step 0, all dense
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


def tiny_switch(expert_capacity: int):
    """transformers' Switch model of TINY with ``expert_capacity`` (eager attention), every weight away from its init
    (routers with logits of order 1); also what tests/codegen builds its checkpoint from."""
    kw = {k: v for k, v in TINY.items() if k != "model_type"}
    config = transformers.SwitchTransformersConfig(**kw, expert_capacity=expert_capacity)
    config._attn_implementation = "eager"
    torch.manual_seed(0)
    hf = transformers.SwitchTransformersForConditionalGeneration(config).eval()
    away_from_init(hf, router="router.classifier.weight")
    return hf


@pytest.fixture(scope="module", params=[64, 3], ids=["capacity 64", "capacity 3 drops"])
def checkpoint(request, tmp_path_factory):
    """:func:`tiny_switch` saved; with expert_capacity 3 the 20-token sources and 13-token targets overflow experts
    in every sparse layer."""
    return saved_checkpoint(tiny_switch(request.param), tmp_path_factory, "switch")


def routed(model, router_class) -> list[torch.Tensor]:
    """A hook on each router of ``model`` (encoder's first, in layer order) that records its (T,) expert per token
    after the capacity, -1 where dropped; call after the forward."""
    seen: list[torch.Tensor] = []

    def hook(module, args, out):
        if isinstance(out, tuple):  # transformers: (one-hot kept (B, S, E), probs, logits)
            kept = out[0].reshape(-1, out[0].shape[-1])
            seen.append(torch.where(kept.any(-1), kept.argmax(-1), -1))
        else:  # moec: a Routing, top-1
            seen.append(out.topk_idx[:, 0])

    for m in model.modules():
        if isinstance(m, router_class):
            m.register_forward_hook(hook)
    return seen


def test_a_tiny_checkpoint_gives_transformers_logits_and_router_choices(checkpoint):
    from transformers.models.switch_transformers.modeling_switch_transformers import SwitchTransformersTop1Router

    from moec.nn.router import Router

    hf, folder = checkpoint
    model = moec.from_hf(folder)
    g = torch.Generator().manual_seed(1)
    src, tgt = torch.randint(0, 96, (2, 20), generator=g), torch.randint(0, 96, (2, 13), generator=g)
    theirs, ours = routed(hf, SwitchTransformersTop1Router), routed(model, Router)
    with torch.no_grad():
        want = hf(input_ids=src, decoder_input_ids=tgt).logits
        logits, aux = model(src, tgt)
    assert (logits - want).abs().max() <= 1e-4 * want.abs().max()
    assert len(ours) == len(theirs) == 3  # encoder layers 1 and 3, decoder layer 1
    for a, b in zip(ours, theirs, strict=True):
        assert torch.equal(a, b)
    dropped = sum(int(a.dropped) for a in aux.layers if a is not None)
    assert (dropped > 0) == (hf.config.expert_capacity == 3)


def test_an_unequal_copy_of_the_shared_embedding_is_refused(checkpoint, tmp_path):
    from safetensors.torch import load_file, save_file

    hf, folder = checkpoint
    for f in folder.iterdir():
        (tmp_path / f.name).write_bytes(f.read_bytes())
    weights = load_file(tmp_path / "model.safetensors")
    shared = weights["shared.weight"]
    save_file({**weights, "encoder.embed_tokens.weight": shared.clone()}, tmp_path / "model.safetensors")
    moec.from_hf(tmp_path)  # an equal copy, as older releases store it, is let go
    save_file({**weights, "decoder.embed_tokens.weight": shared + 1}, tmp_path / "model.safetensors")
    with pytest.raises(CheckpointError, match="decoder.embed_tokens.weight"):
        moec.from_hf(tmp_path)


def test_the_shipped_spec_exports_as_switch_base_8s_config():
    from moec.hf.config import export_hf_config

    cfg = export_hf_config("switch-base-8-encdec")
    assert (cfg["encoder_sparse_step"], cfg["decoder_sparse_step"], cfg["expert_capacity"]) == (2, 2, 64)
    assert plan_differences(load_model("switch-base-8-encdec"), hf_to_model(cfg)) == []  # counted above


def test_a_spec_switch_cannot_say_is_refused_naming_why(write_spec):
    from moec.errors import SpecError
    from moec.hf.config import export_hf_config
    from tests.spec.test_encdec import TINY as SPEC  # no logits_scaling: an untied-style head Switch does not have

    with pytest.raises(SpecError, match="switch_transformers: scales the tied output by d_model\\^-0.5"):
        export_hf_config(load_model(str(write_spec(SPEC))))


def test_an_exported_checkpoint_is_the_imported_one_and_gives_its_logits_in_transformers(checkpoint, tmp_path):
    from safetensors.torch import load_file

    hf, folder = checkpoint
    model = moec.from_hf(folder)
    moec.export_hf(model, tmp_path / "out")
    theirs, ours = load_file(folder / "model.safetensors"), load_file(tmp_path / "out" / "model.safetensors")
    assert set(ours) == set(theirs) and all(torch.equal(ours[k], theirs[k]) for k in theirs)
    back = transformers.SwitchTransformersForConditionalGeneration.from_pretrained(tmp_path / "out").eval()
    src, tgt = torch.arange(20).view(2, 10) % 96, torch.arange(8).view(2, 4) + 5
    with torch.no_grad():
        assert torch.equal(
            back(input_ids=src, decoder_input_ids=tgt).logits, hf(input_ids=src, decoder_input_ids=tgt).logits
        )


def test_a_model_built_from_a_spec_exports_to_transformers_logits(tmp_path):
    from moec.spec import load_spec, resolve
    from tests.spec.test_encdec import TINY as SPEC

    spec = SPEC.replace("max_seq_len: 32", "max_seq_len: 512\n  logits_scaling: 4.0")
    model = moec.build_model(resolve(load_spec("tiny.yaml", text=spec)), device="cpu", seed=0).eval()
    moec.export_hf(model, tmp_path / "out")
    hf = transformers.SwitchTransformersForConditionalGeneration.from_pretrained(tmp_path / "out").eval()
    g = torch.Generator().manual_seed(2)
    src, tgt = torch.randint(0, 64, (2, 9), generator=g), torch.randint(0, 64, (2, 5), generator=g)
    with torch.no_grad():
        want = hf(input_ids=src, decoder_input_ids=tgt).logits
        logits, _ = model(src, tgt)
    assert (logits - want).abs().max() <= 1e-4 * want.abs().max()


def test_stacks_without_a_switch_layer_import_without_a_capacity():
    """num_sparse_*_layers above the layer count gives a step of 0 (layers // sparse), so transformers builds every
    block dense; the import says so and writes no expert capacity (it was refused at expert_capacity)."""
    plan = hf_to_model({**TINY, "num_sparse_encoder_layers": 5, "num_sparse_decoder_layers": 4})
    assert not any(isinstance(lp.ffn, MoEPlan) for lp in (*plan.encoder, *plan.layers))
    assert plan.expert_capacity is None


def test_a_refused_layer_count_is_the_one_problem_not_the_step_judged_with_it():
    assert refused_fields({**TINY, "num_layers": 0, "encoder_sparse_step": 2}) == ["num_layers"]


def test_defaults_table_holds_transformers_class_defaults():
    assert_table_holds_class_defaults(DEFAULTS, transformers.SwitchTransformersConfig, at_least=20)
