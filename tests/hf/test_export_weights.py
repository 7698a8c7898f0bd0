"""Exporting weights (moec.export_hf): for every family import-hf knows, a tiny moec model with random weights,
exported, gives the same logits in transformers' own model (from_pretrained of the folder), and moec.from_hf
of the folder gives back every tensor bit for bit. The multimodal wrappers are refused, naming the vision side
moec does not model. The folder's files, shards and safety rules are checked through the CLI."""

from __future__ import annotations

import copy
import importlib
import json
import re
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import moec  # noqa: E402
from moec.errors import CommandError  # noqa: E402
from moec.hf.config import hf_to_model  # noqa: E402
from moec.hf.families import FAMILIES  # noqa: E402
from moec.nn import build_model  # noqa: E402
from tests.hf.test_weights import CONFIGS, TINY  # noqa: E402

# the dense families have no tiny config elsewhere; Mistral's default 4096-token window exceeds 64 positions
DENSE = {**TINY, "num_hidden_layers": 2, "intermediate_size": 48, "sliding_window": None}

# transformers builds these as multimodal wrappers (a class other than *ForCausalLM): a vision tower (and
# projector) moec does not model, so a checkpoint of the wrapper cannot be written from a moec model; the export
# is refused naming those tensors. Their tiny configs:
WRAPPER_CONFIGS = {
    "aria": lambda: transformers.AriaConfig(
        text_config=copy.deepcopy(_family_tiny("aria_text")),
        vision_config=_family_module("aria").TINY_VISION,
        projector_patch_to_query_dict={4: 4},
    ).to_dict(),
    "llama4": lambda: transformers.Llama4Config(
        text_config=copy.deepcopy(CONFIGS["llama4_text"]), vision_config=_family_module("llama4").TINY_VISION
    ).to_dict(),
    "glm4v_moe": lambda: _family_tiny("glm4v_moe"),
    "qwen3_vl_moe": lambda: {"model_type": "qwen3_vl_moe", **_family_tiny("qwen3_vl_moe")},
    "deepseek_ocr2": lambda: _family_tiny("deepseek_ocr2"),
}


# every family but switch_transformers, an encoder-decoder model whose export round trip (its own call signature)
# tests/hf/families/test_switch_transformers.py holds; of those, the multimodal wrappers (their vision side is named
# as missing)
BUILT = [m for m in FAMILIES if m != "switch_transformers"]
WRAPPERS = [m for m in BUILT if not FAMILIES[m].architecture.endswith("ForCausalLM")]


def _family_module(model_type: str):
    return importlib.import_module(f"tests.hf.families.test_{model_type}")


def _family_tiny(model_type: str) -> dict:
    return copy.deepcopy(_family_module(model_type).TINY)


def tiny_config(model_type: str) -> dict:
    """The family's tiny config.json: test_weights' table, else the family's own test module's TINY."""
    if model_type in CONFIGS:
        cfg = CONFIGS[model_type]
    elif FAMILIES[model_type].dense:
        cfg = DENSE
    else:
        module = Path(__file__).parent / "families" / f"test_{model_type}.py"
        if not module.is_file() or not hasattr(_family_module(model_type), "TINY"):
            pytest.skip(f"{model_type}: no tiny config (tests/hf/families/test_{model_type}.py defines no TINY)")
        cfg = _family_tiny(model_type)
    return {"model_type": model_type, "architectures": [FAMILIES[model_type].architecture], **copy.deepcopy(cfg)}


def random_model(plan):
    """moec's model of ``plan`` with every tensor random and away from its init: norms around 1, routers with
    logits of order 1, selection biases large enough to change choices, so that a misplaced element shows."""
    model = build_model(plan, device="cpu", dtype=torch.float32, seed=0)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            vector = p.dim() == 1
            scale = 0.5 if name.endswith("router.weight") or vector else 0.1
            p.copy_(torch.randn(p.shape, generator=g) * scale + (1.0 if vector and "norm" in name else 0.0))
        for name, b in model.named_buffers():
            if name.endswith("expert_bias"):
                b.copy_(torch.randn(b.shape, generator=g) * 0.1)
    return model.eval()


def hf_class(cfg: dict):
    return getattr(transformers, cfg["architectures"][0])


@pytest.mark.parametrize("model_type", [m for m in BUILT if m not in WRAPPERS])
def test_exported_checkpoint_gives_the_model_logits_in_transformers_and_reads_back_bit_for_bit(model_type, tmp_path):
    cfg = tiny_config(model_type)
    model = random_model(hf_to_model(cfg).replace(mtp=()))  # transformers saves no MTP layers (DeepSeek-V3)
    out = tmp_path / "out"
    moec.export_hf(model, out, config=cfg)
    hf = hf_class(cfg).from_pretrained(out, attn_implementation="eager").eval()
    tokens = torch.randint(0, min(cfg.get("vocab_size", 128), 100), (2, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        theirs, ours = hf(tokens).logits, model(tokens)[0]
    assert torch.allclose(theirs, ours, atol=1e-4, rtol=0), float((theirs - ours).abs().max())
    back = moec.from_hf(out)
    mine, got = model.state_dict(), back.state_dict()
    assert set(mine) == set(got)
    assert all(torch.equal(mine[n], got[n]) for n in mine)


@pytest.mark.parametrize("model_type", WRAPPERS)
def test_multimodal_wrapper_is_refused_naming_the_vision_side(model_type, tmp_path):
    if model_type in WRAPPER_CONFIGS:
        cfg = WRAPPER_CONFIGS[model_type]()
    else:
        cfg = tiny_config(model_type)
    model = build_model(hf_to_model(cfg), device="cpu", dtype=torch.float32, seed=0)
    with pytest.raises(CommandError, match="which no moec tensor gives") as e:
        moec.export_hf(model, tmp_path / "out", config=cfg)
    assert re.search(r"vision|visual|sam_model|\bvit\.", str(e.value))  # HY-V4-VL names its tower vit
    assert not (tmp_path / "out").exists()


def test_config_of_another_model_is_refused(tmp_path):
    cfg = tiny_config("qwen3_moe")
    model = build_model(hf_to_model(cfg), device="meta")
    with pytest.raises(moec.SpecError, match="is not the model's"):
        moec.export_hf(model, tmp_path / "out", config={**cfg, "num_hidden_layers": 3})


def test_cli_exports_a_build_folder_in_shards_that_load_back_and_refuses_to_overwrite(tmp_path):
    from click.testing import CliRunner
    from safetensors.torch import load_file

    from moec.cli import cli

    run = CliRunner().invoke
    sets = ["--set", "model.d_model=64", "--set", "model.n_layers=2", "--set", "model.vocab_size=128"]
    sets += ["--set", "moe.d_ff=96", "--set", "attention.n_heads=4", "--set", "attention.n_kv_heads=2"]
    build, out = tmp_path / "build", tmp_path / "ck"
    assert run(cli, ["build", "mixtral-8x7b", *sets, "-o", str(build), "--weights"]).exit_code == 0
    done = run(cli, ["export-hf", str(build), "-o", str(out), "--max-shard-size", "400KB"])
    assert done.exit_code == 0, done.output
    index = json.loads((out / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    held = [load_file(out / s) for s in shards]
    assert len(shards) > 1
    assert all(len(h) == 1 or sum(t.numel() * t.element_size() for t in h.values()) <= 400_000 for h in held)
    assert json.loads((out / "config.json").read_text())["model_type"] == "mixtral"
    saved = load_file(build / "model.safetensors")
    back = moec.from_hf(out).state_dict()
    assert all(torch.equal(back[n], t) for n, t in saved.items())
    again = run(cli, ["export-hf", str(build), "-o", str(out)])
    assert again.exit_code == 2 and "pass --force" in again.output
    replaced = run(cli, ["export-hf", str(build), "-o", str(out), "--force"])
    assert replaced.exit_code == 0, replaced.output
    assert (out / "model.safetensors").is_file() and not (out / "model.safetensors.index.json").exists()
    # --force replaces a folder moec wrote, but never the build folder it reads
    onto_itself = run(cli, ["export-hf", str(build), "-o", str(build), "--force"])
    assert onto_itself.exit_code == 2 and "holds the input" in onto_itself.output, onto_itself.output
    assert (build / "spec.resolved.yaml").is_file() and (build / "model.py").is_file()
    # a SPEC with --weights is the same export; weights of another spec are refused in one line
    spec_out = tmp_path / "from-spec"
    weights = str(build / "model.safetensors")
    done = run(cli, ["export-hf", "mixtral-8x7b", *sets, "--weights", weights, "-o", str(spec_out)])
    assert done.exit_code == 0, done.output
    assert (spec_out / "model.safetensors").read_bytes() == (out / "model.safetensors").read_bytes()
    other = run(
        cli,
        ["export-hf", "mixtral-8x7b", *sets, "--set", "moe.d_ff=64", "--weights", weights, "-o", str(tmp_path / "x")],
    )
    assert other.exit_code == 2 and "does not hold the spec's weights" in other.output, other.output


def test_an_import_step_that_is_not_a_re_layout_is_refused_not_inverted(tmp_path, monkeypatch):
    """A Mapper that scaled a tensor on import (× 2) cannot be exported by index tracing: refused by name."""
    import dataclasses

    from moec.hf.mapper import Mapper

    class Doubling(Mapper):
        def load(self, name):
            t = super().load(name)
            return t * 2 if name == "norm.weight" else t

    monkeypatch.setitem(FAMILIES, "llama", dataclasses.replace(FAMILIES["llama"], mapper=Doubling))
    cfg = tiny_config("llama")
    model = build_model(hf_to_model(cfg), device="cpu", dtype=torch.float32, seed=0)
    with pytest.raises(CommandError, match=r"norm\.weight: its import is not a re-layout"):
        moec.export_hf(model, tmp_path / "out", config=cfg)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("resolved", [": [", "a", "a: 1", "[1]", b"\xff\xfe"])
def test_a_build_folder_whose_resolved_spec_is_not_a_plan_is_one_located_error(resolved, tmp_path):
    """A hand-edited or truncated spec.resolved.yaml is the user's to fix: exit 2 naming the file, no output."""
    from click.testing import CliRunner

    from moec.cli import cli

    build, out = tmp_path / "build", tmp_path / "ck"
    build.mkdir()
    data = resolved if isinstance(resolved, bytes) else resolved.encode()
    (build / "spec.resolved.yaml").write_bytes(data)
    done = CliRunner().invoke(cli, ["export-hf", str(build), "-o", str(out)])
    lines = done.output.strip().splitlines()
    assert done.exit_code == 2 and len(lines) == 1, done.output
    assert lines[0].startswith(f"error: {build / 'spec.resolved.yaml'}: not a plan moec build wrote"), done.output
    assert not out.exists()
