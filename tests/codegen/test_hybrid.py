"""The generated model.py of hybrid models (docs/mixers.md, "Generated code") against the library model (moec.nn):
for a tiny spec of each token-mixer kind, and for the block features that came with the hybrids (layers without a
mixer or an FFN, the attention output gate, unit-offset norms, normed residuals), the generated file loads moec.nn's
state_dict by name and gives its logits bit for bit (float64 and float32), its gradients, and its cached decode,
which equals the full forward. The mixers' own math is held to its oracles in tests/mixers; here, that the file
builds the same modules with the same numbers and wires them as moec.nn does."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from moec.codegen import render_model_source
from moec.codegen.mixers import value_text
from moec.mixers import KINDS
from moec.nn import build_model
from tests.codegen.test_codegen import import_source, imported_modules, layer_table, plan_of
from tests.nn.test_cache import decoded, randomised

pytestmark = pytest.mark.usefixtures("one_torch_thread")

GQA = "n_heads: 4, n_kv_heads: 2, head_dim: 8"


def hybrid(
    mixers: str, layers: str, *, n_layers: int = 3, model: str = "positions: {kind: rope}", attn: str = GQA,
    moe: bool = False,
) -> str:  # fmt: skip
    """A tiny spec: the Llama-like base of tests/codegen/test_codegen.py with a token-mixer section and a layers
    section (moe: a 4-expert top-2 MoE section too)."""
    text = f"""
name: tiny
model: {{vocab_size: 64, d_model: 32, n_layers: {n_layers}, max_seq_len: 32, {model}}}
attention: {{{attn}}}
ffn: {{d_ff: 48}}
layers: {layers}
"""
    text += f"mixers: {{{mixers}}}\n" if mixers else ""
    text += "moe: {n_experts: 4, d_ff: 16, n_shared_experts: 1, shared_gate: true, router: {top_k: 2}}\n" if moe else ""
    return text


CASES = {
    # LFM2's gated short convolution with its biases, norms after the sublayers
    "short_conv, after_sublayer": hybrid(
        "short_conv: {kernel: 3, bias: true}",
        "{default: {mixer: short_conv}, overrides: [{select: [1], mixer: attention}]}",
        model="positions: {kind: rope}, norm: {placement: after_sublayer}, residual_multiplier: 0.5",
    ),
    # Qwen3-Next: Gated DeltaNet, gated attention per element with qk-norm and partial rotary, zero-centred norms,
    # MoE with a gated shared expert; chunks of 4 so that a 12-token forward runs several
    "gated_deltanet, output gate, unit offset": hybrid(
        "gated_deltanet: {n_key_heads: 2, n_value_heads: 4, key_head_dim: 8, value_head_dim: 8, chunk: 4}",
        "{default: {mixer: gated_deltanet, ffn: moe}, overrides: [{select: [3], mixer: attention}]}",
        n_layers=4,
        model="norm: {kind: rmsnorm, eps: 1.0e-6, unit_offset: true}, "
        "positions: {kind: rope, partial_rotary_factor: 0.5}",
        attn=GQA + ", qk_norm: true, output_gate: element",
        moe=True,
    ),
    # Ling 3.0's KDA variant: full-rank decay, bounded sigmoid (a string and a float keyword), low-rank gate; NoPE
    "kda, bounded decay": hybrid(
        "kda: {n_heads: 2, head_dim: 8, chunk: 4, decay: bounded_sigmoid, decay_lower_bound: -3.0, decay_rank: 0, "
        "gate_rank: 4}",
        "{default: {mixer: kda}, overrides: [{select: [2], mixer: attention}]}",
        model="positions: {kind: none}",
    ),
    # MiniMax-Text-01: Lightning attention whose decay changes with depth (a LAYERS column), normed residuals with
    # α and β other than 1 for each sublayer kind
    "lightning, normed_residual": hybrid(
        "lightning: {n_heads: 2, head_dim: 16, chunk: 4}",
        "{default: {mixer: lightning, ffn: moe}, overrides: [{select: [2], mixer: attention}]}",
        n_layers=4,
        model="norm: {placement: normed_residual}, residual_scales: {attention: {alpha: 2.0, beta: 0.5}, "
        "mixer: {alpha: 1.5, beta: 0.75}, ffn: {alpha: 1.25, beta: 0.9}}, positions: {kind: rope}",
        moe=True,
    ),
    # Jamba: Mamba with its inner dt/B/C norms, attention without positions, dense and MoE layers alternating
    "mamba, dense and moe": hybrid(
        "mamba: {state_size: 4, conv_kernel: 4, expand: 2, dt_rank: 4, inner_norms: true, chunk: 4}",
        "{default: {mixer: mamba}, overrides: [{select: [1, 3], ffn: moe}, {select: [2], mixer: attention}]}",
        n_layers=4,
        model="positions: {kind: none}",
        moe=True,
    ),
    # Nemotron-H: layers of one sublayer each (Mamba2 alone, an FFN alone, attention alone)
    "mamba2, mixer none, ffn none": hybrid(
        "mamba2: {n_heads: 4, head_dim: 8, state_dim: 8, n_groups: 2, chunk: 4, step_max: 0.5}",
        "{default: {mixer: mamba2, ffn: none}, overrides: [{select: [1], mixer: none, ffn: moe}, "
        "{select: [2], mixer: attention}, {select: [3], mixer: none, ffn: dense}]}",
        n_layers=5,
        moe=True,
    ),
    # attention layers told apart by window and RoPE base between the mixer layers; the mixers frozen
    "gated_deltanet, per-layer window and rope base, frozen mixers": hybrid(
        "gated_deltanet: {n_key_heads: 2, n_value_heads: 2, key_head_dim: 8, value_head_dim: 8, chunk: 4}",
        "{default: {mixer: gated_deltanet}, overrides: [{select: [1, 3], mixer: attention}, "
        "{select: [1], attention: {window: 4, rope_theta: 1000.0}}]}\nfrozen: [mixers, norms]",
        n_layers=4,
    ),
    # no attention at all: every layer a short convolution, post-norm
    "short_conv only, post-norm": hybrid(
        "short_conv: {kernel: 4}",
        "{default: {mixer: short_conv}}",
        model="norm: {kind: layernorm, eps: 1.0e-5, placement: post}, positions: {kind: none}",
    ),
    # the block features alone, in attention-only models
    "output gate per head, biases, unit offset": hybrid(
        "",
        "{default: {ffn: dense}}",
        model="norm: {kind: rmsnorm, eps: 1.0e-6, unit_offset: true}, positions: {kind: rope}",
        attn=GQA + ", output_gate: head, bias: true",
    ),
    "normed_residual, attention only": hybrid(
        "",
        "{default: {ffn: moe}, overrides: [{select: [0], ffn: dense}]}",
        model="norm: {placement: normed_residual}, residual_scales: {attention: {alpha: 0.5, beta: 2.0}, "
        "ffn: {alpha: 1.5, beta: 0.25}}, positions: {kind: rope}",
        moe=True,
    ),
}
STEPS = [5, 1, 1, 1, 2, 1, 1]  # a prefill longer than a chunk, single tokens, a two-token call
TOKENS = torch.randint(64, (2, sum(STEPS)), generator=torch.Generator().manual_seed(1))


def both(text: str, folder, dtype: torch.dtype):  # type: ignore[no-untyped-def]
    """moec.nn's model with random weights (tests/nn/test_cache.py's) and the generated model holding them."""
    plan = plan_of(text)
    lib = randomised(build_model(plan, device="cpu", dtype=dtype, seed=0))
    module = import_source(render_model_source(plan), folder)
    gen = module.Model().to(dtype)
    gen.load_state_dict(lib.state_dict(), strict=True)
    return plan, lib, gen.eval(), module


@pytest.mark.parametrize("case", list(CASES))
def test_generated_hybrid_gives_the_library_logits_and_decode(case, tmp_path):
    plan, lib, gen, _ = both(CASES[case], tmp_path, torch.float64)
    params = {n: (tuple(p.shape), p.requires_grad) for n, p in gen.named_parameters()}
    assert params == {n: (tuple(p.shape), p.requires_grad) for n, p in lib.named_parameters()}  # names, shapes, frozen
    with torch.no_grad():
        ours, theirs = gen(TOKENS), lib(TOKENS)
    assert torch.equal(ours[0], theirs[0]), (ours[0] - theirs[0]).abs().max()
    assert [a is None for a in ours[1].layers] == [a is None for a in theirs[1].layers]  # aux: MoE layers only
    steps = decoded(gen, TOKENS, STEPS)
    assert torch.equal(steps, decoded(lib, TOKENS, STEPS))  # moec.nn's cached decode, bit for bit
    # and the full forward: the chunked forms and the recurrences agree to rounding in float64
    torch.testing.assert_close(steps, ours[0], atol=1e-10, rtol=0)
    cache = gen.new_cache(2, 8)
    kinds = [type(layer).__name__ if layer is not None else None for layer in cache.layers]
    expected = ["LayerCache" if lp.has_attention else None if lp.mixer_kind == "none" else "MixerState"
                for lp in plan.layers]  # fmt: skip
    assert kinds == expected  # a mixer's state, attention's KV slots, nothing for a layer without a mixer


@pytest.mark.parametrize("case", ["gated_deltanet, output gate, unit offset", "lightning, normed_residual"])
def test_float32_logits_and_gradients_match_the_library(case, tmp_path):
    plan, lib, gen, _ = both(CASES[case], tmp_path, torch.float32)
    lib.train(), gen.train()
    ours, theirs = gen(TOKENS)[0], lib(TOKENS)[0]
    assert torch.equal(ours, theirs)
    ours.square().mean().backward()
    theirs.square().mean().backward()
    lib_params = dict(lib.named_parameters())
    for name, p in gen.named_parameters():
        torch.testing.assert_close(p.grad, lib_params[name].grad, rtol=1e-5, atol=1e-7, msg=name)


def test_meta_build_then_assign_and_back_into_the_library(tmp_path):
    plan, lib, gen, module = both(CASES["mamba2, mixer none, ffn none"], tmp_path, torch.float32)
    with torch.device("meta"):
        fast = module.Model()
    fast.load_state_dict(lib.state_dict(), assign=True)
    fresh = module.Model()  # its own initialisation, loaded into moec.nn
    lib2 = build_model(plan, device="cpu", seed=1)
    lib2.load_state_dict(fresh.state_dict(), strict=True)
    with torch.no_grad():
        assert torch.equal(fast.eval()(TOKENS)[0], lib(TOKENS)[0])
        assert torch.equal(fresh.eval()(TOKENS)[0], lib2.eval()(TOKENS)[0])


def test_the_table_names_each_layers_mixer_and_ffn_and_make_block_builds_each_kind_once():
    plan = plan_of(CASES["mamba2, mixer none, ffn none"])
    src = render_model_source(plan)
    assert layer_table(src) == [("none", "mamba2"), ("moe", "none"), ("none", "attention"), ("dense", "none"),
                                ("none", "mamba2")]  # fmt: skip  # the case's layers, by hand
    assert "def make_block(ffn: str, mixer: str, backend: str) -> Block:" in src
    assert src.count("Mamba2(") == 1 and src.count("Attention(D_MODEL") == 1 and src.count("ffn=MoE(") == 1
    assert imported_modules(src) & {f"moec.kernels.mixers.{k}" for k in KINDS} == {"moec.kernels.mixers.mamba2"}
    assert "class Mamba2" not in src  # imported, not templated


def test_a_keyword_that_changes_with_depth_is_a_column():
    """Lightning's decay_scale (MiniMax's 1 − l/(L − 1) + ε, moec.mixers.lightning) differs per layer: the table
    holds each layer's, None on the attention layer."""
    plan = plan_of(CASES["lightning, normed_residual"])
    src = render_model_source(plan)
    rows = layer_table(src)
    assert [row[0] for row in rows] == ["lightning", "lightning", "attention", "lightning"]
    eps = 1e-5
    assert [row[1] for row in rows] == [1 - i / (3 + eps) + eps if i != 2 else None for i in range(4)]
    assert "decay_scale=decay_scale" in src and "ATTENTION_ALPHA, ATTENTION_BETA = 2.0, 0.5" in src


def test_an_attention_only_model_names_no_mixer():
    src = render_model_source(plan_of(CASES["output gate per head, biases, unit offset"]))
    assert "mixer" not in src.split("class Block", 1)[1].split("class Model", 1)[0].replace("mixer:", "")
    assert "self.gate_proj = Linear(d_model, n_heads, bias=True)" in src and "torch.zeros(dim)" in src


@pytest.mark.parametrize(
    "value,text",
    [(True, "True"), (0, "0"), (4, "4"), (-3.0, "-3.0"), (1e-06, "1e-06"), ("bounded_sigmoid", '"bounded_sigmoid"'),
     ((1, 2.5), "(1, 2.5)"), ((7,), "(7,)")],
)  # fmt: skip
def test_mixer_keyword_values_are_printed_checked(value, text):
    assert value_text(value, "x") == text and eval(text) == value


@pytest.mark.parametrize(
    "value",
    ['silu"); import os; ("', "Silu", "a b", "", float("nan"), float("inf"), -1, None, [1], (), ("a",), b"silu"],
)
def test_mixer_keyword_values_that_are_not_plain_are_refused(value):
    with pytest.raises(ValueError):
        value_text(value, "x")


def test_a_hostile_keyword_from_a_mixer_kind_is_refused(monkeypatch):
    """A kind whose module_kwargs hands over text that is not an identifier: refused, never pasted."""
    plan = plan_of(CASES["kda, bounded decay"])
    kda = KINDS["kda"]
    real = kda.module_kwargs
    monkeypatch.setattr(kda, "module_kwargs", lambda p: real(p) | {"decay": 'softplus"); import os; ("'})
    with pytest.raises(ValueError, match="lower-case identifier"):
        render_model_source(plan)
    monkeypatch.setattr(kda, "module_kwargs", lambda p: real(p) | {"decay); import os; (": 1})
    with pytest.raises(ValueError, match="not an identifier"):
        render_model_source(plan)


def test_a_hand_built_plan_with_an_unknown_mixer_kind_is_refused():
    plan = plan_of(CASES["kda, bounded decay"])
    bad = dataclasses.replace(plan.layers[0].mixer, kind='kda"; import os; "')
    with pytest.raises(ValueError, match="mixer kind"):
        render_model_source(plan.replace(layers=(dataclasses.replace(plan.layers[0], mixer=bad), *plan.layers[1:])))


def test_a_built_hybrid_folder_generates_the_specs_tokens(tmp_path):
    """Through the CLI: `moec build --weights` of a hybrid, then `moec generate` with the folder's own model.py (its
    mixers' states carried from the prompt through each new token), gives the tokens the spec decodes to."""
    import json

    from tests.codegen.test_generated_decode import GENERATE, cli

    spec = tmp_path / "tiny.yaml"
    spec.write_text("moec: 1\n" + CASES["gated_deltanet, output gate, unit offset"])
    out = tmp_path / "built"
    assert cli("build", str(spec), "-o", str(out), "--weights", "--seed", "3").exit_code == 0
    built = json.loads(cli("generate", str(out), *GENERATE).output)
    assert f"decoded by {out / 'model.py'}" in built["notes"]
    assert built["new_tokens"] == json.loads(cli("generate", str(spec), "--seed", "3", *GENERATE).output)["new_tokens"]


@pytest.mark.parametrize(
    "feature,case,used",
    [
        ("layers.*.mixer other than attention", "kda, bounded decay", lambda p: p.layers[0].mixer_kind == "kda"),
        ("layers.*.ffn none", "mamba2, mixer none, ffn none", lambda p: not p.layers[0].has_ffn),
        ("attention.output_gate", "gated_deltanet, output gate, unit offset",
         lambda p: p.layers[3].attention.output_gate == "element"),
        ("model.norm.unit_offset", "output gate per head, biases, unit offset", lambda p: p.norm.unit_offset),
        ("model.norm.placement normed_residual", "normed_residual, attention only",
         lambda p: p.norm.placement == "normed_residual"),
    ],
)  # fmt: skip
def test_what_codegen_refused_before_hybrids_renders(feature, case, used):
    """The five features codegen refused by name until it rendered them: each case uses its feature and renders (its
    parity with moec.nn is held above)."""
    plan = plan_of(CASES[case])
    assert used(plan), feature
    assert "class Model(nn.Module):" in render_model_source(plan)
