"""build_model: every shipped spec on meta has exactly the analyzer's parameters (total, per component,
trainable/frozen, MTP); meta builds are instant; real weights are seeded and refused before allocation
when they cannot fit."""

from __future__ import annotations

import time

import pytest
import torch

import moec.nn.build as build
from moec.analyze import analyze
from moec.nn import build_model
from moec.nn.build import DoesNotFitError
from moec.spec import load_model, load_spec, resolve
from moec.spec.paths import shipped_specs

TINY = """
name: tiny
model: {vocab_size: 64, d_model: 32, n_layers: 2, max_seq_len: 32}
attention: {n_heads: 2, n_kv_heads: 1, qk_norm: true, bias: true, sinks: true, window: 8}
moe:
  n_experts: 4
  d_ff: 16
  n_shared_experts: 1
  shared_gate: true
  router: {top_k: 2, score: softmax}
layers: {default: {ffn: moe}}
"""


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny_plan():
    return resolve(load_spec("tiny.yaml", text=TINY))


@pytest.mark.parametrize("path", shipped_specs(), ids=lambda p: p.stem)
def test_meta_model_has_exactly_the_analyzers_parameters(path):
    plan = load_model(str(path))
    a = analyze(plan)
    model = build_model(plan, device="meta")
    params = dict(model.named_parameters())  # tied weights once
    main = {n: p for n, p in params.items() if not n.startswith("mtp.")}
    assert sum(p.numel() for p in main.values()) == a.params.total
    assert sum(p.numel() for p in main.values() if not p.requires_grad) == a.params.frozen
    assert sum(p.numel() for p in main.values() if p.requires_grad) == a.params.trainable
    mtp = sum(p.numel() for n, p in params.items() if n.startswith("mtp."))
    assert mtp == (a.mtp.params if a.mtp else 0)
    want = {c.name: (c.trainable, c.frozen) for c in a.components if c.params}
    assert model.param_counts() == want


BASE = "name: v\nmodel: {vocab_size: 64, d_model: 32, n_layers: 3, max_seq_len: 16MODEL}\nattention: {n_heads: 4ATTN}\n"
DENSE = "ffn: {d_ff: 48, bias: true}\n"
MOE = "moe: {n_experts: 4, d_ff: 16, MOE router: {top_k: 2}}\nlayers: {default: {ffn: moe}}\n"
VARIANTS = {
    "learned positions, post-norm, layernorm": (", positions: {kind: learned}, norm: {kind: layernorm, placement: post}", "", DENSE),
    "layernorm without bias, head bias, tied": (", norm: {kind: layernorm, bias: false}, head_bias: true, tie_embeddings: true", "", DENSE),
    "qk-norm per projection, biases, sinks, window": ("", ", n_kv_heads: 2, qk_norm: true, qk_norm_scope: projection, bias: true, out_bias: true, sinks: true, window: 4", DENSE),
    "mqa with layernorm qk-norm": (", norm: {kind: layernorm}", ", n_kv_heads: 1, qk_norm: true", DENSE),
    "mla without q_lora, dense mtp": ("", ", kind: mla, kv_lora_rank: 8, qk_nope_head_dim: 8, qk_rope_head_dim: 4, v_head_dim: 8", DENSE + "mtp: {n_layers: 2, ffn: dense}\n"),
    "moe with biases, shared gate": ("", "", DENSE + MOE.replace("MOE", "bias: true, n_shared_experts: 1, shared_gate: true,")),
    "two shared experts with biases": ("", "", DENSE + MOE.replace("MOE", "bias: true, n_shared_experts: 2,")),
    "lora experts, frozen attention": ("", "", DENSE + MOE.replace("MOE", "expert_kind: lora, lora: {rank: 2},") + "frozen: [attention, head]\n"),
}  # fmt: skip


@pytest.mark.parametrize("model, attn, rest", VARIANTS.values(), ids=VARIANTS.keys())
def test_every_variant_has_exactly_the_analyzers_parameters(model, attn, rest):
    plan = resolve(load_spec("v.yaml", text=BASE.replace("MODEL", model).replace("ATTN", attn) + rest))
    a = analyze(plan)
    model = build_model(plan, device="cpu", seed=0)
    assert model.param_counts() == {c.name: (c.trainable, c.frozen) for c in a.components if c.params}
    mtp = sum(p.numel() for n, p in model.named_parameters() if n.startswith("mtp."))
    assert mtp == (a.mtp.params if a.mtp else 0)
    logits, _ = model(torch.randint(64, (2, 8)))  # and it runs
    assert torch.isfinite(logits).all()


def test_deepseek_v3_builds_on_meta_in_under_three_seconds():
    plan = load_model("deepseek-v3")
    t0 = time.perf_counter()
    model = build_model(plan, device="meta")
    elapsed = time.perf_counter() - t0
    assert model.lm_head.weight.is_meta
    assert elapsed <= 3.0, f"{elapsed:.2f} s"


def test_a_model_too_big_for_memory_defaults_to_meta_and_is_refused_on_the_cpu():
    assert build_model("deepseek-v3").embed.weight.is_meta  # 2.7 TB in fp32
    t0 = time.perf_counter()
    with pytest.raises(DoesNotFitError, match="deepseek-v3: its weights need .* GiB in float32"):
        build_model("deepseek-v3", device="cpu")
    assert time.perf_counter() - t0 < 2.0  # refused from arithmetic, nothing allocated


def test_explicit_device_without_room_is_refused(monkeypatch):
    monkeypatch.setattr(build, "_cpu_available", lambda: 1000)
    with pytest.raises(DoesNotFitError, match="cpu has 0.0 GiB free"):
        build_model(tiny_plan(), device="cpu")
    assert build_model(tiny_plan()).embed.weight.is_meta  # and the default falls back to meta


def test_a_small_model_is_built_on_the_cpu_by_default():
    model = build_model(tiny_plan())
    assert model.embed.weight.device.type == "cpu"
    assert torch.isfinite(model(torch.randint(64, (1, 8)))[0]).all()


@pytest.mark.parametrize("source", ["name", "path", "plan"])
def test_a_spec_can_be_given_as_name_path_or_plan(source):
    from moec.spec.paths import shipped_spec_path

    arg = {"name": "mixtral-8x7b", "path": shipped_spec_path("mixtral-8x7b"), "plan": load_model("mixtral-8x7b")}[
        source
    ]
    model = build_model(arg, device="meta")
    assert model.plan == load_model("mixtral-8x7b")


def test_same_seed_gives_identical_weights_and_leaves_the_global_rng_alone():
    state = torch.random.get_rng_state()
    a = build_model(tiny_plan(), device="cpu", seed=1).state_dict()
    b = build_model(tiny_plan(), device="cpu", seed=1).state_dict()
    c = build_model(tiny_plan(), device="cpu", seed=2).state_dict()
    assert torch.equal(torch.random.get_rng_state(), state)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["layers.0.ffn.experts.w_gate_up"], c["layers.0.ffn.experts.w_gate_up"])


def test_dtype_is_applied_to_every_parameter():
    model = build_model(tiny_plan(), device="cpu", dtype=torch.bfloat16, seed=0)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert model(torch.randint(64, (1, 8)))[0].dtype == torch.bfloat16


def test_frozen_components_get_no_gradient():
    plan = load_model("lora-moe", sets=["model.d_model=32", "model.n_layers=1", "model.vocab_size=64",
                                        "attention.n_heads=2", "ffn.d_ff=32", "moe.d_ff=32", "moe.lora.rank=4"])  # fmt: skip
    model = build_model(plan, device="cpu", seed=0)
    trainable = {n.split(".")[-2] for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"router", "experts"}  # LoRA adapters and routers only
