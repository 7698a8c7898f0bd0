"""The generated model.py of an encoder-decoder model (moec/codegen/encdec.py, templates/encdec_model.j2) against the
library's moec.nn.EncoderDecoderModel: loaded with its state_dict it gives its logits and aux bit for bit, on the
shipped Switch spec scaled down and on a tiny spec whose experts drop tokens; `moec build` writes the shipped spec's
folder, and the commands that cannot run one still refuse it by name."""

from __future__ import annotations

import dataclasses
import json
import re
import subprocess
import sys

import pytest
import torch
from click.testing import CliRunner

import moec
from moec.cli import cli
from moec.codegen import render_model_source
from moec.commands.common import load_plan
from tests.codegen.test_codegen import ROOT, assert_ruff_clean, assert_same_aux, import_source, randomize

SWITCH = "specs/switch-base-8-encdec.yaml"
# the shipped Switch-Base-8 at a width and depth a unit test runs in milliseconds; its capacity (64 a sequence) holds
SMALL = (
    "model.d_model=32", "attention.n_heads=4", "attention.head_dim=8", "ffn.d_ff=48", "moe.d_ff=48",
    "model.vocab_size=96", "model.n_layers=4", "encoder.n_layers=3", "model.logits_scaling=5.656854249492381",
)  # fmt: skip
# experts of 2 tokens a sequence for 10 source and 7 target tokens, top-2: most slots are dropped
DROPPING = (*SMALL, "encoder.expert_capacity=2", "moe.router.top_k=2", "moe.n_experts=4")
# the same, its balance loss per sequence: the capacity router hands the sequences' length on to the Router's
BALANCED_PER_SEQUENCE = (*DROPPING, "moe.balance.load_balance_granularity=sequence")
# Phi-3.5-MoE's router in Switch's stacks: its top-2 is moec.kernels.runtime's, imported by the file
SPARSEMIXER = (*SMALL, "moe.router.kind=sparsemixer", "moe.router.top_k=2", "moe.n_experts=4")
# no relative bias (positions none), a gated activation, q/k/v biases, heads shared by two queries, no capacity
PLAIN = (
    *SMALL, "model.positions.kind=none", "model.positions.n_buckets=null", "model.positions.max_distance=null",
    "encoder.expert_capacity=null", "moe.activation=swiglu", "ffn.activation=swiglu", "attention.bias=true",
    "attention.n_kv_heads=2",
)  # fmt: skip

# every layer of both stacks MoE: no dense FFN, no per-layer table
ALL_MOE = (
    *SMALL, "layers.overrides=[]", "layers.default.ffn=moe", "encoder.layers.overrides=[]",
    "encoder.layers.default.ffn=moe",
)  # fmt: skip


def _generated_and_library(sets: tuple[str, ...], folder):  # -> (plan, generated Model, library model)
    plan = load_plan(SWITCH, sets, encoder_decoder=True)
    lib = moec.build_model(plan, seed=0).eval()
    randomize(lib)  # every weight away from its init: a misplaced norm or bias shows
    gen = import_source(render_model_source(plan), folder).Model().eval()
    gen.load_state_dict(lib.state_dict(), strict=True)
    return plan, gen, lib


def _ids(plan, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, plan.vocab_size, (2, 10), generator=g), torch.randint(
        0, plan.vocab_size, (2, 7), generator=g
    )


VARIANTS = {
    "switch": SMALL,
    "dropping": DROPPING,
    "dropping, balanced per sequence": BALANCED_PER_SEQUENCE,
    "plain": PLAIN,
    "all-moe": ALL_MOE,
    "sparsemixer": SPARSEMIXER,
}


@pytest.mark.parametrize("sets", list(VARIANTS.values()), ids=list(VARIANTS))
def test_generated_model_gives_the_library_logits_and_aux(sets, tmp_path):
    plan, gen, lib = _generated_and_library(sets, tmp_path)
    source, target = _ids(plan, 1)
    with torch.no_grad():
        (logits, aux), (lib_logits, lib_aux) = gen(source, target), lib(source, target)
    assert torch.equal(logits, lib_logits)
    assert_same_aux(aux, lib_aux)
    dropped = sum(int(a.dropped) for a in lib_aux.layers if a is not None)
    assert (dropped > 0) == (sets in (DROPPING, BALANCED_PER_SEQUENCE))  # exercised where the capacity binds, only
    assert len(lib_aux.layers) == len(plan.encoder) + len(plan.layers)


def test_every_variant_renders_ruff_clean_source(tmp_path):
    """One ruff run over every variant's file (a run per variant costs more than the variant's own test)."""
    for i, sets in enumerate(VARIANTS.values()):
        (tmp_path / f"variant_{i}").mkdir()
        (tmp_path / f"variant_{i}" / "model.py").write_text(
            render_model_source(load_plan(SWITCH, sets, encoder_decoder=True))
        )
    assert_ruff_clean(tmp_path)


def test_the_gradients_are_the_library_s(tmp_path):
    plan, gen, lib = _generated_and_library(DROPPING, tmp_path)
    source, target = _ids(plan, 2)
    for model in (gen, lib):
        logits, aux = model(source, target)
        (logits.square().mean() + aux.loss).backward()
    lib_grads = {n: p.grad for n, p in lib.named_parameters()}
    for name, p in gen.named_parameters():
        assert torch.equal(p.grad, lib_grads[name]), name


def test_the_generated_model_checks_its_ids(tmp_path):
    plan, gen, _ = _generated_and_library(SMALL, tmp_path)
    source, target = _ids(plan, 3)
    with pytest.raises(ValueError, match="input_ids hold 2 sequences, decoder_input_ids 1"):
        gen(source, target[:1])
    with pytest.raises(ValueError, match="token id 96 is outside the vocabulary"):
        gen(source, torch.full_like(target, 96))


def test_moec_build_writes_the_shipped_switch_spec(tmp_path):
    out = tmp_path / "switch"
    sets = [a for s in DROPPING for a in ("--set", s)]
    res = CliRunner().invoke(cli, ["build", SWITCH, "-o", str(out), "--weights", "--seed", "3", *sets])
    assert res.exit_code == 0, res.output
    plan = load_plan(SWITCH, DROPPING, encoder_decoder=True)
    from moec.codegen.output import read_build_plan

    assert read_build_plan(out) == plan  # the resolved spec reloads to the plan, both stacks included
    analysis = json.loads((out / "analysis.json").read_text())
    assert analysis["params"]["total"] == sum(p.numel() for p in moec.build_model(plan, device="meta").parameters())
    from safetensors.torch import load_model

    gen = import_source((out / "model.py").read_text(), tmp_path).Model().eval()
    load_model(gen, out / "model.safetensors")
    lib = moec.build_model(plan, seed=3).eval()  # the weights --seed 3 draws
    source, target = _ids(plan, 4)
    with torch.no_grad():
        assert torch.equal(gen(source, target)[0], lib(source, target)[0])


def test_building_it_without_weights_does_not_import_torch(tmp_path):
    """Rendering reads moec.nn's refusals from their torch-free home (moec.spec.encdec), as a decoder-only build does
    (docs/architecture.md: codegen imports torch only to write weights); a fresh interpreter, so nothing is loaded."""
    code = (
        "import sys\n"
        "from moec.cli import cli\n"
        "try:\n"
        f"    cli(['build', 'switch-base-8-encdec', '-o', {str(tmp_path / 'out')!r}])\n"
        "except SystemExit as e:\n"
        "    assert e.code in (0, None), e.code\n"
        "assert 'torch' not in sys.modules\n"
    )
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "out" / "model.py").is_file()


def test_the_full_size_shipped_spec_builds_through_the_cli(tmp_path):
    res = CliRunner().invoke(cli, ["build", "switch-base-8-encdec", "-o", str(tmp_path / "out")])
    assert res.exit_code == 0, res.output
    src = (tmp_path / "out" / "model.py").read_text()
    assert "EXPERT_CAPACITY = 64" in src and "LOGITS_SCALING = 27.712812921102035" in src
    assert "ENCODER_MOE = 6 * [False, True]" in src and "N_BUCKETS, MAX_DISTANCE = 32, 128" in src


@pytest.mark.parametrize("command", ["smoke-run", "plan", "roofline"])
def test_commands_that_cannot_run_one_still_refuse_it_by_name(command):
    res = CliRunner().invoke(cli, [command, "switch-base-8-encdec"])
    assert res.exit_code == 2, res.output
    assert "switch-base-8-encdec is an encoder-decoder model" in " ".join(res.output.split())
    assert "Traceback" not in res.output


@pytest.mark.parametrize("source", ["spec", "build folder"])
def test_generate_refuses_it_by_name(source, tmp_path):
    spec = ["switch-base-8-encdec", *(a for s in SMALL for a in ("--set", s))]
    if source == "build folder":
        res = CliRunner().invoke(cli, ["build", *spec, "-o", str(tmp_path / "out")])
        assert res.exit_code == 0, res.output
        spec = [str(tmp_path / "out")]
    res = CliRunner().invoke(cli, ["generate", *spec, "--prompt-tokens", "1 2", "--max-new-tokens", "1"])
    assert res.exit_code == 2, res.output
    assert "is an encoder-decoder model" in " ".join(res.output.split())


@pytest.mark.parametrize(
    ("sets", "named"),
    [
        (("moe.router.kind=gshard", "moe.router.top_k=2"), "moe.router.kind 'gshard'"),
        # moec.nn's encoder-decoder blocks leave it out (its decoder-only Block applies it): refused as moec.nn's
        # build_refusals names it, the one list codegen reads for what moec.nn does not build
        (("moe.output_norm=true",), "moe.output_norm"),
    ],
)
def test_what_the_generated_file_does_not_render_is_refused_by_name(sets, named, tmp_path):
    plan = load_plan(SWITCH, (*SMALL, *sets), encoder_decoder=True)
    with pytest.raises(ValueError, match=f"codegen does not support .*{re.escape(named)}"):
        render_model_source(plan)
    res = CliRunner().invoke(
        cli, ["build", SWITCH, "-o", str(tmp_path / "out"), *(a for s in sets for a in ("--set", s))]
    )
    assert res.exit_code == 2 and named in res.output and "Traceback" not in res.output
    assert not (tmp_path / "out").exists()


def test_moec_build_from_a_switch_checkpoint_gives_transformers_logits(tmp_path):
    """transformers' own tiny Switch model (experts of 3 tokens a sequence: some overflow), saved; the folder `moec
    build --from-hf` writes gives its logits through the generated model.py and the copied weights."""
    pytest.importorskip("transformers")
    from safetensors.torch import load_model

    from tests.hf.families.test_switch_transformers import tiny_switch

    hf = tiny_switch(3)
    hf.save_pretrained(tmp_path / "hf")
    res = CliRunner().invoke(cli, ["build", "--from-hf", str(tmp_path / "hf"), "-o", str(tmp_path / "out")])
    assert res.exit_code == 0, res.output
    gen = import_source((tmp_path / "out" / "model.py").read_text(), tmp_path).Model().eval()
    load_model(gen, tmp_path / "out" / "model.safetensors")
    g = torch.Generator().manual_seed(1)
    src, tgt = torch.randint(0, 96, (2, 20), generator=g), torch.randint(0, 96, (2, 13), generator=g)
    with torch.no_grad():
        want = hf(input_ids=src, decoder_input_ids=tgt).logits
        logits, aux = gen(src, tgt)
    assert (logits - want).abs().max() <= 1e-4 * want.abs().max()
    assert sum(int(a.dropped) for a in aux.layers if a is not None) > 0


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (lambda p: p.replace(expert_capacity="1); import os; (1"), "encoder.expert_capacity"),
        (lambda p: p.replace(positions=dataclasses.replace(p.positions, n_buckets="1); (os")), "positions.n_buckets"),
        (lambda p: p.replace(positions=dataclasses.replace(p.positions, max_distance=1.5)), "positions.max_distance"),
    ],
    ids=["expert_capacity", "n_buckets", "max_distance"],
)
def test_a_value_of_the_wrong_type_is_refused_by_name_not_pasted(change, field):
    """The numbers only this file prints pass moec.codegen.checks too (a hand-built plan; no spec holds these)."""
    with pytest.raises(ValueError, match=f"^{re.escape(field)} must be an integer"):
        render_model_source(change(load_plan(SWITCH, DROPPING, encoder_decoder=True)))
