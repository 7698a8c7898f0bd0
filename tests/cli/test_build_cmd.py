"""`moec build`: the output folder's files, reproducible weights that load into the generated model, atomic
writes (no overwrite without --force, nothing left behind by a failure), and clean exit-2 refusals."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
import torch
import yaml
from click.testing import CliRunner

from moec.analyze import analyze
from moec.codegen import render_model_source
from moec.commands.build import build
from moec.generated import import_python_file
from moec.nn import build_model
from moec.spec import load_model, plan_from_dict

TINY = """
name: tiny-build
description: a tiny MoE for the build tests
model: {vocab_size: 64, d_model: 32, n_layers: 2, max_seq_len: 32, tie_embeddings: TIED}
attention: {n_heads: 4, n_kv_heads: 2}
moe:
  n_experts: 4
  d_ff: 16
  router: {top_k: 2, score: sigmoid, selection_bias: true, normalize_topk: true}
  balance: {load_balance_coeff: 0.01, bias_update_rate: 0.001}
layers: {default: {ffn: moe}}
"""
OUTPUTS = {"model.py", "spec.resolved.yaml", "analysis.json", "moec-manifest.json"}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def run(*args: str):
    return CliRunner().invoke(build, [str(a) for a in args])


@pytest.fixture
def spec(write_spec) -> Path:
    return write_spec(TINY.replace("TIED", "true"))


_counter = itertools.count()


def import_model_py(folder: Path):
    return import_python_file(folder / "model.py", f"moec_built_{next(_counter)}")


def leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


def test_writes_model_plan_and_analysis(spec, tmp_path):
    out = tmp_path / "out"
    r = run(spec, "-o", out)
    assert r.exit_code == 0, r.output
    assert {p.name for p in out.iterdir()} == OUTPUTS
    plan = load_model(str(spec))
    assert (out / "model.py").read_text() == render_model_source(plan)
    assert plan_from_dict(yaml.safe_load((out / "spec.resolved.yaml").read_text())) == plan
    assert json.loads((out / "analysis.json").read_text()) == json.loads(json.dumps(analyze(plan).to_dict()))
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("tied", ["true", "false"])
def test_weights_are_reproducible_and_load_into_the_generated_model(write_spec, tmp_path, tied):
    import safetensors.torch as st

    spec = write_spec(TINY.replace("TIED", tied))
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    for out, seed in ((a, "3"), (b, "3"), (c, "4")):
        r = run(spec, "-o", out, "--weights", "--seed", seed)
        assert r.exit_code == 0, r.output
    data = (a / "model.safetensors").read_bytes()
    assert data == (b / "model.safetensors").read_bytes()  # same seed, same bytes
    assert data != (c / "model.safetensors").read_bytes()

    plan = load_model(str(spec))
    lib = build_model(plan, device="cpu", seed=3).eval()  # what --seed 3 initialised
    stored = st.load_file(str(a / "model.safetensors"))
    assert ("lm_head.weight" in stored) == (tied == "false")  # a tied head is stored once, as embed.weight
    gen = import_model_py(a).Model().eval()
    st.load_model(gen, str(a / "model.safetensors"), strict=True)
    tokens = torch.randint(0, plan.vocab_size, (2, 10), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits, aux = lib(tokens)
        gen_logits, gen_aux = gen(tokens)
    assert torch.equal(gen_logits, logits) and torch.equal(gen_aux.loss, aux.loss)


def test_bf16_weights(spec, tmp_path):
    from safetensors.torch import load_file

    r = run(spec, "-o", tmp_path / "o", "--weights", "--dtype", "bf16")
    assert r.exit_code == 0, r.output
    stored = load_file(str(tmp_path / "o" / "model.safetensors"))
    assert stored["layers.0.ffn.experts.w_gate_up"].dtype == torch.bfloat16
    assert stored["layers.0.ffn.router.expert_bias"].dtype == torch.float32  # routing state stays fp32


def test_an_earlier_build_is_kept_without_force_and_replaced_with_it(write_spec, spec, tmp_path):
    out = tmp_path / "out"
    assert run(spec, "-o", out).exit_code == 0
    first = (out / "model.py").read_text()
    other = write_spec(TINY.replace("TIED", "true").replace("n_layers: 2", "n_layers: 3"))
    r = run(other, "-o", out)
    assert r.exit_code == 2
    assert "--force" in r.output and "Traceback" not in r.output
    assert (out / "model.py").read_text() == first
    r = run(other, "-o", out, "--force")
    assert r.exit_code == 0, r.output
    assert {p.name for p in out.iterdir()} == OUTPUTS
    assert (out / "model.py").read_text() == render_model_source(load_model(str(other)))
    assert leftovers(tmp_path) == []


def test_weights_that_do_not_fit_are_refused_before_anything_is_written(write_spec, tmp_path):
    huge = write_spec(
        TINY.replace("TIED", "true").replace("vocab_size: 64, d_model: 32", "vocab_size: 16000000, d_model: 131072")
    )
    out = tmp_path / "out"
    r = run(huge, "-o", out, "--weights")
    assert r.exit_code == 2
    assert "GiB" in r.output and "Traceback" not in r.output
    assert not out.exists() and leftovers(tmp_path) == []


def test_a_failure_while_writing_leaves_no_partial_folder(spec, tmp_path, monkeypatch):
    import safetensors.torch

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.torch, "save_file", broken)
    out = tmp_path / "out"
    r = run(spec, "-o", out, "--weights")
    assert r.exit_code == 2 and "disk full" in r.output
    assert not out.exists() and leftovers(tmp_path) == []


def test_a_failed_force_rebuild_keeps_the_previous_output(spec, tmp_path, monkeypatch):
    import safetensors.torch

    out = tmp_path / "out"
    assert run(spec, "-o", out).exit_code == 0
    before = (out / "model.py").read_text()
    monkeypatch.setattr(safetensors.torch, "save_file", lambda *a, **k: (_ for _ in ()).throw(OSError("disk full")))
    assert run(spec, "-o", out, "--weights", "--force").exit_code == 2
    assert (out / "model.py").read_text() == before and not (out / "model.safetensors").exists()
    assert leftovers(tmp_path) == []


def test_a_hostile_description_cannot_inject_code(write_spec, tmp_path, monkeypatch):
    payload = json.dumps('"""\nimport pathlib; pathlib.Path("PWNED").touch()\n"""')  # a YAML double-quoted string
    spec = write_spec(TINY.replace("TIED", "false").replace("a tiny MoE for the build tests", payload))
    assert "PWNED" in load_model(str(spec)).description
    out = tmp_path / "out"
    r = run(spec, "-o", out)
    assert r.exit_code == 0, r.output
    src = (out / "model.py").read_text()
    assert "PWNED" not in src and "pathlib" not in src
    monkeypatch.chdir(tmp_path)
    import_model_py(out).Model()
    assert not (tmp_path / "PWNED").exists()


@pytest.mark.parametrize(
    ("text", "where"),
    [
        (TINY.replace("n_kv_heads: 2", "n_kv_heads: 3"), "spec.yaml:5"),  # heads not divisible by KV heads
        (TINY.replace("name: tiny-build", 'name: "x\\"; import os"'), "spec.yaml:2"),  # not a valid name
    ],
)
def test_a_bad_spec_exits_2_with_a_located_error(write_spec, tmp_path, text, where):
    out = tmp_path / "out"
    r = run(write_spec(text.replace("TIED", "true")), "-o", out)
    assert r.exit_code == 2
    assert where in r.output and "Traceback" not in r.output
    assert not out.exists()


def test_set_overrides_apply(spec, tmp_path):
    r = run(spec, "-o", tmp_path / "o", "--set", "moe.router.top_k=1")
    assert r.exit_code == 0, r.output
    plan = plan_from_dict(yaml.safe_load((tmp_path / "o" / "spec.resolved.yaml").read_text()))
    assert plan.layers[0].ffn.router.top_k == 1


@pytest.mark.parametrize(
    "args",
    [["-o", "x"], ["SPEC", "-o", "x", "--from-hf", "."], ["-o", "x", "--from-hf", ".", "--seed", "1"]],
)
def test_spec_or_from_hf_exactly_one(spec, tmp_path, args):
    r = run(*[str(spec) if a == "SPEC" else str(tmp_path / a) if a == "x" else a for a in args])
    assert r.exit_code == 2
    assert not (tmp_path / "x").exists()


def test_from_hf_writes_the_checkpoint_weights(tmp_path):
    """A tiny transformers Llama checkpoint → model.py + its weights, giving transformers' logits."""
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("moec.hf.weights")
    cfg = transformers.LlamaConfig(
        vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=32, tie_word_embeddings=False,
    )  # fmt: skip
    torch.manual_seed(0)
    hf = transformers.LlamaForCausalLM(cfg).eval()
    hf.save_pretrained(tmp_path / "hf")
    out = tmp_path / "out"
    r = run("--from-hf", tmp_path / "hf", "-o", out)
    assert r.exit_code == 0, r.output
    assert {p.name for p in out.iterdir()} == OUTPUTS | {"model.safetensors"}
    import safetensors.torch as st

    gen = import_model_py(out).Model().eval()
    st.load_model(gen, str(out / "model.safetensors"), strict=True)
    tokens = torch.randint(0, 64, (2, 10), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(gen(tokens)[0], hf(tokens).logits, rtol=1e-5, atol=1e-5)
