"""HunYuan-MoE V1 (model_type hunyuan_v1_moe, Hunyuan-A13B) against transformers: the release config's total and
active counts equal transformers' model on meta; a tiny checkpoint saved by transformers loads with moec.from_hf
to transformers' logits and router choices. Its q/k norms act after the rotation (attention.qk_norm_after_rope):
with ordinary norm weights the order matters, and the test shows the other order would not match."""

from __future__ import annotations

import dataclasses
import re

import pytest

from moec.analyze import analyze
from moec.hf import hf_to_model
from moec.hf.config import plan_differences, render_yaml, translate
from moec.spec import load_model, load_spec, resolve
from tests.hf.configs import hf_model_on_meta

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from moec.hf.checkpoint import Checkpoint  # noqa: E402
from moec.hf.weights import read_weights  # noqa: E402
from moec.nn import build_model  # noqa: E402
from moec.nn.rope import inv_frequencies  # noqa: E402
from moec.nn.router import Router  # noqa: E402
from tests.hf.families._harness import (  # noqa: E402
    model_counts,
    refused_fields,
    tiny_hf,
)
from tests.hf.test_weights import TOKENS, by_expert  # noqa: E402

# tencent/Hunyuan-A13B-Instruct config.json: the fields two public copies hold (a Swift port's fixture of the
# release, with model_type "hunyuan" of Tencent's remote code, and a profiler's test copy spelt for transformers:
# model_type hunyuan_v1_moe, head_dim 128); max_position_embeddings 32768 from the model card's 32K context.
# Published: 80B total, 13B activated parameters.
HUNYUAN_A13B = {
    "architectures": ["HunYuanMoEV1ForCausalLM"],
    "model_type": "hunyuan_v1_moe",
    "attention_bias": False,
    "attention_head_dim": 128,
    "head_dim": 128,
    "hidden_size": 4096,
    "intermediate_size": 3072,
    "max_position_embeddings": 32768,
    "moe_intermediate_size": [3072] * 32,
    "moe_topk": [8] * 32,
    "num_attention_heads": 32,
    "num_experts": 64,
    "num_hidden_layers": 32,
    "num_key_value_heads": 8,
    "num_shared_expert": [1] * 32,
    "rms_norm_eps": 1e-05,
    "rope_scaling": {"alpha": 1000.0, "factor": 1.0, "type": "dynamic"},
    "rope_theta": 10000.0,
    "tie_word_embeddings": True,
    "use_cla": False,
    "use_mixed_mlp_moe": True,
    "use_qk_norm": True,
    "vocab_size": 128167,
}

# NTK-alpha rotary, a per-layer moe_topk list, tied embeddings, the ungated shared MLP.
TINY = {
    "vocab_size": 128, "hidden_size": 64, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16,
    "max_position_embeddings": 64, "rms_norm_eps": 1e-5, "num_hidden_layers": 2, "intermediate_size": 32,
    "num_experts": 8, "moe_topk": [2, 2], "tie_word_embeddings": True, "rope_theta": 1e4,
    "rope_scaling": {"type": "dynamic", "alpha": 1000.0, "factor": 1.0},
}  # fmt: skip

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def nearest_plan(cfg: dict):
    """The spec the importer drafts, with no problem at all."""
    t = translate({"model_type": "hunyuan_v1_moe", **cfg})
    assert not t.problems()
    return resolve(load_spec("draft", text=render_yaml(t))), t.gaps


def test_release_imports_with_the_qk_norm_after_the_rotation():
    plan = hf_to_model(HUNYUAN_A13B)
    assert all(lp.attention.qk_norm and lp.attention.qk_norm_after_rope for lp in plan.layers)


def test_shipped_spec_is_the_import_of_the_release_config():
    assert plan_differences(load_model("hunyuan-a13b"), hf_to_model(HUNYUAN_A13B)) == []


def test_release_counts_equal_transformers_model_on_meta():
    params = analyze(hf_to_model(HUNYUAN_A13B)).params
    assert (params.total, params.active) == model_counts(hf_model_on_meta(HUNYUAN_A13B), 64, 8)  # k: one per layer
    assert round(params.total / 1e9) == 80 and round(params.active / 1e9) == 13  # 80.4B, 12.7B


def test_release_config_as_transformers_saves_it_drafts_the_same_spec():
    """save_pretrained's spelling: rope_parameters holding the alpha and the base, the class defaults written."""
    saved, _ = nearest_plan(hf_model_on_meta(HUNYUAN_A13B).config.to_dict())
    assert plan_differences(saved, nearest_plan(HUNYUAN_A13B)[0]) == []


def test_ntk_alpha_rotates_with_transformers_frequencies():
    plan, _ = nearest_plan(TINY)
    hf = tiny_hf("hunyuan_v1_moe", TINY)
    sc = plan.positions.scaling
    assert (plan.positions.theta, sc.kind, sc.alpha, sc.factor) == (1e4, "ntk_alpha", 1000.0, None)
    ours, scale = inv_frequencies(plan.positions, 16, plan.max_seq_len, seq_len=12)
    assert torch.equal(ours, hf.model.rotary_emb.inv_freq) and scale == 1.0


@pytest.mark.parametrize(
    "change,field",
    [
        ({"use_qk_norm": False}, "use_qk_norm"),  # transformers builds the norms whatever it says
        ({"use_mixed_mlp_moe": False}, "use_mixed_mlp_moe"),  # ... and the shared MLP
        ({"use_cla": True}, "use_cla"),  # ... and no cross-layer KV sharing
        ({"num_shared_expert": [2] * 32}, "num_shared_expert"),
        ({"moe_intermediate_size": [1536] * 32}, "moe_intermediate_size"),  # the experts are intermediate_size
        ({"attention_head_dim": 64}, "attention_head_dim"),
        ({"moe_topk": [8] * 16 + [4] * 16}, "moe_topk"),  # one top-k per layer
        ({"head_dim": None}, "head_dim"),  # transformers does not derive it
    ],
)
def test_fields_that_disagree_with_what_transformers_builds_are_refused(change, field):
    assert refused_fields({**HUNYUAN_A13B, **change}) == [field]


def _hooked(modules, pick):
    choices, hooks = {}, []
    for name, mod in modules:
        i = int(re.search(r"layers\.(\d+)\.", name).group(1))
        hooks.append(mod.register_forward_hook(lambda m, a, out, i=i: choices.__setitem__(i, pick(out))))
    return choices, hooks


def run(hf, model):
    """(transformers' logits, moec's logits, transformers' and moec's per-layer (experts, weights))."""
    hf_choices, h1 = _hooked([(n, m) for n, m in hf.named_modules() if n.endswith("mlp.gate")], lambda o: (o[2], o[1]))
    routers = [(n, m) for n, m in model.named_modules() if isinstance(m, Router)]
    our_choices, h2 = _hooked(routers, lambda o: (o.topk_idx, o.topk_w))
    with torch.no_grad():
        want, got = hf(TOKENS).logits, model(TOKENS)[0]
    for h in h1 + h2:
        h.remove()
    return want, got, hf_choices, our_choices


@pytest.mark.parametrize("after_rope", [True, False])
def test_tiny_checkpoint_gives_transformers_logits_and_router_choices(after_rope, tmp_path):
    """Ordinary (random) q/k norm weights, so the order of norm and rotation matters: the import (norm after the
    rotation) gives transformers' logits; the same weights with the norm before the rotation do not."""
    hf = tiny_hf("hunyuan_v1_moe", TINY)
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if name.endswith(("query_layernorm.weight", "key_layernorm.weight")):
                p.copy_(torch.rand_like(p) + 0.5)
    hf.save_pretrained(tmp_path)
    plan, _ = nearest_plan(TINY)
    if not after_rope:
        before = [dataclasses.replace(lp.attention, qk_norm_after_rope=False) for lp in plan.layers]
        plan = plan.replace(
            layers=tuple(dataclasses.replace(lp, attention=a) for lp, a in zip(plan.layers, before, strict=True))
        )
    model = build_model(plan, device="cpu", dtype=torch.float32, seed=0).eval()
    weights = read_weights(Checkpoint(tmp_path), "hunyuan_v1_moe", model, device=torch.device("cpu"))
    model.load_state_dict({**weights, "lm_head.weight": weights["embed.weight"]})  # tied: read once
    want, got, hf_choices, our_choices = run(hf, model)
    diff = (got - want).abs().max().item()
    if not after_rope:
        assert diff > 1e-2
        return
    assert diff <= 1e-4 and sorted(hf_choices) == sorted(our_choices) == [0, 1]
    for i in hf_choices:
        hf_idx, hf_w = by_expert(*hf_choices[i])
        our_idx, our_w = by_expert(*our_choices[i])
        assert torch.equal(our_idx, hf_idx)
        torch.testing.assert_close(our_w, hf_w, atol=1e-5, rtol=1e-5)


def test_generated_model_py_gives_the_library_logits(tmp_path):
    """The code generator renders the norm after the rotation: the same logits as moec.nn, bit for bit, with
    norm weights that make the order matter."""
    from moec.codegen import render_model_source
    from tests.codegen.test_codegen import import_source

    plan, _ = nearest_plan(TINY)
    model = build_model(plan, device="cpu", dtype=torch.float32, seed=0).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("q_norm.weight", "k_norm.weight")):
                p.copy_(torch.rand_like(p) + 0.5)
    gen = import_source(render_model_source(plan), tmp_path).Model().eval()
    gen.load_state_dict(model.state_dict(), strict=True)
    with torch.no_grad():
        assert torch.equal(gen(TOKENS)[0], model(TOKENS)[0])
