"""The Python API: `moec.__all__` and `dir(moec)` name it without importing torch, every name resolves,
`build_model` takes a spec in every form a user holds one, and `moec.MoE` is moec's MoE layer (the same
plan as a spec's, the same outputs) returning a tensor with its aux kept beside it."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

import moec
from moec.errors import SpecError
from moec.nn.moe import MoE as LibraryMoE
from moec.spec import load_model, load_spec

TINY = {
    "moec": 1,
    "name": "tiny",
    "model": {"vocab_size": 64, "d_model": 32, "n_layers": 2, "max_seq_len": 16},
    "attention": {"n_heads": 2},
    "ffn": {"d_ff": 64},
    "moe": {"n_experts": 4, "d_ff": 48, "router": {"top_k": 2, "score": "sigmoid"}, "n_shared_experts": 1},
    "layers": {"default": {"ffn": "moe"}},
}


def test_import_lists_the_api_without_torch():
    code = (
        "import json, sys, moec; "
        "print(json.dumps([moec.__all__, dir(moec), 'torch' in sys.modules, callable(moec.analyze)]))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    all_, dir_, torch_loaded, analyze_callable = json.loads(out)
    assert not torch_loaded
    assert analyze_callable  # reaching a torch-free name imports no torch either
    expected = {"analyze", "build_model", "load_model", "load_spec", "resolve", "SpecError", "MoE", "lm_loss"}
    assert expected <= set(all_)
    assert [n for n in dir_ if not n.startswith("_")] == all_  # the API, not this file's helpers


@pytest.mark.parametrize("name", moec.__all__)
def test_every_public_name_resolves(name):
    assert getattr(moec, name) is not None


def test_analyze_stays_the_function_once_its_package_is_imported():
    # importing moec.analyze (the package) used to replace moec.analyze (the function) with it
    from moec.analyze import render  # noqa: F401

    a = moec.analyze(load_model("mixtral-8x7b"))
    assert a.params.total == 46_702_792_704


@pytest.mark.parametrize(
    "form",
    [
        lambda: "specs/textbook-moe.yaml",
        lambda: "textbook-moe",
        lambda: load_spec("specs/textbook-moe.yaml"),
        lambda: load_model("textbook-moe"),
        lambda: __import__("pathlib").Path("specs/textbook-moe.yaml"),
    ],
    ids=["path", "shipped name", "loaded spec", "resolved plan", "PathLike"],
)
def test_build_model_takes_every_form_of_a_spec(form):
    model = moec.build_model(form(), device="meta")
    shipped = load_model("textbook-moe")
    assert (model.plan.spec_hash, model.plan.layers) == (shipped.spec_hash, shipped.layers)


def test_build_model_takes_a_yaml_shaped_dict():
    model = moec.build_model(TINY, device="cpu", seed=0)
    text = load_spec("tiny.yaml", text=json.dumps(TINY))
    assert model.plan.layers == moec.resolve(text).layers
    logits, aux = model(torch.zeros(1, 4, dtype=torch.long))
    assert logits.shape == (1, 4, 64)


def test_build_model_refuses_what_is_not_a_spec_by_name():
    with pytest.raises(TypeError, match="a path, a shipped spec name, a loaded spec, a resolved plan or a dict"):
        moec.build_model(42)
    bad = {**TINY, "ffn": {"d_ff": "wide"}}
    with pytest.raises(SpecError, match=r"<dict>:\d+:\d+ ffn.d_ff: 'wide': input should be a valid integer"):
        moec.build_model(bad)


def test_moe_layer_is_the_spec_layer():
    # the same options as the spec above give the same plan, so the same module and the same outputs
    layer = moec.MoE(d_model=32, n_experts=4, top_k=2, d_ff=48, score="sigmoid", n_shared_experts=1)
    spec_plan = moec.resolve(load_spec("tiny.yaml", text=json.dumps(TINY))).layers[0].ffn
    assert layer.plan == spec_plan
    reference = LibraryMoE(spec_plan, 32)
    reference.load_state_dict(layer.state_dict())
    x = torch.randn(3, 5, 32)
    y = layer(x)
    y_ref, aux_ref = reference(x)
    assert y.shape == x.shape
    torch.testing.assert_close(y, y_ref, rtol=0, atol=0)
    torch.testing.assert_close(layer.aux.router_probs, aux_ref.router_probs, rtol=0, atol=0)


def test_moe_aux_exposes_the_router():
    torch.manual_seed(0)
    layer = moec.MoE(d_model=16, n_experts=4, top_k=1, d_ff=32, load_balance_coeff=0.5)
    x = torch.randn(2, 6, 16)
    layer(x)
    aux = layer.aux
    logits = x.reshape(-1, 16) @ layer.router.weight.T  # (12, 4): the router is one linear map
    torch.testing.assert_close(aux.router_logits, logits)
    torch.testing.assert_close(aux.router_probs, logits.softmax(-1))
    chosen = torch.bincount(logits.argmax(-1), minlength=4)  # top-1: each token's best expert
    assert aux.tokens_per_expert.tolist() == chosen.tolist()
    # Switch's balance loss E·Σ f_i·P_i, from the logits by hand, weighted by the coefficient
    f, p = chosen / 12, logits.softmax(-1).mean(0)
    torch.testing.assert_close(aux.loss, 0.5 * 4 * (f * p).sum())


@pytest.mark.parametrize(
    ("options", "error", "words"),
    [
        ({"top_k": 9}, SpecError, "moec.MoE top_k: 9 exceeds moe.n_experts (4)"),
        ({"top_k": 2, "score": "cosine"}, SpecError, "moec.MoE score: 'cosine': input should be 'softmax'"),
        ({"top_k": 2, "colour": "red"}, TypeError, "moec.MoE got unknown option(s) colour; the options are:"),
    ],
)
def test_moe_refuses_bad_options_by_name(options, error, words):
    with pytest.raises(error) as e:
        moec.MoE(d_model=16, n_experts=4, d_ff=32, **options)
    assert str(e.value).startswith(words), str(e.value)


def test_moe_routes_each_option_to_its_section():
    layer = moec.MoE(
        d_model=16, n_experts=4, top_k=2, d_ff=32, bias=True, router={"bias": True}, z_loss_coeff=0.1, jitter=0.1
    )
    names = {n for n, _ in layer.named_parameters()}
    assert {"router.bias", "experts.b_gate_up", "experts.b_down"} <= names
    assert layer.plan.z_loss_coeff == 0.1 and layer.plan.router.jitter == 0.1
